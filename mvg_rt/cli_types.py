"""click parameter types: every numeric option goes through :func:`mvg_rt.limits.check`.

A bad value is a one-line :class:`MvgError` (exit 2) naming the option and its allowed range,
raised while click parses the command line, before any model is loaded.
"""

from __future__ import annotations

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
