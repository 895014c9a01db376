"""``mvg-rt check``: engines vs the PyTorch FP32 reference; a table, optional JSON, and an exit code.

Exit codes: 0 all within tolerance; 1 a tolerance was exceeded (the offending
components are named); 2 bad input (missing/stale engines, wrong model folder).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from mvg_rt.check.job import CheckRequest, CheckResult, run_check
from mvg_rt.io.files import check_output_file, write_text_atomic

EXIT_TOLERANCE = 1


def check_request(opts: dict[str, Any]) -> CheckRequest:
    path = lambda key: Path(opts[key]) if opts.get(key) else None  # noqa: E731
    return CheckRequest(engines_dir=Path(opts["engines_dir"]), backend=opts["backend"], precision=opts["precision"],
                        device=opts["device"], model_dir=path("model_dir"), unet_dir=path("unet_dir"),
                        seine=path("seine"), rounds=opts["rounds"], steps=opts["steps"], seed=opts["seed"],
                        end_to_end=not opts["skip_end_to_end"])


def _table(title: str, columns: list[str], rows: list[list[str]]) -> Table:
    table = Table(title=title)
    for column in columns:
        table.add_column(column, justify="right" if column not in ("component", "case", "stage") else "left")
    for row in rows:
        table.add_row(*row)
    return table


def _print(result: CheckResult) -> None:
    request, console = result.request, Console()
    console.print(_table(
        f"components: {request.precision} {'TensorRT' if request.kind == 'trt' else 'ONNX Runtime'} "
        f"({request.device}) vs PyTorch FP32",
        ["component", "case", "max abs", "limit", "max rel", "cosine", "ok"],
        [[r.component, r.case, f"{r.max_abs:.2e}", f"{r.limit_abs:.1e}", f"{r.max_rel:.2e}", f"{r.cosine:.7f}",
          "yes" if r.passed else "NO"] for r in result.components]))
    if result.frames:
        console.print(_table(
            f"end to end: PIE {request.rounds} rounds x {int(request.steps * 0.6)} steps, seed {request.seed}",
            ["stage", "index", "PSNR dB", "SSIM", "ok"],
            [[r.stage, str(r.index), f"{r.psnr_db:.2f}", f"{r.ssim:.5f}", "yes" if r.passed else "NO"]
             for r in result.frames]))
    elif not result.pie_ready:
        console.print("end to end: skipped (the engines folder lacks a PIE component)")
    if result.skipped_outside_profile:
        console.print("skipped, outside the engines' profiles (rebuild with more --resolution/--frames to cover "
                      f"them): {', '.join(result.skipped_outside_profile)}")


def run(**opts: Any) -> None:
    """The --json path is checked before the check runs (minutes), and written whole or not at all."""
    json_path = check_output_file(opts["json_path"], "--json") if opts.get("json_path") else None
    result = run_check(check_request(opts))
    if json_path is not None:
        write_text_atomic(json_path, json.dumps(result.to_dict(), indent=2) + "\n")
    _print(result)
    precision = result.request.precision
    if not result.passed:
        click.echo(f"mvg-rt: check failed: {', '.join(result.failed)} exceeded the {precision} tolerance "
                   "(see the table; tolerances in mvg_rt/check/tolerances.py)", err=True)
        sys.exit(EXIT_TOLERANCE)
    click.echo(f"check passed: {len(result.components)} component cases and {len(result.frames)} frames within "
               f"the {precision} tolerances")
