"""The bench chart: backends side by side (matplotlib, written as PNG)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def _panels(report: dict[str, Any]) -> list[tuple[str, str, list[str], list[float]]]:
    panels = []
    components = [r for r in report.get("components", []) if "error" not in r]
    if components:
        names = sorted({r["component"] for r in components}, key=[r["component"] for r in components].index)
        labels, values = [], []
        for name in names:
            rows = [r for r in components if r["component"] == name]
            for r in rows:
                labels.append(f"{name}\n{r['variant']['label']}")
                values.append(100 * r["fraction_of_peak"])
        panels.append(("Components: achieved FLOP/s", "% of measured matmul peak", labels, values))
    rounds = [(r["label"], r["median_s"]) for r in report.get("pie_round", []) if "error" not in r]
    rounds += [(p["label"], p["round"]["median_s"]) for p in report.get("peers", []) if "error" not in p]
    if rounds:
        panels.append(("PIE round (img2img)", "seconds (lower is better)", [r[0].replace(" (", "\n(") for r in rounds],
                       [r[1] for r in rounds]))
    overhead = report.get("overhead")
    if overhead:
        rows = overhead["rows"]
        panels.append(("Per-step overhead outside the UNet (tiny)", "milliseconds per step",
                       [k.replace(" (", "\n(") for k in rows], [1e3 * r["overhead_s"] for r in rows.values()]))
    return panels


def write_chart(report: dict[str, Any], path: Path) -> Path | None:
    panels = _panels(report)
    if not panels:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(len(panels), 1, figsize=(11, 3.6 * len(panels)), squeeze=False)
    palette = {"torch": "#4C72B0", "ort": "#DD8452", "trt": "#55A868", "diffusers": "#8172B3", "Optimum": "#C44E52"}
    for axis, (title, unit, labels, values) in zip(axes[:, 0], panels):
        colors = [next((c for key, c in palette.items() if key in label), "#937860") for label in labels]
        bars = axis.barh(range(len(values)), values, color=colors)
        axis.set_yticks(range(len(values)), labels, fontsize=7)
        axis.invert_yaxis()
        axis.set_title(title, fontsize=10)
        axis.set_xlabel(unit, fontsize=8)
        axis.bar_label(bars, labels=[f"{v:.3g}" for v in values], fontsize=7, padding=2)
        axis.margins(x=0.15)
    cpu = report["machine"]["cpu"]
    figure.suptitle(f"mvg-rt bench, {report['settings']['resolution']}px, {cpu}", fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
