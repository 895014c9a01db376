"""The simulate job through its Python API: the graphed-loop mode equals the eager pipelines."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from mvg_rt.io.images import LoadedImage
from mvg_rt.io.masks import choose_mask
from mvg_rt.runtime.pipelines.pie import PieSettings
from mvg_rt.runtime.pipelines.transition import TransitionSettings
from mvg_rt.simulation import SimulationInputs, SimulationOptions, simulate


def _run(runtime, image: np.ndarray, out: Path, graphed: bool) -> list[np.ndarray]:
    inputs = SimulationInputs(LoadedImage(image, "png", 8), "0" * 64, "severe cardiomegaly",
                              roi=choose_mask(image.shape, 64, box="16,16,48,48", feather=4))
    options = SimulationOptions(pie=PieSettings(rounds=2, steps=6, strength=0.5),
                                transition=TransitionSettings(frames=3, steps=3, sampler="ddim"),
                                graphed_loops=graphed, resolution=64, out=out)
    simulate(runtime, inputs, options)
    return [np.asarray(Image.open(p)) for p in sorted((out / "frames").glob("*.png"))]


def test_graphed_loops_reproduce_the_eager_run(tiny_runtime, image_64, tmp_path):
    """On CPU the static-buffer loops run eagerly: same seed, same video (within uint8 rounding)."""
    eager = _run(tiny_runtime, image_64, tmp_path / "eager", graphed=False)
    graphed = _run(tiny_runtime, image_64, tmp_path / "graphed", graphed=True)
    assert len(eager) == len(graphed) == 2 * (3 - 1) + 1
    worst = max(np.abs(a.astype(int) - b.astype(int)).max() for a, b in zip(eager, graphed))
    assert worst <= 1
