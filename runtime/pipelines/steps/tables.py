"""The one table type every denoising schedule becomes: a linear step over a short history.

Every sampler mvg-rt runs without drawing noise inside the scheduler (PIE's
deterministic diffusers schedulers, SEINE's DDPM and DDIM, DPM-Solver++(2M) and
UniPC) is, at step ``i``,

    x_{i+1} = sum_l A[i, l] s_{i-l}  +  sum_l B[i, l] e_{i-l}  +  S[i] n_i        (l = 0 .. W-1)

where ``s_k`` is the sample the step was given (PIE replaces it outside the ROI
first, so it is not the previous step's output), ``e_k`` the (guided) model output
the denoiser returned for ``C[k] * s_k`` at timestep ``t_k``, and ``n_i`` fresh
standard noise (``S[i] = 0`` on the steps that draw none). ``W`` is the history
window: 1 for DDPM, DDIM and Euler, 2 for DPM-Solver++(2M), up to 4 for PLMS / LMS,
the whole history for UniPC. Two builders produce these tables: measured from
diffusers' own ``step`` (:mod:`.probe`) and closed-form guided-diffusion DDPM/DDIM
(:mod:`mvg_rt.runtime.pipelines.gaussian_schedule`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import Tensor

from mvg_rt.components import PREDICTION_TYPES


@dataclass(frozen=True)
class StepTables:
    """Per-step coefficients of one schedule over ``len(timesteps)`` steps, window ``W`` (rows: step order)."""

    sampler: str  # scheduler class or sampler name: messages and provenance
    timesteps: Tensor  # (N,) t_i, what the denoiser is fed
    model_input_scale: Tensor  # (N,) C[i]
    sample_coefs: Tensor  # (N, W) A[i, l]: weight of s_{i-l}
    eps_coefs: Tensor  # (N, W) B[i, l]: weight of e_{i-l} (epsilon, or whatever the denoiser outputs once folded)
    noise_scale: Tensor  # (N,) S[i]

    def __len__(self) -> int:
        return int(self.timesteps.shape[0])

    @property
    def window(self) -> int:
        return int(self.sample_coefs.shape[1])

    @property
    def noisy_steps(self) -> list[bool]:
        """Host-side, per step: whether it draws noise (so deciding needs no device sync)."""
        return (self.noise_scale != 0).tolist()

    @property
    def write_slots(self) -> Tensor:
        """(N,) int64: the ring-buffer slot step ``i`` writes its sample and model output to."""
        return torch.arange(len(self)) % self.window

    @property
    def read_slots(self) -> Tensor:
        """(N, W) int64: slot of ``s_{i-l}`` / ``e_{i-l}`` (coefficients are 0 where ``i - l < 0``)."""
        steps = torch.arange(len(self))[:, None] - torch.arange(self.window)[None, :]
        return steps % self.window

    def to(self, device: torch.device | str, dtype: torch.dtype = torch.float32) -> StepTables:
        move = lambda t: t.to(device=device, dtype=dtype)  # noqa: E731
        return replace(self, timesteps=move(self.timesteps), model_input_scale=move(self.model_input_scale),
                       sample_coefs=move(self.sample_coefs), eps_coefs=move(self.eps_coefs),
                       noise_scale=move(self.noise_scale))

    def over_model_output(self, prediction_type: str, alphas_cumprod: Tensor) -> StepTables:
        """The same schedule with B weighing the denoiser's own output (``epsilon``: unchanged).

        For v: eps_j = sqrt(abar_j) v_j + sqrt(1 - abar_j) s_j at step j = i - l, so
        A'[i, l] = A[i, l] + B[i, l] sqrt(1 - abar_j) and B'[i, l] = B[i, l] sqrt(abar_j)
        (``alphas_cumprod`` indexed by training timestep). Guidance commutes with the
        fold: it mixes two outputs for the same sample.
        """
        if prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"prediction type must be one of {', '.join(PREDICTION_TYPES)}, got {prediction_type!r}")
        if prediction_type == "epsilon":
            return self
        abar = alphas_cumprod.double()[self.timesteps.long()]  # (N,) per step
        rows, lags = torch.arange(len(self))[:, None], torch.arange(self.window)[None, :]
        source = (rows - lags).clamp(min=0)  # step j = i - l whose sample / output B[i, l] weighs
        b = self.eps_coefs.double()
        return replace(self, sample_coefs=self.sample_coefs.double() + b * (1 - abar[source]).sqrt(),
                       eps_coefs=b * abar[source].sqrt())
