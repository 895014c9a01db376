"""The respaced SEINE schedule against closed-form formulas and diffusers' DDPM scheduler."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mvg_rt.runtime.pipelines.gaussian_schedule import RespacedSchedule, respaced_timesteps


@pytest.mark.parametrize("steps", [1000, 250, 50, 7])
def test_respaced_timesteps_are_rounded_even_stride_with_both_ends(steps):
    expected = np.round(np.linspace(0, 999, steps)).astype(np.int64)
    got = respaced_timesteps(1000, steps)
    assert np.array_equal(got, expected)
    assert got[0] == 0 and got[-1] == 999 and len(got) == steps


def test_250_step_spacing_by_hand():
    got = respaced_timesteps(1000, 250)
    assert got[:5].tolist() == [0, 4, 8, 12, 16]  # stride 999/249 = 4.012...
    assert got[-3:].tolist() == [991, 995, 999]


def test_alphas_and_posterior_variance_from_formulas():
    schedule = RespacedSchedule.linear(250)
    t = schedule.timesteps
    betas_1000 = 1e-4 + (2e-2 - 1e-4) * np.arange(1000) / 999
    abar_1000 = np.array([np.prod(1 - betas_1000[: k + 1]) for k in range(1000)])
    assert np.allclose(schedule.alphas_cumprod, abar_1000[t], rtol=1e-12)
    for i in (1, 17, 249):
        beta = 1 - abar_1000[t[i]] / abar_1000[t[i - 1]]
        posterior = beta * (1 - abar_1000[t[i - 1]]) / (1 - abar_1000[t[i]])
        assert schedule.betas[i] == pytest.approx(beta, rel=1e-10)
        assert schedule.posterior_variance[i] == pytest.approx(posterior, rel=1e-10)
        assert schedule.fixed_large_variance[i] == pytest.approx(beta, rel=1e-10)
    assert schedule.fixed_large_variance[0] == pytest.approx(schedule.posterior_variance[1], rel=1e-12)


def test_ddpm_tables_match_diffusers_ddpm_with_custom_timesteps():
    from diffusers import DDPMScheduler

    schedule = RespacedSchedule.linear(50)
    tables = schedule.ddpm_tables()
    reference = DDPMScheduler(beta_schedule="linear", beta_start=1e-4, beta_end=0.02, variance_type="fixed_large",
                              clip_sample=False, prediction_type="epsilon")
    reference.set_timesteps(timesteps=tables.timesteps.tolist())
    x, eps = torch.randn(1, 4, 3, 4, 4, dtype=torch.float64), torch.randn(1, 4, 3, 4, 4, dtype=torch.float64)
    for i, t in enumerate(tables.timesteps.tolist()):
        theirs = reference.step(eps.float(), t, x.float(), generator=torch.Generator().manual_seed(i)).prev_sample
        noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(i))  # the draw diffusers makes
        ours = tables.sample_coefs[i, 0] * x + tables.eps_coefs[i, 0] * eps + tables.noise_scale[i] * noise.double()
        assert torch.allclose(ours.float(), theirs, atol=2e-5), t
    assert tables.noise_scale[-1] == 0  # no noise on the last step (t = 0)


@pytest.mark.parametrize("eta", [0.0, 0.5])
def test_ddim_tables_are_song_et_al_eq12(eta):
    schedule = RespacedSchedule.linear(25)
    tables = schedule.ddim_tables(eta)
    abar = schedule.alphas_cumprod[::-1]
    abar_prev = schedule.alphas_cumprod_prev[::-1]
    x, eps = torch.randn(8, dtype=torch.float64), torch.randn(8, dtype=torch.float64)
    for i in range(len(tables)):
        x0 = (x - np.sqrt(1 - abar[i]) * eps) / np.sqrt(abar[i])
        sigma = eta * np.sqrt((1 - abar_prev[i]) / (1 - abar[i])) * np.sqrt(1 - abar[i] / abar_prev[i])
        mean = np.sqrt(abar_prev[i]) * x0 + np.sqrt(1 - abar_prev[i] - sigma**2) * eps
        assert torch.allclose(tables.sample_coefs[i, 0] * x + tables.eps_coefs[i, 0] * eps, mean, rtol=1e-9, atol=1e-12)
        assert float(tables.noise_scale[i]) == pytest.approx(sigma if i < len(tables) - 1 else 0.0, abs=1e-15)
    assert tables.timesteps[0] == 999 and tables.timesteps[-1] == 0


def test_deterministic_ddim_recovers_x0_in_one_step_from_the_clean_limit():
    """With eps the true noise, DDIM from t to 0 returns x0 exactly (abar_prev = 1 at the end)."""
    schedule = RespacedSchedule.linear(2)
    tables = schedule.ddim_tables(0.0)
    x0, noise = torch.randn(16, dtype=torch.float64), torch.randn(16, dtype=torch.float64)
    abar_last = schedule.alphas_cumprod[0]  # the final step is from t=0 to "before 0"
    xt = np.sqrt(abar_last) * x0 + np.sqrt(1 - abar_last) * noise
    assert torch.allclose(tables.sample_coefs[-1, 0] * xt + tables.eps_coefs[-1, 0] * noise, x0, atol=1e-12)
