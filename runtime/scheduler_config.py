"""A model's ``scheduler_config.json`` checked when the model is opened, not when a round first steps.

diffusers builds a scheduler from whatever the file holds and fails only when it is used:
``num_train_timesteps: "abc"`` is a TypeError inside ``torch.linspace``, ``beta_schedule: "bogus"`` a
NotImplementedError, negative betas give NaN latents. Building the scheduler once at open turns each of
those into one line naming the file and the fix, before any work.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch

from mvg_rt.errors import MvgError, first_line
from mvg_rt.runtime.pipelines.schedulers import SCHEDULERS

SUPPORTED = {cls.__name__: cls for cls in SCHEDULERS.values()}
DEFAULT_CLASS = "PNDMScheduler"  # what diffusers' SD 1.x pipelines use when the file names none
PROBE_STEPS = 10  # a schedule is laid out once to try the timestep settings (PNDM's PRK warm-up needs >= 4)


def check_scheduler_config(config: dict[str, Any], path: Path | str) -> dict[str, Any]:
    """``config`` if it builds a scheduler whose noise levels are usable, else a one-line :class:`MvgError`.

    A class mvg-rt does not run (a real diffusers scheduler such as UniPC) is left to ``--scheduler``, which
    swaps the algorithm and keeps the betas; its betas are checked with the default class.
    """
    fix = "fix the file or re-copy it from the model's source"
    name = config.get("_class_name", DEFAULT_CLASS)
    if not isinstance(name, str) or not _is_diffusers_scheduler(name):
        raise MvgError(f"{path} names _class_name {name!r}, which is not a diffusers scheduler: set it to one of "
                       f"{', '.join(SUPPORTED)}, or re-copy the file from the model's source")
    scheduler_class = SUPPORTED.get(name, SUPPORTED[DEFAULT_CLASS])
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # diffusers' notes on unexpected keys are not the problem
            scheduler = scheduler_class.from_config(config)
            scheduler.set_timesteps(min(PROBE_STEPS, int(scheduler.config.num_train_timesteps)))
        levels = scheduler.alphas_cumprod
        usable = bool(torch.isfinite(levels).all() and (levels > 0).all() and (levels <= 1).all())
    except Exception as err:  # noqa: BLE001 - diffusers raises anything from TypeError to NotImplementedError
        first = first_line(err, 160)
        raise MvgError(f"{path} holds values {scheduler_class.__name__} cannot use ({type(err).__name__}: "
                       f"{first}); {fix}") from err
    if not usable:
        raise MvgError(f"{path}: its betas give noise levels outside (0, 1] (check beta_start, beta_end, "
                       f"beta_schedule, trained_betas); {fix}")
    return config


def _is_diffusers_scheduler(name: str) -> bool:
    if name in SUPPORTED:
        return True
    import diffusers
    from diffusers.schedulers.scheduling_utils import SchedulerMixin

    try:
        candidate = getattr(diffusers, name, None)
    except Exception:  # noqa: BLE001 - diffusers' lazy import of an unavailable backend
        return False
    return isinstance(candidate, type) and issubclass(candidate, SchedulerMixin)
