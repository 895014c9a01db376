"""FP16 converters compared: onnxruntime.transformers (mvg-rt's default, export/fp16.py) vs NVIDIA ModelOpt AutoCast.

For each PIE component of an FP32 engines folder (the full SD 1.4 architecture, random
weights), both converters write an FP16 graph (float32 I/O); each is run on the ONNX
Runtime CPU EP at ``--resolution`` and compared with the FP32 graph on the same inputs:
max abs difference, max |FP32|, cosine of the flattened outputs, and how many nodes the
converted graph computes in FP32 / FP16 (``export.fp16.precision_census``: nodes with a
float output, Casts and Constants not counted).

ModelOpt's ONNX extra pins older onnx/onnxruntime, so it runs from its own Python
(``--modelopt-python``, e.g. a venv with ``nvidia-modelopt[onnx]`` and torch CPU); this
worktree is put on its PYTHONPATH and ``export.fp16.convert_with_modelopt`` does the
conversion there. AutoCast runs the FP32 graph once to find values beyond FP16's range;
its reference inputs are the same kind as the evaluation's, at ``--autocast-resolution``
(smaller: that run keeps every intermediate tensor in memory).

Usage (the committed tables; the second is the trained demo model, whose UNet ModelOpt could convert here)::

    python benchmarks/fp16_converters.py --engines /tmp/sd14_engines --resolution 512 \\
        --modelopt-python /tmp/modelopt-venv/bin/python --out benchmarks/results/cpu-2core/fp16_converters
    python benchmarks/fp16_converters.py --engines /tmp/demo_engines --resolution 128 \\
        --model-label "demo model (trained, mvg_rt/demo/weights)" \\
        --modelopt-python /tmp/modelopt-venv/bin/python --out benchmarks/results/cpu-2core/fp16_converters_demo
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime
from transformers import CLIPTokenizer

from mvg_rt.artifacts.manifest import Manifest
from mvg_rt.export.fp16 import precision_census, write_fp16
from mvg_rt.runtime.pipelines.text import tokenize

HERE = Path(__file__).resolve().parent.parent
PROMPT = "severe cardiomegaly with enlarged cardiac silhouette"
ORDER = ("text_encoder", "vae_encoder", "vae_decoder", "unet")


def session(path: Path) -> Any:
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def feeds_for(component: str, resolution: int, manifest: Manifest, text_states: np.ndarray | None,
              seed: int = 1234) -> dict[str, np.ndarray]:
    """Deterministic inputs of the kind the pipelines feed (see mvg_rt/check/components.py)."""
    rng = np.random.default_rng(seed)
    latent = resolution // manifest.model.vae_scale_factor
    if component == "text_encoder":
        tokenizer = CLIPTokenizer.from_pretrained(str(Path(manifest.root) / manifest.model.tokenizer))
        return {"input_ids": tokenize(tokenizer, ["", PROMPT]).numpy()}
    if component == "vae_encoder":
        y = np.linspace(-1, 1, resolution)[:, None]
        x = np.linspace(-1, 1, resolution)[None, :]
        image = np.stack([np.sin(3 * x + 2 * y), np.cos(2 * x * y), x * y]) * 0.9
        image = np.clip(image + 0.05 * rng.standard_normal(image.shape), -1, 1)
        return {"images": image[None].astype(np.float32)}
    if component == "vae_decoder":  # the pipelines decode latents / scaling_factor
        return {"latents": (rng.standard_normal((1, 4, latent, latent)) / manifest.model.vae_scaling_factor
                            ).astype(np.float32)}
    assert text_states is not None
    return {"sample": rng.standard_normal((2, 4, latent, latent)).astype(np.float32),
            "timestep": np.array([999.0, 1.0], np.float32), "encoder_hidden_states": text_states}


def compare(reference: np.ndarray, output: np.ndarray) -> dict[str, float]:
    ref, out = reference.astype(np.float64).ravel(), output.astype(np.float64).ravel()
    return {"max_abs": float(np.abs(ref - out).max()), "reference_max": float(np.abs(ref).max()),
            "cosine": float(ref @ out / (np.linalg.norm(ref) * np.linalg.norm(out)))}


def convert_modelopt(python: str, src: Path, dst: Path, feeds: dict[str, np.ndarray], scratch: Path) -> None:
    npz = scratch / "autocast_feeds.npz"
    np.savez(npz, **feeds)
    code = ("import sys, numpy as np; from pathlib import Path; from mvg_rt.export.fp16 import convert_with_modelopt; "
            "f = dict(np.load(sys.argv[3])); convert_with_modelopt(Path(sys.argv[1]), Path(sys.argv[2]), f)")
    env = dict(os.environ, PYTHONPATH=str(HERE))
    done = subprocess.run([python, "-c", code, str(src), str(dst), str(npz)], env=env, capture_output=True, text=True,
                          check=False)
    if done.returncode != 0:
        why = "killed (SIGKILL: out of memory on this shared 24 GB machine?)" if done.returncode == -9 else (
            (done.stderr.strip().splitlines() or ["no message"])[-1][:300])
        raise RuntimeError(f"ModelOpt conversion failed: {why}")


def _remove(path: Path) -> None:
    for p in (path, path.with_name(path.name + ".data")):
        p.unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--engines", type=Path, required=True, help="FP32 engines folder (PIE components)")
    parser.add_argument("--resolution", type=int, default=512)
    parser.add_argument("--autocast-resolution", type=int, default=128)
    parser.add_argument("--modelopt-python", default=None, help="Python with nvidia-modelopt[onnx]; none: skip it")
    parser.add_argument("--components", nargs="*", default=list(ORDER))
    parser.add_argument("--model-label", default="SD 1.4 architecture, random weights (seed 0)",
                        help="what --engines holds, for the report")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/cpu-2core/fp16_converters"))
    args = parser.parse_args(argv)

    manifest = Manifest.read(args.engines)
    json_path = args.out.with_suffix(".json")
    done = {}  # rows of an earlier run (same script) are kept; delete the JSON to measure everything again
    if json_path.is_file():
        done = {(r["component"], r["converter"]): r for r in json.loads(json_path.read_text())["rows"]}
    modelopt_version = None
    if args.modelopt_python:
        modelopt_version = subprocess.run([args.modelopt_python, "-c", "import modelopt; print(modelopt.__version__)"],
                                          capture_output=True, text=True, check=True).stdout.strip()
    rows: list[dict[str, Any]] = []
    text_states = None
    with tempfile.TemporaryDirectory(prefix="mvg-fp16-") as scratch_name:
        scratch = Path(scratch_name)
        for component in [c for c in ORDER if c in args.components]:
            fp32 = Path(args.engines) / manifest.require(component, "onnx", "fp32").file
            feeds = feeds_for(component, args.resolution, manifest, text_states)
            reference = session(fp32).run(None, feeds)[0]
            if component == "text_encoder":
                text_states = reference.astype(np.float32)
            census = precision_census(fp32)
            rows.append({"component": component, "converter": "none (FP32)", "max_abs": 0.0,
                         "reference_max": float(np.abs(reference).max()), "cosine": 1.0, **census})
            converters = ["ort"] + (["modelopt"] if args.modelopt_python else [])
            for converter in converters:
                name = {"ort": "ort-transformers", "modelopt": "modelopt-autocast"}[converter]
                if (component, name) in done and "error" not in done[(component, name)]:
                    rows.append(done[(component, name)])
                    continue
                dst = scratch / f"{component}_{converter}.onnx"
                started = time.perf_counter()
                try:
                    if converter == "ort":
                        write_fp16("ort", fp32, dst)
                    else:
                        small = feeds_for(component, args.autocast_resolution, manifest, text_states)
                        if component == "unet":
                            small = {k: v[:1] for k, v in small.items()}
                        convert_modelopt(args.modelopt_python, fp32, dst, small, scratch)
                except RuntimeError as err:
                    rows.append({"component": component, "converter": name, "error": str(err)})
                    continue
                seconds = time.perf_counter() - started
                output = session(dst).run(None, feeds)[0]
                rows.append({"component": component, "converter": name, **compare(reference, output),
                             **precision_census(dst), "convert_seconds": round(seconds, 1)})
                print(rows[-1], flush=True)
                _remove(dst)
                gc.collect()
                write(args, rows, modelopt_version)
    print(markdown(write(args, rows, modelopt_version)))


def write(args: argparse.Namespace, rows: list[dict[str, Any]], modelopt_version: str | None) -> dict[str, Any]:
    """Write the JSON and Markdown (after every row: a killed run keeps what it measured)."""
    report = {"resolution": args.resolution, "autocast_resolution": args.autocast_resolution,
              "model": args.model_label, "onnxruntime": onnxruntime.__version__,
              "modelopt": modelopt_version or "not run", "python": sys.version.split()[0],
              "machine": f"{platform.machine()}, 2 shared cores", "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(markdown(report))
    return report


def markdown(report: dict[str, Any]) -> str:
    lines = [(f"# FP16 converters at {report['resolution']}x{report['resolution']}: error vs FP32 on the ONNX Runtime "
             f"{report['onnxruntime']} CPU EP"), "",
             (f"{report['model']}; ModelOpt {report['modelopt']} (AutoCast reference run at "
             f"{report['autocast_resolution']} px); {report['machine']}. FP32/FP16 nodes: nodes whose float output "
             "is FP32 / FP16 (Casts and Constants not counted)."), "",
             ("| component | converter | max abs | max abs / max(1, max\\|FP32\\|) | cosine | FP32 nodes | FP16 nodes | "
             "Casts |"), "|---|---|---:|---:|---:|---:|---:|---:|"]
    notes = [("The CPU EP computes most FP16 nodes in FP32 behind Casts: these errors are FP16 *storage* rounding; "
             "FP16 arithmetic (and its overflow in normalisation reductions) shows only on a GPU."), "",
             "Default kept: ort-transformers (export/fp16.py says why)."]
    notes += [n for note in report.get("notes", []) for n in ("", f"Note: {note}")]
    for r in report["rows"]:
        if "error" in r:
            lines.append(f"| {r['component']} | {r['converter']} | {r['error']} | | | | | |")
            continue
        rel = r["max_abs"] / max(1.0, r["reference_max"])
        lines.append(f"| {r['component']} | {r['converter']} | {r['max_abs']:.3e} | {rel:.3e} | {r['cosine']:.7f} | "
                     f"{r['fp32_nodes']} | {r['fp16_nodes']} | {r['casts']} |")
    return "\n".join(lines + [""] + notes) + "\n"


if __name__ == "__main__":
    main()
