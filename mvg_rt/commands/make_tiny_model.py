"""``mvg-rt make-tiny-model DIR``: a complete random-init model folder in seconds."""

from __future__ import annotations

from pathlib import Path

import click

from mvg_rt.io.output_dir import check_output_dir, staged_output_dir


def run(out_dir: Path, seed: int) -> None:
    from mvg_rt.models.builders import build_models, build_seine, write_model_folder

    check_output_dir(out_dir, overwrite=False)  # before the imports and the build: an existing model is kept
    with staged_output_dir(out_dir, kind="model") as staging:  # re-checks under the lock
        models = build_models("tiny", seed)
        write_model_folder(models, staging, seine=build_seine(models.unet, "tiny", seed))
    click.echo(f"wrote tiny random-init model (SD 1.x + SEINE architectures) to {out_dir}: "
               "a test model, its outputs are noise")
