"""``mvg-rt simulate``: turn command-line options into a simulation job and show its progress."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import click
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from mvg_rt.errors import MvgError
from mvg_rt.io.images import check_resolution
from mvg_rt.io.masks import choose_mask
from mvg_rt.io.output_dir import check_output_dir
from mvg_rt.runtime.pipelines.pie import PieSettings
from mvg_rt.runtime.pipelines.transition import TransitionSettings
from mvg_rt.simulation import SimulationOptions, load_inputs, simulate


def _open_runtime(opts: dict[str, Any]):
    from mvg_rt.demo.default import demo_runtime
    from mvg_rt.runtime.factory import torch_runtime

    backend = opts.get("backend") or "torch"
    if backend != "torch":
        return _open_engines_runtime(backend, opts)
    if opts.get("engines_dir"):
        raise MvgError("--engines is read by --backend ort/trt; add --backend ort, or drop --engines")
    if opts["unet_dir"] and not opts["model_dir"]:
        raise MvgError("--unet needs --model-dir (the SD folder that provides the text encoder, VAE and scheduler)")
    if opts["seine"] and not opts["model_dir"]:
        raise MvgError("--seine needs --model-dir (SEINE uses that folder's text encoder and VAE)")
    with_seine = not opts["no_transition"]
    dtype = _torch_dtype(opts)
    if opts["model_dir"]:
        runtime = torch_runtime(opts["model_dir"], opts["unet_dir"], opts["device"], seine=opts["seine"],
                                with_seine=with_seine, dtype=dtype)
    elif dtype != torch.float32:
        raise MvgError("--precision fp16 with --backend torch needs --model-dir (the embedded demo model runs fp32)")
    else:
        runtime = demo_runtime(opts["device"], with_seine=with_seine)
    if opts.get("cuda_graphs"):
        from mvg_rt.runtime.backends.cuda_graphs import GraphedBackend

        runtime.backend = GraphedBackend(runtime.backend)
    return runtime


def _torch_dtype(opts: dict[str, Any]) -> torch.dtype:
    """--precision for the PyTorch backend: fp16 is the GPU baseline, so it needs a CUDA device."""
    if (opts.get("precision") or "fp32") == "fp32":
        return torch.float32
    if opts.get("precision") == "int8":
        raise MvgError("--precision int8 runs the Q/DQ UNet of mvg-rt export --int8: add --backend ort --engines DIR "
                       "(or --backend trt)")
    if not str(opts["device"]).startswith("cuda"):
        raise MvgError(f"--precision fp16 with --backend torch runs on a GPU: pass --device cuda (got --device "
                       f"{opts['device']}) or use --precision fp32")
    return torch.float16


def _check_gpu_options(opts: dict[str, Any]) -> None:
    """--cuda-graphs / --low-memory are GPU features: refused on a CPU device with one line."""
    for flag, key in (("--cuda-graphs", "cuda_graphs"), ("--low-memory", "low_memory")):
        if opts.get(key) and not str(opts["device"]).startswith("cuda"):
            raise MvgError(f"{flag} needs a CUDA device (got --device {opts['device']}): pass --device cuda or "
                           f"drop {flag}")
    if opts.get("cuda_graphs"):
        from mvg_rt.runtime.backends.cuda_graphs import require_cuda_graphs

        require_cuda_graphs(opts["device"])


def _open_engines_runtime(backend: str, opts: dict[str, Any]):
    """An exported engines folder; a --model-dir/--unet given too must be the one it was exported from."""
    from mvg_rt.runtime.factory import engines_runtime

    if not opts.get("engines_dir"):
        raise MvgError(f"--backend {backend} needs --engines DIR (write one with mvg-rt export --model-dir DIR "
                       "--out engines/NAME)")
    options: dict[str, Any] = {}
    if backend == "trt":
        options = {"cuda_graphs": bool(opts.get("cuda_graphs")), "low_memory": bool(opts.get("low_memory"))}
    elif backend == "ort" and opts.get("cuda_graphs"):
        from mvg_rt.runtime.backends.onnxruntime_backend import OrtSettings

        options = {"settings": OrtSettings(cuda_graph=True)}
    runtime = engines_runtime(backend, opts["engines_dir"], opts.get("precision") or "fp32", opts["device"],
                              **options)
    if opts["model_dir"] or opts["unet_dir"]:
        from mvg_rt.artifacts.manifest import Manifest
        from mvg_rt.models.provenance import check_source

        check_source(Manifest.read(opts["engines_dir"]), opts["model_dir"], opts["unet_dir"])
    return runtime


def _apply_demo_settings(opts: dict[str, Any], explicit: set[str]) -> None:
    """The demo case's recommended settings, for the options the user left at their defaults."""
    from mvg_rt.demo.default import DEMO_CASE

    for name, value in DEMO_CASE.settings.items():
        if name not in explicit:
            opts[name] = value


def run(explicit: set[str] | None = None, **opts: Any) -> None:
    console = Console(stderr=True)
    if not opts["model_dir"] and (opts.get("backend") or "torch") == "torch":
        _apply_demo_settings(opts, explicit or set())
    settings = PieSettings(rounds=opts["rounds"], strength=opts["strength"], steps=opts["steps"],
                           guidance_scale=opts["guidance"], beta1=opts["beta1"], beta2=opts["beta2"],
                           scheduler=opts["scheduler"])
    _check_gpu_options(opts)
    transition = None if opts["no_transition"] else TransitionSettings(
        frames=opts["frames"], steps=opts["transition_steps"], sampler=opts["transition_sampler"],
        guidance_scale=opts["transition_guidance"], negative_prompt=opts["negative_prompt"],
        decode_batch=1 if opts.get("low_memory") else TransitionSettings.decode_batch)
    out: Path = opts["out"] or Path("runs") / time.strftime("mvg-%Y%m%d-%H%M%S")
    check_output_dir(out, opts["overwrite"])
    if opts["fps"] <= 0:
        raise MvgError(f"--fps must be positive (got {opts['fps']})")

    from mvg_rt.demo.default import DEMO_CASE

    uses_demo_image = opts["image"] is None
    image_path = str(DEMO_CASE.image) if uses_demo_image else opts["image"]
    prompt = opts["prompt"] or (DEMO_CASE.prompt if uses_demo_image else None)
    if prompt is None:
        raise MvgError("--prompt is required with --image: describe the disease state, e.g. 'severe cardiomegaly'")
    inputs = load_inputs(image_path, prompt, opts["negative_prompt"], opts["record_paths"])

    runtime = _open_runtime(opts)
    resolution = check_resolution(opts["resolution"] or runtime.default_resolution, runtime.model.vae_scale_factor)
    no_roi_given = not (opts["mask_path"] or opts["roi_box"] or opts["roi_ellipse"])
    mask_path = str(DEMO_CASE.mask) if uses_demo_image and no_roi_given else opts["mask_path"]
    inputs.roi = choose_mask(inputs.image.pixels.shape, resolution, mask_path, opts["roi_box"],
                             opts["roi_ellipse"], opts["feather"])
    options = SimulationOptions(pie=settings, transition=transition, graphed_loops=bool(opts.get("cuda_graphs")),
                                resolution=resolution, seed=opts["seed"], fps=opts["fps"],
                                out=out, overwrite=opts["overwrite"], record_paths=opts["record_paths"])
    if runtime.notice:
        console.print(f"[yellow]note:[/yellow] {runtime.notice}")

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True) as progress:
        rounds_task = progress.add_task("PIE rounds", total=settings.rounds)
        steps_task = progress.add_task("denoising steps", total=None)

        def on_step(round_index: int, step: int, steps: int) -> None:
            progress.update(steps_task, completed=step, total=steps,
                            description=f"round {round_index} steps")

        def on_round(round_index: int) -> None:
            progress.update(rounds_task, completed=round_index)

        clips_task = progress.add_task("transition clips", total=settings.rounds if transition else 0)

        def on_clip_step(clip_index: int, step: int, steps: int) -> None:
            progress.update(steps_task, completed=step, total=steps, description=f"clip {clip_index} steps")

        def on_clip(clip_index: int) -> None:
            progress.update(clips_task, completed=clip_index)

        folder = simulate(runtime, inputs, options, on_step=on_step, on_round=on_round, on_clip_step=on_clip_step,
                          on_clip=on_clip)
    video = f"{settings.rounds * (transition.frames - 1) + 1} frames" if transition else "the states"
    click.echo(f"wrote {settings.rounds + 1} states, {video} as progression.mp4/.gif, mask.png and run.json "
               f"to {folder}")
