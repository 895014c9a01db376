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
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np


def component_row(job: dict[str, Any], workdir: Path) -> dict[str, Any]:
    from mvg_rt.bench.worker import run_isolated

    result = run_isolated(job, workdir)
    if "error" in result:
        return {"error": result["error"]}
    return {"median_s": result["median_s"], "p10_s": result["p10_s"], "p90_s": result["p90_s"],
            "load_s": result["load_s"], "notes": result["backend"].get("notes")}


def iobinding_overhead(model: Path, feeds: dict[str, np.ndarray], repeat: int) -> dict[str, Any]:
    """session.run vs run_with_iobinding (inputs and outputs bound to preallocated CPU arrays)."""
    import onnxruntime as ort

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
        for name, call in (("run", run_plain), ("iobinding", run_bound)):
            started = time.perf_counter()
            call()
            samples[name].append(time.perf_counter() - started)
    same = bool(np.array_equal(output, session.run([out_name], feeds)[0]))
    return {k: statistics.median(v) for k, v in samples.items()} | {"identical_output": same}


def unet_fusion_attempt(model: Path) -> dict[str, Any]:
    """Try onnxruntime.transformers' UNet fusions on the exported FP32 graph (CPU-capable fusions only)."""
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

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

    import torch

    from mvg_rt.bench.components import component_inputs
    from mvg_rt.bench.machine import load_average
    from mvg_rt.bench.models import ModelSource, text_hidden_size, vocab_size
    from mvg_rt.bench.variants import Variant
    from mvg_rt.artifacts.manifest import Manifest

    source = ModelSource(Path(args.model_dir), None, "tuning", None)
    workdir = Path(tempfile.mkdtemp(prefix="ort-tuning-"))
    base = {"kind": "component", "resolution": args.resolution, "frames": 4, "repeat": args.repeat, "warmup": 1,
            "threads": torch.get_num_threads(), "source": source.describe(), "engines": args.engines,
            "workdir": str(workdir)}
    report: dict[str, Any] = {"load_average_at_start": load_average(), "resolution": args.resolution, "rows": []}
    unet_rows = [
        ("PyTorch eager FP32", "unet", Variant("torch")),
        ("ORT, mvg-rt defaults (opt all, threads = cores, spin on)", "unet", Variant("ort")),
        ("ORT, graph optimisation extended", "unet", Variant("ort", ort_settings={"graph_optimization": "extended"})),
        ("ORT, graph optimisation basic", "unet", Variant("ort", ort_settings={"graph_optimization": "basic"})),
        ("ORT, graph optimisation disabled", "unet", Variant("ort", ort_settings={"graph_optimization": "disable"})),
        ("ORT, 1 intra-op thread", "unet", Variant("ort", ort_settings={"intra_op_threads": 1})),
        ("ORT, spinning off", "unet", Variant("ort", ort_settings={"spin": False})),
        ("ORT text encoder, defaults", "text_encoder", Variant("ort")),
        ("ORT text encoder, transformers fusions (clip)", "text_encoder",
         Variant("ort", ort_settings={"transformer_fusions": True})),
        ("ORT VAE decoder, defaults", "vae_decoder", Variant("ort")),
        ("ORT VAE decoder, transformers fusions (vae)", "vae_decoder",
         Variant("ort", ort_settings={"transformer_fusions": True})),
    ]
    for label, component, variant in unet_rows:
        print(f"{label} ...", file=sys.stderr, flush=True)
        row = component_row(base | {"component": component, "variant": variant.to_dict()}, workdir)
        report["rows"].append({"label": label, "component": component, "variant": variant.to_dict(), **row})
        print(f"  {row}", file=sys.stderr, flush=True)

    manifest = Manifest.read(args.engines)
    unet_path = manifest.verify(manifest.require("unet", "onnx", "fp32"))
    print("UNet transformers fusions ...", file=sys.stderr, flush=True)
    report["unet_transformer_fusions"] = unet_fusion_attempt(unet_path)
    print(f"  {report['unet_transformer_fusions']}", file=sys.stderr, flush=True)

    feeds = {k: v.numpy() for k, v in component_inputs("unet", args.resolution, 4, text_hidden_size(source),
                                                       vocab_size(source)).items()}
    print("I/O binding, full UNet ...", file=sys.stderr, flush=True)
    report["iobinding_full"] = iobinding_overhead(unet_path, feeds, args.repeat)
    print(f"  {report['iobinding_full']}", file=sys.stderr, flush=True)
    if args.tiny_model_dir and args.tiny_engines:
        tiny = ModelSource(Path(args.tiny_model_dir), None, "tiny", "tiny")
        tiny_manifest = Manifest.read(args.tiny_engines)
        tiny_feeds = {k: v.numpy() for k, v in component_inputs("unet", args.resolution, 4, text_hidden_size(tiny),
                                                                vocab_size(tiny)).items()}
        print("I/O binding, tiny UNet ...", file=sys.stderr, flush=True)
        report["iobinding_tiny"] = iobinding_overhead(
            tiny_manifest.verify(tiny_manifest.require("unet", "onnx", "fp32")), tiny_feeds, 200)
        print(f"  {report['iobinding_tiny']}", file=sys.stderr, flush=True)
    report["load_average_at_end"] = load_average()
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
