"""The bench's one list of typed rows (kinds: benchmarks/README.md), how rows are compared, and the targets
as data. mvg-rt rows carry the ``spec`` (``RuntimeSpec.to_dict()``) they were opened from; peer rows none."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mvg_rt.eval.metrics import psnr

KINDS = ("runtime", "component", "pie_round", "simulation", "overhead", "overhead_stub", "profile")  # report order


@dataclass
class Row:
    kind: str
    label: str
    spec: dict[str, Any] | None = None
    component: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    outputs: dict[str, np.ndarray] = field(default_factory=dict, repr=False)  # compared, never written

    @property
    def is_reference(self) -> bool:
        """An mvg-rt row of PyTorch FP32 eager: what the other rows are compared with."""
        from mvg_rt.runtime.factory import RuntimeSpec

        return self.spec is not None and RuntimeSpec(**self.spec).is_reference

    def to_dict(self) -> dict[str, Any]:
        head = {"kind": self.kind, "label": self.label, "spec": self.spec, "component": self.component}
        return head | self.metrics | ({"error": self.error} if self.error else {})


def attempt(row: Row, measure: Callable[[], Row]) -> Row:
    """``measure()``, or ``row`` with the error: one failed measurement must not lose the others."""
    from mvg_rt.errors import MvgError

    try:
        return measure()
    except Exception as err:  # noqa: BLE001
        row.error = str(err) if isinstance(err, MvgError) else f"{type(err).__name__}: {err}"
        return row


def difference(output: np.ndarray, reference: np.ndarray) -> dict[str, Any]:
    """uint8 images: max abs (levels) and PSNR (dB); network outputs: max abs, scaled by max|ref|, cosine."""
    if output.shape != reference.shape:
        return {"error": f"shape {list(output.shape)} vs reference {list(reference.shape)}"}
    if output.dtype == np.uint8:
        return {"max_abs": int(np.abs(output.astype(np.int16) - reference.astype(np.int16)).max()),
                "psnr_db": psnr(output, reference)}
    a, b = output.astype(np.float64).ravel(), reference.astype(np.float64).ravel()
    max_abs, norms = float(np.abs(a - b).max()), float(np.linalg.norm(a) * np.linalg.norm(b))
    return {"max_abs": max_abs, "max_abs_scaled": max_abs / max(1.0, float(np.abs(b).max())),
            "cosine": float(a @ b / norms) if norms else 1.0}


def differences(row: Row, reference: Row) -> dict[str, Any]:
    """Per output; a row with one output (``output``) gets that output's difference directly."""
    diffs = {k: difference(v, reference.outputs[k]) for k, v in row.outputs.items() if k in reference.outputs}
    return diffs.get("output", diffs) if list(diffs) == ["output"] else diffs


TIME_KEY = {"component": "median_s", "pie_round": "median_s", "simulation": "simulation_s"}


def compare_with(rows: list[Row], reference: Callable[[Row], bool], speedup_key: str, diff_key: str) -> None:
    """Speed-up (reference seconds / row seconds) and output difference of every row against the reference
    row of its kind and component."""
    ok = [r for r in rows if r.error is None and r.kind in TIME_KEY]
    for row in ok:
        ref = next((r for r in ok if r.kind == row.kind and r.component == row.component and reference(r)), None)
        if ref is not None:
            base, value = ref.metrics[TIME_KEY[row.kind]], row.metrics[TIME_KEY[row.kind]]
            row.metrics[speedup_key] = base / value if base and value else None
            row.metrics[diff_key] = differences(row, ref)


def paper_projection(rows: list[Row]) -> list[str]:
    """The paper-default simulation per variant from its measured denoiser calls (CFG batch 2): 10 rounds x 30
    UNet steps + 10 clips x 250 SEINE steps at the bench's frames; networks only (the VAE calls add ~1%)."""
    calls: dict[str, dict[str, float]] = {}
    for r in (r for r in rows if r.kind == "component" and r.error is None):
        calls.setdefault(r.label, {})[r.component] = r.metrics["median_s"]
    return [f"projected paper-default simulation on {label} (SEINE at the frames measured): "
            f"PIE {300 * t['unet']:.0f} s"
            + (f" + transitions {2500 * t['seine']:.0f} s = {300 * t['unet'] + 2500 * t['seine']:.0f} s"
               if "seine" in t else " (SEINE not measured)") for label, t in calls.items() if "unet" in t]


@dataclass(frozen=True)
class Target:
    """A threshold on the best mvg-rt row (a row with a spec) of one kind: ``metric`` (a dotted path into
    the row) must reach ``at_least``, and every ``also`` (path, minimum) too."""

    id: int
    name: str
    kind: str
    metric: str
    at_least: float
    unit: str = "x"  # "x" (a ratio) or "%" (a fraction shown in percent)
    component: str | None = None
    also: tuple[tuple[str, float], ...] = ()


TARGETS = (
    Target(1, "fastest backend's UNet call vs the measured matmul peak", "component", "fraction_of_peak", 0.75,
           unit="%", component="unet"),
    Target(2, "PIE round (full ROI, beta2=1) vs diffusers img2img eager", "pie_round", "speedup_vs_diffusers",
           1.15, also=(("diff_vs_diffusers.psnr_db", 40.0),)),
    Target(3, "time outside the networks per denoising step, diffusers / mvg-rt (tiny model)", "overhead",
           "overhead_ratio_vs_diffusers", 2.0),
)


def lookup(row: dict[str, Any], path: str) -> Any:
    for key in path.split("."):
        row = row.get(key) if isinstance(row, dict) else None
    return row


def evaluate(target: Target, rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """PASS/MISS of ``target`` on its best row; None when no row measured it."""
    candidates = [r for r in rows if r["kind"] == target.kind and r["spec"] and lookup(r, target.metric) is not None
                  and target.component in (None, r["component"])]
    if not candidates:
        return None
    best = max(candidates, key=lambda r: lookup(r, target.metric))
    checks = ((target.metric, target.at_least), *target.also)
    passed = all((lookup(best, path) or -math.inf) >= minimum for path, minimum in checks)

    def show(value: float | None, unit: str = "") -> str:
        return "-" if value is None else f"{100 * value:.1f}%" if unit == "%" else f"{value:.2f}{unit}"

    value = lookup(best, target.metric)
    also = "".join(f", {path} {show(lookup(best, path))}" for path, _ in target.also)
    return {"id": target.id, "name": target.name, "status": "PASS" if passed else "MISS", "value": value,
            "threshold": target.at_least, "row": best["label"],
            "value_text": f"{show(value, target.unit)}{also} ({best['label']})",
            "threshold_text": f">= {show(target.at_least, target.unit)}" + "".join(
                f" and {path} >= {minimum:g}" for path, minimum in target.also)}
