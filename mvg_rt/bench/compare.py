"""Output differences against the PyTorch FP32 reference, and speed-up ratios."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from mvg_rt.eval.metrics import psnr


def image_difference(image: np.ndarray, reference: np.ndarray) -> dict[str, Any]:
    """uint8 images (or stacks of them): max abs difference in levels and PSNR in dB (inf: identical)."""
    if image.shape != reference.shape:
        return {"error": f"shape {list(image.shape)} vs reference {list(reference.shape)}"}
    max_abs = int(np.abs(image.astype(np.int16) - reference.astype(np.int16)).max())
    value = psnr(image, reference)
    return {"max_abs": max_abs, "psnr_db": value if math.isfinite(value) else "inf"}


def tensor_difference(output: np.ndarray, reference: np.ndarray) -> dict[str, Any]:
    """Network outputs on the same inputs: max abs, max abs relative to max|ref|, cosine similarity."""
    if output.shape != reference.shape:
        return {"error": f"shape {list(output.shape)} vs reference {list(reference.shape)}"}
    a, b = output.astype(np.float64).ravel(), reference.astype(np.float64).ravel()
    max_abs = float(np.abs(a - b).max())
    scale = max(1.0, float(np.abs(b).max()))
    denominator = float(np.linalg.norm(a) * np.linalg.norm(b))
    cosine = float(a @ b / denominator) if denominator else 1.0
    return {"max_abs": max_abs, "max_abs_scaled": max_abs / scale, "cosine": cosine}


def psnr_value(diff: dict[str, Any] | None) -> float | None:
    if not diff or "psnr_db" not in diff:
        return None
    value = diff["psnr_db"]
    return math.inf if value == "inf" else float(value)


def ratio(baseline: float | None, value: float | None) -> float | None:
    """How many times faster ``value`` is than ``baseline`` (both seconds)."""
    if not baseline or not value:
        return None
    return baseline / value
