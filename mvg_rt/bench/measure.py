"""Every row of one variant on one runtime from ``open_runtime`` (components, PIE rounds, simulation), and
the PIE round's peer, diffusers' img2img in PyTorch eager, on the demo case with a fixed seed: it draws random
numbers in a PIE round's order, so with the ROI = the whole image and beta2 = 1 the outputs must agree. What
each row times: benchmarks/README.md ("How the bench works")."""

from __future__ import annotations

import json
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from mvg_rt.bench.config import BenchConfig, E2ESettings
from mvg_rt.bench.machine import clocked, timed
from mvg_rt.bench.rows import Row, attempt
from mvg_rt.components import COMPONENTS
from mvg_rt.demo.default import DEMO_CASE
from mvg_rt.io.images import read_image, resize_and_crop
from mvg_rt.io.masks import RoiRequest
from mvg_rt.runtime.factory import Runtime, RuntimeSpec, open_runtime
from mvg_rt.simulation import SimulationOptions, load_inputs, simulate


def demo_original(resolution: int) -> np.ndarray:
    """The demo image, (H, W, 3) uint8 at ``resolution``."""
    return resize_and_crop(read_image(DEMO_CASE.image).pixels, resolution)


def run_demo_simulation(runtime: Runtime, settings: E2ESettings, transitions: bool, out: Path) -> dict[str, Any]:
    """``simulate`` on the demo case (its heart ROI) into ``out``; returns its run.json."""
    inputs = load_inputs(str(DEMO_CASE.image), settings.prompt, settings.negative_prompt)
    inputs.roi = RoiRequest(str(DEMO_CASE.mask))
    simulate(runtime, inputs, SimulationOptions(pie=settings.pie(), resolution=settings.resolution, seed=settings.seed,
                                                transition=settings.transition() if transitions else None, out=out))
    return json.loads((out / "run.json").read_text())


def measure_variant(spec: RuntimeSpec, config: BenchConfig, inputs: dict[str, dict[str, Tensor]]) -> list[Row]:
    """All rows of ``spec``, in this process (the runner may call it in a fresh one)."""
    label, runtime = spec.label, None
    opened = Row("runtime", label, spec.to_dict())

    def open_() -> Row:
        nonlocal runtime
        runtime, opened.metrics["open_s"] = clocked(lambda: open_runtime(spec))
        opened.metrics["backend"] = runtime.describe(record_paths=True)  # a bench report names what it measured
        return opened

    rows = [attempt(opened, open_)]
    if runtime is None:
        return rows
    with runtime, tempfile.TemporaryDirectory(prefix="mvg-rt-bench-") as tmp:
        if config.e2e:  # every network once at the timed shapes (ORT sessions, TensorRT contexts)
            attempt(opened, lambda: warm_up(runtime, opened, config, Path(tmp) / "warm-up"))
        for component in config.components:
            rows.append(attempt(Row("component", label, spec.to_dict(), component),
                                lambda: component_row(runtime, component, inputs[component], config)))
        if config.e2e:
            original = demo_original(config.e2e_settings.resolution)
            for stepper in config.steppers if not spec.cuda_graphs else ("auto",):
                rows.append(attempt(Row("pie_round", round_label(spec, stepper), spec.to_dict()),
                                    lambda: round_row(runtime, config.e2e_settings, original, stepper)))
            rows.append(attempt(Row("simulation", f"mvg-rt {label}", spec.to_dict()),
                                lambda: simulation_row(runtime, config, Path(tmp) / "simulation")))
    return rows


def warm_up(runtime: Runtime, row: Row, config: BenchConfig, out: Path) -> Row:
    """One short ``simulate``: one round of one step, a two-step clip."""
    short = replace(config.e2e_settings, rounds=1, steps=2, strength=0.5, transition_steps=2)
    _, row.metrics["warmup_s"] = clocked(lambda: run_demo_simulation(runtime, short, config.transitions, out),
                                         runtime.backend.device)
    return row


def round_label(spec: RuntimeSpec, stepper: str) -> str:
    return f"mvg-rt {spec.label}" + (" (scheduler step)" if stepper == "scheduler" else "")


def component_row(runtime: Runtime, component: str, feeds: dict[str, Tensor], config: BenchConfig) -> Row:
    backend, spec = runtime.backend, COMPONENTS[component]
    on_device = {k: v.to(backend.device) for k, v in feeds.items()}
    _, first_call = clocked(lambda: backend.infer(spec, on_device), backend.device)  # ORT opens its session here
    stats, output = timed(lambda: backend.infer(spec, on_device)[spec.output_names[0]], config.repeat,
                          backend.device, max(config.warmup - 1, 0), config.row_budget_s)
    metrics = {"shapes": {k: list(v.shape) for k, v in feeds.items()}, **stats, "warmup": config.warmup,
               "repeat": len(stats["samples_s"]), "first_call_s": first_call}
    return Row("component", runtime.spec.label, runtime.spec.to_dict(), component, metrics,
               outputs={"output": output.float().cpu().numpy()})


def round_row(runtime: Runtime, settings: E2ESettings, original: np.ndarray, stepper: str) -> Row:
    """One PIE round with the ROI = the whole image and beta2 = 1 (img2img), after its session setup."""
    from mvg_rt.runtime.pipelines.pie import pie_session

    device = runtime.backend.device
    session, setup = clocked(lambda: pie_session(
        runtime.backend, runtime.model, settings.pie(rounds=1, beta2=1.0), original, np.full(original.shape[:2], 255, np.uint8),
        settings.prompt, settings.negative_prompt, runtime.graphed_loops, stepper), device)
    previous = torch.from_numpy(original).to(device)
    stats, output = timed(lambda: session.run_round(previous, torch.Generator().manual_seed(settings.seed)),
                          settings.repeat, device)
    metrics = {"stepper": stepper, "graphed_loops": runtime.graphed_loops, "setup_s": setup, **stats,
               "steps": settings.denoising_steps, "per_step_s": stats["median_s"] / settings.denoising_steps}
    return Row("pie_round", round_label(runtime.spec, stepper), runtime.spec.to_dict(), metrics=metrics,
               outputs={"output": output.cpu().numpy()})


def simulation_row(runtime: Runtime, config: BenchConfig, out: Path) -> Row:
    """``simulate``'s own stage timings (its run.json), its final state and first clip."""
    from PIL import Image

    stats, record = timed(lambda: run_demo_simulation(runtime, config.e2e_settings, config.transitions, out), 1,
                          runtime.backend.device)
    timings = record["timings"]
    metrics = {"pie_setup_s": timings["pie_setup_seconds"], "pie_run_s": timings["pie_seconds"],
               "round_s": [r["seconds"] for r in record["rounds"]], "clip_s": [c["seconds"] for c in record["clips"]],
               "transitions_s": timings.get("transition_seconds"),
               "simulation_s": timings["pie_seconds"] + timings.get("transition_seconds", 0.0),
               "simulate_call_s": stats["median_s"], "graphed_loops": record["graphed_loops"],
               "memory": stats["memory"]}

    def png(paths: list[Path]) -> np.ndarray:
        return np.stack([np.asarray(Image.open(p).convert("RGB")) for p in paths])

    outputs = {"final_state": png(sorted((out / "states").glob("*.png"))[-1:])[0]}
    if config.transitions:
        outputs["first_clip"] = png(sorted((out / "frames").glob("*.png"))[: config.e2e_settings.frames])
    return Row("simulation", f"mvg-rt {runtime.spec.label}", runtime.spec.to_dict(), metrics=metrics,
               outputs=outputs)


def load_diffusers_img2img(model_dir: Path, device: str, dtype: torch.dtype) -> Any:
    from diffusers import StableDiffusionImg2ImgPipeline

    pipe = StableDiffusionImg2ImgPipeline.from_pretrained(str(model_dir), safety_checker=None, torch_dtype=dtype,
                                                          requires_safety_checker=False, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def img2img_call(pipe: Any, image: np.ndarray, settings: E2ESettings, steps: int | None = None,
                 strength: float | None = None, callback: Any = None) -> np.ndarray:
    """One diffusers img2img call with the bench's settings; (H, W, 3) uint8 as numpy_to_pil rounds."""
    from PIL import Image

    out = pipe(settings.prompt, image=Image.fromarray(image), strength=strength or settings.strength,
               num_inference_steps=steps or settings.steps, guidance_scale=settings.guidance,
               negative_prompt=settings.negative_prompt or None, output_type="np", callback_on_step_end=callback,
               generator=torch.Generator().manual_seed(settings.seed)).images[0]
    return (out * 255).round().astype(np.uint8)


def diffusers_row(model_dir: Path, settings: E2ESettings, device: str, precision: str) -> Row:
    import diffusers

    dtype = torch.float16 if precision == "fp16" else torch.float32
    pipe, load = clocked(lambda: load_diffusers_img2img(model_dir, device, dtype), device)
    original = demo_original(settings.resolution)
    _, warm = clocked(lambda: img2img_call(pipe, original, settings, steps=1, strength=1.0), device)  # every network
    stats, output = timed(lambda: img2img_call(pipe, original, settings), settings.repeat, device)
    metrics = {"peer": "diffusers", "load_s": load, "warmup_s": warm, **stats, "steps": settings.denoising_steps,
               "per_step_s": stats["median_s"] / settings.denoising_steps, "scheduler": type(pipe.scheduler).__name__,
               "versions": {"diffusers": diffusers.__version__}}
    return Row("pie_round", f"diffusers img2img (PyTorch eager {precision})", metrics=metrics,
               outputs={"output": output})
