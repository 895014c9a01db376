"""What helps the CPU ONNX Runtime path: one setting at a time, each in a fresh process.

Usage (after ``mvg-rt bench --backend ort`` has exported the model into its cache)::

    python benchmarks/ort_tuning.py --model-dir ~/.cache/mvg-rt/bench/models/sd14-seed0 \\
        --engines ~/.cache/mvg-rt/bench/engines/<key> --out benchmarks/results/ort_tuning.json

Rows (UNet at the bench shape, CFG batch 2, median of ``--repeat`` calls after one warm-up):
PyTorch eager for scale; ORT with the defaults mvg-rt ships (:data:`DEFAULT_SETTINGS`);
then one change each: graph optimisation level, intra-op threads, spinning; the
onnxruntime.transformers fusions (text encoder, where they load; UNet, where they
are tried on the exported graph); I/O binding with preallocated outputs instead of
``session.run`` (per-call overhead, on the full and the tiny UNet). Nothing here is
asserted; the table goes into ``benchmarks/README.md``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from onnxruntime.transformers.fusion_options import FusionOptions
from onnxruntime.transformers.optimizer import optimize_model

from mvg_rt.artifacts.manifest import Manifest
from mvg_rt.bench.config import BenchConfig
from mvg_rt.bench.machine import load_average
from mvg_rt.bench.measure import measure_variant
from mvg_rt.bench.models import ModelSource, component_inputs
from mvg_rt.bench.runner import call
from mvg_rt.runtime.factory import RuntimeSpec


def component_row(spec: Any, component: str, args: argparse.Namespace) -> dict[str, Any]:
    """The bench's component row of ``spec`` (a RuntimeSpec), measured in a fresh process."""
    config = BenchConfig(backends=(spec.backend,), components=(component,), resolution=args.resolution, frames=4,
                         repeat=args.repeat, in_process=False)
    feeds = component_inputs(ModelSource(Path(args.model_dir), None, "tuning"), component, args.resolution, 4)
    opened, *rows = call(config, measure_variant, spec, config, {component: feeds})
    if opened.error or rows[0].error:
        return {"error": opened.error or rows[0].error}
    m = rows[0].metrics
    return {"median_s": m["median_s"], "p10_s": m["p10_s"], "p90_s": m["p90_s"], "load_s": opened.metrics["open_s"],
            "first_call_s": m["first_call_s"], "notes": opened.metrics["backend"].get("notes")}


def iobinding_overhead(model: Path, feeds: dict[str, np.ndarray], repeat: int) -> dict[str, Any]:
    """session.run vs run_with_iobinding (inputs and outputs bound to preallocated CPU arrays)."""
    options = ort.SessionOptions()  # mvg-rt's defaults: all graph optimisations, one thread per core
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    out_name = session.get_outputs()[0].name
    first = session.run([out_name], feeds)[0]
    output = np.empty_like(first)
    binding = session.io_binding()
    for name, array in feeds.items():
        binding.bind_input(name, "cpu", 0, array.dtype, list(array.shape), array.ctypes.data)
    binding.bind_output(out_name, "cpu", 0, output.dtype, list(output.shape), output.ctypes.data)

    def run_plain() -> None:
        session.run([out_name], feeds)

    def run_bound() -> None:
        session.run_with_iobinding(binding)

    samples: dict[str, list[float]] = {"run": [], "iobinding": []}
    for _ in range(repeat):  # interleaved, so drift hits both alike
        for name, run in (("run", run_plain), ("iobinding", run_bound)):
            started = time.perf_counter()
            run()
            samples[name].append(time.perf_counter() - started)
    same = bool(np.array_equal(output, session.run([out_name], feeds)[0]))
    return {k: statistics.median(v) for k, v in samples.items()} | {"identical_output": same}


def unet_fusion_attempt(model: Path) -> dict[str, Any]:
    """Try onnxruntime.transformers' UNet fusions on the exported FP32 graph (CPU-capable fusions only)."""
    options = FusionOptions("unet")
    for flag in ("enable_nhwc_conv", "enable_group_norm", "enable_skip_group_norm", "enable_bias_splitgelu",
                 "enable_packed_qkv", "enable_packed_kv", "enable_bias_add"):
        setattr(options, flag, False)
    started = time.perf_counter()
    try:
        optimized = optimize_model(str(model), model_type="unet", opt_level=0, optimization_options=options,
                                   use_gpu=False, only_onnxruntime=False)
    except Exception as err:  # noqa: BLE001 - the point is to record how it fails
        return {"ok": False, "error": f"{type(err).__name__}: {str(err).splitlines()[0][:200]}",
                "seconds": time.perf_counter() - started}
    return {"ok": True, "fused": optimized.get_fused_operator_statistics(), "seconds": time.perf_counter() - started}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", required=True)
    parser.add_argument("--engines", required=True)
    parser.add_argument("--tiny-model-dir", help="tiny folder for the I/O-binding overhead row")
    parser.add_argument("--tiny-engines", help="its engines")
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)

    source = ModelSource(Path(args.model_dir), None, "tuning")
    report: dict[str, Any] = {"load_average_at_start": load_average(), "resolution": args.resolution, "rows": []}

    def ort(**settings: Any) -> RuntimeSpec:
        return RuntimeSpec("ort", engines_dir=args.engines, ort=settings)

    unet_rows = [
        ("PyTorch eager FP32", "unet", RuntimeSpec(model_dir=args.model_dir, with_seine=False)),
        ("ORT, mvg-rt defaults (opt all, threads = cores, spin on)", "unet", ort()),
        ("ORT, graph optimisation extended", "unet", ort(graph_optimization="extended")),
        ("ORT, graph optimisation basic", "unet", ort(graph_optimization="basic")),
        ("ORT, graph optimisation disabled", "unet", ort(graph_optimization="disable")),
        ("ORT, 1 intra-op thread", "unet", ort(intra_op_threads=1)),
        ("ORT, spinning off", "unet", ort(spin=False)),
        ("ORT text encoder, defaults", "text_encoder", ort()),
        ("ORT text encoder, transformers fusions (clip)", "text_encoder", ort(transformer_fusions=True)),
        ("ORT VAE decoder, defaults", "vae_decoder", ort()),
        ("ORT VAE decoder, transformers fusions (vae)", "vae_decoder", ort(transformer_fusions=True)),
    ]
    for label, component, spec in unet_rows:
        print(f"{label} ...", file=sys.stderr, flush=True)
        row = component_row(spec, component, args)
        report["rows"].append({"label": label, "component": component, "spec": spec.to_dict(), **row})
        print(f"  {row}", file=sys.stderr, flush=True)

    manifest = Manifest.read(args.engines)
    unet_path = manifest.verify(manifest.require("unet", "onnx", "fp32"))
    print("UNet transformers fusions ...", file=sys.stderr, flush=True)
    report["unet_transformer_fusions"] = unet_fusion_attempt(unet_path)
    print(f"  {report['unet_transformer_fusions']}", file=sys.stderr, flush=True)

    feeds = {k: v.numpy() for k, v in component_inputs(source, "unet", args.resolution, 4).items()}
    print("I/O binding, full UNet ...", file=sys.stderr, flush=True)
    report["iobinding_full"] = iobinding_overhead(unet_path, feeds, args.repeat)
    print(f"  {report['iobinding_full']}", file=sys.stderr, flush=True)
    if args.tiny_model_dir and args.tiny_engines:
        tiny = ModelSource(Path(args.tiny_model_dir), None, "tiny")
        tiny_manifest = Manifest.read(args.tiny_engines)
        tiny_feeds = {k: v.numpy() for k, v in component_inputs(tiny, "unet", args.resolution, 4).items()}
        print("I/O binding, tiny UNet ...", file=sys.stderr, flush=True)
        report["iobinding_tiny"] = iobinding_overhead(
            tiny_manifest.verify(tiny_manifest.require("unet", "onnx", "fp32")), tiny_feeds, 200)
        print(f"  {report['iobinding_tiny']}", file=sys.stderr, flush=True)
    report["load_average_at_end"] = load_average()
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
