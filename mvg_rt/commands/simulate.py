"""``mvg-rt simulate``: parse the options once into a typed request, run the job, show its progress."""

from __future__ import annotations

import json
import shlex
import time
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from mvg_rt.commands.prompt import recaption_settings
from mvg_rt.errors import MvgError
from mvg_rt.io.masks import RoiRequest
from mvg_rt.prompts.report import fallback_notice, prompt_from_report
from mvg_rt.runtime.factory import RuntimeSpec
from mvg_rt.runtime.pipelines.pie import PieSettings
from mvg_rt.runtime.pipelines.transition import TransitionSettings
from mvg_rt.simulation import SimulationOptions, SimulationRequest, run_simulation


def uses_demo_model(opts: dict[str, Any]) -> bool:
    return not opts["model_dir"] and opts["backend"] == "torch"


def demo_settings(explicit: set[str]) -> dict[str, Any]:
    """The demo case's recommended settings, for the options the user left at their defaults.

    An explicit ``--transitions`` preset chooses the transition sampler and steps itself.
    """
    from mvg_rt.demo.default import DEMO_CASE

    if "transitions" in explicit:
        explicit = explicit | {"transition_sampler", "transition_steps"}
    return {name: value for name, value in DEMO_CASE.settings.items() if name not in explicit}


def runtime_spec(opts: dict[str, Any]) -> RuntimeSpec:
    """The backend options of ``simulate`` (shared by every verb that runs the pipelines)."""
    return RuntimeSpec(backend=opts["backend"], device=opts["device"], precision=opts["precision"],
                       cuda_graphs=opts["cuda_graphs"], low_memory=opts["low_memory"], tf32=opts["tf32"],
                       channels_last=opts["channels_last"], model_dir=opts["model_dir"], unet_dir=opts["unet_dir"],
                       seine=opts["seine"], engines_dir=opts["engines_dir"], with_seine=not opts["no_transition"])


def request_prompt(opts: dict[str, Any]) -> tuple[str | None, dict[str, Any] | None]:
    """``--prompt`` as given, or the prompt made of ``--report`` and how it was made (run.json's prompt_source)."""
    if opts["report"] is None:
        return opts["prompt"], None
    if opts["prompt"] is not None:
        raise MvgError("give --prompt or --report, not both: --report makes the prompt from the report")
    made = prompt_from_report(opts["report"], recaption_settings(opts), record_text=opts["record_report"],
                              record_path=opts["record_paths"])
    return made.prompt, made.source


def simulation_request(opts: dict[str, Any], explicit: set[str] | None = None) -> SimulationRequest:
    """Every ``simulate`` option, once, as typed settings (the settings validate themselves)."""
    demo = demo_settings(explicit or set()) if uses_demo_model(opts) else {}
    opts = opts | demo
    pie = PieSettings(rounds=opts["rounds"], strength=opts["strength"], steps=opts["steps"],
                      guidance_scale=opts["guidance"], beta1=opts["beta1"], beta2=opts["beta2"],
                      scheduler=opts["scheduler"])
    transition = None if opts["no_transition"] else TransitionSettings.from_preset(
        opts["transitions"], sampler=opts["transition_sampler"], steps=opts["transition_steps"],
        frames=opts["frames"], guidance_scale=opts["transition_guidance"], negative_prompt=opts["negative_prompt"],
        decode_batch=1 if opts["low_memory"] else TransitionSettings.decode_batch)
    options = SimulationOptions(pie=pie, transition=transition, resolution=opts["resolution"], seed=opts["seed"],
                                fps=opts["fps"], out=opts["out"] or Path("runs") / time.strftime("mvg-%Y%m%d-%H%M%S"),
                                overwrite=opts["overwrite"], demo_settings=demo)
    roi = RoiRequest(opts["mask_path"], opts["roi_box"], opts["roi_ellipse"], opts["feather"],
                     opts.get("segment"), opts.get("segment_grow", RoiRequest.grow))  # batch has no --segment yet
    prompt, prompt_source = request_prompt(opts)
    return SimulationRequest(runtime=runtime_spec(opts), options=options, image=opts["image"], prompt=prompt,
                             negative_prompt=opts["negative_prompt"], roi=roi, record_paths=opts["record_paths"],
                             report=opts["report"], prompt_source=prompt_source)


class _Progress:
    """Progress bars that appear with the first step, so an early one-line error prints alone.

    Bars only mean something on a terminal; when stderr goes to a log or a pipe, each finished
    round and clip prints one stage line instead, so a long run is never silent.
    """

    def __init__(self, console: Console, rounds: int, clips: int) -> None:
        self.console, self.rounds, self.clips = console, rounds, clips
        self.bars: Progress | None = None
        self.started = time.perf_counter()

    def _stage(self, text: str) -> None:
        if not self.console.is_terminal:
            click.echo(f"mvg-rt: {text} ({time.perf_counter() - self.started:.1f} s)", err=True)

    def _bars(self) -> Progress:
        if self.bars is None:
            columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
            self.bars = Progress(*columns, console=self.console, transient=True, disable=not self.console.is_terminal)
            self.bars.start()
            self.rounds_task = self.bars.add_task("PIE rounds", total=self.rounds)
            self.steps_task = self.bars.add_task("denoising steps", total=None)
            self.clips_task = self.bars.add_task("transition clips", total=self.clips)
        return self.bars

    def step(self, what: str, index: int, step: int, steps: int) -> None:
        self._bars().update(self.steps_task, completed=step, total=steps, description=f"{what} {index} steps")

    def round(self, index: int) -> None:
        self._bars().update(self.rounds_task, completed=index)
        self._stage(f"PIE round {index}/{self.rounds} done")

    def clip(self, index: int) -> None:
        self._bars().update(self.clips_task, completed=index)
        self._stage(f"transition clip {index}/{self.clips} done")

    def close(self) -> None:
        if self.bars is not None:
            self.bars.stop()


def _transition_warning(folder: Path) -> str | None:
    """The line that says how many transition clips fail the standard (run.json's eval.transitions); None if none."""
    section = json.loads((folder / "run.json").read_text())["eval"]["transitions"]
    clips = len(section["clips"])
    failing = clips - section["passing"]
    if not failing:
        return None
    return (f"{failing} of {clips} transition clips fail the transition standard (no steady progression "
            f"between their states): see mvg-rt eval --run {shlex.quote(str(folder))}")


def run(explicit: set[str] | None = None, **opts: Any) -> None:
    if opts["llm_url"] and opts["report"] is None:
        raise MvgError("--llm-url re-captions a --report: add --report FILE, or drop --llm-url")
    request = simulation_request(opts, explicit)
    console = Console(stderr=True, soft_wrap=True)
    notice = fallback_notice(request.prompt_source)
    if notice:
        console.print(f"[yellow]note:[/yellow] {escape(notice)}", highlight=False)
    pie, transition = request.options.pie, request.options.transition
    progress = _Progress(console, pie.rounds, pie.rounds if transition else 0)
    try:
        folder = run_simulation(
            request, on_step=lambda *a: progress.step("round", *a), on_round=progress.round,
            on_clip_step=lambda *a: progress.step("clip", *a), on_clip=progress.clip,
            on_notice=lambda notice: console.print(f"[yellow]note:[/yellow] {escape(notice)}", highlight=False))
    finally:
        progress.close()
    video = f"{pie.rounds * (transition.frames - 1) + 1} frames" if transition else "the states"
    click.echo(f"wrote {pie.rounds + 1} states, {video} as progression.mp4/.gif, mask.png and run.json "
               f"to {folder}")
    warning = _transition_warning(folder)
    if warning is not None:
        console.print(f"[yellow]warning:[/yellow] {escape(warning)}", highlight=False)
