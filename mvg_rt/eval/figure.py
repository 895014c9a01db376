"""A one-picture summary of a run: the states in a strip, the CTR curve and the per-round change below."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np

from mvg_rt.errors import MvgError
from mvg_rt.io.files import write_bytes_atomic


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on servers
    import matplotlib.pyplot as plt

    return plt


def _write(figure: Any, path: str | Path) -> None:
    """Render ``figure`` and write it to ``path`` whole or not at all (a full disk leaves no half image)."""
    image = io.BytesIO()
    try:
        figure.savefig(image, format=figure_format(path), bbox_inches="tight")
    finally:
        _pyplot().close(figure)
    write_bytes_atomic(path, image.getvalue())


def figure_format(path: str | Path, option: str = "--figure") -> str:
    """The image format ``path``'s suffix asks for (no suffix: PNG); a one-line MvgError for one matplotlib
    cannot write, checked before the work."""
    suffix = Path(path).suffix.lower().lstrip(".") or "png"
    formats = _pyplot().figure().canvas.get_supported_filetypes()
    _pyplot().close("all")
    if suffix not in formats:
        raise MvgError(f"{option} {path}: .{suffix} is not an image format it can write: name it .png "
                       f"(or one of {', '.join('.' + f for f in sorted(formats))})")
    return suffix


def progression_figure(states: list[np.ndarray], report: dict[str, Any], path: str | Path, title: str = "") -> None:
    """Draw the figure and write it to ``path`` whole or not at all (a full disk leaves no half image)."""
    plt = _pyplot()

    count = len(states)
    figure = plt.figure(figsize=(1.6 * count, 4.6), dpi=110)
    grid = figure.add_gridspec(2, count, height_ratios=[1.0, 0.9], hspace=0.35, wspace=0.04)
    ctr = report.get("ctr")
    for i, state in enumerate(states):
        axis = figure.add_subplot(grid[0, i])
        axis.imshow(state, cmap="gray" if state.ndim == 2 else None, vmin=0, vmax=255)
        axis.set_xticks([])
        axis.set_yticks([])
        label = "input" if i == 0 else f"round {i}"
        axis.set_title(f"{label}\nCTR {ctr[i]:.2f}" if ctr else label, fontsize=8)
    curve = figure.add_subplot(grid[1, :])
    rounds = list(range(count))
    if ctr:
        curve.plot(rounds, ctr, "o-", color="tab:red", label="cardiothoracic ratio")
        curve.axhline(0.5, color="gray", linestyle="--", linewidth=1, label="cardiomegaly threshold (0.5)")
        curve.set_ylabel("CTR")
    change = [c["inside_roi"] for c in report.get("round_change", [])]
    if change:
        other = curve.twinx()
        other.bar(rounds[1:], change, alpha=0.25, color="tab:blue", label="change inside ROI (RMS)")
        other.set_ylabel("per-round change")
        other.legend(loc="lower right", fontsize=7)
    curve.set_xlabel("PIE round")
    curve.set_xticks(rounds)
    if ctr:
        curve.legend(loc="upper left", fontsize=7)
    if title:
        figure.suptitle(title, fontsize=10)
    _write(figure, path)


def clip_strip_figure(frames: list[np.ndarray], clip: dict[str, Any], path: str | Path, title: str = "") -> None:
    """One transition clip as a strip of its frames, each labelled with its ROI mean and CTR, the clip's
    verdict on the transition standard below: what a reader of the README sees of a transition at a glance.
    ``clip`` is one entry of a run's "transitions" section (:func:`mvg_rt.eval.transition_quality.transitions_report`).
    """
    plt = _pyplot()
    first, last = clip["frame_range"]
    shown = frames[first: last + 1]
    figure, axes = plt.subplots(1, len(shown), figsize=(1.45 * len(shown), 2.1), dpi=110)
    for k, (axis, frame) in enumerate(zip(axes, shown)):
        axis.imshow(frame, cmap="gray" if frame.ndim == 2 else None, vmin=0, vmax=255)
        axis.set_xticks([])
        axis.set_yticks([])
        label = f"state {clip['clip'] - 1}" if k == 0 else f"state {clip['clip']}" if k == len(shown) - 1 \
            else f"frame {first + k}"
        ctr = clip["ctr"][k]
        axis.set_title(f"{label}\nROI {clip['roi_mean'][k]:.0f}" + (f" CTR {ctr:.2f}" if ctr is not None else ""),
                       fontsize=7)
    verdict = "meets the transition standard" if clip["passed"] else "FAILS: " + "; ".join(clip["failures"])
    figure.suptitle((f"{title}: " if title else "") + f"clip {clip['clip']}, {verdict}", fontsize=8, wrap=True)
    _write(figure, path)
