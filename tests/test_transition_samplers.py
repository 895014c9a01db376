"""Transition samplers (DDPM, DDIM, DPM-Solver++(2M), UniPC) as one table form, and the --transitions presets."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from mvg_rt.errors import MvgError
from mvg_rt.runtime.pipelines.gaussian_schedule import (SAMPLERS, RespacedSchedule, clip_schedule,
                                                        multistep_scheduler)
from mvg_rt.runtime.pipelines.transition import TRANSITION_PRESETS, TransitionSampler, TransitionSettings

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _apply(schedule, x: torch.Tensor, eps_of) -> torch.Tensor:
    """The table form, written out: x_{i+1} = sum_l A[i, l] x_{i-l} + B[i, l] eps_{i-l} (no noise)."""
    samples, outputs = [], []
    for i, t in enumerate(schedule.timesteps.tolist()):
        samples.append(x)
        outputs.append(eps_of(x, t))
        x = sum(schedule.sample_coefs[i, l] * samples[i - l] + schedule.eps_coefs[i, l] * outputs[i - l]
                for l in range(min(schedule.window, i + 1)))
    return x


@pytest.mark.parametrize("sampler", ["dpm++2m", "unipc"])
def test_multistep_tables_replay_the_diffusers_scheduler(sampler):
    """Same eps sequence fed to diffusers' stateful scheduler and to the tables: same trajectory."""
    steps = 12
    schedule = clip_schedule(sampler, steps)
    scheduler = multistep_scheduler(sampler, steps)
    assert schedule.timesteps.tolist() == RespacedSchedule.linear(steps).timesteps[::-1].tolist()
    generator = torch.Generator().manual_seed(0)
    noise = {t: torch.randn(2, 4, 3, 4, 4, generator=generator, dtype=torch.float64) for t in range(1000)}
    eps_of = lambda x, t: 0.3 * x + noise[t]  # noqa: E731  (depends on x, like a model)
    x0 = torch.randn(2, 4, 3, 4, 4, generator=generator, dtype=torch.float64)
    theirs = x0.float()
    for t in scheduler.timesteps:
        theirs = scheduler.step(eps_of(theirs.double(), int(t)).float(), t, theirs).prev_sample
    ours = _apply(schedule, x0, eps_of)
    assert torch.allclose(ours.float(), theirs, rtol=1e-4, atol=1e-4)


def test_unipc_sigmas_are_dpm_solvers_for_the_same_custom_timesteps():
    dpm, unipc = multistep_scheduler("dpm++2m", 20), multistep_scheduler("unipc", 20)
    assert torch.equal(dpm.timesteps, unipc.timesteps)
    assert torch.allclose(dpm.sigmas, unipc.sigmas, rtol=1e-6)


@pytest.mark.parametrize("sampler", ["ddim", "dpm++2m", "unipc"])
def test_ode_samplers_land_on_the_data_point_an_oracle_denoiser_knows(sampler):
    """For data that is one point x0, the x0 prediction is exact at every step, so every deterministic
    solver of the probability-flow ODE ends at x0 whatever its order (an independent check of the tables)."""
    schedule = clip_schedule(sampler, 10)
    abar = torch.from_numpy(np.cumprod(1 - np.linspace(1e-4, 0.02, 1000)))
    x0 = torch.randn(64, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    eps_of = lambda x, t: (x - abar[t].sqrt() * x0) / (1 - abar[t]).sqrt()  # noqa: E731
    x_t = torch.randn(64, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    assert torch.allclose(_apply(schedule, x_t, eps_of), x0, atol=1e-4)


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_v_tables_follow_the_epsilon_trajectory_of_the_same_denoiser(sampler):
    """A v denoiser is an epsilon denoiser written differently (eps = sqrt(abar) v + sqrt(1 - abar) x):
    the folded tables over its v must visit the very samples the epsilon tables visit over its epsilon."""
    steps = 8
    abar = torch.from_numpy(np.cumprod(1 - np.linspace(1e-4, 0.02, 1000)))
    generator = torch.Generator().manual_seed(3)
    offset = {t: torch.randn(32, generator=generator, dtype=torch.float64) for t in range(1000)}
    eps_of = lambda x, t: torch.tanh(0.7 * x) + 0.2 * offset[t]  # noqa: E731  (any model; depends on x)
    v_of = lambda x, t: (eps_of(x, t) - (1 - abar[t]).sqrt() * x) / abar[t].sqrt()  # noqa: E731
    x_t = torch.randn(32, dtype=torch.float64, generator=generator)
    on_eps, on_v = clip_schedule(sampler, steps), clip_schedule(sampler, steps, prediction_type="v_prediction")
    assert torch.equal(on_v.noise_scale, on_eps.noise_scale) and torch.equal(on_v.timesteps, on_eps.timesteps)
    assert torch.allclose(_apply(on_v, x_t, v_of), _apply(on_eps, x_t, eps_of), rtol=1e-9, atol=1e-9)


def test_an_unknown_prediction_type_is_refused():
    with pytest.raises(ValueError, match="v_prediction"):
        clip_schedule("ddim", 5, prediction_type="sample")


def test_every_sampler_draws_only_its_documented_random_numbers(tiny_runtime, image_64):
    """Deterministic samplers draw nothing after the initial noise; DDPM one draw per step but the last."""
    start = torch.from_numpy(image_64)
    end = start.flip(1).contiguous()
    states = {}
    with torch.no_grad():
        for sampler in SAMPLERS:
            generator = torch.Generator().manual_seed(0)
            transition = TransitionSampler(tiny_runtime.backend, tiny_runtime.model,
                                           TransitionSettings(frames=4, steps=3, sampler=sampler), "p")
            latents = transition.sample_latents(start, end, generator)
            assert torch.isfinite(latents).all()
            states[sampler] = generator.get_state()
    assert torch.equal(states["ddim"], states["dpm++2m"]) and torch.equal(states["ddim"], states["unipc"])
    generator = torch.Generator().manual_seed(0)
    generator.set_state(states["ddim"])
    for _ in range(2):  # DDPM: 3 steps, noise after the first 2
        torch.randn((1, 4, 4, 8, 8), generator=generator)
    assert torch.equal(generator.get_state(), states["ddpm"])


def test_presets_and_overrides():
    assert TransitionSettings().preset == "paper" and TransitionSettings().to_dict()["preset"] == "paper"
    fast = TransitionSettings.from_preset("fast")
    assert (fast.sampler, fast.steps) == TRANSITION_PRESETS["fast"] and fast.to_dict()["preset"] == "fast"
    custom = TransitionSettings.from_preset("fast", steps=3)
    assert custom.sampler == TRANSITION_PRESETS["fast"][0] and custom.steps == 3 and custom.preset is None
    with pytest.raises(MvgError, match="--transitions must be one of"):
        TransitionSettings.from_preset("slow")


@pytest.mark.parametrize("sampler", ["dpm++2m", "unipc"])
def test_multistep_samplers_are_accepted_with_cuda_graphs(tmp_path, tiny_model_dir, image_64, run_cli, sampler):
    """--transitions fast (and any sampler) with --cuda-graphs: on a CPU the only refusal is the missing device."""
    Image.fromarray(image_64).save(tmp_path / "x.png")
    code, _, err = run_cli(["simulate", "--model-dir", str(tiny_model_dir), "--image", str(tmp_path / "x.png"),
                            "--prompt", "p", "--transitions", "fast", "--transition-sampler", sampler,
                            "--cuda-graphs", "--out", str(tmp_path / "out")])
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "--cuda-graphs needs a CUDA device" in err and sampler not in err


def test_cli_choices_match_the_pipeline():
    from mvg_rt.cli import simulate

    choices = {p.name: list(p.type.choices) for p in simulate.params if hasattr(p.type, "choices")}
    assert choices["transition_sampler"] == list(SAMPLERS)
    assert choices["transitions"] == list(TRANSITION_PRESETS)


def _simulate(tmp_path, tiny_model_dir, image_64, run_cli, *extra: str) -> dict:
    Image.fromarray(image_64).save(tmp_path / "x.png")
    out = tmp_path / "run"
    code, _, err = run_cli(["simulate", "--model-dir", str(tiny_model_dir), "--image", str(tmp_path / "x.png"),
                            "--prompt", "p", "--roi-box", "16,16,48,48", "--resolution", "32", "--rounds", "1",
                            "--steps", "2", "--strength", "0.5", "--frames", "3", *extra, "--out", str(out)])
    assert code == 0, err
    return json.loads((out / "run.json").read_text())["transition"]


@pytest.mark.parametrize("preset", list(TRANSITION_PRESETS))
def test_every_preset_runs_end_to_end(tmp_path, tiny_model_dir, image_64, run_cli, preset):
    transition = _simulate(tmp_path, tiny_model_dir, image_64, run_cli, "--transitions", preset)
    sampler, steps = TRANSITION_PRESETS[preset]
    assert (transition["preset"], transition["sampler"], transition["steps"]) == (preset, sampler, steps)


def test_presets_parse_at_the_cli_edge_and_beat_the_demo_settings():
    from click.testing import CliRunner

    from mvg_rt.cli import simulate
    from mvg_rt.commands.simulate import simulation_request

    def request(*args: str):
        context = simulate.make_context("simulate", list(args))
        explicit = {name for name in context.params
                    if context.get_parameter_source(name).name != "DEFAULT"}
        return simulation_request(dict(context.params), explicit).options.transition

    with CliRunner().isolation():
        assert request("--model-dir", ".").preset == "paper"  # the default: SEINE's DDPM-250
        assert (request("--model-dir", ".").sampler, request("--model-dir", ".").steps) == ("ddpm", 250)
        assert request("--transitions", "fast").preset == "fast"  # demo model: the preset wins over its settings
        assert request().preset is None  # demo model, no preset asked: the demo case's own sampler settings


def test_explicit_sampler_options_override_the_preset(tmp_path, tiny_model_dir, image_64, run_cli):
    transition = _simulate(tmp_path, tiny_model_dir, image_64, run_cli, "--transitions", "fast",
                           "--transition-sampler", "unipc", "--transition-steps", "2")
    assert (transition["preset"], transition["sampler"], transition["steps"]) == (None, "unipc", 2)
