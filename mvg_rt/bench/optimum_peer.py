"""The Optimum peer, run by the Python that has Optimum: ``python optimum_peer.py JOB RESULT``.

Standalone on purpose (numpy, torch, PIL, optimum only): Optimum pins a transformers
4.x / huggingface_hub 0.x stack that cannot share an environment with mvg-rt, so
mvg_rt may not be importable here. It exports the model folder with Optimum's own
exporter (once; cached), loads ``ORTStableDiffusionImg2ImgPipeline`` with its defaults
(what a user gets), runs one 1-step warm-up call, then the timed img2img calls with the
bench's settings and seed, and writes timings (as a bench row's metrics) and the output.
"""

from __future__ import annotations

import importlib.metadata as md
import json
import os
import shutil
import sys
import time
from pathlib import Path


def _hwm_bytes() -> int | None:
    with open("/proc/self/status") as handle:
        return next((int(line.split()[1]) * 1024 for line in handle if line.startswith("VmHWM:")), None)


def main(job_path: str, result_path: str) -> None:
    import numpy as np
    import torch
    from PIL import Image

    job = json.loads(Path(job_path).read_text())
    settings, onnx_dir, export_seconds = job["settings"], Path(job["onnx_dir"]), None
    if not (onnx_dir / "model_index.json").is_file():
        from optimum.exporters.onnx import main_export

        partial = onnx_dir.with_name(onnx_dir.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        started = time.perf_counter()
        main_export(job["view"], output=str(partial), task="image-to-image")
        export_seconds = time.perf_counter() - started
        shutil.rmtree(onnx_dir, ignore_errors=True)
        partial.rename(onnx_dir)

    from optimum.onnxruntime import ORTStableDiffusionImg2ImgPipeline

    started = time.perf_counter()
    pipe = ORTStableDiffusionImg2ImgPipeline.from_pretrained(str(onnx_dir))
    pipe.set_progress_bar_config(disable=True)
    load = time.perf_counter() - started
    image = Image.fromarray(np.load(job["original"]))

    def call(steps: int, strength: float) -> np.ndarray:
        out = pipe(settings["prompt"], image=image, strength=strength, num_inference_steps=steps,
                   guidance_scale=settings["guidance"], negative_prompt=settings["negative_prompt"] or None,
                   generator=torch.Generator().manual_seed(settings["seed"]), output_type="np").images[0]
        return (np.asarray(out) * 255).round().astype(np.uint8)

    started = time.perf_counter()
    call(1, 1.0)
    warm = time.perf_counter() - started
    with open("/proc/self/clear_refs", "w") as handle:  # the peak below covers the timed calls only
        handle.write("5")
    samples, output = [], None
    for _ in range(settings["repeat"]):
        started = time.perf_counter()
        output = call(settings["steps"], settings["strength"])
        samples.append(time.perf_counter() - started)
    np.save(job["output"], output)
    versions = {}
    for package in ("optimum", "optimum-onnx", "transformers", "diffusers", "onnxruntime", "torch"):
        try:
            versions[package] = md.version(package)
        except md.PackageNotFoundError:
            pass
    values = np.asarray(samples)
    result = {
        "export_s": export_seconds, "load_s": load, "warmup_s": warm, "median_s": float(np.median(values)),
        "p10_s": float(np.percentile(values, 10)), "p90_s": float(np.percentile(values, 90)),
        "min_s": float(values.min()), "samples_s": [round(float(v), 6) for v in values],
        "steps": min(int(settings["steps"] * settings["strength"]), settings["steps"]),
        "memory": {"peak_rss_bytes": _hwm_bytes(), "peak_rss_scope": "timed calls (VmHWM reset before them)"},
        "versions": versions, "scheduler": type(pipe.scheduler).__name__, "onnx_dir": str(onnx_dir),
    }
    Path(result_path).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main(sys.argv[1], sys.argv[2])
