"""Scheduler steps as coefficient tables, measured from diffusers by linearity probing.

A CUDA graph replays fixed kernels over fixed buffers, so a denoising step can be
captured only if the scheduler update is plain tensor arithmetic with no host
decisions. The deterministic diffusers schedulers PIE uses are linear in what they
are fed: at step ``i`` the new sample is

    x_{i+1} = sum_l A[i, l] * s_{i-l}  +  sum_l B[i, l] * e_{i-l}        (l = 0 .. W-1)

where ``s_k`` is the sample passed to ``step`` at step ``k`` (PIE replaces it outside
the ROI before each step, so it is not the previous step's output) and ``e_k`` the
(guided) model output; the model itself is fed ``C[i] * x`` (``scale_model_input``,
e.g. Euler's ``1 / sqrt(sigma^2 + 1)``). ``W`` is the history window: 1 for DDIM and
Euler, 2 for DPM-Solver++(2M) and for PNDM's first PLMS steps (which reuse the first
sample), up to 4 for LMS / PLMS.

The tables are not re-derived from formulas: they are *measured* by running the
scheduler's own ``step`` once on probe tensors. Each element of a probe batch is an
independent experiment (the schedulers act element-wise with per-step scalars):
element ``p`` is fed a one-hot history (1 for one ``s_k`` or one ``e_k``, 0 for the
rest), so its output at step ``i`` is exactly the coefficient of that input. Extra
elements fed random inputs then check superposition, and an all-zero element checks
that there is no constant term, so a configuration that is not linear (DDIM
``clip_sample``, DPM ``thresholding``, any noise injection) is refused instead of
being tabulated wrongly.

Stochastic schedulers (DDPM, Euler ancestral, DDIM with eta > 0, SDE DPM-Solver)
draw noise inside ``step`` from the generator and cannot be replayed as tables with
the eager pipeline's random numbers; graph mode refuses them by name.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor

from mvg_rt.errors import MvgError
from mvg_rt.runtime.pipelines.schedulers import img2img_timesteps, make_scheduler

#: Scheduler classes whose ``step`` draws noise: refused in graph mode, with why.
STOCHASTIC = {
    "DDPMScheduler": "DDPM adds fresh noise at every step",
    "EulerAncestralDiscreteScheduler": "Euler ancestral adds fresh noise at every step",
}
GRAPH_SCHEDULERS = ("pndm", "ddim", "euler", "dpm-multistep", "lms")
PROBE_RANDOM = 8  # superposition checks per table
RELATIVE_TOLERANCE = 1e-5  # schedulers compute in float32: coefficients are good to ~1e-7


@dataclass(frozen=True)
class LinearStepTables:
    """Per-step coefficients of a linear scheduler over ``len(timesteps)`` steps, window ``W``."""

    scheduler: str  # class name, for messages and provenance
    timesteps: Tensor  # (N,) the model's timestep at each step, float32
    model_input_scale: Tensor  # (N,) C[i]
    sample_coefs: Tensor  # (N, W) A[i, l]: weight of s_{i-l}
    eps_coefs: Tensor  # (N, W) B[i, l]: weight of e_{i-l}

    def __len__(self) -> int:
        return int(self.timesteps.shape[0])

    @property
    def window(self) -> int:
        return int(self.sample_coefs.shape[1])

    @property
    def write_slots(self) -> Tensor:
        """(N,) int64: the ring-buffer slot step ``i`` writes its sample and model output to."""
        return torch.arange(len(self)) % self.window

    @property
    def read_slots(self) -> Tensor:
        """(N, W) int64: slot of ``s_{i-l}`` / ``e_{i-l}`` (coefficients are 0 where ``i - l < 0``)."""
        steps = torch.arange(len(self))[:, None] - torch.arange(self.window)[None, :]
        return steps % self.window

    def to(self, device: torch.device | str, dtype: torch.dtype = torch.float32) -> LinearStepTables:
        move = lambda t: t.to(device=device, dtype=dtype)  # noqa: E731
        return replace(self, timesteps=move(self.timesteps), model_input_scale=move(self.model_input_scale),
                       sample_coefs=move(self.sample_coefs), eps_coefs=move(self.eps_coefs))


def refuse_stochastic(scheduler: Any, eta: float = 0.0) -> None:
    """One-line error if ``scheduler`` draws noise in ``step`` (graph mode cannot replay it)."""
    name = type(scheduler).__name__
    why = STOCHASTIC.get(name)
    if why is None and name == "DDIMScheduler" and eta > 0:
        why = f"DDIM with eta {eta} adds fresh noise at every step"
    algorithm = str(getattr(scheduler.config, "algorithm_type", ""))
    if why is None and algorithm.startswith("sde-"):
        why = f"{name} with algorithm_type {algorithm} adds fresh noise at every step"
    if why is not None:
        raise MvgError(f"CUDA-graph loops need a deterministic scheduler but {why}; pass --scheduler one of "
                       f"{', '.join(GRAPH_SCHEDULERS)} (eta 0) or drop --cuda-graphs")


def is_stochastic(scheduler: Any, eta: float = 0.0) -> bool:
    """Whether ``scheduler``'s ``step`` draws noise (so it has no coefficient tables)."""
    try:
        refuse_stochastic(scheduler, eta)
    except MvgError:
        return True
    return False


def pie_step_tables(scheduler_config: dict[str, Any], name: str | None, steps: int, strength: float,
                    eta: float = 0.0) -> LinearStepTables:
    """The tables of one PIE round: ``set_timesteps(steps)``, then the img2img tail, as PIE steps it."""

    def fresh() -> tuple[Any, Tensor]:
        scheduler = make_scheduler(scheduler_config, name)
        scheduler.set_timesteps(steps)
        return scheduler, img2img_timesteps(scheduler, steps, strength)

    return probe_tables(fresh, eta)


def probe_tables(fresh: Any, eta: float = 0.0) -> LinearStepTables:
    """Measure the tables of ``fresh() -> (scheduler, timesteps)`` by running its ``step`` on probes.

    ``fresh`` must return a newly configured scheduler (``step`` is stateful) and the
    timesteps the loop visits, in order.
    """
    from mvg_rt.runtime.pipelines.schedulers import step_kwargs

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
    return LinearStepTables(
        scheduler=type(scheduler).__name__,
        timesteps=torch.as_tensor(timesteps).detach().to("cpu", torch.float32),
        model_input_scale=scale.float(),
        sample_coefs=band(full_a).float(),
        eps_coefs=band(full_b).float(),
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


# ------------------------------------------------------------------ applying a step


@dataclass
class StepRing:
    """Ring buffers of the last ``W`` samples and model outputs, on the loop's device."""

    samples: Tensor  # (W, *latent)
    outputs: Tensor

    @classmethod
    def allocate(cls, window: int, latent_shape: tuple[int, ...], device: torch.device,
                 dtype: torch.dtype = torch.float32) -> StepRing:
        shape = (window, *latent_shape[1:])
        return cls(torch.zeros(shape, device=device, dtype=dtype), torch.zeros(shape, device=device, dtype=dtype))

    def clear(self) -> None:
        self.samples.zero_()
        self.outputs.zero_()


@dataclass
class DeviceTables:
    """:class:`LinearStepTables` laid out for a step indexed by a device tensor."""

    timesteps: Tensor  # (N,)
    model_input_scale: Tensor  # (N,)
    sample_coefs: Tensor  # (N, W)
    eps_coefs: Tensor  # (N, W)
    write_slots: Tensor  # (N,) int64
    read_slots: Tensor  # (N, W) int64

    @classmethod
    def of(cls, tables: LinearStepTables, device: torch.device) -> DeviceTables:
        on = tables.to(device)
        return cls(on.timesteps, on.model_input_scale, on.sample_coefs, on.eps_coefs,
                   tables.write_slots.to(device), tables.read_slots.to(device))


def scheduler_step(tables: DeviceTables, ring: StepRing, index: Tensor, sample: Tensor, output: Tensor) -> Tensor:
    """``x_{i+1}`` for ``i = index`` (a (1,) int64 tensor on the tables' device); no host sync.

    Records ``sample`` (1, ...) and ``output`` (1, ...) in the ring, then combines the window.
    """
    slot = tables.write_slots.index_select(0, index)
    ring.samples.index_copy_(0, slot, sample)
    ring.outputs.index_copy_(0, slot, output)
    read = tables.read_slots.index_select(0, index).view(-1)
    broadcast = (-1,) + (1,) * (sample.dim() - 1)
    a = tables.sample_coefs.index_select(0, index).view(broadcast)
    b = tables.eps_coefs.index_select(0, index).view(broadcast)
    return ((a * ring.samples.index_select(0, read)).sum(0, keepdim=True)
            + (b * ring.outputs.index_select(0, read)).sum(0, keepdim=True))


class TableStepper:
    """A linear scheduler's update from its tables, as host scalars: the lean eager step.

    Same arithmetic as :func:`scheduler_step`, but an eager CPU step pays for every
    operator it launches (a few microseconds each, which is the whole per-step cost
    outside the network on small models): it reads Python floats, keeps the history
    by reference and skips terms whose coefficient is zero (50 aten ops a step against
    diffusers PNDM's ~90).
    """

    def __init__(self, tables: LinearStepTables) -> None:
        a, b = tables.sample_coefs.tolist(), tables.eps_coefs.tolist()
        self.model_input_scale = tables.model_input_scale.tolist()
        self.terms = [[(lag, a[i][lag], b[i][lag]) for lag in range(tables.window) if a[i][lag] or b[i][lag]]
                      for i in range(len(tables))]
        self.samples: list[Tensor] = []
        self.outputs: list[Tensor] = []

    def scale_model_input(self, batch: Tensor, i: int, t: Tensor) -> Tensor:
        scale = self.model_input_scale[i]
        return batch if scale == 1.0 else batch * scale

    def step(self, i: int, t: Tensor, sample: Tensor, output: Tensor) -> Tensor:
        """``x_{i+1}`` from the histories (s_k / e_k for k <= i)."""
        self.samples.append(sample)
        self.outputs.append(output)
        x: Tensor | None = None
        for lag, a, b in self.terms[i]:
            s, e = self.samples[i - lag], self.outputs[i - lag]
            x = torch.mul(s, a) if x is None else x.add_(s, alpha=a)
            x.add_(e, alpha=b)
        return x if x is not None else torch.zeros_like(sample)


class SchedulerStepper:
    """diffusers' own ``scheduler.step``: the reference, and the only way for schedulers that draw noise."""

    def __init__(self, scheduler: Any, generator: torch.Generator, eta: float) -> None:
        from mvg_rt.runtime.pipelines.schedulers import step_kwargs

        self.scheduler = scheduler
        self.extra = step_kwargs(scheduler, generator, eta)

    def scale_model_input(self, batch: Tensor, i: int, t: Tensor) -> Tensor:
        return self.scheduler.scale_model_input(batch, t)

    def step(self, i: int, t: Tensor, sample: Tensor, output: Tensor) -> Tensor:
        return self.scheduler.step(output, t, sample, **self.extra).prev_sample
