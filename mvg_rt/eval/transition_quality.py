"""How good is a transition clip? Measures on its frames, for cases where the truth is known.

A transition clip between two PIE states (MVG Eq 9-10) should carry the anatomy inside
the ROI from the first state to the second, steadily, and leave the rest of the image
alone. On chest X-ray phantoms with cardiomegaly the cardiothoracic ratio (CTR) is the
known quantity that moves, so a clip of K frames is scored by:

(a) the CTR of every frame (:mod:`mvg_rt.eval.ctr`) against the straight line between
    the two states' CTRs, ``line[k] = ctr(start) + (ctr(end) - ctr(start)) k / (K - 1)``:
    ``ctr_monotone_fraction``, the fraction of the K - 1 steps that move in the line's
    direction (a dip within ``MONOTONE_TOLERANCE``, the measurement noise, still counts),
    and ``ctr_max_deviation``, ``max_k |ctr[k] - line[k]|``;
(b) the frame-to-frame change inside the ROI, ``d_k = mean_ROI |f_{k+1} - f_k|`` (grey
    levels, ROI-weighted): its mean, ``jerkiness = max_k d_k / mean_k d_k`` (1 for an
    even morph) and ``path_ratio = sum_k d_k / mean_ROI |f_{K-1} - f_0|``, the distance
    travelled over the net change (1 when every pixel moves one way; a clip that wanders
    or flickers travels further);
(c) identity outside the ROI: PSNR and SSIM of each frame against the mean of the two
    states (what Eq 10 puts there), weighted by 1 - ROI; the worst frame is reported.

Frames and states are uint8 images; nothing here runs a model, so any backend's
output (or a synthetic clip) is scored the same way.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from mvg_rt.errors import MvgError
from mvg_rt.eval.ctr import measure_ctr
from mvg_rt.eval.metrics import ssim
from mvg_rt.eval.progression import MONOTONE_TOLERANCE

PSNR_CAP = 100.0  # dB reported for identical images (a finite number keeps means and JSON valid)


@dataclass(frozen=True)
class TransitionQuality:
    """The measures of one clip (see the module docstring); CTR fields are None if fewer than 2 frames read."""

    frames: int
    ctr: list[float | None]  # per frame; None where no CTR could be measured
    ctr_start: float | None  # of the start / end states themselves
    ctr_end: float | None
    ctr_monotone_fraction: float | None
    ctr_max_deviation: float | None
    change_mean: float  # grey levels per frame step, inside the ROI
    jerkiness: float
    path_ratio: float | None  # None when the clip's first and last frames are equal inside the ROI
    outside_psnr_min: float  # dB, capped at PSNR_CAP
    outside_ssim_min: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _grey(images: np.ndarray) -> np.ndarray:
    """(..., H, W, 3) or (..., H, W) uint8 -> (..., H, W) float64."""
    array = np.asarray(images, dtype=np.float64)
    return array.mean(axis=-1) if array.shape[-1] == 3 and array.ndim >= 3 else array


def _check(frames: np.ndarray, roi: np.ndarray, start: np.ndarray, end: np.ndarray) -> np.ndarray:
    """Validate shapes; returns the ROI as (H, W) float64 in [0, 1]."""
    if frames.dtype != np.uint8 or frames.ndim not in (3, 4) or frames.shape[0] < 3:
        raise MvgError(f"a clip is K >= 3 uint8 frames (K, H, W[, 3]); got {frames.dtype} {frames.shape}")
    size = frames.shape[1:3]
    for name, image in (("start state", start), ("end state", end)):
        if image.shape != frames.shape[1:]:
            raise MvgError(f"{name} is {image.shape} but the frames are {frames.shape[1:]}: pass the clip's own states")
    weight = np.asarray(roi, dtype=np.float64)
    if np.asarray(roi).dtype == np.uint8:
        weight = weight / 255.0
    if weight.ndim == 3:
        weight = weight[..., 0]
    if weight.shape != size or weight.min() < 0 or weight.max() > 1:
        raise MvgError(f"ROI must be (H, W) = {size} in [0, 1] (or uint8); got {np.shape(roi)}")
    if weight.sum() == 0 or weight.sum() == weight.size:
        raise MvgError("the ROI is empty or covers the whole image: the clip has no inside and outside to score")
    return weight


def _ctr_or_none(image: np.ndarray) -> float | None:
    try:
        return float(measure_ctr(image).ctr)
    except MvgError:
        return None


def _ctr_measures(ctr: list[float | None], start: float | None, end: float | None) -> tuple[float | None, float | None]:
    """(monotone fraction, max deviation from the line) over the frames whose CTR was measured."""
    measured = [(k, c) for k, c in enumerate(ctr) if c is not None]
    if start is None or end is None or len(measured) < 2:
        return None, None
    last = len(ctr) - 1
    line = {k: start + (end - start) * k / last for k, _ in measured}
    direction = 1.0 if end >= start else -1.0
    steps = [direction * (b - a) >= -MONOTONE_TOLERANCE for (_, a), (_, b) in zip(measured[:-1], measured[1:])]
    return sum(steps) / len(steps), max(abs(c - line[k]) for k, c in measured)


def _outside_identity(frames: np.ndarray, reference: np.ndarray, outside: np.ndarray) -> tuple[float, float]:
    """Worst frame's (PSNR, SSIM) against ``reference``, weighted by ``outside``."""
    psnrs, ssims = [], []
    channels = frames.shape[-1] if frames.ndim == 4 else 1
    weight = outside[..., None] if frames.ndim == 4 else outside
    for frame in frames.astype(np.float64):
        mse = float(((frame - reference) ** 2 * weight).sum() / (outside.sum() * channels))
        psnrs.append(PSNR_CAP if mse == 0 else min(PSNR_CAP, 10.0 * math.log10(255.0**2 / mse)))
        ssims.append(ssim(frame, reference, weight=outside))
    return min(psnrs), min(ssims)


def transition_quality(frames: np.ndarray, roi: np.ndarray, start: np.ndarray, end: np.ndarray) -> TransitionQuality:
    """Score a clip ``frames`` (K, H, W[, 3]) uint8 between the states ``start`` and ``end``.

    ``roi`` is (H, W) in [0, 1] (or uint8 0..255): 1 inside, where the clip may change.
    """
    frames = np.asarray(frames)
    weight = _check(frames, roi, np.asarray(start), np.asarray(end))
    ctr = [_ctr_or_none(frame) for frame in frames]
    ctr_start, ctr_end = _ctr_or_none(np.asarray(start)), _ctr_or_none(np.asarray(end))
    monotone, deviation = _ctr_measures(ctr, ctr_start, ctr_end)

    grey = _grey(frames)
    inside = lambda diff: float((np.abs(diff) * weight).sum() / weight.sum())  # noqa: E731
    changes = np.array([inside(b - a) for a, b in zip(grey[:-1], grey[1:])])
    mean_change = float(changes.mean())
    net = inside(grey[-1] - grey[0])
    reference = (np.asarray(start, dtype=np.float64) + np.asarray(end, dtype=np.float64)) / 2
    psnr_min, ssim_min = _outside_identity(frames, reference, 1.0 - weight)
    return TransitionQuality(
        frames=len(frames),
        ctr=[None if c is None else round(c, 4) for c in ctr],
        ctr_start=ctr_start,
        ctr_end=ctr_end,
        ctr_monotone_fraction=monotone,
        ctr_max_deviation=deviation,
        change_mean=mean_change,
        jerkiness=float(changes.max() / mean_change) if mean_change > 0 else 1.0,
        path_ratio=float(changes.sum() / net) if net > 0 else None,
        outside_psnr_min=psnr_min,
        outside_ssim_min=ssim_min,
    )
