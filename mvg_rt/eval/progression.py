"""Is a simulated progression real? Measures on the states of a run.

- CTR of every state (classical measurement, :mod:`mvg_rt.eval.ctr`): on chest
  X-rays, cardiomegaly progression means a rising cardiothoracic ratio.
- Identity outside the ROI: SSIM of each state against the input, averaged over
  windows centred outside the ROI (model-free), and a CLIP-I-style embedding cosine
  similarity (the paper's CLIP-I) computed with an image encoder the caller passes:
  ``mvg-rt simulate`` passes the run's own VAE encoder and records which one in
  run.json; ``mvg-rt eval`` reports what run.json recorded. It is not CLIP, so its
  values compare runs of one model with each other, not with the paper's numbers.
- Per-round change inside/outside the ROI: paper Proposition 2 says PIE converges,
  so the change between consecutive states should shrink.
- Transition clips: every clip of the run's video judged by the absolute standard of
  :mod:`mvg_rt.eval.transition_quality` (the "transitions" section).
- Two runs of the same simulation (e.g. two backends): PSNR and SSIM per state/frame.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from mvg_rt.errors import MvgError
from mvg_rt.io.files import write_text_atomic
from mvg_rt.io.jsonio import finite_json, parse_json
from mvg_rt.io.masks import run_mask
from mvg_rt.eval.ctr import measure_ctr
from mvg_rt.eval.metrics import psnr, ssim
from mvg_rt.eval.transition_quality import joined_frames, transitions_report

MONOTONE_TOLERANCE = 0.005  # CTR may dip by measurement noise this much and still count as rising
CTR_NORMAL_LIMIT = 0.5  # a cardiothoracic ratio at or above 0.5 on a PA chest X-ray reads as cardiomegaly
PLATEAU_BAND = 0.04  # the plateau: within this of the highest CTR (the demo wobbles by ~0.04 there)


def _rms(diff2: np.ndarray, weight: np.ndarray) -> float:
    return float(np.sqrt((diff2 * weight).sum() / weight.sum())) if weight.sum() > 0 else 0.0


def round_changes(states: list[np.ndarray], roi: np.ndarray) -> list[dict[str, float]]:
    """RMS change (0..1 intensity units) between consecutive states, inside (ROI-weighted) and outside."""
    changes = []
    for previous, current in zip(states[:-1], states[1:]):
        diff2 = (((current.astype(np.float64) - previous.astype(np.float64)) / 255.0) ** 2).mean(axis=2)
        changes.append({"inside_roi": _rms(diff2, roi), "outside_roi": _rms(diff2, 1.0 - roi)})
    return changes


def ctr_trajectory(states: list[np.ndarray]) -> tuple[list[float] | None, str | None]:
    """CTR per state, or (None, reason) when the images are not chest X-rays the measurement reads."""
    try:
        return [round(measure_ctr(state).ctr, 4) for state in states], None
    except MvgError as err:
        return None, str(err)


def is_monotone(values: list[float], tolerance: float = MONOTONE_TOLERANCE) -> bool:
    return all(b >= a - tolerance for a, b in zip(values[:-1], values[1:]))


def ctr_course(ctr: list[float], band: float = PLATEAU_BAND) -> dict[str, Any]:
    """What the CTR trajectory shows, in the words a reader of a chest X-ray uses.

    Cardiomegaly progression means: the input is normal (CTR below 0.5), the ratio rises over
    the first rounds (dips within :data:`MONOTONE_TOLERANCE` count as measurement noise), and
    then holds a plateau once the prompt's severity is reached (within ``band`` of the highest
    value). A strictly monotone rise over every round is NOT expected: on the plateau each round
    redraws the texture the segmentation measures, so the value wobbles by a few pixels.
    """
    top = max(ctr)
    plateau_from = next(i for i, value in enumerate(ctr) if value >= top - band)
    rise_ok = plateau_from > 0 and is_monotone(ctr[: plateau_from + 1])
    plateau = ctr[plateau_from:]
    plateau_ok = min(plateau) >= top - band
    crosses = next((i for i, value in enumerate(ctr) if value >= CTR_NORMAL_LIMIT), None)
    starts_normal = ctr[0] < CTR_NORMAL_LIMIT
    promised = starts_normal and crosses is not None and rise_ok and plateau_ok
    start = f"{ctr[0]:.2f} ({'normal, below' if starts_normal else 'already at or above'} {CTR_NORMAL_LIMIT})"
    if promised:
        summary = (f"CTR rises from {start} to {ctr[plateau_from]:.2f} by round {plateau_from}, crossing "
                   f"{CTR_NORMAL_LIMIT} (cardiomegaly) in round {crosses}, then holds at {min(plateau):.2f}-"
                   f"{max(plateau):.2f} through round {len(ctr) - 1}: the expected progression (rise, then plateau)")
    else:
        missing = [text for ok, text in ((starts_normal, "the input is not normal"),
                                         (crosses is not None, f"it never reaches {CTR_NORMAL_LIMIT}"),
                                         (rise_ok, "it does not rise steadily before the plateau"),
                                         (plateau_ok, "it falls back after its highest value")) if not ok]
        summary = (f"CTR goes from {start} to {ctr[-1]:.2f} (highest {top:.2f}, round {ctr.index(top)}): not the "
                   f"expected rise-then-plateau, because {'; '.join(missing)}")
    return {"rise_then_plateau": promised, "start": ctr[0], "highest": top, "crosses_limit_at_round": crosses,
            "plateau_from_round": plateau_from, "plateau_range": [min(plateau), max(plateau)], "summary": summary}


def shrinks_after(changes: list[float]) -> int | None:
    """The first round from which the per-round change never grows again (1-based), or None."""
    for start in range(len(changes)):
        tail = changes[start:]
        if all(b <= a * 1.05 + 1e-4 for a, b in zip(tail[:-1], tail[1:])):
            return start + 1
    return None


Embedding = Callable[[np.ndarray], torch.Tensor]


def identity_similarity(reference: np.ndarray, states: list[np.ndarray], embed: Embedding) -> list[float]:
    """Cosine similarity of each state's embedding with the reference's (1.0: unchanged)."""
    base = embed(reference).flatten().double()
    return [round(float(torch.cosine_similarity(base, embed(s).flatten().double(), dim=0)), 4) for s in states]


def _ssim_outside(states: list[np.ndarray], outside_weight: np.ndarray) -> list[float] | None:
    """SSIM against the input outside the ROI; None when the ROI leaves no SSIM window outside it."""
    values = [ssim(states[0], s, weight=outside_weight) for s in states] if outside_weight.sum() > 0 else []
    return [round(v, 4) for v in values] if values and not any(math.isnan(v) for v in values) else None


def evaluate_states(states: list[np.ndarray], roi: np.ndarray, embed: Embedding | None = None,
                    embedding: str | None = None) -> dict[str, Any]:
    """Every measure above on [input, state_1, ..., state_N]; ``roi`` is (H, W) in [0, 1].

    ``embed`` maps an image to its identity embedding and ``embedding`` says what it is
    (recorded); without one the embedding similarity is not computed.
    """
    ctr, ctr_problem = ctr_trajectory(states)
    changes = round_changes(states, roi)
    inside = [c["inside_roi"] for c in changes]
    outside_weight = 1.0 - roi
    report: dict[str, Any] = {
        "ctr": ctr,
        "ctr_monotone": is_monotone(ctr) if ctr else None,
        "ctr_course": ctr_course(ctr) if ctr else None,
        "ssim_outside_roi": _ssim_outside(states, outside_weight),
        "identity_similarity": identity_similarity(states[0], states, embed) if embed is not None else None,
        "identity_embedding": embedding if embed is not None else None,
        "round_change": [{k: round(v, 5) for k, v in c.items()} for c in changes],
        "change_shrinks_from_round": shrinks_after(inside),
    }
    if ctr_problem:
        report["ctr_unavailable"] = ctr_problem
    return report


RERUN = "rerun mvg-rt simulate to write the run again"


@dataclass(frozen=True)
class RunFolder:
    """What eval reads of a run folder, every part checked: damage is found before anything is computed."""

    path: Path
    record: dict[str, Any]
    states: list[np.ndarray]
    roi: np.ndarray  # (H, W) in [0, 1]
    frames: list[np.ndarray]
    clip_frames: int | None  # K, the frames of one transition clip; None for a run without transitions
    files: tuple[Path, ...]  # every file read, so that no output replaces one


@contextmanager
def _reading(run: Path, name: str) -> Iterator[None]:
    """Any failure reading ``name`` (relative to ``run``) is one line naming it; files of a run are
    only damaged by something outside mvg-rt, so the fix is always a new run."""
    try:
        yield
    except FileNotFoundError as err:
        raise MvgError(f"run {run}: {name} is missing (the run folder is incomplete); {RERUN}") from err
    except PermissionError as err:
        raise MvgError(f"run {run}: {name} cannot be read (permission denied); fix its permissions") from err
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        raise MvgError(f"run {run}: {name} is damaged (not a readable PNG); {RERUN}") from err


def _read_rgb(run: Path, name: str, size: tuple[int, int] | None) -> np.ndarray:
    with _reading(run, name), Image.open(run / name) as image:
        if size is not None and image.size != size:
            raise MvgError(f"run {run}: {name} is {image.size[0]}x{image.size[1]}, the run's other images "
                           f"{size[0]}x{size[1]} (a file was replaced); {RERUN}")
        return np.asarray(image.convert("RGB"))


def _read_pngs(run: Path, folder: str, size: tuple[int, int] | None) -> tuple[list[np.ndarray], list[str]]:
    names = [f"{folder}/{p.name}" for p in sorted((run / folder).glob("*.png"))]
    images = []
    for name in names:
        images.append(_read_rgb(run, name, size))
        size = size or (images[0].shape[1], images[0].shape[0])
    return images, names


def _read_record(run: Path) -> dict[str, Any]:
    """run.json as eval needs it: a mvg-rt run record whose recorded rounds and measures have their types."""
    with _reading(run, "run.json"):
        data = (run / "run.json").read_bytes()
    record = parse_json(data, f"run {run}: run.json", RERUN)
    problem = _record_problem(record)
    if problem:
        raise MvgError(f"run {run}: run.json {problem} (it was edited or damaged); {RERUN}")
    return record


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _record_problem(record: Any) -> str | None:
    """What is wrong with the parts of run.json eval uses; None when nothing is."""
    if not isinstance(record, dict) or record.get("mvg_rt_run") != 1:
        return "is not a mvg-rt run record (no \"mvg_rt_run\": 1)"
    pie = record.get("pie")
    if not isinstance(pie, dict) or not _is_count(pie.get("rounds")):
        return "has no pie.rounds count"
    transition = record.get("transition")
    if transition is not None and not (isinstance(transition, dict) and _is_count(transition.get("frames"))
                                       and transition["frames"] >= 3):
        return "has a transition entry without its frames count (3 or more)"
    evaluation = record.get("eval")
    if evaluation is None:
        return None
    if not isinstance(evaluation, dict):
        return "has an eval entry that is not an object"
    identity = evaluation.get("identity_similarity")
    if identity is not None and not (isinstance(identity, list) and len(identity) == pie["rounds"] + 1 and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in identity)):
        return "has an eval.identity_similarity that is not one number per state"
    if not isinstance(evaluation.get("identity_embedding"), (str, type(None))):
        return "has an eval.identity_embedding that is not text"
    return None


def read_run(run_dir: str | Path) -> RunFolder:
    """Every file eval uses of a run folder written by ``mvg-rt simulate``, read and checked."""
    run = Path(run_dir)
    if not (run / "run.json").is_file() or not (run / "states").is_dir():
        raise MvgError(f"{run} is not a run folder (no run.json/states/): pass a folder written by mvg-rt simulate")
    record = _read_record(run)
    states, state_names = _read_pngs(run, "states", None)
    expected = record["pie"]["rounds"] + 1
    if len(states) != expected:
        raise MvgError(f"run {run}: states/ holds {len(states)} state images, run.json records {expected} "
                       f"(the input and {expected - 1} rounds); {RERUN}")
    size = (states[0].shape[1], states[0].shape[0])
    with _reading(run, "mask.png"):
        roi = run_mask(Image.open(run / "mask.png")).weight
    if roi.shape != states[0].shape[:2]:
        raise MvgError(f"run {run}: mask.png is {roi.shape[1]}x{roi.shape[0]}, the states {size[0]}x{size[1]} "
                       f"(a file was replaced); {RERUN}")
    frames, frame_names = _read_pngs(run, "frames", size) if (run / "frames").is_dir() else ([], [])
    clip_frames = (record.get("transition") or {}).get("frames")
    expected = 0 if clip_frames is None else joined_frames(len(states) - 1, clip_frames)
    if len(frames) != expected:
        clips = f"{len(states) - 1} transition clips of {clip_frames} frames" if clip_frames else "no transitions"
        raise MvgError(f"run {run}: frames/ holds {len(frames)} frames, run.json records {clips} "
                       f"({expected} frames); {RERUN}")
    files = tuple(run / name for name in ("run.json", "mask.png", *state_names, *frame_names))
    return RunFolder(run, record, states, roi, frames, clip_frames, files)


def compare_runs(run_a: RunFolder, run_b: RunFolder) -> dict[str, Any]:
    """PSNR/SSIM between two runs' states (and frames), e.g. ONNX Runtime vs PyTorch."""
    states_a, frames_a, states_b, frames_b = run_a.states, run_a.frames, run_b.states, run_b.frames
    if len(states_a) != len(states_b) or states_a[0].shape != states_b[0].shape:
        raise MvgError(f"runs differ in shape ({len(states_a)} vs {len(states_b)} states of "
                       f"{states_a[0].shape} vs {states_b[0].shape}): compare runs of the same settings")
    pairs = {"states": list(zip(states_a, states_b)), "frames": list(zip(frames_a, frames_b))}
    out: dict[str, Any] = {}
    for name, items in pairs.items():
        if items:
            out[name] = [{"psnr_db": round(min(psnr(a, b), 999.0), 2), "ssim": round(ssim(a, b), 5)}
                         for a, b in items]
            out[f"min_{name}_psnr_db"] = min(r["psnr_db"] for r in out[name])
    return out


def evaluate_run(run: RunFolder, against: RunFolder | None = None) -> dict[str, Any]:
    """The measures of a run folder; the embedding similarity is the one simulate recorded with the run's model."""
    report = {"run": str(run.path), **evaluate_states(run.states, run.roi),
              "transitions": transitions_report(run.frames, run.states, run.roi, run.clip_frames)}
    recorded = run.record.get("eval") or {}
    for key in ("identity_similarity", "identity_embedding"):
        report[key] = recorded.get(key)
    if against is not None:
        report["against"] = {"run": str(against.path), **compare_runs(run, against)}
    return report


def write_report(report: dict[str, Any], path: str | Path) -> None:
    write_text_atomic(path, finite_json(report))
