"""What each FP32 island of the FP16 SEINE graph buys: error vs the PyTorch FP32 module, per choice.

Exports one SEINE (random weights, the new temporal layers and extra input channels made
live as in ``build_seine``) to FP32 ONNX, converts it to FP16 with ``export/fp16.py`` under
cumulative keep-in-FP32 choices, runs every graph on ONNX Runtime's CPU EP and compares it
with the FP32 module by ``mvg-rt check``'s measures (max abs / max(1, max|ref|), cosine).
With ``--reference-evaluator`` the graphs also run op by op in ``onnx.reference`` (every
tensor rounded to FP16, as GPU kernels store them; slow: tiny config only).

    python benchmarks/seine_fp16_policy.py --config small --latent 32 --frames 8 \
        --out benchmarks/results/cpu-2core/seine_fp16_policy.json

``small`` is the published model's first two levels (320 and 640 channels, 8 heads of
40 and 80 dims, rotary 32, 768-wide text, two layers per block: the real block structure
at a size a 2-core CPU exports in about a minute); ``tiny`` is the test config.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from onnx.reference import ReferenceEvaluator

from mvg_rt.check.components import compare_outputs
from mvg_rt.check.tolerances import COMPONENT
from mvg_rt.components import SEINE
from mvg_rt.export.fp16 import KEEP_FP32_OPS, convert_to_fp16
from mvg_rt.export.onnx_export import export_component
from mvg_rt.models.builders import enliven_new_layers
from mvg_rt.models.seine_unet import (
    CROSS_DOWN,
    CROSS_UP,
    PLAIN_DOWN,
    PLAIN_UP,
    SeineUNet3D,
    load_builtin_config,
)

# Cumulative: each row keeps everything the row above kept, plus one more choice.
VARIANTS = (
    ("all FP16 (converter defaults only)", (), False),
    ("+ timestep embedding FP32", (), True),
    ("+ norms FP32 (the shipped policy)", KEEP_FP32_OPS, True),
    ("+ Softmax FP32", KEEP_FP32_OPS + ("Softmax",), True),
)


def config(name: str):
    if name == "tiny":
        return load_builtin_config("tiny")
    return replace(load_builtin_config("full"), block_out_channels=(320, 640),
                   down_block_types=(CROSS_DOWN, PLAIN_DOWN), up_block_types=(PLAIN_UP, CROSS_UP))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", choices=("tiny", "small"), default="small")
    parser.add_argument("--latent", type=int, default=32)
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--reference-evaluator", action="store_true")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)

    cfg = config(args.config)
    torch.manual_seed(0)
    model = enliven_new_layers(SeineUNet3D(cfg).eval(), seed=1)
    g = torch.Generator().manual_seed(2)
    feeds = (torch.randn(2, cfg.in_channels, args.frames, args.latent, args.latent, generator=g),
             torch.tensor([999.0, 20.0]), torch.randn(2, 77, cfg.cross_attention_dim, generator=g))
    with torch.no_grad():
        reference = model(*feeds)
    numpy_feeds = {n: t.numpy() for n, t in zip(SEINE.input_names, feeds, strict=True)}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = export_component(model, SEINE, feeds, Path(tmp) / "fp32.onnx")
        for label, ops, timestep in VARIANTS:
            path = convert_to_fp16(fp32, Path(tmp) / "fp16.onnx", keep_fp32_ops=ops, keep_timestep_fp32=timestep)
            engines = {"onnxruntime CPU EP": lambda p=path: ort.InferenceSession(
                str(p), providers=["CPUExecutionProvider"]).run(None, numpy_feeds)[0]}
            if args.reference_evaluator:
                engines["onnx.reference (op by op FP16)"] = lambda p=path: ReferenceEvaluator(str(p)).run(
                    None, numpy_feeds)[0]
            for engine, run in engines.items():
                start = time.perf_counter()
                out = torch.from_numpy(np.asarray(run()))
                max_abs, _, cosine = compare_outputs(reference, out)
                scale = max(1.0, float(reference.abs().max()))
                rows.append({"variant": label, "engine": engine, "max_abs": max_abs, "max_abs_scaled": max_abs / scale,
                             "cosine": cosine, "seconds": round(time.perf_counter() - start, 2)})
                print(json.dumps(rows[-1]), flush=True)
    tolerance = COMPONENT["fp16"]
    report = {"config": args.config, "seine_config": cfg.to_dict(), "latent": args.latent, "frames": args.frames,
              "batch": 2, "timesteps": [999.0, 20.0], "max_abs_ref": float(reference.abs().max()),
              "tolerance": {"max_abs_scaled": tolerance.max_abs, "cosine": tolerance.cosine}, "rows": rows,
              "versions": {"torch": torch.__version__, "onnxruntime": ort.__version__},
              "machine": platform.processor() or platform.machine()}
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
