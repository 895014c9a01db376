"""Scheduler steps as measured coefficient tables (steps.probe): they replay diffusers' own trajectories."""

from __future__ import annotations

import json
from importlib import resources

import pytest
import torch

from mvg_rt.errors import MvgError
from mvg_rt.runtime.pipelines.steps.probe import GRAPH_SCHEDULERS, pie_step_tables
from mvg_rt.runtime.pipelines.steps.steppers import TableStepper
from mvg_rt.runtime.pipelines.schedulers import SCHEDULERS, img2img_timesteps, make_scheduler, step_kwargs

SD14 = json.loads(resources.files("mvg_rt.models").joinpath("configs/sd14_scheduler.json").read_text())


def _model(x: torch.Tensor) -> torch.Tensor:
    """A stand-in denoiser that is non-linear in its input, so replay errors would compound."""
    return torch.sin(3 * x) + 0.1 * x


def _diffusers_trajectory(name, steps, strength, x0, refs, mask, config=SD14):
    """PIE's loop with diffusers' own scheduler: replace outside the ROI for i >= 1, scale, step."""
    scheduler = make_scheduler(config, name)
    scheduler.set_timesteps(steps)
    timesteps = img2img_timesteps(scheduler, steps, strength)
    x = x0.clone()
    for i, t in enumerate(timesteps):
        if i >= 1:
            x = refs[i:i + 1] * (1 - mask) + x * mask
        x = scheduler.step(_model(scheduler.scale_model_input(x, t)), t, x,
                           **step_kwargs(scheduler, torch.Generator(), 0.0)).prev_sample
    return x, len(timesteps)


def _table_trajectory(tables, x0, refs, mask):
    stepper = TableStepper(tables, tuple(x0.shape), torch.device("cpu"))
    x = x0.clone()
    for i in range(len(tables)):
        if i >= 1:
            x = refs[i:i + 1] * (1 - mask) + x * mask
        x = stepper.step(x, _model(stepper.model_input(x)))
    return x


WINDOWS = {None: 5, "ddim": 1, "euler": 1, "dpm-multistep": 2, "lms": 4}


@pytest.mark.parametrize("name, steps, strength", [
    (None, 50, 0.6),  # SD 1.4's PNDM at the paper's setting: 31 PLMS steps
    *[(name, 16, 0.75) for name in WINDOWS],
    ("dpm-multistep", 6, 1.0),  # few steps: lower-order final steps
])
def test_tables_replay_the_diffusers_trajectory(name, steps, strength):
    """Same inputs, same PIE-style ROI replacement: the tables land where diffusers' step lands."""
    generator = torch.Generator().manual_seed(1)
    tables = pie_step_tables(SD14, name, steps, strength)
    x0 = torch.randn(1, 4, 8, 8, generator=generator)
    refs = torch.randn(len(tables), 4, 8, 8, generator=generator)
    mask = (torch.rand(1, 4, 8, 8, generator=generator) > 0.5).float()
    expected, count = _diffusers_trajectory(name, steps, strength, x0, refs, mask)
    assert len(tables) == count
    got = _table_trajectory(tables, x0, refs, mask)
    scale = max(1.0, float(expected.abs().max()))
    assert float((got - expected).abs().max()) <= 1e-5 * scale
    assert tables.window <= WINDOWS[name]  # PNDM: the first PLMS step reuses s_0, later ones 4 model outputs


def test_known_coefficients():
    """DDIM eta 0 and Euler have closed forms: check the probe measured them (float32 accuracy)."""
    ddim = pie_step_tables(SD14, "ddim", 10, 1.0)
    scheduler = make_scheduler(SD14, "ddim")
    scheduler.set_timesteps(10)
    abar = scheduler.alphas_cumprod.double()
    t, t_prev = int(scheduler.timesteps[0]), int(scheduler.timesteps[1])
    a = (abar[t_prev] / abar[t]).sqrt()
    b = (1 - abar[t_prev]).sqrt() - (abar[t_prev] * (1 - abar[t]) / abar[t]).sqrt()
    assert torch.allclose(ddim.sample_coefs[0, 0].double(), a, rtol=1e-5)
    assert torch.allclose(ddim.eps_coefs[0, 0].double(), b, rtol=1e-5)
    assert torch.equal(ddim.model_input_scale, torch.ones(10))

    euler = pie_step_tables(SD14, "euler", 10, 1.0)
    scheduler = make_scheduler(SD14, "euler")
    scheduler.set_timesteps(10)
    sigmas = scheduler.sigmas.double()
    assert torch.allclose(euler.model_input_scale.double(), 1 / (sigmas[:-1] ** 2 + 1).sqrt(), rtol=1e-6)
    assert torch.allclose(euler.sample_coefs[:, 0].double(), torch.ones(10, dtype=torch.float64))
    assert torch.allclose(euler.eps_coefs[:, 0].double(), sigmas[1:] - sigmas[:-1], rtol=1e-5)


@pytest.mark.parametrize("name", ["ddpm", "euler-ancestral"])
def test_stochastic_schedulers_are_refused(name):
    with pytest.raises(MvgError, match="deterministic scheduler") as err:
        pie_step_tables(SD14, name, 10, 0.6)
    assert "\n" not in str(err.value) and "--scheduler" in str(err.value)


def test_ddim_with_eta_and_sde_dpm_are_refused():
    with pytest.raises(MvgError, match="DDIM with eta 0.5"):
        pie_step_tables(SD14, "ddim", 10, 0.6, eta=0.5)
    with pytest.raises(MvgError, match="sde-dpmsolver"):
        pie_step_tables(SD14 | {"algorithm_type": "sde-dpmsolver++"}, "dpm-multistep", 10, 0.6)


@pytest.mark.parametrize("name, extra", [("ddim", {"clip_sample": True}), ("dpm-multistep", {"thresholding": True})])
def test_configurations_that_are_not_linear_are_caught_by_probing(name, extra):
    """Not refused by name: the superposition check on the probe batch finds them."""
    with pytest.raises(MvgError, match="not linear in its inputs"):
        pie_step_tables(SD14 | extra, name, 10, 0.6)


def test_every_graph_scheduler_is_a_known_scheduler():
    assert set(GRAPH_SCHEDULERS) <= set(SCHEDULERS)
    assert {"ddpm", "euler-ancestral"} == set(SCHEDULERS) - set(GRAPH_SCHEDULERS)


def test_ring_slots_address_the_history():
    tables = pie_step_tables(SD14, "lms", 10, 1.0)
    w = tables.window
    assert tables.write_slots.tolist() == [i % w for i in range(10)]
    assert tables.read_slots[5].tolist() == [(5 - lag) % w for lag in range(w)]
    assert torch.all(tables.sample_coefs[0, 1:] == 0) and torch.all(tables.eps_coefs[0, 1:] == 0)
