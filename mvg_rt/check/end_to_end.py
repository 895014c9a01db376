"""End-to-end parity: the same short PIE run (and transition clip) on two runtimes, same seed.

The input is a synthetic smooth image at the model's default resolution with an
elliptic, feathered ROI, so the check needs no files. Every state (and every
transition frame) of the candidate is compared with the reference's by PSNR and
SSIM (:mod:`mvg_rt.eval.metrics`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from mvg_rt.check.tolerances import END_TO_END
from mvg_rt.components import SEINE
from mvg_rt.eval.metrics import psnr, ssim
from mvg_rt.runtime.pipelines.pie import PieSettings, pie_session, run_pie
from mvg_rt.runtime.pipelines.transition import TransitionSettings, transition_sampler

PROMPT = "severe cardiomegaly"


@dataclass
class FrameResult:
    stage: str  # "pie" or "transition"
    index: int  # state index (0 = input) or frame index of the clip
    psnr_db: float
    ssim: float
    limit_psnr_db: float
    limit_ssim: float
    passed: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def synthetic_case(resolution: int) -> tuple[np.ndarray, np.ndarray]:
    """(image (H, W, 3), roi (H, W) gray) uint8: a smooth chest-like gradient and a feathered ellipse."""
    from mvg_rt.io.masks import mask_from_ellipse

    y, x = np.mgrid[0:resolution, 0:resolution] / max(resolution - 1, 1)
    gray = 0.45 + 0.3 * np.sin(3.1 * x) * np.cos(2.3 * y) + 0.15 * np.exp(-((x - 0.55) ** 2 + (y - 0.6) ** 2) / 0.05)
    image = (np.stack([gray, gray, gray], axis=2).clip(0, 1) * 255).round().astype(np.uint8)
    r = resolution
    roi = mask_from_ellipse(f"{r * 0.55},{r * 0.6},{r * 0.25},{r * 0.2}", image.shape, r, feather=r / 16)
    return image, np.array(roi.pixels)


def pie_states(runtime: Any, image: np.ndarray, roi: np.ndarray, settings: PieSettings, seed: int) -> list[np.ndarray]:
    session = pie_session(runtime.backend, runtime.model, settings, image, roi, PROMPT)
    states = run_pie(session, torch.Generator().manual_seed(seed))
    return [s.cpu().numpy() for s in states]


def transition_frames(runtime: Any, start: np.ndarray, end: np.ndarray, roi: np.ndarray, seed: int,
                      frames: int, steps: int) -> list[np.ndarray]:
    """One transition clip between two states (the hook for the SEINE stage)."""
    settings = TransitionSettings(frames=frames, steps=steps)
    sampler = transition_sampler(runtime.backend, runtime.model, settings, PROMPT)
    weight = torch.from_numpy(roi.astype(np.float32) / 255.0)
    clip = sampler.clip(torch.from_numpy(start), torch.from_numpy(end), weight, torch.Generator().manual_seed(seed))
    return [f.numpy() for f in clip.cpu()]


def _compare(stage: str, reference: list[np.ndarray], candidate: list[np.ndarray], precision: str) -> list[FrameResult]:
    tolerance = END_TO_END[precision]
    results = []
    for index, (a, b) in enumerate(zip(reference, candidate)):
        p, s = psnr(a, b), ssim(a, b)
        results.append(FrameResult(stage, index, p, s, tolerance.psnr_db, tolerance.ssim,
                                   p >= tolerance.psnr_db and s >= tolerance.ssim))
    return results


def check_end_to_end(reference: Any, candidate: Any, resolution: int, settings: PieSettings, seed: int,
                     precision: str, transition_frames_count: int = 5, transition_steps: int = 3) -> list[FrameResult]:
    """PSNR/SSIM of every PIE state, then of every frame of one transition clip when both have SEINE."""
    image, roi = synthetic_case(resolution)
    ref_states = pie_states(reference, image, roi, settings, seed)
    cand_states = pie_states(candidate, image, roi, settings, seed)
    results = _compare("pie", ref_states, cand_states, precision)
    both_have_seine = all(SEINE.name in r.backend.components for r in (reference, candidate))
    if both_have_seine:
        # Both clips start from the reference's states, so the clip comparison isolates SEINE + VAE.
        ref_clip = transition_frames(reference, ref_states[0], ref_states[1], roi, seed, transition_frames_count,
                                     transition_steps)
        cand_clip = transition_frames(candidate, ref_states[0], ref_states[1], roi, seed, transition_frames_count,
                                      transition_steps)
        results += _compare("transition", ref_clip, cand_clip, precision)
    return results
