"""``mvg-rt export``: turn command-line options into an export job and report what was written."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from mvg_rt.io.output_dir import claim_output_dir


def run(**opts: Any) -> None:
    from mvg_rt.export.build import ExportRequest, export_engines

    request = ExportRequest(
        model_dir=Path(opts["model_dir"]), out=Path(opts["out"]),
        unet_dir=Path(opts["unet_dir"]) if opts["unet_dir"] else None,
        seine=Path(opts["seine"]) if opts["seine"] else None, seine_config=opts["seine_config"],
        with_seine=not opts.get("no_seine"),
        fp16=opts["fp16"], opset=opts["opset"], slim=opts["slim"], exporter=opts["exporter"],
        overwrite=opts["overwrite"])
    with claim_output_dir(request.out, request.overwrite):  # held from before the model loads to the commit
        manifest = export_engines(request, progress=lambda line: click.echo(line, err=True))
    files = ", ".join(f"{a.component}/{a.precision}" for a in manifest.artifacts)
    click.echo(f"wrote {len(manifest.artifacts)} ONNX artifacts ({files}) and manifest.json to {request.out}")
