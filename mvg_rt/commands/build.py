"""``mvg-rt build``: turn command-line options into a TensorRT build and report what was written."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from mvg_rt.artifacts.profiles import AxisOverride, ProfileSettings, parse_resolution
from mvg_rt.export.tensorrt_build import BuildSettings
from mvg_rt.io.output_dir import lock_dir


def settings_from_options(opts: dict[str, Any], default_resolution: int) -> BuildSettings:
    """The build settings the options describe (pure: the CLI tests call it directly, with only the options they
    set; an option left out takes its settings field's default, as the command line's option does)."""
    resolutions = tuple(parse_resolution(r) for r in opts.get("resolutions") or ()) or (
        (default_resolution, default_resolution),)
    low_memory = bool(opts.get("low_memory"))
    profile = ProfileSettings(
        resolutions=resolutions,
        frames=tuple(opts.get("frames") or ProfileSettings.frames),
        cfg_batch="static" if opts.get("static_batch") else "dynamic",
        decode_batch=1 if low_memory else opts.get("decode_batch") or ProfileSettings.decode_batch,
        overrides=tuple(AxisOverride.parse(a) for a in opts.get("axes") or ()),
    )
    return BuildSettings(
        precision=opts.get("precision") or BuildSettings.precision, profile=profile,
        components=tuple(opts.get("components") or ()), workspace_mb=opts.get("workspace_mb"),
        timing_cache=Path(opts["timing_cache"]) if opts.get("timing_cache") else None,
        builder_level=opts.get("builder_level", BuildSettings.builder_level), low_memory=low_memory)


def run(**opts: Any) -> None:
    from mvg_rt.artifacts.manifest import Manifest
    from mvg_rt.export.tensorrt_build import build_engines

    manifest = Manifest.read(opts["engines_dir"])
    settings = settings_from_options(opts, manifest.model.resolution)
    # The engines folder is updated in place (each .plan renamed in whole, the manifest after each one),
    # so it is locked for the build: a second build or export on it fails at once.
    with lock_dir(opts["engines_dir"]):
        built = build_engines(opts["engines_dir"], settings, progress=lambda line: click.echo(line, err=True))
    names = ", ".join(a.component for a in built)
    click.echo(f"wrote {len(built)} {settings.precision} TensorRT engines ({names}) to {opts['engines_dir']}; run "
               f"them with mvg-rt simulate --backend trt --engines {opts['engines_dir']} --precision "
               f"{settings.precision} --device cuda")
