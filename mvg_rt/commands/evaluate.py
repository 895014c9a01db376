"""``mvg-rt eval``: how real is a simulated progression, and how far apart are two runs."""

from __future__ import annotations

from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from mvg_rt.eval.progression import evaluate_run, write_report


def _fmt(values: list | None, index: int, digits: int = 3) -> str:
    return "-" if not values else f"{values[index]:.{digits}f}"


def run(run_dir: Path, against: Path | None, json_path: Path | None, figure: Path | None = None) -> None:
    report = evaluate_run(run_dir, against)
    table = Table(title=f"progression of {run_dir}")
    for column in ("state", "CTR", "SSIM outside ROI", "identity (VAE-I)", "change inside", "change outside"):
        table.add_column(column, justify="right")
    changes = report["round_change"]
    for i in range(len(changes) + 1):
        change = changes[i - 1] if i else None
        table.add_row(str(i), _fmt(report["ctr"], i), _fmt(report["ssim_outside_roi"], i),
                      _fmt(report["identity_similarity"], i),
                      f"{change['inside_roi']:.4f}" if change else "-", f"{change['outside_roi']:.4f}" if change else "-")
    console = Console()
    console.print(table)
    if report.get("ctr_unavailable"):
        console.print(f"CTR not measured: {report['ctr_unavailable']}")
    else:
        console.print(report["ctr_course"]["summary"], markup=False)
    console.print(f"per-round change shrinks from round: {report['change_shrinks_from_round']}")
    if against is not None:
        other = report["against"]
        console.print(f"against {against}: min state PSNR {other['min_states_psnr_db']} dB"
                      + (f", min frame PSNR {other['min_frames_psnr_db']} dB" if "min_frames_psnr_db" in other else ""))
    if json_path is not None:
        write_report(report, json_path)
        click.echo(f"wrote {json_path}")
    if figure is not None:
        from mvg_rt.eval.figure import progression_figure
        from mvg_rt.eval.progression import read_run

        states, _, _ = read_run(run_dir)
        progression_figure(states, report, figure, title=f"{run_dir.name}: PIE states and CTR")
        click.echo(f"wrote {figure}")
