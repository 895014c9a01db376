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
- Two runs of the same simulation (e.g. two backends): PSNR and SSIM per state/frame.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from mvg_rt.errors import MvgError
from mvg_rt.eval.ctr import measure_ctr
from mvg_rt.eval.metrics import psnr, ssim

MONOTONE_TOLERANCE = 0.005  # CTR may dip by measurement noise this much and still count as rising


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
        "ssim_outside_roi": [round(ssim(states[0], s, weight=outside_weight), 4) for s in states]
        if outside_weight.sum() > 0 else None,
        "identity_similarity": identity_similarity(states[0], states, embed) if embed is not None else None,
        "identity_embedding": embedding if embed is not None else None,
        "round_change": [{k: round(v, 5) for k, v in c.items()} for c in changes],
        "change_shrinks_from_round": shrinks_after(inside),
    }
    if ctr_problem:
        report["ctr_unavailable"] = ctr_problem
    return report


def _read_pngs(folder: Path) -> list[np.ndarray]:
    return [np.asarray(Image.open(p).convert("RGB")) for p in sorted(folder.glob("*.png"))]


def read_run(run_dir: str | Path) -> tuple[list[np.ndarray], np.ndarray, list[np.ndarray]]:
    """(states, roi in [0, 1], frames) of a run folder written by ``mvg-rt simulate``."""
    run = Path(run_dir)
    if not (run / "run.json").is_file() or not (run / "states").is_dir():
        raise MvgError(f"{run} is not a run folder (no run.json/states/): pass a folder written by mvg-rt simulate")
    states = _read_pngs(run / "states")
    roi = np.asarray(Image.open(run / "mask.png").convert("L"), dtype=np.float64) / 255.0
    frames = _read_pngs(run / "frames") if (run / "frames").is_dir() else []
    return states, roi, frames


def compare_runs(run_a: str | Path, run_b: str | Path) -> dict[str, Any]:
    """PSNR/SSIM between two runs' states (and frames), e.g. ONNX Runtime vs PyTorch."""
    states_a, _, frames_a = read_run(run_a)
    states_b, _, frames_b = read_run(run_b)
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


def evaluate_run(run_dir: str | Path, against: str | Path | None = None) -> dict[str, Any]:
    """The measures of a run folder; the embedding similarity is the one simulate recorded with the run's model."""
    states, roi, _ = read_run(run_dir)
    report = {"run": str(run_dir), **evaluate_states(states, roi)}
    recorded = _recorded_eval(Path(run_dir))
    for key in ("identity_similarity", "identity_embedding"):
        report[key] = recorded.get(key)
    if against is not None:
        report["against"] = {"run": str(against), **compare_runs(run_dir, against)}
    return report


def _recorded_eval(run: Path) -> dict[str, Any]:
    try:
        record = json.loads((run / "run.json").read_text())
    except (OSError, ValueError):
        return {}
    evaluation = record.get("eval") if isinstance(record, dict) else None
    return evaluation if isinstance(evaluation, dict) else {}


def write_report(report: dict[str, Any], path: str | Path) -> None:
    Path(path).write_text(json.dumps(report, indent=2))
