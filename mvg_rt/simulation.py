"""The ``simulate`` job: read inputs, run PIE (and transitions), write the output folder.

This module owns files and provenance; the math lives in ``mvg_rt.runtime.pipelines``.
Outputs (all written to a staging folder that becomes ``--out`` only on success):

- ``states/state_00.png`` (the input at model resolution) .. ``state_NN.png``
- ``frames/frame_0000.png`` ..: every video frame once (with transitions)
- ``mask.png``: the ROI actually used, at image resolution
- ``progression.mp4`` (H.264) and ``progression.gif``: the frames, or the states without transitions
- ``run.json``: settings, seed, versions, model hashes, timings, per-round change
"""

from __future__ import annotations

import hashlib
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mvg_rt.io.images import MIN_IMAGE_SIDE, LoadedImage, check_resolution, read_image, resize_and_crop, save_png
from mvg_rt.io.jsonio import finite_json
from mvg_rt.io.masks import RoiMask, choose_mask
from mvg_rt.io.output_dir import staged_output_dir
from mvg_rt.components import SEINE
from mvg_rt.errors import MvgError
from mvg_rt.eval.progression import evaluate_states, round_changes
from mvg_rt.io.video import write_gif, write_mp4
from mvg_rt.runtime.factory import Runtime
from mvg_rt.runtime.pipelines.graphed_loops import GraphedPieSession, GraphedTransitionSampler
from mvg_rt.runtime.pipelines.pie import PieSession, PieSettings, StepCallback
from mvg_rt.runtime.pipelines.roi import latent_mask
from mvg_rt.runtime.pipelines.transition import ClipStepCallback, TransitionSampler, TransitionSettings, join_clips


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
    transition: TransitionSettings | None = field(default_factory=TransitionSettings)  # None: PIE only
    graphed_loops: bool = False  # whole denoising steps as static-buffer loops (CUDA-graph replays on GPU)
    resolution: int = 512
    seed: int = 0
    fps: float = 2.0
    out: Path = Path("runs/simulation")
    overwrite: bool = False
    record_paths: bool = False
    demo_settings: dict[str, Any] = field(default_factory=dict)  # the demo case's settings that applied


def load_inputs(image_path: str, prompt: str, negative_prompt: str = "", record_path: bool = False) -> SimulationInputs:
    image = read_image(image_path, min_side=MIN_IMAGE_SIDE)
    digest = hashlib.sha256(Path(image_path).read_bytes()).hexdigest()
    if not prompt.strip():
        from mvg_rt.errors import MvgError

        raise MvgError("--prompt is empty: describe the disease state to simulate, e.g. 'severe cardiomegaly'")
    return SimulationInputs(image, digest, prompt, negative_prompt, image_path=image_path if record_path else None)


def prompt_truncation(tokenizer: Any, prompt: str) -> dict[str, Any] | None:
    """None if CLIP's text encoder reads the whole prompt, else how many tokens it has and what is kept.

    CLIP reads ``model_max_length`` tokens (77) including its start and end tokens; the pipelines
    truncate there, so the words past it never reach the model.
    """
    limit = int(tokenizer.model_max_length)
    ids = tokenizer(prompt, truncation=False).input_ids
    if len(ids) <= limit:
        return None
    return {"tokens": len(ids), "limit": limit, "kept": tokenizer.decode(ids[1 : limit - 1]).strip()}


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for package in ("mvg-rt", "torch", "diffusers", "transformers", "onnx", "onnxruntime", "tensorrt"):
        try:
            out[package] = md.version(package)
        except md.PackageNotFoundError:
            continue
    return out


@dataclass
class SimulationResult:
    """Everything the job produced, in memory, before anything is written."""

    states: list[np.ndarray]
    rounds: list[dict[str, Any]]
    frames: list[np.ndarray] | None = None  # the joined video, when transitions ran
    clips: list[dict[str, Any]] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)


def _run_pie(runtime: Runtime, inputs: SimulationInputs, options: SimulationOptions, original: np.ndarray,
             roi: RoiMask, generator: torch.Generator, on_step: StepCallback | None,
             on_round: Callable[[int], None] | None) -> SimulationResult:
    device = runtime.backend.device
    mask_latent = latent_mask(torch.from_numpy(roi.pixels), runtime.model.vae_scale_factor,
                              runtime.model.latent_channels)
    started = time.perf_counter()
    session_type = GraphedPieSession if options.graphed_loops else PieSession
    session = session_type(runtime.backend, runtime.model, options.pie, torch.from_numpy(original).to(device),
                           mask_latent, inputs.prompt, inputs.negative_prompt)
    weight = roi.pixels[..., 0].astype(np.float64) / 255.0
    result = SimulationResult(states=[original], rounds=[],
                              timings={"pie_setup_seconds": round(time.perf_counter() - started, 4)})
    for index in range(1, options.pie.rounds + 1):
        round_start = time.perf_counter()
        previous = torch.from_numpy(result.states[-1]).to(device)
        state = session.run_round(previous, generator, index, on_step).cpu().numpy()
        result.rounds.append({"round": index, "seconds": round(time.perf_counter() - round_start, 4),
                              "change": round_changes([result.states[-1], state], weight)[0]})
        result.states.append(state)
        if on_round is not None:
            on_round(index)
    result.timings["pie_seconds"] = round(time.perf_counter() - started, 4)
    return result


def _run_transitions(runtime: Runtime, inputs: SimulationInputs, options: SimulationOptions, roi: RoiMask,
                     result: SimulationResult, generator: torch.Generator, on_clip_step: ClipStepCallback | None,
                     on_clip: Callable[[int], None] | None) -> None:
    started = time.perf_counter()
    sampler_type = GraphedTransitionSampler if options.graphed_loops else TransitionSampler
    sampler = sampler_type(runtime.backend, runtime.model, options.transition, inputs.prompt)
    weight = torch.from_numpy(roi.pixels[..., 0].astype(np.float32) / 255.0)
    clips = []
    for index, (start, end) in enumerate(zip(result.states[:-1], result.states[1:]), start=1):
        clip_start = time.perf_counter()
        clip = sampler.clip(torch.from_numpy(start), torch.from_numpy(end), weight, generator, index, on_clip_step)
        clips.append(clip.cpu())
        result.clips.append({"clip": index, "seconds": round(time.perf_counter() - clip_start, 4)})
        if on_clip is not None:
            on_clip(index)
    result.frames = [frame.numpy() for frame in join_clips(clips)]
    result.timings["transition_seconds"] = round(time.perf_counter() - started, 4)


def _record(runtime: Runtime, inputs: SimulationInputs, options: SimulationOptions, roi: RoiMask,
            result: SimulationResult) -> dict[str, Any]:
    return {
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
        "prompt_truncated": prompt_truncation(runtime.model.tokenizer, inputs.prompt),
        "negative_prompt": inputs.negative_prompt,
        **({"demo_settings": options.demo_settings} if options.demo_settings else {}),
        "roi": {"source": roi.source, "coverage": round(roi.coverage, 4)},
        "resolution": options.resolution,
        "seed": options.seed,
        "pie": options.pie.to_dict(),
        "transition": options.transition.to_dict() if options.transition else None,
        "graphed_loops": options.graphed_loops,
        "video": {"frames": len(result.frames or result.states), "fps": options.fps},
        "backend": runtime.backend.describe(),
        "model": runtime.provenance,
        "versions": _versions(),
        "timings": result.timings,
        "rounds": result.rounds,
        "clips": result.clips,
        "eval": evaluate_states(result.states, roi.pixels[..., 0].astype(np.float64) / 255.0),
    }


def _write(staging: Path, record: dict[str, Any], roi: RoiMask, result: SimulationResult, fps: float) -> None:
    (staging / "states").mkdir()
    for index, state in enumerate(result.states):
        save_png(state, staging / "states" / f"state_{index:02d}.png")
    save_png(roi.pixels, staging / "mask.png")
    video = result.frames if result.frames is not None else result.states
    if result.frames is not None:
        (staging / "frames").mkdir()
        for index, frame in enumerate(result.frames):
            save_png(frame, staging / "frames" / f"frame_{index:04d}.png")
    write_mp4(video, staging / "progression.mp4", fps)
    write_gif(video, staging / "progression.gif", fps)
    (staging / "run.json").write_text(finite_json(record))


def simulate(runtime: Runtime, inputs: SimulationInputs, options: SimulationOptions,
             on_step: StepCallback | None = None, on_round: Callable[[int], None] | None = None,
             on_clip_step: ClipStepCallback | None = None, on_clip: Callable[[int], None] | None = None) -> Path:
    """Run the whole job; returns the output folder (complete, or absent on error)."""
    options.resolution = check_resolution(options.resolution, runtime.model.vae_scale_factor)
    if options.transition is not None and SEINE.name not in runtime.backend.components:
        raise MvgError(  # before the PIE rounds, not after them
            f"the {runtime.backend.name} backend has no SEINE transition network (a model folder without seine/, "
            "or engines exported without it): pass --seine CKPT (the SEINE checkpoint), or --no-transition for "
            "the PIE states only")
    original = resize_and_crop(inputs.image.pixels, options.resolution)
    roi = inputs.roi or choose_mask(inputs.image.pixels.shape, options.resolution)
    generator = torch.Generator().manual_seed(options.seed)
    with staged_output_dir(options.out, options.overwrite) as staging:  # locked for the whole run
        result = _run_pie(runtime, inputs, options, original, roi, generator, on_step, on_round)
        if options.transition is not None:
            _run_transitions(runtime, inputs, options, roi, result, generator, on_clip_step, on_clip)
        _write(staging, _record(runtime, inputs, options, roi, result), roi, result, options.fps)
    return options.out
