"""``mvg-rt export``: turn command-line options into an export job and report what was written."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from mvg_rt.io.output_dir import claim_output_dir


def calibration_feeds(opts: dict[str, Any]) -> tuple[list[dict[str, Any]] | None, dict[str, Any]]:
    """UNet inputs recorded by running PIE on the calibration images (only with --int8)."""
    if not opts.get("int8"):
        return None, {}
    from mvg_rt.calibration import CalibrationSettings, record_unet_feeds
    from mvg_rt.runtime.factory import RuntimeSpec, open_runtime

    settings = CalibrationSettings(
        images=Path(opts["calibration_dir"]) if opts.get("calibration_dir") else None,
        prompts=tuple(opts["calibration_prompts"]), count=opts["calibration_count"])
    spec = RuntimeSpec(model_dir=Path(opts["model_dir"]), unet_dir=Path(opts["unet_dir"]) if opts.get("unet_dir")
                       else None, with_seine=False)
    with open_runtime(spec) as runtime:  # closed before the export loads its own copy of the model
        feeds = record_unet_feeds(runtime, settings)
    return feeds, settings.describe()


def run(**opts: Any) -> None:
    from mvg_rt.export.export_job import export_inputs

    out = Path(opts["out"])
    inputs = {**export_inputs(opts["model_dir"], opts["unet_dir"], opts["seine"], opts["seine_config"]),
              "the calibration images (--calibration)": opts.get("calibration_dir")}
    # held from before the calibration run and the model load to the commit; a bad --out fails here, at once
    with claim_output_dir(out, opts["overwrite"], inputs=inputs):
        manifest = _export(opts, out)
    files = ", ".join(f"{a.component}/{a.precision}" for a in manifest.artifacts)
    click.echo(f"wrote {len(manifest.artifacts)} ONNX artifacts ({files}) and manifest.json to {out}")


def _export(opts: dict[str, Any], out: Path) -> Any:
    """Calibrate (with --int8), then export into ``out`` (claimed by the caller)."""
    from mvg_rt.export.export_job import ExportRequest, export_engines

    feeds, calibration = calibration_feeds(opts)
    if feeds is not None:
        click.echo(f"int8: recorded {len(feeds)} UNet inputs for calibration", err=True)
    request = ExportRequest(
        model_dir=Path(opts["model_dir"]), out=out,
        unet_dir=Path(opts["unet_dir"]) if opts["unet_dir"] else None,
        seine=Path(opts["seine"]) if opts["seine"] else None, seine_config=opts["seine_config"],
        with_seine=not opts.get("no_seine"),
        fp16=opts["fp16"], fp16_converter=opts["fp16_converter"], int8=bool(opts.get("int8")),
        calibration_feeds=feeds, calibration_source=calibration, opset=opts["opset"], slim=opts["slim"],
        exporter=opts["exporter"],
        overwrite=opts["overwrite"])
    return export_engines(request, progress=lambda line: click.echo(line, err=True))
