"""The shipped demo model: PIE on the bundled phantom really progresses the disease.

These tests run the trained weights in ``mvg_rt/demo/weights`` on the bundled case
(an unseen patient with a normal heart, its heart ROI, "severe cardiomegaly").
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from mvg_rt.demo.default import DEMO_CASE, DEMO_WEIGHTS
from mvg_rt.eval.ctr import noise_jitter
from mvg_rt.eval.metrics import psnr
from mvg_rt.eval.progression import evaluate_states, is_monotone
from mvg_rt.io.images import read_image, resize_and_crop
from mvg_rt.io.masks import choose_mask
from mvg_rt.runtime.pipelines.latents import images_to_model_range, model_range_to_images
from mvg_rt.runtime.pipelines.pie import PieSession, PieSettings, run_pie
from mvg_rt.runtime.pipelines.roi import latent_mask
from mvg_rt.runtime.pipelines.transition import TransitionSampler, TransitionSettings

pytestmark = pytest.mark.skipif(not (DEMO_WEIGHTS / "model_index.json").is_file(),
                                reason="the demo weights are not installed (mvg-rt train-demo writes them)")
RESOLUTION = 128


@pytest.fixture(scope="module")
def demo_runtime():
    from mvg_rt.runtime.factory import RuntimeSpec, open_runtime

    return open_runtime(RuntimeSpec(model_dir=DEMO_WEIGHTS))


@pytest.fixture(scope="module")
def case() -> tuple[np.ndarray, np.ndarray]:
    """The case at model resolution: (image (R, R, 3) uint8, ROI mask pixels (R, R) uint8 gray)."""
    image = read_image(DEMO_CASE.image).pixels
    roi = choose_mask(image.shape, RESOLUTION, mask_path=str(DEMO_CASE.mask))
    return resize_and_crop(image, RESOLUTION), roi.pixels


def _pie(runtime, case, settings: PieSettings, seed: int = 0) -> list[np.ndarray]:
    image, roi = case
    mask = latent_mask(torch.from_numpy(roi), runtime.model.vae_scale_factor, runtime.model.latent_channels)
    session = PieSession(runtime.backend, runtime.model, settings, torch.from_numpy(image), mask, DEMO_CASE.prompt)
    return [s.numpy() for s in run_pie(session, torch.Generator().manual_seed(seed))]


def _demo_settings(**overrides) -> PieSettings:
    """The demo case's PIE settings (what `mvg-rt simulate` with no arguments runs)."""
    case_settings = {k: v for k, v in DEMO_CASE.settings.items() if k in ("rounds", "strength")}
    return PieSettings(**(case_settings | overrides))


@pytest.fixture(scope="module")
def progression(demo_runtime, case) -> dict:
    states = _pie(demo_runtime, case, _demo_settings())
    return evaluate_states(states, case[1] / 255.0) | {"states": states}


RISING_ROUNDS = 6  # the CTR rises over the first rounds, then plateaus within the segmentation's noise


def test_ctr_rises_monotonically_from_normal_to_cardiomegaly(progression):
    """Short run (the first rounds): monotone from normal to cardiomegaly; the full run stays there."""
    ctr = progression["ctr"]
    assert ctr is not None, progression.get("ctr_unavailable")
    assert ctr[0] < 0.5, ctr  # the input is a normal heart
    assert is_monotone(ctr[: RISING_ROUNDS + 1]) and ctr[RISING_ROUNDS] > 0.5, ctr
    assert min(ctr[RISING_ROUNDS:]) > 0.5, ctr  # the simulation ends in cardiomegaly


def test_ctr_readout_is_stable_under_one_grey_level_of_noise(progression):
    """The yardstick's own resolution on the model's outputs (blurry borders, a heart resting on the diaphragm):
    +-1 grey level moved the whole-pixel readout by up to 0.085 (benchmarks/results/cpu-2core/ctr_noise.md)."""
    rng = np.random.default_rng(0)
    jitter = [noise_jitter(state, rng, draws=8) for state in progression["states"][1:]]
    assert max(jitter) <= 0.005, jitter


def test_identity_outside_the_roi_is_kept(progression):
    assert min(progression["ssim_outside_roi"]) >= 0.9, progression["ssim_outside_roi"]


def test_per_round_change_shrinks_after_the_first_rounds(progression):
    """Proposition 2 (convergence), as the demo shows it: the later rounds change the ROI less than the first ones.

    Per-round changes are noisy (each round re-draws texture), so this compares halves, not neighbours.
    """
    inside = [c["inside_roi"] for c in progression["round_change"]]
    half = len(inside) // 2
    assert np.mean(inside[half:]) < np.mean(inside[:half]), inside
    assert inside[-1] < inside[0], inside


@pytest.fixture(scope="module")
def demo_engines(tmp_path_factory: pytest.TempPathFactory):
    """The demo's PIE components exported to FP32 ONNX (a few seconds at the demo's size)."""
    from mvg_rt.components import PIE_COMPONENTS
    from mvg_rt.export.export_job import ExportRequest, export_engines

    out = tmp_path_factory.mktemp("demo_engines") / "demo"
    export_engines(ExportRequest(model_dir=DEMO_WEIGHTS, out=out, with_seine=False, components=PIE_COMPONENTS))
    return out


def test_onnx_runtime_gives_the_same_ctr_trajectory(demo_engines, case, progression):
    from mvg_rt.runtime.factory import RuntimeSpec, open_runtime

    states = _pie(open_runtime(RuntimeSpec(backend="ort", engines_dir=demo_engines)), case, _demo_settings())
    ort_ctr = evaluate_states(states, case[1] / 255.0)["ctr"]
    assert ort_ctr is not None
    assert np.abs(np.array(ort_ctr) - np.array(progression["ctr"])).max() <= 0.01, (ort_ctr, progression["ctr"])


def _round_trip(runtime, image: np.ndarray) -> np.ndarray:
    """The trained VAE's round trip of ``image`` through the posterior mean (the bound PIE cannot beat)."""
    moments = runtime.backend.encode_images(images_to_model_range(torch.from_numpy(image)[None]))
    mean = moments[:, : moments.shape[1] // 2]
    return model_range_to_images(runtime.backend.decode_latents(mean))[0].numpy()


def _eroded(mask: np.ndarray, pixels: int) -> np.ndarray:
    """``mask`` (bool) shrunk by ``pixels``: the VAE's receptive field leaks across the ROI edge."""
    from scipy.ndimage import binary_erosion

    return binary_erosion(mask, iterations=pixels)


@torch.no_grad()
def test_beta1_zero_keeps_outside_the_roi_within_the_vae_round_trip(demo_runtime, case):
    image, roi = case
    outside = _eroded(roi == 0, 8)
    bound = psnr(_round_trip(demo_runtime, image)[outside], image[outside])
    state = _pie(demo_runtime, case, _demo_settings(rounds=1, beta1=0.0))[-1]
    assert psnr(state[outside], image[outside]) >= bound - 1.0, bound


@torch.no_grad()
def test_transition_endpoints_equal_the_states_within_the_vae_round_trip(demo_runtime, case, progression):
    start, end = (torch.from_numpy(s) for s in progression["states"][:2])
    settings = TransitionSettings(frames=4, steps=5, sampler="ddim")
    sampler = TransitionSampler(demo_runtime.backend, demo_runtime.model, settings, DEMO_CASE.prompt)
    roi = torch.from_numpy(case[1] / 255.0).float()
    clip = sampler.clip(start, end, roi, torch.Generator().manual_seed(0)).numpy()
    inside = roi.numpy() == 1  # outside the ROI every frame is the endpoints' mean (Eq 10)
    for frame, state in ((clip[0], start.numpy()), (clip[-1], end.numpy())):
        bound = psnr(_round_trip(demo_runtime, state)[inside], state[inside])
        assert psnr(frame[inside], state[inside]) >= bound - 1.0, (psnr(frame[inside], state[inside]), bound)


def test_int8_demo_unet_passes_check(demo_engines, demo_runtime, tmp_path, run_cli):
    """The trained demo UNet quantized (Q/DQ, calibrated on 2 demo phantoms' PIE inputs) passes ``mvg-rt check`` at
    the INT8 tolerances, end to end on ORT CPU. Its CTR trajectory against FP32 is a benchmark result
    (benchmarks/results/cpu-2core/int8.md: the 0.02 target is not met)."""
    import shutil

    from mvg_rt.calibration import CalibrationSettings, record_unet_feeds
    from mvg_rt.export.export_job import add_int8

    engines = tmp_path / "demo_int8"
    shutil.copytree(demo_engines, engines)
    add_int8(engines, record_unet_feeds(demo_runtime, CalibrationSettings(count=2)))
    code, out, err = run_cli(["check", "--engines", str(engines), "--precision", "int8", "--model-dir",
                              str(DEMO_WEIGHTS)])
    assert code == 0, out + err


@pytest.mark.parametrize("preset", ["demo default", "fast"])
def test_a_quick_demo_run_has_only_clips_that_meet_the_transition_standard(tmp_path, run_cli, preset):
    """The README's first command, 3 rounds instead of 10: every clip moves from its start state to its end
    state (mvg_rt/eval/transition_quality.py). The first demo SEINE failed this on every clip: its generated
    frames flashed to the prompt's prior, a saturated blob, 30-72 grey levels outside the endpoints' range;
    the v-prediction SEINE with 3,000 v steps passed the first two clips but not the third (path ratio 2.13)."""
    out = tmp_path / "demo"
    code, _, err = run_cli(["simulate", "--rounds", "3", "--out", str(out)]
                           + (["--transitions", preset] if preset == "fast" else []))
    assert code == 0, err
    transitions = json.loads((out / "run.json").read_text())["eval"]["transitions"]
    assert len(transitions["clips"]) == 3
    assert transitions["passing"] == 3, transitions["summary"]
    assert "warning" not in err
