"""The simulate job through its Python API: the graphed-loop mode equals the eager pipelines."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
from PIL import Image

from mvg_rt.io.images import LoadedImage
from mvg_rt.io.masks import choose_mask
from mvg_rt.runtime.graphs.capture import EagerCapture
from mvg_rt.runtime.graphs.component_graphs import GraphCache, GraphedBackend
from mvg_rt.runtime.pipelines.pie import PieSettings
from mvg_rt.runtime.pipelines.steps.probe import pie_step_tables
from mvg_rt.runtime.pipelines.transition import TransitionSettings
from mvg_rt.simulation import SimulationInputs, SimulationOptions, simulate


def _run(runtime, image: np.ndarray, out: Path, graphed: bool, sampler: str = "ddim") -> list[np.ndarray]:
    inputs = SimulationInputs(LoadedImage(image, "png", 8), "0" * 64, "severe cardiomegaly",
                              roi=choose_mask(image.shape, 64, box="16,16,48,48", feather=4))
    options = SimulationOptions(pie=PieSettings(rounds=2, steps=6, strength=0.5),
                                transition=TransitionSettings(frames=3, steps=3, sampler=sampler),
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


def test_a_cuda_graphs_simulate_captures_its_step_graphs(tiny_runtime, image_64, tmp_path):
    """Through the capture machinery, with its CPU stand-in for a CUDA graph (EagerCapture): a simulate in
    --cuda-graphs mode captures one step graph per pipeline and replays it for every later step, with a
    multistep PIE scheduler (SD's PNDM) and a multistep transition sampler, and equals the eager run bitwise."""
    graphs_off = GraphCache(EagerCapture.capture, components=())  # the step graphs alone hold the network calls
    backend = GraphedBackend(tiny_runtime.backend, graphs_off, step_capture=EagerCapture.capture)
    runtime = replace(tiny_runtime, backend=backend, spec=replace(tiny_runtime.spec, cuda_graphs=True))
    eager = _run(tiny_runtime, image_64, tmp_path / "eager", graphed=False, sampler="dpm++2m")
    graphed = _run(runtime, image_64, tmp_path / "graphed", graphed=None, sampler="dpm++2m")
    assert all(np.array_equal(a, b) for a, b in zip(eager, graphed, strict=True))
    record = json.loads((tmp_path / "graphed" / "run.json").read_text())
    pie_steps = len(pie_step_tables(tiny_runtime.model.scheduler_config, None, 6, 0.5))
    assert record["graphed_loops"] is True
    assert record["step_graphs"] == {  # one warm-up step, one capture, replays for every other step
        "pie": {"captured": True, "captures": 1, "replays": 2 * pie_steps - 1},
        "transitions": {"captured": True, "captures": 1, "replays": 2 * 3 - 1}}
