"""``mvg-rt make-tiny-model DIR``: a complete random-init model folder in seconds."""

from __future__ import annotations

from pathlib import Path

import click

from mvg_rt.errors import MvgError
from mvg_rt.io.output_dir import staged_output_dir


def run(out_dir: Path, seed: int) -> None:
    from mvg_rt.models.builders import build_models, write_model_folder

    if out_dir.exists() and any(out_dir.iterdir()):
        raise MvgError(f"{out_dir} already exists and is not empty: choose a new folder")
    with staged_output_dir(out_dir, overwrite=True) as staging:
        write_model_folder(build_models("tiny", seed), staging)
    click.echo(f"wrote tiny random-init model to {out_dir} (architecture test model: outputs are noise)")
