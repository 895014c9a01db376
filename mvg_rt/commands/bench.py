"""``mvg-rt bench``: turn command-line options into a bench run; print the targets; write the report."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import click

from mvg_rt.io.output_dir import staged_output_dir

# End to end on a GPU: the paper's settings (on a CPU, E2ESettings' own defaults: a run that fits 2 cores).
CUDA_E2E = {"rounds": 10, "steps": 50, "frames": 16, "transition_steps": 250, "repeat": 3}
TINY_E2E_REPEAT = 3  # the tiny model's rounds take milliseconds: more of them, on any device
# The bench options that set an E2ESettings field, by field; None leaves the field to the device's default.
E2E_OPTIONS = {"resolution": "resolution", "rounds": "rounds", "steps": "steps", "strength": "strength",
               "guidance": "guidance", "seed": "seed", "frames": "transition_frames",
               "transition_steps": "transition_steps", "repeat": "e2e_repeat"}


def _split(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def _path(text: str | None) -> Path | None:
    return Path(text) if text else None


def config_from_options(opts: dict[str, Any]) -> Any:
    """The :class:`BenchConfig` that the bench options (every one, as click passes them) describe."""
    from mvg_rt.bench.config import BenchConfig, E2ESettings

    device = str(opts["device"])
    defaults = (CUDA_E2E if device.startswith("cuda") else {}) | (
        {"repeat": TINY_E2E_REPEAT} if opts["size"] == "tiny" else {})
    given = {field: opts[option] for field, option in E2E_OPTIONS.items() if opts[option] is not None}
    e2e = E2ESettings(**(defaults | given))
    return BenchConfig(
        backends=tuple(opts["backends"]), device=device, cuda_graphs=opts["cuda_graphs"], resolution=e2e.resolution,
        frames=opts["frames"], components=_split(opts["components"]), e2e=opts["e2e"], peers=opts["peers"],
        repeat=opts["repeat"], warmup=opts["warmup"], row_budget_s=opts["row_budget"],
        model_dir=_path(opts["model_dir"]), size=opts["size"], seed=e2e.seed, engines=_path(opts["engines_dir"]),
        cache=_path(opts["cache"]), out=Path(opts["out"]), in_process=opts["in_process"],
        steppers=_split(opts["steppers"]), e2e_settings=e2e, transitions=not opts["no_transitions"],
        overhead_repeat=opts["overhead_repeat"])


def run(**opts: Any) -> None:
    from rich.console import Console

    from mvg_rt.bench.report import write_all
    from mvg_rt.bench.runner import run_bench

    config = config_from_options(opts)
    out = config.out
    inputs = {"the model folder (--model-dir)": config.model_dir, "the engines folder (--engines)": config.engines,
              "the cache (--cache)": config.cache}
    console = Console(stderr=True, highlight=False)
    # locked; only an earlier bench report is replaced (see output_dir), and only once the new one is done
    with staged_output_dir(out, kind="bench", inputs=inputs) as staging:
        report = run_bench(dataclasses.replace(config, out=staging),
                           progress=lambda line: console.print(line, markup=False))
        paths = write_all(report, staging)
    for target in report["targets"]:
        click.echo(f"target {target['id']} {target['status']}: {target['name']}: {target['value_text']} "
                   f"(threshold {target['threshold_text']})")
    if report["errors"]:
        click.echo(f"{len(report['errors'])} measurement(s) failed; see {out / 'bench.md'}", err=True)
    click.echo(f"wrote {', '.join(p.name for p in paths)} to {out}")
