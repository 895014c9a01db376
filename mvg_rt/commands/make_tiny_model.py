"""``mvg-rt make-tiny-model DIR``: a complete random-init model folder in seconds."""

from __future__ import annotations

from pathlib import Path

import click

from mvg_rt.errors import MvgError
from mvg_rt.io.output_dir import staged_output_dir


def run(out_dir: Path, seed: int) -> None:
    from mvg_rt.models.builders import build_models, build_seine, write_model_folder

    if out_dir.exists() and any(out_dir.iterdir()):  # this job never replaces a folder (it has no --overwrite)
        raise MvgError(f"{out_dir} already exists and is not empty: choose a new folder")
    with staged_output_dir(out_dir, kind="model") as staging:  # re-checks under the lock: a finished run is kept
        models = build_models("tiny", seed)
        write_model_folder(models, staging, seine=build_seine(models.unet, "tiny", seed))
    click.echo(f"wrote tiny random-init model (SD 1.x + SEINE architectures) to {out_dir}: "
               "a test model, its outputs are noise")
