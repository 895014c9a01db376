"""One PIE round (= img2img: full ROI, beta2 = 1) on the CPU: mvg-rt's PyTorch loop vs diffusers, side by side.

Both pipelines run the SAME module objects (SD 1.4 architecture, random weights, built
once in this process), on the bundled demo image at 256x256, with the same seed, so the
only differences are the loops around the networks and the process's allocator state.
Every UNet call is instrumented (forward hooks): CPU seconds, wall seconds and minor page
faults, which is how the cause of the gap in the committed bench was found (glibc
returning freed activations to the OS, see ``runtime/backends/cpu_memory.py``).

Rows, in this order, in one process:

1. diffusers ``StableDiffusionImg2ImgPipeline``, glibc's default allocator settings;
2. mvg-rt ``PieSession`` on ``TorchBackend(retain_cpu_memory=False)`` (the old behaviour);
3. mvg-rt ``PieSession`` on ``TorchBackend()`` (the default now: freed memory retained);
4. diffusers again, in the now-retaining process (shows the gain is the allocator's).

    python benchmarks/pie_round_cpu.py --steps 20 --strength 0.5 --out benchmarks/results/cpu-2core
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import time
from pathlib import Path
from typing import Any

import diffusers
import numpy as np
import psutil
import torch
from diffusers import StableDiffusionImg2ImgPipeline

from mvg_rt.bench.config import E2ESettings
from mvg_rt.bench.machine import load_average
from mvg_rt.bench.measure import demo_original, img2img_call
from mvg_rt.bench.rows import difference
from mvg_rt.io.jsonio import finite_json
from mvg_rt.models.builders import build_models
from mvg_rt.models.component_modules import component_modules
from mvg_rt.runtime.backends.torch_backend import TorchBackend
from mvg_rt.runtime.pipelines.model_info import ModelInfo
from mvg_rt.runtime.pipelines.pie import PieSettings, pie_session


class UNetCallMeter:
    """Forward hooks on the UNet: per call CPU s, wall s, minor page faults."""

    def __init__(self, unet: torch.nn.Module) -> None:
        self.calls: list[dict[str, float]] = []
        self._start: tuple[float, float, int] | None = None
        unet.register_forward_pre_hook(self._before)
        unet.register_forward_hook(self._after)

    @staticmethod
    def _now() -> tuple[float, float, int]:
        return time.process_time(), time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF).ru_minflt

    def _before(self, *_: Any) -> None:
        self._start = self._now()

    def _after(self, *_: Any) -> None:
        cpu, wall, faults = (b - a for a, b in zip(self._start, self._now()))
        self.calls.append({"cpu_s": cpu, "wall_s": wall, "minor_faults": faults})

    def take(self) -> dict[str, Any]:
        calls, self.calls = self.calls, []
        return {"unet_calls": len(calls),
                "unet_cpu_s_per_call": float(np.median([c["cpu_s"] for c in calls])),
                "unet_wall_s_per_call": float(np.median([c["wall_s"] for c in calls])),
                "unet_minor_faults_per_call": int(np.median([c["minor_faults"] for c in calls]))}


def timed(run: Any) -> tuple[dict[str, float], Any]:
    cpu, wall = time.process_time(), time.perf_counter()
    out = run()
    return {"round_cpu_s": time.process_time() - cpu, "round_wall_s": time.perf_counter() - wall}, out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--strength", type=float, default=0.5)
    parser.add_argument("--size", choices=("sd14", "tiny"), default="sd14", help="tiny: a smoke test of this script")
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    settings = E2ESettings(resolution=args.resolution, steps=args.steps, strength=args.strength, beta2=1.0)
    models = build_models(args.size, seed=0)
    scheduler_cls = getattr(diffusers, models.scheduler_config["_class_name"])
    pipe = StableDiffusionImg2ImgPipeline(vae=models.vae, text_encoder=models.text_encoder, tokenizer=models.tokenizer,
                                          unet=models.unet, scheduler=scheduler_cls.from_config(models.scheduler_config),
                                          safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    info = ModelInfo(models.tokenizer, models.scheduler_config, models.vae_scaling_factor, models.vae_scale_factor,
                     models.latent_channels)
    meter = UNetCallMeter(models.unet)
    original = demo_original(settings.resolution)
    img2img_call(pipe, original, settings, steps=1, strength=1.0)  # warm-up: every network once
    meter.take()

    def diffusers_row(label: str) -> tuple[dict[str, Any], np.ndarray]:
        times, image = timed(lambda: img2img_call(pipe, original, settings))
        return {"pipeline": label, **times, **meter.take()}, image

    def mvg_row(label: str, retain: bool) -> tuple[dict[str, Any], np.ndarray]:
        """``PieSession.run_round`` as the bench times it: the session's one-off setup (prompt and
        original encoded once per simulation) is reported apart."""
        backend = TorchBackend(component_modules(models), retain_cpu_memory=retain)
        pie = PieSettings(rounds=1, strength=settings.strength, steps=settings.steps,
                          guidance_scale=settings.guidance, beta1=settings.beta1, beta2=1.0)
        setup, session = timed(lambda: pie_session(backend, info, pie, original,
                                                   np.full(original.shape[:2], 255, np.uint8), settings.prompt,
                                                   settings.negative_prompt))
        times, image = timed(lambda: session.run_round(torch.from_numpy(original),
                                                       torch.Generator().manual_seed(settings.seed)))
        return {"pipeline": label, **times, "setup_wall_s": setup["round_wall_s"], **meter.take(),
                "backend": backend.describe()}, image.numpy()

    rows, images = [], []
    for make in (lambda: diffusers_row("diffusers img2img, default allocator"),
                 lambda: mvg_row("mvg-rt torch PieSession, default allocator (before)", False),
                 lambda: mvg_row("mvg-rt torch PieSession, freed memory retained (after)", True),
                 lambda: diffusers_row("diffusers img2img, freed memory retained")):
        row, image = make()
        row["rss_gib_after"] = round(psutil.Process().memory_info().rss / 2**30, 2)
        rows.append(row)
        images.append(image)
        print(json.dumps(row), flush=True)
    for row, image in zip(rows, images):
        row["vs_first_diffusers"] = difference(image, images[0])
        row["speedup_vs_first_diffusers"] = {"wall": rows[0]["round_wall_s"] / row["round_wall_s"],
                                             "cpu": rows[0]["round_cpu_s"] / row["round_cpu_s"]}
    report = {"settings": settings.to_dict(), "threads": torch.get_num_threads(), "rows": rows,
              "load_average_after": load_average(), "machine": platform.processor() or platform.machine(),
              "versions": {"torch": torch.__version__, "diffusers": diffusers.__version__}}
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "pie_round_cpu.json").write_text(finite_json(report))  # PSNR of identical images: null
        (args.out / "pie_round_cpu.md").write_text(markdown(report))


def markdown(report: dict[str, Any]) -> str:
    s = report["settings"]
    lines = [f"# One PIE round (img2img) on the CPU, one process, {report['threads']} torch threads",
             "",
             (f"SD 1.4 architecture with random weights, {s['resolution']}x{s['resolution']}, {s['steps']} steps "
              f"x strength {s['strength']} = {s['denoising_steps_per_round']} denoising steps, CFG batch 2. "
              f"Load average after the run: {report['load_average_after']} (shared machine: compare CPU seconds "
              "more than wall)."),
             "",
             ("| pipeline | round wall | round CPU | UNet calls | UNet CPU / call | UNet wall / call | "
              "page faults / UNet call | RSS after | vs row 1 (wall, CPU) | PSNR vs row 1 |"),
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in report["rows"]:
        lines.append(f"| {r['pipeline']} | {r['round_wall_s']:.1f} s | {r['round_cpu_s']:.1f} s | {r['unet_calls']} | "
                     f"{r['unet_cpu_s_per_call']:.2f} s | {r['unet_wall_s_per_call']:.2f} s | "
                     f"{r['unet_minor_faults_per_call']:,} | {r['rss_gib_after']} GiB | "
                     f"{r['speedup_vs_first_diffusers']['wall']:.2f}x, {r['speedup_vs_first_diffusers']['cpu']:.2f}x | "
                     f"{r['vs_first_diffusers'].get('psnr_db')} dB |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
