"""Step tables measured from diffusers' own ``step`` by linearity probing.

The deterministic diffusers schedulers are linear in what they are fed (see
:mod:`.tables`), so their tables are not re-derived from formulas: they are
*measured* by running the scheduler's ``step`` once per step on a probe batch. Each
element of the batch is an independent experiment (the schedulers act element-wise
with per-step scalars): element ``p`` is fed a one-hot history (1 for one ``s_k`` or
one ``e_k``, 0 for the rest), so its output at step ``i`` is exactly the coefficient
of that input. Extra elements fed random inputs then check superposition, and an
all-zero element checks that there is no constant term, so a configuration that is
not linear (DDIM ``clip_sample``, DPM ``thresholding``, any noise injection) is
refused instead of being tabulated wrongly.

Schedulers that draw noise inside ``step`` (DDPM, Euler ancestral, DDIM with eta > 0,
SDE DPM-Solver) have no tables: the eager loop runs diffusers' ``step`` for them
(:class:`~.steppers.SchedulerStepper`), and a captured loop refuses them by name.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from mvg_rt.errors import MvgError
from mvg_rt.runtime.pipelines.schedulers import img2img_timesteps, make_scheduler, step_kwargs
from mvg_rt.runtime.pipelines.steps.tables import StepTables

#: Scheduler classes whose ``step`` draws noise, with why.
STOCHASTIC = {
    "DDPMScheduler": "DDPM adds fresh noise at every step",
    "EulerAncestralDiscreteScheduler": "Euler ancestral adds fresh noise at every step",
}
GRAPH_SCHEDULERS = ("pndm", "ddim", "euler", "dpm-multistep", "lms")
PROBE_RANDOM = 8  # superposition checks per table
RELATIVE_TOLERANCE = 1e-5  # schedulers compute in float32: coefficients are good to ~1e-7


def stochastic_reason(scheduler: Any, eta: float = 0.0) -> str | None:
    """Why ``scheduler``'s ``step`` draws noise (None: it draws none, so it has tables)."""
    name = type(scheduler).__name__
    if name in STOCHASTIC:
        return STOCHASTIC[name]
    if name == "DDIMScheduler" and eta > 0:
        return f"DDIM with eta {eta} adds fresh noise at every step"
    algorithm = str(getattr(scheduler.config, "algorithm_type", ""))
    if algorithm.startswith("sde-"):
        return f"{name} with algorithm_type {algorithm} adds fresh noise at every step"
    return None


def refuse_stochastic(scheduler: Any, eta: float = 0.0) -> None:
    """One-line error if ``scheduler`` draws noise in ``step`` (a captured loop cannot replay it)."""
    why = stochastic_reason(scheduler, eta)
    if why is not None:
        raise MvgError(f"CUDA-graph loops need a deterministic scheduler but {why}; pass --scheduler one of "
                       f"{', '.join(GRAPH_SCHEDULERS)} (eta 0) or drop --cuda-graphs")


def pie_step_tables(scheduler_config: dict[str, Any], name: str | None, steps: int, strength: float,
                    eta: float = 0.0) -> StepTables:
    """The tables of one PIE round: ``set_timesteps(steps)``, then the img2img tail, as PIE steps it."""

    def fresh() -> tuple[Any, Tensor]:
        scheduler = make_scheduler(scheduler_config, name)
        scheduler.set_timesteps(steps)
        return scheduler, img2img_timesteps(scheduler, steps, strength)

    return probe_tables(fresh, eta)


def probe_tables(fresh: Callable[[], tuple[Any, Tensor]], eta: float = 0.0) -> StepTables:
    """Measure the tables of ``fresh() -> (scheduler, timesteps)`` by running its ``step`` on probes.

    ``fresh`` must return a newly configured scheduler (``step`` is stateful) and the
    timesteps the loop visits, in order.
    """
    scheduler, timesteps = fresh()
    refuse_stochastic(scheduler, eta)
    steps = len(timesteps)
    basis = 2 * steps  # one-hot columns: s_0 .. s_{N-1}, then e_0 .. e_{N-1}
    width = basis + PROBE_RANDOM + 1  # + random superposition checks + the all-zero column
    shape = (width, 1, 1, 1)
    generator = torch.Generator().manual_seed(0)
    random_s = torch.randn((steps, PROBE_RANDOM), generator=generator, dtype=torch.float64) * 3
    random_e = torch.randn((steps, PROBE_RANDOM), generator=generator, dtype=torch.float64) * 3

    def inputs(k: int) -> tuple[Tensor, Tensor]:
        s = torch.zeros(width, dtype=torch.float64)
        e = torch.zeros(width, dtype=torch.float64)
        s[k] = 1.0
        e[steps + k] = 1.0
        s[basis:basis + PROBE_RANDOM] = random_s[k]
        e[basis:basis + PROBE_RANDOM] = random_e[k]
        return s.view(shape), e.view(shape)

    full_a = torch.zeros(steps, steps, dtype=torch.float64)
    full_b = torch.zeros(steps, steps, dtype=torch.float64)
    scale = torch.zeros(steps, dtype=torch.float64)
    extra = step_kwargs(scheduler, torch.Generator().manual_seed(0), eta)
    for i, t in enumerate(timesteps):
        s, e = inputs(i)
        scale[i] = scheduler.scale_model_input(torch.ones(1, dtype=torch.float64), t).double()[0]
        out = scheduler.step(e, t, s, **extra).prev_sample.double().reshape(width)
        full_a[i, : i + 1] = out[: i + 1]
        full_b[i, : i + 1] = out[steps: steps + i + 1]
        _check_superposition(scheduler, i, out, full_a, full_b, random_s, random_e, basis)

    window = _window(full_a, full_b)
    band = lambda full: torch.stack([  # noqa: E731
        torch.stack([full[i, i - l] if i - l >= 0 else full.new_zeros(()) for l in range(window)])
        for i in range(steps)])
    return StepTables(
        sampler=type(scheduler).__name__,
        timesteps=torch.as_tensor(timesteps).detach().to("cpu", torch.float32),
        model_input_scale=scale.float(),
        sample_coefs=band(full_a).float(),
        eps_coefs=band(full_b).float(),
        noise_scale=torch.zeros(steps),
    )


def _check_superposition(scheduler: Any, i: int, out: Tensor, full_a: Tensor, full_b: Tensor, random_s: Tensor,
                         random_e: Tensor, basis: int) -> None:
    predicted = full_a[i, : i + 1] @ random_s[: i + 1] + full_b[i, : i + 1] @ random_e[: i + 1]
    measured = out[basis:basis + PROBE_RANDOM]
    size = max(1.0, float(predicted.abs().max()))
    if float((predicted - measured).abs().max()) > RELATIVE_TOLERANCE * size:
        raise _not_linear(scheduler, i, "fails superposition (clipping, thresholding or noise?)")
    if abs(float(out[-1])) > 0:
        raise _not_linear(scheduler, i, "has a constant term (noise injection?)")


def _not_linear(scheduler: Any, step: int, why: str) -> MvgError:
    return MvgError(f"{type(scheduler).__name__} with this configuration is not linear in its inputs at step "
                    f"{step} ({why}); CUDA-graph loops need a linear scheduler: pass --scheduler one of "
                    f"{', '.join(GRAPH_SCHEDULERS)} or drop --cuda-graphs")


def _window(full_a: Tensor, full_b: Tensor) -> int:
    """1 + the largest lag with a non-zero coefficient."""
    lags = torch.arange(full_a.shape[0])[:, None] - torch.arange(full_a.shape[1])[None, :]
    used = (full_a != 0) | (full_b != 0)
    return int(lags[used].max()) + 1 if bool(used.any()) else 1
