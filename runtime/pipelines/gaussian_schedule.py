"""SEINE's sampling schedule: guided-diffusion's linear betas, respaced, as coefficient tables.

SEINE samples with OpenAI guided-diffusion: 1000-step linear betas (1e-4..0.02),
epsilon prediction, fixed-large variance, the chain respaced to N steps by
``space_timesteps``. Every sampler step, DDPM or DDIM, is then linear:

    x_prev = A[i] * x + B[i] * eps + S[i] * noise

so the whole schedule is three precomputed tables. That keeps the sampler free of
per-step host arithmetic (the form CUDA-graph capture needs) and makes each
coefficient checkable against the closed-form formulas. diffusers'
``DDPMScheduler`` with custom timesteps expresses the DDPM case exactly (the tests
use it as an independent check); its DDIM scheduler assumes a uniform stride of
``1000 // N`` and does not, hence this module.

The fast multistep ODE solvers, DPM-Solver++(2M) and UniPC (bh2, order 2, the
settings diffusers recommends for guided sampling), are diffusers' own schedulers
configured with the same 1000 linear betas and visiting the same respaced
timesteps (final step to sigma 0, so both end on a clean sample as DDPM does). They
are deterministic and linear in the samples and model outputs they were fed, so
:func:`mvg_rt.runtime.pipelines.steps.probe.probe_tables` measures them as tables
with a history window W: 2 for DPM-Solver++(2M) (the step uses the previous
model output and the previous sample's x0 prediction); the whole history for UniPC,
whose corrector refines the previous sample and feeds the corrected one forward, a
recursion that unrolls into a lower-triangular table (N(N+1)/2 terms: cheap at the
10-50 steps it is meant for). Every transition sampler is then one step form, a
:class:`~mvg_rt.runtime.pipelines.steps.tables.StepTables`:

    x_{i+1} = sum_l A[i, l] x_{i-l} + sum_l B[i, l] eps_{i-l} + S[i] noise      (l < W)

A denoiser that predicts v instead of epsilon (the demo SEINE does) needs no other
sampler: eps = sqrt(abar_t) v + sqrt(1 - abar_t) x_t is linear in the sample and the
output at the same step, so :meth:`~mvg_rt.runtime.pipelines.steps.tables.StepTables.over_model_output` folds it into A
and B, and the loop stays one linear step over whatever the model returns.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch
from diffusers import DPMSolverMultistepScheduler, UniPCMultistepScheduler

from mvg_rt.runtime.pipelines.steps.probe import probe_tables
from mvg_rt.runtime.pipelines.steps.tables import StepTables

TRAIN_STEPS = 1000
BETA_START, BETA_END = 1e-4, 2e-2
SAMPLERS = ("ddpm", "ddim", "dpm++2m", "unipc")
MULTISTEP = ("dpm++2m", "unipc")  # diffusers' multistep solvers, measured by probing (window W > 1)


def linear_betas(train_steps: int = TRAIN_STEPS) -> np.ndarray:
    """guided-diffusion's "linear" schedule, scaled so any step count spans the same noise range."""
    scale = 1000 / train_steps
    return np.linspace(scale * BETA_START, scale * BETA_END, train_steps, dtype=np.float64)


def linear_alphas_cumprod(train_steps: int = TRAIN_STEPS) -> np.ndarray:
    """abar_t = prod_{s <= t} (1 - beta_s) of the linear schedule, for every training timestep."""
    return np.cumprod(1.0 - linear_betas(train_steps))


def respaced_timesteps(train_steps: int, steps: int) -> np.ndarray:
    """The ``steps`` timesteps guided-diffusion's ``space_timesteps(train_steps, str(steps))`` keeps.

    One section: a fractional stride (train_steps - 1) / (steps - 1) from 0, rounded,
    so the first and last training timesteps are both kept. Ascending order.
    """
    if not 1 <= steps <= train_steps:
        raise ValueError(f"steps must be in [1, {train_steps}], got {steps}")
    stride = (train_steps - 1) / (steps - 1) if steps > 1 else 1
    taken, position = [], 0.0
    for _ in range(steps):
        taken.append(round(position))
        position += stride
    return np.array(sorted(set(taken)), dtype=np.int64)


@dataclass(frozen=True)
class RespacedSchedule:
    """alphas_cumprod of the respaced chain and what follows from it (float64, ascending index)."""

    timesteps: np.ndarray  # kept training timesteps, ascending
    alphas_cumprod: np.ndarray

    @classmethod
    def linear(cls, steps: int, train_steps: int = TRAIN_STEPS) -> RespacedSchedule:
        timesteps = respaced_timesteps(train_steps, steps)
        alphas_cumprod = linear_alphas_cumprod(train_steps)[timesteps]
        return cls(timesteps, alphas_cumprod)

    @property
    def alphas_cumprod_prev(self) -> np.ndarray:
        return np.append(1.0, self.alphas_cumprod[:-1])

    @property
    def betas(self) -> np.ndarray:
        """Respaced betas: 1 - abar_i / abar_{i-1} (what guided-diffusion's SpacedDiffusion builds)."""
        return 1.0 - self.alphas_cumprod / self.alphas_cumprod_prev

    @property
    def posterior_variance(self) -> np.ndarray:
        return self.betas * (1.0 - self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)

    @property
    def fixed_large_variance(self) -> np.ndarray:
        """guided-diffusion's FIXED_LARGE: beta_i, with the posterior variance at index 1 for index 0."""
        return np.append(self.posterior_variance[1] if len(self.betas) > 1 else self.betas[0], self.betas[1:])

    def ddpm_tables(self) -> StepTables:
        """Ancestral DDPM step: posterior mean from the predicted x0, fixed-large noise, none at index 0."""
        abar, abar_prev, betas = self.alphas_cumprod, self.alphas_cumprod_prev, self.betas
        coef_x0 = betas * np.sqrt(abar_prev) / (1.0 - abar)
        coef_xt = (1.0 - abar_prev) * np.sqrt(1.0 - betas) / (1.0 - abar)
        a = coef_x0 * np.sqrt(1.0 / abar) + coef_xt
        b = -coef_x0 * np.sqrt(1.0 / abar - 1.0)
        s = np.sqrt(self.fixed_large_variance)
        s[0] = 0.0
        return self._tables("ddpm", a, b, s)

    def ddim_tables(self, eta: float = 0.0) -> StepTables:
        """DDIM (Song et al. Eq 12) with stochasticity ``eta``; eta = 0 is deterministic."""
        abar, abar_prev = self.alphas_cumprod, self.alphas_cumprod_prev
        sigma = eta * np.sqrt((1.0 - abar_prev) / (1.0 - abar)) * np.sqrt(1.0 - abar / abar_prev)
        a = np.sqrt(abar_prev / abar)
        b = np.sqrt(np.clip(1.0 - abar_prev - sigma**2, 0.0, None)) - np.sqrt(abar_prev) * np.sqrt(1.0 / abar - 1.0)
        sigma[0] = 0.0
        return self._tables("ddim", a, b, sigma)

    def tables(self, sampler: str, eta: float = 0.0) -> StepTables:
        if sampler == "ddpm":
            return self.ddpm_tables()
        if sampler == "ddim":
            return self.ddim_tables(eta)
        raise ValueError(f"single-step tables exist for ddpm and ddim, got {sampler!r}")

    def _tables(self, sampler: str, a: np.ndarray, b: np.ndarray, s: np.ndarray) -> StepTables:
        """Rows in sampling order (descending timesteps); window 1; SEINE is fed x itself (C = 1)."""
        # .copy(), not np.ascontiguousarray: a 1-step table reversed is "contiguous" yet keeps its negative stride
        descending = lambda v: torch.from_numpy(v[::-1].copy())  # noqa: E731
        return StepTables(sampler, descending(self.timesteps), torch.ones(len(a), dtype=torch.float64),
                          descending(a)[:, None], descending(b)[:, None], descending(s))


def clip_schedule(sampler: str, steps: int, eta: float = 0.0, prediction_type: str = "epsilon") -> StepTables:
    """The tables of ``sampler`` over the linear schedule respaced to ``steps`` (see the module docstring),
    over a denoiser whose output is ``prediction_type``."""
    if sampler in MULTISTEP:
        tables = multistep_tables(sampler, steps)
        tables = replace(tables, sampler=sampler, timesteps=tables.timesteps.round().long())
    else:
        tables = RespacedSchedule.linear(steps).tables(sampler, eta)
    return tables.over_model_output(prediction_type, torch.from_numpy(linear_alphas_cumprod()))


def multistep_scheduler(sampler: str, steps: int) -> DPMSolverMultistepScheduler | UniPCMultistepScheduler:
    """diffusers' scheduler for ``sampler``, on SEINE's betas, set to the respaced timesteps (descending).

    DPM-Solver++ takes custom timesteps through ``set_timesteps(timesteps=...)``. UniPC
    has no such argument (0.42), so it is set to ``steps`` steps and its ``timesteps`` /
    ``sigmas`` are replaced by the respaced ones, computed as its own ``set_timesteps``
    computes them for the default sigmas: sigma_t = sqrt((1 - abar_t) / abar_t), then a
    final 0. A test checks these equal DPM-Solver++'s.
    """
    timesteps = respaced_timesteps(TRAIN_STEPS, steps)[::-1].copy()
    common = {"num_train_timesteps": TRAIN_STEPS, "trained_betas": linear_betas(), "prediction_type": "epsilon",
              "solver_order": 2, "lower_order_final": True, "final_sigmas_type": "zero", "thresholding": False}
    if sampler == "dpm++2m":
        dpm = DPMSolverMultistepScheduler(algorithm_type="dpmsolver++", solver_type="midpoint", **common)
        dpm.set_timesteps(timesteps=timesteps.tolist())
        return dpm
    if sampler == "unipc":
        unipc = UniPCMultistepScheduler(predict_x0=True, solver_type="bh2", **common)
        unipc.set_timesteps(len(timesteps))  # resets the solver state
        abar = unipc.alphas_cumprod.numpy()[timesteps]
        sigmas = np.append(np.sqrt((1 - abar) / abar), 0.0).astype(np.float32)
        unipc.sigmas = torch.from_numpy(sigmas)
        unipc.timesteps = torch.from_numpy(timesteps)
        return unipc
    raise ValueError(f"multistep sampler must be one of {MULTISTEP}, got {sampler!r}")


def multistep_tables(sampler: str, steps: int) -> StepTables:
    """The measured (A, B) tables of a diffusers multistep scheduler over the respaced schedule."""

    def fresh() -> tuple[DPMSolverMultistepScheduler | UniPCMultistepScheduler, torch.Tensor]:
        scheduler = multistep_scheduler(sampler, steps)
        return scheduler, scheduler.timesteps

    tables = probe_tables(fresh)
    if not bool((tables.model_input_scale == 1).all()):  # SEINE is fed x itself
        raise ValueError(f"{tables.scheduler} scales its model input; the transition loop does not")
    return tables
