"""The ``simulate`` job: read inputs, run PIE (and transitions), write the output folder.

This module owns files and provenance; the math lives in ``mvg_rt.runtime.pipelines``.
Outputs (all written to a staging folder that becomes ``--out`` only on success):

- ``states/state_00.png`` (the input at model resolution) .. ``state_NN.png``
- ``mask.png``: the ROI actually used, at image resolution
- ``progression.gif``
- ``run.json``: settings, seed, versions, model hashes, timings, per-round change
"""

from __future__ import annotations

import hashlib
import json
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mvg_rt.io.images import LoadedImage, check_resolution, read_image, resize_and_crop, save_png
from mvg_rt.io.masks import RoiMask, choose_mask
from mvg_rt.io.output_dir import check_output_dir, staged_output_dir
from mvg_rt.io.video import write_gif
from mvg_rt.runtime.factory import Runtime
from mvg_rt.runtime.pipelines.pie import PieSession, PieSettings, StepCallback
from mvg_rt.runtime.pipelines.roi import latent_mask


@dataclass
class SimulationInputs:
    """What the clinician provides. Paths are never written to outputs unless asked."""

    image: LoadedImage
    image_sha256: str
    prompt: str
    negative_prompt: str = ""
    roi: RoiMask | None = None
    image_path: str | None = None  # recorded only with record_paths


@dataclass
class SimulationOptions:
    pie: PieSettings = field(default_factory=PieSettings)
    resolution: int = 512
    seed: int = 0
    fps: float = 2.0
    out: Path = Path("runs/simulation")
    overwrite: bool = False
    record_paths: bool = False


def load_inputs(image_path: str, prompt: str, negative_prompt: str = "", record_path: bool = False) -> SimulationInputs:
    image = read_image(image_path)
    digest = hashlib.sha256(Path(image_path).read_bytes()).hexdigest()
    if not prompt.strip():
        from mvg_rt.errors import MvgError

        raise MvgError("--prompt is empty: describe the disease state to simulate, e.g. 'severe cardiomegaly'")
    return SimulationInputs(image, digest, prompt, negative_prompt, image_path=image_path if record_path else None)


def _round_change(previous: np.ndarray, current: np.ndarray, weight: np.ndarray) -> dict[str, float]:
    """RMS change (0..1 intensity units) inside (mask-weighted) and outside the ROI."""
    diff2 = ((current.astype(np.float64) - previous.astype(np.float64)) / 255.0) ** 2
    diff2 = diff2.mean(axis=2)

    def rms(w: np.ndarray) -> float:
        return float(np.sqrt((diff2 * w).sum() / w.sum())) if w.sum() > 0 else 0.0

    return {"inside_roi": rms(weight), "outside_roi": rms(1.0 - weight)}


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for package in ("mvg-rt", "torch", "diffusers", "transformers", "onnx", "onnxruntime", "tensorrt"):
        try:
            out[package] = md.version(package)
        except md.PackageNotFoundError:
            continue
    return out


def simulate(runtime: Runtime, inputs: SimulationInputs, options: SimulationOptions,
             on_step: StepCallback | None = None, on_round: Callable[[int], None] | None = None) -> Path:
    """Run the whole job; returns the output folder (complete, or absent on error)."""
    resolution = check_resolution(options.resolution, runtime.model.vae_scale_factor)
    check_output_dir(options.out, options.overwrite)
    original = resize_and_crop(inputs.image.pixels, resolution)
    roi = inputs.roi or choose_mask(inputs.image.pixels.shape, resolution)
    device = runtime.backend.device
    mask_latent = latent_mask(torch.from_numpy(roi.pixels), runtime.model.vae_scale_factor,
                              runtime.model.latent_channels)
    generator = torch.Generator().manual_seed(options.seed)

    started = time.perf_counter()
    session = PieSession(runtime.backend, runtime.model, options.pie, torch.from_numpy(original).to(device),
                         mask_latent, inputs.prompt, inputs.negative_prompt)
    setup_seconds = time.perf_counter() - started
    weight = roi.pixels[..., 0].astype(np.float64) / 255.0
    states = [original]
    rounds: list[dict[str, Any]] = []
    for index in range(1, options.pie.rounds + 1):
        round_start = time.perf_counter()
        state = session.run_round(torch.from_numpy(states[-1]).to(device), generator, index, on_step).cpu().numpy()
        rounds.append({"round": index, "seconds": round(time.perf_counter() - round_start, 4),
                       "change": _round_change(states[-1], state, weight)})
        states.append(state)
        if on_round is not None:
            on_round(index)

    with staged_output_dir(options.out, options.overwrite) as staging:
        (staging / "states").mkdir()
        for index, state in enumerate(states):
            save_png(state, staging / "states" / f"state_{index:02d}.png")
        save_png(roi.pixels, staging / "mask.png")
        write_gif(states, staging / "progression.gif", options.fps)
        record = {
            "mvg_rt_run": 1,
            "notice": runtime.notice,
            "input": {
                "sha256": inputs.image_sha256,
                "format": inputs.image.source_format,
                "bits": inputs.image.source_bits,
                "size": list(inputs.image.pixels.shape[:2]),
                **({"path": inputs.image_path} if inputs.image_path else {}),
            },
            "prompt": inputs.prompt,
            "negative_prompt": inputs.negative_prompt,
            "roi": {"source": roi.source, "coverage": round(roi.coverage, 4)},
            "resolution": resolution,
            "seed": options.seed,
            "pie": options.pie.to_dict(),
            "backend": runtime.backend.describe(),
            "model": runtime.provenance,
            "versions": _versions(),
            "timings": {"setup_seconds": round(setup_seconds, 4),
                        "pie_seconds": round(sum(r["seconds"] for r in rounds), 4)},
            "rounds": rounds,
        }
        (staging / "run.json").write_text(json.dumps(record, indent=2))
    return options.out
