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
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

TRAIN_STEPS = 1000
BETA_START, BETA_END = 1e-4, 2e-2
SAMPLERS = ("ddpm", "ddim")


def linear_betas(train_steps: int = TRAIN_STEPS) -> np.ndarray:
    """guided-diffusion's "linear" schedule, scaled so any step count spans the same noise range."""
    scale = 1000 / train_steps
    return np.linspace(scale * BETA_START, scale * BETA_END, train_steps, dtype=np.float64)


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
class StepTables:
    """Per sampling step (in sampling order, i.e. descending timesteps) ``x_prev = A x + B eps + S noise``."""

    timesteps: torch.Tensor  # (N,) original training timesteps fed to the denoiser
    a: torch.Tensor  # (N,) float64
    b: torch.Tensor
    s: torch.Tensor

    def __len__(self) -> int:
        return len(self.timesteps)


@dataclass(frozen=True)
class RespacedSchedule:
    """alphas_cumprod of the respaced chain and what follows from it (float64, ascending index)."""

    timesteps: np.ndarray  # kept training timesteps, ascending
    alphas_cumprod: np.ndarray

    @classmethod
    def linear(cls, steps: int, train_steps: int = TRAIN_STEPS) -> RespacedSchedule:
        timesteps = respaced_timesteps(train_steps, steps)
        alphas_cumprod = np.cumprod(1.0 - linear_betas(train_steps))[timesteps]
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
        return self._tables(a, b, s)

    def ddim_tables(self, eta: float = 0.0) -> StepTables:
        """DDIM (Song et al. Eq 12) with stochasticity ``eta``; eta = 0 is deterministic."""
        abar, abar_prev = self.alphas_cumprod, self.alphas_cumprod_prev
        sigma = eta * np.sqrt((1.0 - abar_prev) / (1.0 - abar)) * np.sqrt(1.0 - abar / abar_prev)
        a = np.sqrt(abar_prev / abar)
        b = np.sqrt(np.clip(1.0 - abar_prev - sigma**2, 0.0, None)) - np.sqrt(abar_prev) * np.sqrt(1.0 / abar - 1.0)
        sigma[0] = 0.0
        return self._tables(a, b, sigma)

    def tables(self, sampler: str, eta: float = 0.0) -> StepTables:
        if sampler == "ddpm":
            return self.ddpm_tables()
        if sampler == "ddim":
            return self.ddim_tables(eta)
        raise ValueError(f"sampler must be one of {SAMPLERS}, got {sampler!r}")

    def _tables(self, a: np.ndarray, b: np.ndarray, s: np.ndarray) -> StepTables:
        descending = slice(None, None, -1)
        # .copy(), not np.ascontiguousarray: a 1-step table reversed is "contiguous" yet keeps its negative stride
        as_tensor = lambda v: torch.from_numpy(v[descending].copy())  # noqa: E731
        return StepTables(torch.from_numpy(self.timesteps[descending].copy()), as_tensor(a), as_tensor(b),
                          as_tensor(s))
