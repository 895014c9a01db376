"""Is a transition clip a progression? An absolute standard, judged on the clip's own frames.

A transition clip between two PIE states (MVG Eq 9-10) should carry the anatomy inside
the ROI from its first frame to its last, steadily, and leave the rest of the image as
Eq 10 puts it: the mean of the two states. Each clip is judged against its own endpoints
and against what a progression is, never against another sampler or a seed spread (a
broken reference passes any relative test). Its endpoints are its first and last frames:
the two states after the VAE round trip, what the viewer sees where clips meet (in the
demo the VAE moves a state's CTR by up to 0.09, which is no fault of the transition).
The frames between them are the *generated* frames.

The standard, every threshold a named constant below with its reasons:

1. ROI-mean excursion: the ROI-weighted mean grey level of every generated frame lies
   within the endpoints' two means, give or take :data:`ROI_MEAN_TOLERANCE`; the worst
   excursion is reported in grey levels (0 inside). A frame that flashes to a saturated
   blob leaves the range by tens of grey levels.
2. Path ratio, ``sum_k d(f_k, f_{k+1}) / max(d(f_0, f_{K-1}), PATH_NOISE_FLOOR)`` with
   ``d`` the ROI-weighted mean absolute difference: the distance travelled over the
   distance between the endpoints, at most :data:`PATH_RATIO_MAX`. It is exactly 1 when
   every pixel moves one way from its start value to its end value (a crossfade, a
   growing heart, both at once, at any timing, even after rounding to 8 bits), and a
   clip that jumps away and back travels the excursion twice. The mean absolute
   difference, not the RMS: with RMS a moving border, which changes a new band of
   pixels at every step, travels up to sqrt(K - 1) times its net change, so an ideal
   heart growth would fail for a large change or a long clip.
3. No spikes: ``jerkiness``, the largest frame-to-frame step (same distance) over the
   mean step, at most :data:`JERKINESS_MAX` (1 for an even morph).
4. Heart size: the CTR (:func:`mvg_rt.eval.ctr.measure_ctr`) of every generated frame lies
   within the endpoints' CTRs give or take :data:`CTR_RESOLUTION`, and no frame-to-frame
   step goes back (against the endpoints' direction) by more than it. A frame whose CTR
   cannot be measured fails, unless neither endpoint's can be either (not a chest X-ray
   the readout reads): then the criterion does not apply.
5. Identity outside the ROI: every generated frame's PSNR against the mean of the two
   states, weighted by 1 - ROI, at least :data:`OUTSIDE_PSNR_MIN`.

Descriptive measures that other code reads are kept: ``change_mean`` (the mean step),
``outside_ssim_min``, and the CTR against the straight line between the two *states'*
CTRs (``ctr_monotone_fraction``: the fraction of steps that move the line's way, a dip
within :data:`CTR_RESOLUTION` counting; ``ctr_max_deviation``: the largest distance).

:func:`transition_quality` judges one clip; :func:`transitions_report` judges every clip of
a run's joined video (N clips of K frames sharing their endpoints: N (K - 1) + 1 frames,
state n at frame n (K - 1)). Frames and states are uint8 images; nothing here runs a
model, so any backend's output, or a synthetic clip, is judged the same way.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from itertools import pairwise
from typing import Any

import numpy as np

from mvg_rt.errors import MvgError
from mvg_rt.eval.ctr import measure_ctr
from mvg_rt.eval.metrics import ssim

PSNR_CAP = 100.0  # dB reported for identical images (a finite number keeps means and JSON valid)

#: Grey levels a generated frame's ROI mean may leave its endpoints' range by. The mean over
#: the ROI's pixels averages noise away: 8-bit rounding and the VAE move it by under 1 grey level
#: (the demo's endpoint frames against their states: 0.7 at most). 3 leaves room for a morph
#: that is not linear in intensity; the flashing demo clips leave the range by 8 to 72.
ROI_MEAN_TOLERANCE = 3.0

#: The most distance a clip may travel per unit of its net change. Any per-pixel monotone clip
#: has 1: ideal phantom sweeps at any severity change 1.00 after rounding, re-textured ones
#: 1.02-1.12 (texture and border meet in a few pixels). A clip that jumps by A away from its
#: endpoints and back has at least 2 A / net (the broken demo clips: 17 to 38). 2 leaves room
#: for the frame-to-frame noise of a generated clip (each step's decoder noise adds to the
#: path, not to the net).
PATH_RATIO_MAX = 2.0

#: Grey levels (ROI-weighted mean absolute difference) below which two endpoints count as the same
#: image: the path ratio's denominator, and K - 1 times the jerkiness's smallest mean step, so a
#: clip between two near-identical states is not judged on its decoder noise alone (consecutive
#: demo states differ by 4-20 grey levels inside the ROI).
PATH_NOISE_FLOOR = 3.0

#: The largest step over the mean step. An even morph has 1, an ease-in-out (smoothstep
#: timing) 1.5; a clip that holds and then jumps has K - 1 (7 at 8 frames) and one that flashes
#: away and back (two jumps) (K - 1) / 2. With K <= 4 a hold-then-jump is within 3: the path
#: ratio and the excursion still judge those clips.
JERKINESS_MAX = 3.0

#: The resolution the CTR readout is held to (0.01 under +-1 grey level of noise): the heart size
#: may leave its endpoints' range, or step back, by this much and still count as monotone.
CTR_RESOLUTION = 0.01

#: dB, weighted by 1 - ROI, against the mean of the two states. Eq 10 puts exactly that mean
#: outside the ROI, up to rounding (> 50 dB); only the soft ROI edge blends in the generated
#: frame, and an ideal clip changes little there (phantom sweeps: > 45 dB). A frame whose
#: change spills over the whole ROI, edge included, drops to 30-37 dB (the demo's flashes).
OUTSIDE_PSNR_MIN = 40.0


@dataclass(frozen=True)
class TransitionQuality:
    """The measures of one clip and its verdict (see the module docstring).

    Grey levels are 0..255 on the frames' channel mean; ``ctr_*`` criterion fields are None
    where the CTR criterion does not apply or (excursion and back step) could not be computed.
    """

    frames: int
    roi_mean: list[float]  # per frame, ROI-weighted
    roi_mean_excursion: float  # the worst generated frame's, beyond the endpoints' range (0 inside)
    change_mean: float  # mean frame-to-frame step inside the ROI (mean absolute difference, grey levels)
    path_ratio: float
    jerkiness: float
    ctr: list[float | None]  # per frame; None where no CTR could be measured
    ctr_excursion: float | None  # the worst generated frame's, beyond the endpoints' CTR range
    ctr_backstep: float | None  # the largest step against the endpoints' direction
    ctr_monotone: bool | None  # the heart-size criterion; None: it does not apply
    ctr_start: float | None  # of the start / end states themselves
    ctr_end: float | None
    ctr_monotone_fraction: float | None
    ctr_max_deviation: float | None
    outside_psnr_min: float  # dB, capped at PSNR_CAP; worst generated frame
    outside_ssim_min: float
    failures: list[str]  # one line per failed criterion, with its numbers

    @property
    def passed(self) -> bool:
        return not self.failures

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "passed": self.passed}


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


def _ctr_line(ctr: list[float | None], start: float | None, end: float | None) -> tuple[float | None, float | None]:
    """(monotone fraction, max deviation) against the line between the states' CTRs, on the measured frames."""
    measured = [(k, c) for k, c in enumerate(ctr) if c is not None]
    if start is None or end is None or len(measured) < 2:
        return None, None
    last = len(ctr) - 1
    line = {k: start + (end - start) * k / last for k, _ in measured}
    direction = 1.0 if end >= start else -1.0
    steps = [direction * (b - a) >= -CTR_RESOLUTION for (_, a), (_, b) in pairwise(measured)]
    return sum(steps) / len(steps), max(abs(c - line[k]) for k, c in measured)


def _excursion(values: list[float], first: float, last: float) -> float:
    """How far the worst of ``values`` lies outside [min(first, last), max(first, last)]; 0 inside."""
    low, high = min(first, last), max(first, last)
    return max(max(value - high, low - value, 0.0) for value in values)


def _ctr_criterion(ctr: list[float | None]) -> tuple[float | None, float | None, bool | None, str | None]:
    """(excursion, back step, passed, failure) of the heart-size criterion; all None when it does not apply."""
    if ctr[0] is None and ctr[-1] is None:
        return None, None, None, None
    if None in ctr:
        missing = sum(c is None for c in ctr)
        return None, None, False, f"heart size unknown: CTR not measured on {missing} of {len(ctr)} frames"
    values: list[float] = [c for c in ctr if c is not None]
    first, last = values[0], values[-1]
    direction = 1.0 if last >= first else -1.0
    # to 1e-6, far below the readout's resolution, so that floating-point error (0.52 - 0.51 > 0.01) decides nothing
    excursion = round(_excursion(values[1:-1], first, last), 6)
    backstep = round(max(0.0, *(direction * (a - b) for a, b in pairwise(values))), 6)
    problems = []
    if excursion > CTR_RESOLUTION:
        problems.append(f"CTR leaves the endpoints' {min(first, last):.3f}-{max(first, last):.3f} by {excursion:.3f}")
    if backstep > CTR_RESOLUTION:
        problems.append(f"steps back by {backstep:.3f}")
    failure = f"heart size not monotone ({' and '.join(problems)}; > {CTR_RESOLUTION:g})" if problems else None
    return excursion, backstep, failure is None, failure


def _steps(grey: np.ndarray, weight: np.ndarray) -> tuple[np.ndarray, float]:
    """ROI-weighted mean absolute difference of every frame-to-frame step, and between the first and last frames."""
    def distance(diff: np.ndarray) -> float:
        return float((np.abs(diff) * weight).sum() / weight.sum())

    return np.array([distance(b - a) for a, b in pairwise(grey)]), distance(grey[-1] - grey[0])


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


def _failures(excursion: float, path_ratio: float, jerkiness: float, ctr_failure: str | None,
              outside_psnr: float) -> list[str]:
    """The standard's verdict: one line per failed criterion, with its numbers."""
    checks = [
        (excursion > ROI_MEAN_TOLERANCE,
         f"ROI mean leaves the endpoints' range by {excursion:.0f} grey levels (> {ROI_MEAN_TOLERANCE:g})"),
        (path_ratio > PATH_RATIO_MAX, f"path ratio {path_ratio:.2f} > {PATH_RATIO_MAX:g}"),
        (jerkiness > JERKINESS_MAX, f"jerkiness {jerkiness:.2f} > {JERKINESS_MAX:g} (a spike)"),
        (ctr_failure is not None, ctr_failure or ""),
        (outside_psnr < OUTSIDE_PSNR_MIN, f"outside-ROI PSNR {outside_psnr:.1f} dB < {OUTSIDE_PSNR_MIN:g}"),
    ]
    return [text for failed, text in checks if failed]


def transition_quality(frames: np.ndarray, roi: np.ndarray, start: np.ndarray, end: np.ndarray) -> TransitionQuality:
    """Judge a clip ``frames`` (K, H, W[, 3]) uint8 between the states ``start`` and ``end``.

    ``roi`` is (H, W) in [0, 1] (or uint8 0..255): 1 inside, where the clip may change.
    """
    frames = np.asarray(frames)
    weight = _check(frames, roi, np.asarray(start), np.asarray(end))
    grey = _grey(frames)
    roi_mean = [float((image * weight).sum() / weight.sum()) for image in grey]
    excursion = _excursion(roi_mean[1:-1], roi_mean[0], roi_mean[-1])
    steps, net = _steps(grey, weight)
    path_ratio = float(steps.sum() / max(net, PATH_NOISE_FLOOR))
    jerkiness = float(steps.max() / max(steps.mean(), PATH_NOISE_FLOOR / len(steps)))

    ctr = [_ctr_or_none(frame) for frame in frames]
    ctr_excursion, ctr_backstep, ctr_monotone, ctr_failure = _ctr_criterion(ctr)
    ctr_start, ctr_end = _ctr_or_none(np.asarray(start)), _ctr_or_none(np.asarray(end))
    monotone_fraction, deviation = _ctr_line(ctr, ctr_start, ctr_end)

    reference = (np.asarray(start, dtype=np.float64) + np.asarray(end, dtype=np.float64)) / 2
    psnr_min, ssim_min = _outside_identity(frames[1:-1], reference, 1.0 - weight)
    return TransitionQuality(
        frames=len(frames),
        roi_mean=[round(m, 2) for m in roi_mean],
        roi_mean_excursion=excursion,
        change_mean=float(steps.mean()),
        path_ratio=path_ratio,
        jerkiness=jerkiness,
        ctr=[None if c is None else round(c, 4) for c in ctr],
        ctr_excursion=ctr_excursion,
        ctr_backstep=ctr_backstep,
        ctr_monotone=ctr_monotone,
        ctr_start=ctr_start,
        ctr_end=ctr_end,
        ctr_monotone_fraction=monotone_fraction,
        ctr_max_deviation=deviation,
        outside_psnr_min=psnr_min,
        outside_ssim_min=ssim_min,
        failures=_failures(excursion, path_ratio, jerkiness, ctr_failure, psnr_min),
    )


def joined_frames(clips: int, clip_frames: int) -> int:
    """Frames of ``clips`` joined clips of ``clip_frames`` each: every shared endpoint once."""
    return clips * (clip_frames - 1) + 1


NO_TRANSITIONS = "no transition clips: the run was made without transitions (--no-transition)"


def summary_lines(section: dict[str, Any]) -> list[str]:
    """A "transitions" section in words: '7 of 10 clips are transitions', then 'clip 3 fails: ...' per failing clip."""
    if section["clip_frames"] is None:
        return [NO_TRANSITIONS]
    clips = section["clips"]
    failing = [f"clip {clip['clip']} fails: {', '.join(clip['failures'])}" for clip in clips if not clip["passed"]]
    return [f"{section['passing']} of {len(clips)} clips are transitions", *failing]


def _judge_clips(frames: list[np.ndarray], states: list[np.ndarray], roi: np.ndarray,
                 clip_frames: int) -> list[dict[str, Any]]:
    """Split the joined video into its clips (clip n: frames (n - 1) (K - 1) .. n (K - 1)) and judge each."""
    expected = joined_frames(len(states) - 1, clip_frames)
    if len(frames) != expected:
        raise MvgError(f"{len(frames)} video frames for {len(states) - 1} clips of {clip_frames} frames: expected "
                       f"{expected} (each shared endpoint once)")
    step = clip_frames - 1
    clips = []
    for index, (start, end) in enumerate(pairwise(states), start=1):
        first = (index - 1) * step
        quality = transition_quality(np.stack(frames[first: first + clip_frames]), roi, start, end)
        clips.append({"clip": index, "frame_range": [first, first + step], **quality.to_dict()})
    return clips


def transitions_report(frames: list[np.ndarray], states: list[np.ndarray], roi: np.ndarray,
                       clip_frames: int | None) -> dict[str, Any]:
    """The standard for every clip of a run: its joined video ``frames`` between consecutive ``states``.

    ``clip_frames`` is K, the frames of one clip; None for a run without transitions. Returns the
    run's "transitions" section: per clip its frame range, measures and verdict, how many clips
    pass, and the summary in one line.
    """
    clips = [] if clip_frames is None else _judge_clips(frames, states, roi, clip_frames)
    section = {"clip_frames": clip_frames, "clips": clips, "passing": sum(clip["passed"] for clip in clips)}
    return {**section, "summary": "; ".join(summary_lines(section))}
