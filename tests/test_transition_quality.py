"""The transition quality measure: phantom clips with known truth, a shuffled clip, a tiny-model clip."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mvg_rt.demo.phantom import DiseaseState, PatientAnatomy, render_phantom
from mvg_rt.errors import MvgError
from mvg_rt.eval.transition_quality import PSNR_CAP, transition_quality

pytestmark = pytest.mark.usefixtures("one_torch_thread")

FRAMES = 8


@pytest.fixture(scope="module")
def phantom_clip():
    """A perfect transition: the same patient rendered at cardiomegaly rising linearly 0.2 -> 0.9, composited
    as Eq 10 does (inside the ROI the frame, outside the mean of the two states)."""
    anatomy = PatientAnatomy.sample(np.random.default_rng(3))
    phantoms = [render_phantom(anatomy, DiseaseState(cardiomegaly=c), 128) for c in np.linspace(0.2, 0.9, FRAMES)]
    roi = np.clip(phantoms[0].heart_roi, 0, 1)
    start, end = phantoms[0].image, phantoms[-1].image
    mean = (start.astype(np.float64) + end.astype(np.float64)) / 2
    weight = roi[..., None] if start.ndim == 3 else roi
    frames = np.stack([np.round(weight * p.image + (1 - weight) * mean) for p in phantoms]).astype(np.uint8)
    return frames, roi, start, end, [p.ctr for p in phantoms]


def test_a_linear_morph_scores_near_the_ideal(phantom_clip):
    frames, roi, start, end, _ = phantom_clip
    q = transition_quality(frames, roi, start, end)
    assert q.frames == FRAMES and None not in q.ctr
    assert q.ctr_end > q.ctr_start + 0.05  # the heart grows
    assert q.ctr_monotone_fraction == 1.0
    assert q.ctr_max_deviation < 0.03
    assert q.path_ratio < 1.1  # every pixel moves one way
    assert q.jerkiness < 2.0
    assert q.outside_psnr_min > 45 and q.outside_ssim_min > 0.99


def test_a_shuffled_clip_scores_worse_on_every_measure(phantom_clip):
    frames, roi, start, end, _ = phantom_clip
    good = transition_quality(frames, roi, start, end)
    order = [0, 5, 2, 6, 1, 4, 3, 7]  # endpoints kept, middle shuffled
    bad = transition_quality(frames[order], roi, start, end)
    assert bad.ctr_monotone_fraction < good.ctr_monotone_fraction
    assert bad.ctr_max_deviation > good.ctr_max_deviation
    assert bad.path_ratio > 1.5 * good.path_ratio
    assert bad.jerkiness > good.jerkiness
    assert bad.change_mean > good.change_mean


def test_a_crossfade_is_even_and_direct():
    rng = np.random.default_rng(0)
    start, end = rng.integers(0, 256, (2, 32, 32)).astype(np.float64)
    roi = np.zeros((32, 32))
    roi[8:24, 8:24] = 1
    t = np.linspace(0, 1, FRAMES)[:, None, None]
    frames = np.round(roi * ((1 - t) * start + t * end) + (1 - roi) * (start + end) / 2).astype(np.uint8)
    q = transition_quality(frames, (roi * 255).astype(np.uint8), start.astype(np.uint8), end.astype(np.uint8))
    assert q.ctr_monotone_fraction is None and q.ctr_max_deviation is None  # not chest X-rays: no CTR
    assert q.jerkiness == pytest.approx(1.0, abs=0.05) and q.path_ratio == pytest.approx(1.0, abs=1e-9)
    assert q.outside_psnr_min > 50  # the endpoints' mean up to rounding


def test_bad_inputs_are_one_line_errors():
    frames = np.zeros((4, 32, 32), np.uint8)
    state = np.zeros((32, 32), np.uint8)
    roi = np.zeros((32, 32))
    roi[:8] = 1
    cases = [(frames[:2], roi, state, state), (frames.astype(np.float32), roi, state, state),
             (frames, roi, np.zeros((16, 16), np.uint8), state), (frames, roi[:8], state, state),
             (frames, np.zeros((32, 32)), state, state), (frames, roi * 2, state, state)]
    for args in cases:
        with pytest.raises(MvgError):
            transition_quality(*args)


@torch.no_grad()
def test_scores_a_tiny_model_clip(tiny_runtime, image_64):
    from mvg_rt.runtime.pipelines.transition import TransitionSampler, TransitionSettings

    start = torch.from_numpy(image_64)
    end = start.flip(1).contiguous()
    roi = torch.zeros(64, 64)
    roi[16:48, 16:48] = 1
    sampler = TransitionSampler(tiny_runtime.backend, tiny_runtime.model,
                                TransitionSettings(frames=4, steps=3, sampler="dpm++2m"), "p")
    clip = sampler.clip(start, end, roi, torch.Generator().manual_seed(0)).numpy()
    q = transition_quality(clip, roi.numpy(), start.numpy(), end.numpy())
    assert q.frames == 4 and q.change_mean > 0 and q.jerkiness >= 1.0
    assert q.path_ratio is None or q.path_ratio >= 1.0 - 1e-9
    assert PSNR_CAP >= q.outside_psnr_min > 50  # Eq 10 with a hard ROI: outside is the endpoints' mean, rounded
    assert set(q.to_dict()) >= {"ctr", "ctr_monotone_fraction", "jerkiness", "path_ratio", "outside_ssim_min"}
