"""The ``simulate`` job: read inputs, run PIE (and transitions), write the output folder.

This module owns files and provenance; the math lives in ``mvg_rt.runtime.pipelines``.
Outputs (all written to a staging folder that becomes ``--out`` only on success):

- ``states/state_00.png`` (the input at model resolution) .. ``state_NN.png``
- ``frames/frame_0000.png`` ..: every video frame once (with transitions)
- ``mask.png``: the ROI actually used, at image resolution
- ``progression.mp4`` (H.264) and ``progression.gif``: the frames, or the states without transitions
- ``run.json``: settings, seed, versions, model hashes, timings, per-round change, and the
  "eval" section: the measures of ``mvg-rt eval`` on the states, and every transition clip's
  verdict against the standard of :mod:`mvg_rt.eval.transition_quality`
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mvg_rt.components import SEINE
from mvg_rt.errors import MvgError
from mvg_rt.eval.progression import evaluate_states, round_changes
from mvg_rt.eval.transition_quality import transitions_report
from mvg_rt.io.images import MIN_IMAGE_SIDE, LoadedImage, check_resolution, read_image, resize_and_crop, save_png
from mvg_rt.io.jsonio import finite_json
from mvg_rt.io.masks import RoiMask, RoiRequest, full_mask
from mvg_rt.io.output_dir import claim_output_dir, staged_output_dir
from mvg_rt.segmentation import segment_roi
from mvg_rt.io.video import write_gif, write_mp4
from mvg_rt.prompts.tokens import prompt_truncation
from mvg_rt.versions import package_versions
from mvg_rt.runtime.factory import Runtime, RuntimeSpec, open_runtime, without_paths
from mvg_rt.runtime.pipelines.latents import images_to_model_range
from mvg_rt.runtime.pipelines.pie import PieSettings, StepCallback, pie_session, run_pie
from mvg_rt.runtime.pipelines.transition import (ClipStepCallback, TransitionSettings, run_transitions,
                                                transition_sampler)


@dataclass
class SimulationInputs:
    """What the clinician provides. Paths are never written to outputs unless asked."""

    image: LoadedImage
    image_sha256: str
    prompt: str
    negative_prompt: str = ""
    roi: RoiMask | RoiRequest | None = None  # a request is resolved at the run's resolution; None: whole image
    image_path: str | None = None  # recorded only with record_paths
    prompt_source: dict[str, Any] | None = None  # how the prompt was made (run.json); None: given as text


@dataclass
class SimulationOptions:
    pie: PieSettings = field(default_factory=PieSettings)
    transition: TransitionSettings | None = field(default_factory=TransitionSettings)  # None: PIE only
    graphed_loops: bool | None = None  # static-buffer step loops; None: as the runtime's spec (--cuda-graphs)
    resolution: int | None = None  # None: the model's
    seed: int = 0
    fps: float = 8.0  # a 10-round run with 16-frame clips: 151 frames, 19 s
    out: Path = Path("runs/simulation")
    overwrite: bool = False
    record_paths: bool = False
    demo_settings: dict[str, Any] = field(default_factory=dict)  # the demo case's settings that applied
    annotations: dict[str, Any] = field(default_factory=dict)  # extra run.json entries from the calling job


def load_inputs(image_path: str, prompt: str, negative_prompt: str = "", record_path: bool = False) -> SimulationInputs:
    image = read_image(image_path, min_side=MIN_IMAGE_SIDE)
    digest = hashlib.sha256(Path(image_path).read_bytes()).hexdigest()
    if not prompt.strip():
        raise MvgError("--prompt is empty: describe the disease state to simulate, e.g. 'severe cardiomegaly'")
    return SimulationInputs(image, digest, prompt, negative_prompt, image_path=image_path if record_path else None)


@dataclass(frozen=True)
class SimulationRequest:
    """Everything one ``mvg-rt simulate`` asked for, parsed once at the CLI edge.

    ``image`` None means the embedded demo case (its image, ROI and prompt, and the
    demo model when the spec names no model); see :mod:`mvg_rt.demo.default`.
    """

    runtime: RuntimeSpec
    options: SimulationOptions
    image: str | None = None
    prompt: str | None = None
    negative_prompt: str = ""
    roi: RoiRequest = RoiRequest()
    record_paths: bool = False
    report: str | None = None  # the report file the prompt was made of (mvg_rt.prompts.report)
    prompt_source: dict[str, Any] | None = None


def resolve_demo_model(spec: RuntimeSpec) -> tuple[RuntimeSpec, str | None]:
    """The spec with the embedded demo model where a PyTorch run names no model, and the notice to show."""
    from mvg_rt.demo.default import demo_model_dir

    if spec.backend == "torch" and spec.model_dir is None and spec.unet_dir is None and spec.seine is None:
        folder, notice = demo_model_dir()
        return replace(spec, model_dir=folder), notice
    return spec, None


def resolve_demo(request: SimulationRequest) -> tuple[SimulationRequest, str | None]:
    """The request with the demo case filled in where the user left it out, and the notice to show."""
    from mvg_rt.demo.default import DEMO_CASE

    spec, notice = resolve_demo_model(request.runtime)
    if request.image is not None:
        return replace(request, runtime=spec), notice
    roi = request.roi if request.roi.given else RoiRequest(str(DEMO_CASE.mask), feather=request.roi.feather)
    demo_prompt = {} if request.prompt else {"prompt": DEMO_CASE.prompt, "prompt_source": {"kind": "demo"}}
    return replace(request, runtime=spec, image=str(DEMO_CASE.image), roi=roi, **demo_prompt), notice


def runtime_inputs(spec: RuntimeSpec) -> dict[str, str | Path | None]:
    """What the runtime reads, by the option that names it: an ``--out`` may be none of these nor hold one."""
    return {"the model folder (--model-dir)": spec.model_dir, "the UNet folder (--unet)": spec.unet_dir,
            "the SEINE checkpoint (--seine)": spec.seine, "the engines folder (--engines)": spec.engines_dir}


def request_inputs(request: SimulationRequest) -> dict[str, str | Path | None]:
    """What the run reads, by the option that names it: its ``--out`` may be none of these nor hold one."""
    return {"the image (--image)": request.image, "the mask (--mask)": request.roi.mask_path,
            "the segmenter (--segment)": request.roi.segment, "the report (--report)": request.report,
            **runtime_inputs(request.runtime)}


def run_simulation(request: SimulationRequest, on_step: StepCallback | None = None,
                   on_round: Callable[[int], None] | None = None, on_clip_step: ClipStepCallback | None = None,
                   on_clip: Callable[[int], None] | None = None,
                   on_notice: Callable[[str], None] | None = None) -> Path:
    """Open the runtime, read the inputs, simulate, close: the ``mvg-rt simulate`` job."""
    request, notice = resolve_demo(request)
    if request.prompt is None:
        raise MvgError("--prompt or --report is required with --image: describe the disease state, e.g. 'severe "
                       "cardiomegaly', or give the report of the expected terminal state")
    assert request.image is not None
    options = request.options
    # a second run on this --out, or an --out that is or holds an input, fails here, at once
    with claim_output_dir(options.out, options.overwrite, inputs=request_inputs(request)):
        inputs = load_inputs(request.image, request.prompt, request.negative_prompt, request.record_paths)
        roi = inputs.roi = segment_roi(request.roi, inputs.image, request.runtime.device)  # before the model loads
        inputs.prompt_source = request.prompt_source
        if options.resolution is not None and roi.given:  # a bad mask fails before the model loads
            inputs.roi = roi.resolve(inputs.image.pixels.shape, options.resolution)
        with open_runtime(request.runtime) as runtime:
            runtime.notice = notice
            resolution = options.resolution or runtime.default_resolution
            truncated = prompt_truncation(runtime.model.tokenizer, inputs.prompt)
            notices = [notice,
                       describe_demo_settings(options.demo_settings, resolution) if options.demo_settings else None,
                       f"the prompt is {truncated['tokens']} tokens long but the text encoder reads "
                       f"{truncated['limit']}: the rest is ignored (run.json records what was kept)"
                       if truncated else None]
            for text in filter(None, notices):
                if on_notice is not None:
                    on_notice(text)
            return simulate(runtime, inputs, options, on_step, on_round, on_clip_step, on_clip)


def describe_demo_settings(applied: dict[str, Any], resolution: int) -> str:
    """The line that says which of the demo case's settings replaced the paper's defaults."""
    words = {"strength": "strength {}", "frames": "{} frames per clip", "transition_steps": "{} transition steps",
             "transition_sampler": "{} transition sampler", "fps": "{} fps"}
    parts = [words.get(name, name + " {}").format(str(value).upper() if name == "transition_sampler" else value)
             for name, value in applied.items()]
    return (f"demo settings apply: {', '.join(parts)}, at {resolution} px (the demo model's resolution); "
            "options you pass override them (--help shows the paper's defaults)")


@dataclass
class SimulationResult:
    """Everything the job produced, in memory, before anything is written."""

    states: list[np.ndarray]
    rounds: list[dict[str, Any]]
    frames: list[np.ndarray] | None = None  # the joined video, when transitions ran
    clips: list[dict[str, Any]] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    step_graphs: dict[str, Any] = field(default_factory=dict)  # per pipeline: the step graph's captures, replays


def _run_pie(runtime: Runtime, inputs: SimulationInputs, options: SimulationOptions, original: np.ndarray,
             roi: RoiMask, generator: torch.Generator, on_step: StepCallback | None,
             on_round: Callable[[int], None] | None) -> SimulationResult:
    started = time.perf_counter()
    session = pie_session(runtime.backend, runtime.model, options.pie, original, roi.pixels, inputs.prompt,
                          inputs.negative_prompt, _graphed(runtime, options))
    weight = roi.weight
    result = SimulationResult(states=[original], rounds=[],
                              timings={"pie_setup_seconds": round(time.perf_counter() - started, 4)})
    round_start = time.perf_counter()

    def finished(index: int, state: torch.Tensor) -> None:
        nonlocal round_start
        state_pixels = state.cpu().numpy()
        result.rounds.append({"round": index, "seconds": round(time.perf_counter() - round_start, 4),
                              "change": round_changes([result.states[-1], state_pixels], weight)[0]})
        result.states.append(state_pixels)
        round_start = time.perf_counter()
        if on_round is not None:
            on_round(index)

    run_pie(session, generator, on_step, finished)
    result.timings["pie_seconds"] = round(time.perf_counter() - started, 4)
    result.step_graphs["pie"] = session.describe_graphs()
    return result


def _run_transitions(runtime: Runtime, inputs: SimulationInputs, options: SimulationOptions, roi: RoiMask,
                     result: SimulationResult, generator: torch.Generator, on_clip_step: ClipStepCallback | None,
                     on_clip: Callable[[int], None] | None) -> None:
    assert options.transition is not None
    started = time.perf_counter()
    sampler = transition_sampler(runtime.backend, runtime.model, options.transition, inputs.prompt,
                                 _graphed(runtime, options))
    clip_start = time.perf_counter()

    def finished(index: int) -> None:
        nonlocal clip_start
        result.clips.append({"clip": index, "seconds": round(time.perf_counter() - clip_start, 4)})
        clip_start = time.perf_counter()
        if on_clip is not None:
            on_clip(index)

    states = [torch.from_numpy(state) for state in result.states]
    frames = run_transitions(sampler, states, torch.from_numpy(roi.weight.astype(np.float32)),
                             generator, on_clip_step, finished)
    result.frames = [frame.numpy() for frame in frames]
    result.timings["transition_seconds"] = round(time.perf_counter() - started, 4)
    result.step_graphs["transitions"] = sampler.describe_graphs()


def _graphed(runtime: Runtime, options: SimulationOptions) -> bool:
    return runtime.graphed_loops if options.graphed_loops is None else options.graphed_loops


def _record(runtime: Runtime, inputs: SimulationInputs, options: SimulationOptions, resolution: int,
            roi: RoiMask, result: SimulationResult) -> dict[str, Any]:
    """run.json. Paths (the input's, the model and engines folders') only where the user asked for them:
    ``load_inputs`` keeps the input's path only with --record-paths, and that decides for all of them."""
    record_paths = inputs.image_path is not None
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
        "prompt_source": inputs.prompt_source or {"kind": "prompt"},
        "prompt_truncated": prompt_truncation(runtime.model.tokenizer, inputs.prompt),
        "negative_prompt": inputs.negative_prompt,
        **({"demo_settings": {**options.demo_settings, "resolution": resolution}} if options.demo_settings else {}),
        "roi": {"source": roi.source, "coverage": round(roi.coverage, 4),
                **(roi.record if record_paths else without_paths(roi.record))},
        "resolution": resolution,
        "seed": options.seed,
        "pie": options.pie.to_dict(),
        "transition": options.transition.to_dict() if options.transition else None,
        "graphed_loops": _graphed(runtime, options),
        **({"step_graphs": result.step_graphs} if _graphed(runtime, options) else {}),
        "video": {"frames": len(result.frames or result.states), "fps": options.fps},
        "backend": runtime.describe(record_paths),
        "model": runtime.provenance if record_paths else without_paths(runtime.provenance),
        "versions": package_versions(),
        "timings": result.timings,
        "rounds": result.rounds,
        "clips": result.clips,
        "eval": {**evaluate_states(result.states, roi.weight,
                                   _vae_embedding(runtime), "posterior mean of the run's own VAE encoder"),
                 "transitions": transitions_report(result.frames or [], result.states, roi.weight,
                                                   options.transition.frames if options.transition else None)},
        **options.annotations,
    }


def _vae_embedding(runtime: Runtime) -> Callable[[np.ndarray], torch.Tensor]:
    """The identity embedding (VAE-I) from the model that made the run, not from any other model."""

    def embed(image: np.ndarray) -> torch.Tensor:
        pixels = images_to_model_range(torch.from_numpy(image)[None]).to(runtime.backend.device)
        return runtime.backend.encode_images(pixels)[:, : runtime.model.latent_channels].cpu()

    return embed


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
    """Run the whole job on an opened runtime; returns the output folder (complete, or absent on error).

    The runtime is the caller's (opened once, it can serve many cases); the output folder
    is checked before any computation and written all at once at the end.
    """
    resolution = check_resolution(options.resolution or runtime.default_resolution, runtime.model.vae_scale_factor,
                                  native=runtime.default_resolution)
    if options.transition is not None:
        if SEINE.name not in runtime.backend.components:
            raise MvgError(  # before the PIE rounds, not after them
                f"the {runtime.backend.name} backend has no SEINE transition network (a model folder without "
                "seine/, or engines exported without it): pass --seine CKPT (the SEINE checkpoint), or "
                "--no-transition for the PIE states only")
    original = resize_and_crop(inputs.image.pixels, resolution)
    roi = inputs.roi.resolve(inputs.image.pixels.shape, resolution) if isinstance(inputs.roi, RoiRequest) \
        else inputs.roi or full_mask(resolution)
    with staged_output_dir(options.out, options.overwrite, kind="run") as staging:
        generator = torch.Generator().manual_seed(options.seed)
        result = _run_pie(runtime, inputs, options, original, roi, generator, on_step, on_round)
        if options.transition is not None:
            _run_transitions(runtime, inputs, options, roi, result, generator, on_clip_step, on_clip)
        _write(staging, _record(runtime, inputs, options, resolution, roi, result), roi, result, options.fps)
    return options.out
