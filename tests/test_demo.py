"""The shipped demo model: PIE on the bundled phantom really progresses the disease.

These tests run the trained weights in ``mvg_rt/demo/weights`` on the bundled case
(an unseen patient with a normal heart, its heart ROI, "severe cardiomegaly").
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from mvg_rt.demo.default import DEMO_CASE, DEMO_WEIGHTS
from mvg_rt.eval.metrics import psnr
from mvg_rt.eval.progression import evaluate_states
from mvg_rt.io.images import read_image, resize_and_crop
from mvg_rt.io.masks import choose_mask
from mvg_rt.runtime.pipelines.latents import images_to_model_range, model_range_to_images, posterior_sample
from mvg_rt.runtime.pipelines.pie import PieSession, PieSettings, run_pie
from mvg_rt.runtime.pipelines.roi import latent_mask
from mvg_rt.runtime.pipelines.transition import TransitionSampler, TransitionSettings

pytestmark = pytest.mark.skipif(not (DEMO_WEIGHTS / "model_index.json").is_file(),
                                reason="the demo weights are not installed (mvg-rt train-demo writes them)")
RESOLUTION = 128
ROUNDS = 6


@pytest.fixture(scope="module")
def demo_runtime():
    from mvg_rt.runtime.factory import torch_runtime

    return torch_runtime(DEMO_WEIGHTS)


@pytest.fixture(scope="module")
def case() -> tuple[np.ndarray, np.ndarray]:
    """The case at model resolution: (image (R, R, 3) uint8, ROI mask pixels (R, R, 3) uint8)."""
    image = read_image(DEMO_CASE.image).pixels
    roi = choose_mask(image.shape, RESOLUTION, mask_path=str(DEMO_CASE.mask))
    return resize_and_crop(image, RESOLUTION), roi.pixels


def _pie(runtime, case, settings: PieSettings, seed: int = 0) -> list[np.ndarray]:
    image, roi = case
    mask = latent_mask(torch.from_numpy(roi), runtime.model.vae_scale_factor, runtime.model.latent_channels)
    session = PieSession(runtime.backend, runtime.model, settings, torch.from_numpy(image), mask, DEMO_CASE.prompt)
    return [s.numpy() for s in run_pie(session, torch.Generator().manual_seed(seed))]


@pytest.fixture(scope="module")
def progression(demo_runtime, case) -> dict:
    states = _pie(demo_runtime, case, PieSettings(rounds=ROUNDS))
    return evaluate_states(states, case[1][..., 0] / 255.0) | {"states": states}


def test_ctr_rises_monotonically_from_normal_to_cardiomegaly(progression):
    ctr = progression["ctr"]
    assert ctr is not None, progression.get("ctr_unavailable")
    assert ctr[0] < 0.5, ctr  # the input is a normal heart
    assert ctr[-1] > 0.5, ctr  # the simulation ends in cardiomegaly
    assert progression["ctr_monotone"], ctr


def test_identity_outside_the_roi_is_kept(progression):
    assert min(progression["ssim_outside_roi"]) >= 0.9, progression["ssim_outside_roi"]


def test_per_round_change_shrinks_after_the_first_rounds(progression):
    inside = [c["inside_roi"] for c in progression["round_change"]]
    assert progression["change_shrinks_from_round"] is not None and progression["change_shrinks_from_round"] <= 3, \
        inside
    assert inside[-1] < inside[0]
