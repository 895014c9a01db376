"""``mvg-rt check``: engines vs the PyTorch FP32 reference; a table, optional JSON, and an exit code.

Exit codes: 0 all within tolerance; 1 a tolerance was exceeded (the offending
components are named); 2 bad input (missing/stale engines, wrong model folder).
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from mvg_rt.errors import MvgError
from mvg_rt.models.provenance import check_source

EXIT_TOLERANCE = 1


def _recorded(option: str, given: str | None, recorded: str | None, needed: bool) -> str | None:
    """The path to use for a reference source: the option, else what the manifest recorded, if it still exists."""
    if given:
        return given
    if not needed:
        return None
    if recorded and Path(recorded).exists():
        return recorded
    where = f" (the manifest records {recorded}, which no longer exists)" if recorded else ""
    raise MvgError(f"check needs the PyTorch source the engines came from: pass {option}{where}")


def reference_sources(manifest: Any, opts: dict[str, Any], precision: str) -> tuple[str, str | None, str | None]:
    source = manifest.source
    model_dir = _recorded("--model-dir", opts.get("model_dir"), source.model_dir, True)
    unet_dir = _recorded("--unet", opts.get("unet_dir"), source.unet_dir, source.unet_sha256 is not None)
    has_seine = manifest.find("seine", "onnx", precision) is not None or manifest.find("seine", "trt", precision)
    seine = _recorded("--seine", opts.get("seine"), source.seine, has_seine)
    check_source(manifest, model_dir, unet_dir, seine)
    return model_dir, unet_dir, seine


def _finite(value: float) -> float | str:
    return value if math.isfinite(value) else ("inf" if value > 0 else "-inf")


def _table(title: str, columns: list[str], rows: list[list[str]]) -> Table:
    table = Table(title=title)
    for column in columns:
        table.add_column(column, justify="right" if column not in ("component", "case", "stage") else "left")
    for row in rows:
        table.add_row(*row)
    return table


def run(**opts: Any) -> None:
    from mvg_rt.check.components import check_component
    from mvg_rt.check.end_to_end import check_end_to_end
    from mvg_rt.check.tolerances import describe
    from mvg_rt.components import COMPONENTS, PIE_COMPONENTS
    from mvg_rt.artifacts.manifest import Manifest
    from mvg_rt.runtime.factory import Runtime, engines_model_info, engines_runtime, torch_runtime
    from mvg_rt.runtime.pipelines.pie import PieSettings

    precision = opts["precision"]
    settings = PieSettings(rounds=opts["rounds"], steps=opts["steps"], strength=0.6)
    backend_name = opts.get("backend") or "ort"
    kind = "trt" if backend_name == "trt" else "onnx"
    manifest = Manifest.read(opts["engines_dir"])
    # int8: the quantized components only (the others run their fp32/fp16 artifacts: check those at that precision)
    exact = precision == "int8"
    components = [c for c in COMPONENTS if manifest.find(c, kind, precision, exact=exact)]
    if not components:
        raise MvgError(f"engines folder {opts['engines_dir']} has no {precision} {kind} artifacts: "
                       + ("re-export it with --int8" if kind == "onnx" and exact else
                          "export/build them first (mvg-rt export --help, mvg-rt build --help)"))
    model_dir, unet_dir, seine_path = reference_sources(manifest, opts, precision)
    candidate = engines_runtime(backend_name, opts["engines_dir"], precision, opts["device"]).backend

    seine_module = None
    if seine_path is not None:
        from mvg_rt.export.build import load_seine
        from mvg_rt.models.seine_unet import SeineConfig

        seine_module = load_seine(seine_path, SeineConfig.from_dict(manifest.model.seine_config or {}))
    started = time.perf_counter()
    reference = torch_runtime(model_dir, unet_dir, "cpu", seine=seine_module)
    tokenizer = engines_model_info(manifest).tokenizer

    component_results, skipped = [], []
    for name in components:
        results, outside = check_component(name, manifest, tokenizer, reference.backend, candidate, precision, kind)
        component_results += results
        skipped += outside
    frame_results = []
    pie_ready = all(manifest.find(c, kind, precision) for c in PIE_COMPONENTS)
    if not opts["skip_end_to_end"] and pie_ready:
        candidate_runtime = Runtime(candidate, engines_model_info(manifest), {})
        frame_results = check_end_to_end(reference, candidate_runtime, manifest.model.resolution, settings,
                                         opts["seed"], precision)
    failed_components = sorted({r.component for r in component_results if not r.passed})
    failed_stages = sorted({r.stage for r in frame_results if not r.passed})

    console = Console()
    console.print(_table(
        f"components: {precision} {'TensorRT' if kind == 'trt' else 'ONNX Runtime'} ({opts['device']}) vs "
        "PyTorch FP32",
        ["component", "case", "max abs", "limit", "max rel", "cosine", "ok"],
        [[r.component, r.case, f"{r.max_abs:.2e}", f"{r.limit_abs:.1e}", f"{r.max_rel:.2e}", f"{r.cosine:.7f}",
          "yes" if r.passed else "NO"] for r in component_results]))
    if frame_results:
        console.print(_table(
            f"end to end: PIE {settings.rounds} rounds x {int(settings.steps * settings.strength)} steps, seed "
            f"{opts['seed']}",
            ["stage", "index", "PSNR dB", "SSIM", "ok"],
            [[r.stage, str(r.index), f"{r.psnr_db:.2f}", f"{r.ssim:.5f}", "yes" if r.passed else "NO"]
             for r in frame_results]))
    elif not pie_ready:
        console.print("end to end: skipped (the engines folder lacks a PIE component)")
    if skipped:
        console.print(f"skipped, outside the engines' profiles (rebuild with more --resolution/--frames to cover "
                      f"them): {', '.join(skipped)}")

    report = {
        "engines": str(opts["engines_dir"]),
        "backend": backend_name,
        "precision": precision,
        "device": opts["device"],
        "skipped_outside_profile": skipped,
        "reference": {"model_dir": model_dir, "unet": unet_dir, "seine": seine_path},
        "tolerances": describe(),
        "components": [{k: _finite(v) if isinstance(v, float) else v for k, v in r.to_dict().items()}
                       for r in component_results],
        "end_to_end": [{k: _finite(v) if isinstance(v, float) else v for k, v in r.to_dict().items()}
                       for r in frame_results],
        "seconds": round(time.perf_counter() - started, 2),
        "failed": failed_components + [f"end-to-end {s}" for s in failed_stages],
        "passed": not failed_components and not failed_stages,
    }
    if opts.get("json_path"):
        Path(opts["json_path"]).write_text(json.dumps(report, indent=2) + "\n")
    if not report["passed"]:
        click.echo(f"mvg-rt: check failed: {', '.join(report['failed'])} exceeded the {precision} tolerance "
                   "(see the table; tolerances in mvg_rt/check/tolerances.py)", err=True)
        sys.exit(EXIT_TOLERANCE)
    click.echo(f"check passed: {len(component_results)} component cases and {len(frame_results)} frames within "
               f"the {precision} tolerances")
