"""``mvg-rt bench``: turn command-line options into a bench run; print the targets; write the report."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import click

from mvg_rt.io.output_dir import staged_output_dir

# End-to-end defaults per device: the paper's settings on a GPU, a run that fits a 2-core CPU otherwise.
E2E_DEFAULTS = {
    "cpu": {"rounds": 2, "steps": 20, "transition_frames": 4, "transition_steps": 3, "e2e_repeat": 1},
    "cuda": {"rounds": 10, "steps": 50, "transition_frames": 16, "transition_steps": 250, "e2e_repeat": 3},
}


def _split(text: str | None) -> tuple[str, ...]:
    return tuple(part.strip() for part in (text or "").split(",") if part.strip())


def config_from_options(opts: dict[str, Any]) -> Any:
    """The :class:`BenchConfig` the options describe (pure: tests call it directly)."""
    from mvg_rt.bench.config import BenchConfig, E2ESettings

    device = str(opts.get("device") or "cpu")
    defaults = E2E_DEFAULTS["cuda" if device.startswith("cuda") else "cpu"]

    def pick(name: str) -> Any:
        value = opts.get(name)
        return defaults[name] if value is None else value

    repeat_e2e = 3 if opts.get("size") == "tiny" and opts.get("e2e_repeat") is None else pick("e2e_repeat")
    e2e = E2ESettings(resolution=opts.get("resolution") or 256, rounds=pick("rounds"), steps=pick("steps"),
                      strength=opts.get("strength") or 0.6, guidance=opts.get("guidance") or 7.5,
                      seed=opts.get("seed") or 0, frames=pick("transition_frames"),
                      transition_steps=pick("transition_steps"), repeat=repeat_e2e)
    components = _split(opts.get("components")) if opts.get("components") is not None else (
        "text_encoder", "vae_encoder", "vae_decoder", "unet", "seine")
    return BenchConfig(
        backends=tuple(opts.get("backends") or ("torch", "ort")), device=device,
        cuda_graphs=bool(opts.get("cuda_graphs")), resolution=e2e.resolution, frames=opts.get("frames") or 16,
        components=components, e2e=bool(opts.get("e2e")), peers=bool(opts.get("peers")),
        repeat=opts.get("repeat") or 5, warmup=opts["warmup"] if opts.get("warmup") is not None else 1,
        row_budget_s=opts.get("row_budget") if opts.get("row_budget") is not None else 60.0,
        model_dir=Path(opts["model_dir"]) if opts.get("model_dir") else None, size=opts.get("size") or "sd14",
        seed=e2e.seed, engines=Path(opts["engines_dir"]) if opts.get("engines_dir") else None,
        cache=Path(opts["cache"]) if opts.get("cache") else None, out=Path(opts.get("out") or "runs/bench"),
        in_process=opts.get("in_process"), steppers=_split(opts.get("steppers") or "auto"), e2e_settings=e2e,
        transitions=not opts.get("no_transitions"), overhead_repeat=opts.get("overhead_repeat") or 5)


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
