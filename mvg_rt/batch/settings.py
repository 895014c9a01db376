"""A case's simulate settings: the shared command-line settings with the worklist row's overrides applied.

Settings are a plain mapping keyed by ``simulate``'s option names (the keys of
:data:`mvg_rt.batch.worklist.OVERRIDES`), so a row overrides exactly what the command line sets and the
mapping hashes stably. It becomes the typed simulate settings only here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mvg_rt.errors import MvgError
from mvg_rt.runtime.pipelines.pie import PieSettings
from mvg_rt.runtime.pipelines.transition import TransitionSettings
from mvg_rt.simulation import SimulationOptions


def pie_settings(settings: dict[str, Any]) -> PieSettings:
    return PieSettings(rounds=settings["rounds"], strength=settings["strength"], steps=settings["steps"],
                       guidance_scale=settings["guidance"], beta1=settings["beta1"], beta2=settings["beta2"],
                       scheduler=settings["scheduler"])


def transition_settings(settings: dict[str, Any], low_memory: bool = False) -> TransitionSettings | None:
    if settings["no_transition"]:
        return None
    return TransitionSettings(frames=settings["frames"], steps=settings["transition_steps"],
                              sampler=settings["transition_sampler"],
                              guidance_scale=settings["transition_guidance"],
                              negative_prompt=settings["negative_prompt"],
                              decode_batch=1 if low_memory else TransitionSettings.decode_batch)


def check_case_settings(settings: dict[str, Any]) -> None:
    """Raise the one-line MvgError ``simulate`` would raise for these settings, before anything runs."""
    pie_settings(settings)
    transition_settings(settings)
    if settings["fps"] <= 0:
        raise MvgError(f"fps must be positive (got {settings['fps']})")
    if settings["feather"] < 0:
        raise MvgError(f"feather must be >= 0 pixels (got {settings['feather']})")
    resolution = settings["resolution"]
    if resolution is not None and (resolution < 8 or resolution % 8):
        raise MvgError(f"resolution must be a positive multiple of 8 (got {resolution})")


def case_options(settings: dict[str, Any], resolution: int, out: Path, overwrite: bool, record_paths: bool,
                 graphed_loops: bool = False, low_memory: bool = False) -> SimulationOptions:
    return SimulationOptions(pie=pie_settings(settings), transition=transition_settings(settings, low_memory),
                             graphed_loops=graphed_loops, resolution=resolution, seed=settings["seed"],
                             fps=settings["fps"], out=out, overwrite=overwrite, record_paths=record_paths)
