"""``mvg-rt eval``: how real is a simulated progression, are its transition clips progressions, and how far
apart are two runs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from mvg_rt.errors import MvgError
from mvg_rt.eval.progression import RunFolder, evaluate_run, read_run, write_report
from mvg_rt.eval.transition_quality import summary_lines
from mvg_rt.io.files import check_output_file


def _fmt(values: list | None, index: int, digits: int = 3) -> str:
    return "-" if not values else f"{values[index]:.{digits}f}"


def _check_outputs(outputs: dict[str, Path], runs: list[RunFolder]) -> None:
    """Every output writable, none the same file as another or as a file of the runs it reads."""
    read = {path.resolve() for run in runs for path in run.files}
    seen: dict[Path, str] = {}
    for option, path in outputs.items():
        check_output_file(path, option)
        target = path.resolve()
        if target in read:
            raise MvgError(f"{option} {path} is a file of the run being evaluated: write the report elsewhere")
        if target in seen:
            raise MvgError(f"{option} and {seen[target]} are the same file: give each its own path")
        seen[target] = option
    for option in ("--figure", "--strip"):
        if option in outputs:
            from mvg_rt.eval.figure import figure_format

            figure_format(outputs[option], option)


def _transitions_table(section: dict[str, Any]) -> Table:
    """One row per clip: the standard's measures (mvg_rt.eval.transition_quality) and its verdict."""
    table = Table(title="transition clips (standard: mvg_rt/eval/transition_quality.py)")
    for column in ("clip", "frames", "ROI-mean excursion", "path ratio", "jerkiness", "CTR monotone",
                   "outside PSNR", "verdict"):
        table.add_column(column, justify="right")
    for clip in section["clips"]:
        monotone = {None: "n/a", True: "yes", False: "no"}[clip["ctr_monotone"]]
        table.add_row(str(clip["clip"]), "{}-{}".format(*clip["frame_range"]), f"{clip['roi_mean_excursion']:.1f}",
                      f"{clip['path_ratio']:.2f}", f"{clip['jerkiness']:.2f}", monotone,
                      f"{clip['outside_psnr_min']:.1f} dB", "pass" if clip["passed"] else "FAIL")
    return table


def _print(report: dict, run_dir: Path, against: Path | None) -> None:
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
    transitions = report["transitions"]
    if transitions["clips"]:
        console.print(_transitions_table(transitions))
    for line in summary_lines(transitions):
        console.print(line, markup=False)
    if against is not None:
        other = report["against"]
        console.print(f"against {against}: min state PSNR {other['min_states_psnr_db']} dB"
                      + (f", min frame PSNR {other['min_frames_psnr_db']} dB" if "min_frames_psnr_db" in other else ""))


def _strip_clip(run: RunFolder, clip: int) -> None:
    """--clip names a clip of this run (checked before the work)."""
    if run.clip_frames is None:
        raise MvgError(f"--strip: run {run.path} has no transition clips (made with --no-transition): "
                       "rerun mvg-rt simulate with transitions")
    clips = len(run.states) - 1
    if not 1 <= clip <= clips:
        raise MvgError(f"--clip {clip}: run {run.path} has clips 1 to {clips}")


def run(run_dir: Path, against: Path | None, json_path: Path | None, figure: Path | None = None,
        strip: Path | None = None, clip: int = 1) -> None:
    """Every input read and checked and every output path checked before anything is computed; the files
    are written before the table is printed, so a closed pipe (``| head``) never costs them."""
    runs = [read_run(run_dir)] + ([read_run(against)] if against is not None else [])
    outputs = {option: path for option, path in (("--json", json_path), ("--figure", figure), ("--strip", strip))
               if path is not None}
    _check_outputs(outputs, runs)
    if strip is not None:
        _strip_clip(runs[0], clip)
    report = evaluate_run(*runs)
    if json_path is not None:
        write_report(report, json_path)
    if figure is not None:
        from mvg_rt.eval.figure import progression_figure

        progression_figure(runs[0].states, report, figure, title=f"{run_dir.name}: PIE states and CTR")
    if strip is not None:
        from mvg_rt.eval.figure import clip_strip_figure

        clip_strip_figure(runs[0].frames, report["transitions"]["clips"][clip - 1], strip, title=run_dir.name)
    _print(report, run_dir, against)
    for path in outputs.values():
        click.echo(f"wrote {path}")
