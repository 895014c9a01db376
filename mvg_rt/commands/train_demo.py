"""``mvg-rt train-demo``: train the demo model on phantoms and write it as a model folder.

The shipped weights in ``mvg_rt/demo/weights`` were made by
``mvg-rt train-demo --out mvg_rt/demo/weights --overwrite`` (seed 0). Training checkpoints
every stage into ``--checkpoints`` (default: the user cache), so the same command run
again after a stop resumes instead of starting over.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import click

from mvg_rt.io.output_dir import staged_output_dir
from mvg_rt.limits import check


def default_checkpoint_dir() -> Path:
    from mvg_rt.demo.default import cache_dir

    return cache_dir() / "train-demo"


def run(out: Path, seed: int, scale: float, overwrite: bool, checkpoints: Path | None = None) -> None:
    from mvg_rt.demo.training import DemoTrainingConfig, train_demo

    check("--scale", scale)  # the CLI checked it already; this guards direct callers
    config = dataclasses.replace(DemoTrainingConfig(seed=seed).scaled(scale), seed=seed)
    checkpoint_dir = checkpoints or default_checkpoint_dir()

    def log(message: str) -> None:
        click.echo(f"[{time.strftime('%H:%M:%S')}] {message}", err=True)

    log(f"training the demo model (seed {seed}, budget x{scale}); checkpoints in {checkpoint_dir} "
        "(run the same command again to resume)")
    started = time.perf_counter()
    with staged_output_dir(out, overwrite, kind="model") as staging:
        summary = train_demo(config, staging, checkpoint_dir, log)
        (staging / "metrics.json").write_text(json.dumps(summary, indent=2))
    click.echo(f"wrote the demo model to {out} in {time.perf_counter() - started:.0f} s (training over all runs: "
               f"{summary['timings']['total_seconds']:.0f} s)")
