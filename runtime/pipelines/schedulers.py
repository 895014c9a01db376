"""Noise schedulers for PIE, from diffusers, chosen by name or taken from the model.

PIE runs img2img rounds: only the last ``int(steps * strength)`` timesteps of the
schedule are denoised. This module owns that arithmetic (diffusers'
``get_timesteps``) so PIE and the benchmarks share it.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    LMSDiscreteScheduler,
    PNDMScheduler,
)
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from mvg_rt.errors import MvgError

SCHEDULERS: dict[str, type[SchedulerMixin]] = {
    "pndm": PNDMScheduler,
    "ddim": DDIMScheduler,
    "ddpm": DDPMScheduler,
    "euler": EulerDiscreteScheduler,
    "euler-ancestral": EulerAncestralDiscreteScheduler,
    "dpm-multistep": DPMSolverMultistepScheduler,
    "lms": LMSDiscreteScheduler,
}


def make_scheduler(config: dict[str, Any], name: str | None = None) -> SchedulerMixin:
    """A fresh scheduler from the model's config; ``name`` swaps the algorithm, keeping the betas."""
    if name is None:
        class_name = config.get("_class_name", "PNDMScheduler")
        by_class = {cls.__name__: cls for cls in SCHEDULERS.values()}
        if class_name not in by_class:
            raise MvgError(
                f"the model's scheduler {class_name} is not supported: pass --scheduler with one of "
                f"{', '.join(SCHEDULERS)}"
            )
        return by_class[class_name].from_config(config)
    check_scheduler(name)
    return SCHEDULERS[name].from_config(config)


def check_scheduler(name: str | None) -> None:
    """``--scheduler`` is one of :data:`SCHEDULERS` (None: the model's own); checked by the PIE settings, so a
    bad name stops simulate and a worklist row before any model loads."""
    if name is not None and name not in SCHEDULERS:
        raise MvgError(f"unknown scheduler {name!r}: use one of {', '.join(SCHEDULERS)}")


def check_steps(scheduler: SchedulerMixin, steps: int) -> None:
    """Refuse a ``--steps`` that puts a timestep past the scheduler's last trained one.

    With ``steps_offset`` (SD 1.x's PNDM: 1), ``steps`` equal to the training steps
    shifts the top timestep to ``num_train_timesteps``, where diffusers' ``step`` then
    fails with an IndexError mid-round.
    """
    scheduler.set_timesteps(steps)
    trained = scheduler.config.num_train_timesteps
    if int(scheduler.timesteps.max()) >= trained:
        most = trained - int(scheduler.config.get("steps_offset", 0) or 0)
        raise MvgError(f"--steps {steps} is more than this model's {type(scheduler).__name__} can take ({trained} "
                       f"training steps, steps_offset {scheduler.config.get('steps_offset', 0)}): pass --steps "
                       f"{most} or fewer")


def img2img_timesteps(scheduler: SchedulerMixin, steps: int, strength: float) -> torch.Tensor:
    """The timesteps an img2img round denoises: the last ``int(steps * strength)`` of ``steps``.

    Call after ``set_timesteps(steps)``. Sets the scheduler's begin index like
    diffusers' img2img, so stateful schedulers start at the right sigma.
    """
    denoised = min(int(steps * strength), steps)
    start = max(steps - denoised, 0) * scheduler.order
    if hasattr(scheduler, "set_begin_index"):
        scheduler.set_begin_index(start)
    return scheduler.timesteps[start:]


def step_kwargs(scheduler: SchedulerMixin, generator: torch.Generator, eta: float) -> dict[str, Any]:
    """Pass ``eta``/``generator`` only to schedulers whose ``step`` takes them (as diffusers does)."""
    accepted = set(inspect.signature(scheduler.step).parameters)
    kwargs: dict[str, Any] = {}
    if "eta" in accepted:
        kwargs["eta"] = eta
    if "generator" in accepted:
        kwargs["generator"] = generator
    return kwargs
