"""click parameter types and defaults: every numeric option goes through :func:`mvg_rt.limits.check`, and an
option that sets a field of a settings dataclass takes its default from that field (:func:`default_of`).

A bad value is a one-line :class:`MvgError` (exit 2) naming the option and its allowed range,
raised while click parses the command line, before any model is loaded.
"""

from __future__ import annotations

import dataclasses
import importlib
import re
from typing import Any

import click

from mvg_rt.errors import MvgError
from mvg_rt.limits import LIMITS, check

_DEVICE = re.compile(r"^(cpu|cuda(:\d+)?)$")


def _option(param: click.Parameter | None) -> str:
    names = getattr(param, "opts", None) or ["value"]
    return max(names, key=len)


class Number(click.ParamType):
    """An int or float option checked against its entry in :data:`mvg_rt.limits.LIMITS`."""

    def __init__(self, integer: bool = False, key: str | None = None) -> None:
        self.integer = integer
        self.key = key  # the LIMITS entry when it is not the option's own name (e.g. "bench --resolution")
        self.name = "integer" if integer else "number"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        option = _option(param)
        if isinstance(value, str):
            text = value.strip()
            try:
                value = int(text) if self.integer else float(text)
            except ValueError:
                kind = "an integer" if self.integer else "a number"
                raise MvgError(f"{option} takes {kind} (got {text[:40]!r})") from None
        return check(option, value, LIMITS[self.key] if self.key else None)


INT = Number(integer=True)
FLOAT = Number()


class Device(click.ParamType):
    """``cpu`` or ``cuda[:N]``; anything else is refused before a backend is opened."""

    name = "device"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        text = str(value).strip().lower()
        if not _DEVICE.match(text):
            raise MvgError(f"{_option(param)} must be cpu, cuda or cuda:N (got {str(value)[:40]!r})")
        return text


DEVICE = Device()


class Text(click.ParamType):
    """Free text that must be valid Unicode (a prompt given as raw non-UTF-8 bytes is refused)."""

    name = "text"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        text = str(value)
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise MvgError(f"{_option(param)} is not valid UTF-8 text: retype it, or set a UTF-8 locale "
                           "(e.g. LANG=C.UTF-8)") from None
        if "\x00" in text:
            raise MvgError(f"{_option(param)} contains a NUL character: retype it")
        return text


TEXT = Text()


#: The settings dataclasses whose fields the options set, by the module that defines each. Imported only when
#: click first needs a default (parsing a command, its --help): they load torch, and ``mvg-rt --help`` need not.
SETTINGS = {
    "PieSettings": "mvg_rt.runtime.pipelines.pie",
    "TransitionSettings": "mvg_rt.runtime.pipelines.transition",
    "RuntimeSpec": "mvg_rt.runtime.factory",
    "SimulationOptions": "mvg_rt.simulation",
    "SimulationRequest": "mvg_rt.simulation",
    "RoiRequest": "mvg_rt.io.masks",
    "SegmentRequest": "mvg_rt.segmentation",
    "BatchRequest": "mvg_rt.batch.job",
    "RecaptionSettings": "mvg_rt.prompts.report",
    "ExportRequest": "mvg_rt.export.export_job",
    "CalibrationSettings": "mvg_rt.calibration",
    "CheckRequest": "mvg_rt.check.job",
    "BuildSettings": "mvg_rt.export.tensorrt_build",
    "ProfileSettings": "mvg_rt.artifacts.profiles",
    "BenchConfig": "mvg_rt.bench.config",
    "E2ESettings": "mvg_rt.bench.config",
    "DemoTrainingConfig": "mvg_rt.demo.training",
}


def settings_class(name: str) -> type:
    """The settings dataclass called ``name`` in :data:`SETTINGS`."""
    return getattr(importlib.import_module(SETTINGS[name]), name)


@dataclasses.dataclass(frozen=True)
class FieldDefault:
    """A click default that is a settings dataclass's field default, read when click asks for it.

    click calls it for the value and formats it with ``str`` for ``show_default`` (a tuple as click shows a
    multiple option's default). ``comma_list``: the option takes the field's tuple as one comma-separated text.
    """

    settings: str
    name: str
    comma_list: bool = False

    def __call__(self) -> Any:
        field = {f.name: f for f in dataclasses.fields(settings_class(self.settings))}[self.name]
        if field.default is not dataclasses.MISSING:
            value = field.default
        elif field.default_factory is not dataclasses.MISSING:
            value = field.default_factory()
        else:
            raise TypeError(f"{self.settings}.{self.name} has no default: the option must be required")
        return ",".join(value) if self.comma_list else value

    def __str__(self) -> str:
        value = self()
        if isinstance(value, (tuple, list)):
            return ", ".join(map(str, value))
        return '""' if value == "" else str(value)


def default_of(settings: str, name: str, comma_list: bool = False) -> FieldDefault:
    """The default of field ``name`` of the settings dataclass ``settings`` (a key of :data:`SETTINGS`), for a
    click option that sets that field: one source, so the option and the settings cannot disagree."""
    return FieldDefault(settings, name, comma_list)
