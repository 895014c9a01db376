"""The bench chart from the report's rows: backends side by side (matplotlib, written as PNG)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

PANELS = (  # title, unit, row kind, value of a row
    ("Components: achieved FLOP/s", "% of measured matmul peak", "component", lambda r: 100 * r["fraction_of_peak"]),
    ("PIE round (img2img)", "seconds (lower is better)", "pie_round", lambda r: r["median_s"]),
    ("Per-step overhead outside the UNet (tiny)", "milliseconds per step", "overhead", lambda r: 1e3 * r["overhead_s"]),
)
PALETTE = {"torch": "#4C72B0", "ort": "#DD8452", "trt": "#55A868", "diffusers": "#8172B3"}


def write_chart(report: dict[str, Any], path: Path) -> Path | None:
    panels = []
    for title, unit, kind, value in PANELS:
        rows = [r for r in report["rows"] if r["kind"] == kind and not r.get("error")]
        if rows:
            labels = [(f"{r['component']}\n" if r["component"] else "") + r["label"].replace(" (", "\n(") for r in rows]
            panels.append((title, unit, labels, [value(r) for r in rows]))
    if not panels:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(len(panels), 1, figsize=(11, 3.6 * len(panels)), squeeze=False)
    for axis, (title, unit, labels, values) in zip(axes[:, 0], panels):
        colors = [next((c for key, c in PALETTE.items() if key in label), "#937860") for label in labels]
        bars = axis.barh(range(len(values)), values, color=colors)
        axis.set_yticks(range(len(values)), labels, fontsize=7)
        axis.invert_yaxis()
        axis.set_title(title, fontsize=10)
        axis.set_xlabel(unit, fontsize=8)
        axis.bar_label(bars, labels=[f"{v:.3g}" for v in values], fontsize=7, padding=2)
        axis.margins(x=0.15)
    figure.suptitle(f"mvg-rt bench, {report['settings']['resolution']}px, {report['machine']['cpu']}", fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
