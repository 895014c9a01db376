"""``mvg-rt batch``: each worklist row becomes a simulate request exactly as simulate's options do.

The shared settings are ``simulate``'s own options (the same click options); a row overrides some of them
(:data:`mvg_rt.batch.worklist.OVERRIDES`), its values converted and range-checked by those options' click
types, and supplies the image, prompt and ROI. Every row is resolved here, before anything runs, so a bad
value anywhere stops the batch with every problem of every row named in one pass (exit 2).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.markup import escape

from mvg_rt.batch.job import BatchRequest, run_batch
from mvg_rt.batch.plan import CaseRequest
from mvg_rt.batch.worklist import CaseRow, Problem, Worklist, WorklistInvalid, read_worklist
from mvg_rt.commands.simulate import runtime_spec, simulation_request
from mvg_rt.errors import MvgError
from mvg_rt.prompts.report import fallback_notice
from mvg_rt.runtime.pipelines.schedulers import check_scheduler
from mvg_rt.simulation import resolve_demo_model


# What a JSON value of each kind of option may be (CSV cells are always text, converted by the option's
# type); any other option takes text. JSON ``1`` for a flag or ``123`` for a prompt is refused, not coerced.
_JSON_KINDS = {"boolean": ((bool, str), "true or false"), "integer": ((int, float, str), "an integer"),
               "number": ((int, float, str), "a number")}


# Checks of a value that its option's click type does not make (simulate makes them in the settings dataclasses,
# which stop at the first): made here per value too, so each bad value of a row is its own problem.
_VALUE_CHECKS = {"scheduler": check_scheduler}


def _convert(raw: Any, param: click.Parameter) -> Any:
    """One override through its option's click type, as the command line's value goes (same checks)."""
    option = max(param.opts, key=len)
    kinds, kind = _JSON_KINDS.get(param.type.name, ((str,), "text"))
    if not isinstance(raw, kinds):
        raise MvgError(f"{option} takes {kind} (got {type(raw).__name__} {str(raw)[:40]})")
    try:
        value = param.type.convert(raw, param, None)
        if param.name in _VALUE_CHECKS:
            _VALUE_CHECKS[param.name](value)
        return value
    except click.BadParameter as err:  # its message names the option
        raise MvgError(err.format_message()) from err


def _overrides(row: CaseRow, params: dict[str, click.Parameter], problems: list[Problem]) -> dict[str, Any]:
    """The row's overrides converted by the click types of the options they override; a problem per bad one."""
    values = {}
    for name, raw in row.overrides.items():
        try:
            values[name] = _convert(raw, params[name])
        except MvgError as err:
            problems.append((row.row, f"{row.where}: {err}"))
    return values


def case_requests(worklist: Worklist, opts: dict[str, Any], out: Path, params: dict[str, click.Parameter],
                  explicit: set[str] | None = None) -> list[CaseRequest]:
    """One simulate request per row (shared options, the row's overrides and inputs); every problem at once.

    Every row is checked, also one with problems of its own (a missing image does not hide a bad ``steps``):
    its overrides one by one, then, when they all converted, the settings they make together (the settings
    dataclasses check themselves, as for simulate). ``params`` are the batch command's click options by name
    (simulate's own, shared); ``explicit`` the options given on the command line (on the demo model, the demo
    case's settings fill in the rest, as for simulate, and a row's overrides count as given).
    """
    cases, problems = [], list(worklist.problems)
    for row in worklist.rows:
        before = len(problems)
        overrides = _overrides(row, params, problems)
        if len(problems) > before:
            continue
        case_opts = {**opts, **overrides, "image": str(row.image or ""), "prompt": row.prompt or None,
                     "report": str(row.report) if row.report else None,
                     "mask_path": str(row.mask) if row.mask else None, "roi_box": row.roi_box,
                     "roi_ellipse": row.roi_ellipse, "out": out / row.case_id, "overwrite": False}
        try:
            request = simulation_request(case_opts, explicit=(explicit or set()) | set(overrides))
        except MvgError as err:
            problems.append((row.row, f"{row.where}: {err}"))
            continue
        if not row.problems:
            cases.append(CaseRequest(row, request))
    if problems:
        raise WorklistInvalid(worklist.path, problems)
    return cases


def run(params: dict[str, click.Parameter], explicit: set[str] | None = None, **opts: Any) -> None:
    if opts["workers"] is not None and not opts["ray"]:
        raise MvgError("--workers sets the Ray actor count: add --ray local (or auto / ADDRESS), or drop --workers")
    if opts["case_timeout"] is not None and not opts["ray"]:
        raise MvgError("--case-timeout needs --ray: a Ray actor that overruns is killed and replaced, a case in this "
                       "process cannot be stopped safely mid-call; add --ray local, or drop --case-timeout")
    if opts["workers"] is not None and opts["workers"] < 1:
        raise MvgError(f"--workers must be at least 1 (got {opts['workers']})")
    if opts["ray"]:
        from mvg_rt.batch.ray_executor import require_ray

        require_ray()
    worklist = read_worklist(opts["worklist"])
    cases = case_requests(worklist, opts, opts["out"], params, explicit)
    console = Console(stderr=True)
    for case in cases:  # an LLM that gave no usable prompt for a case's report: said once, before anything runs
        fallback = fallback_notice(case.request.prompt_source)
        if fallback:
            console.print(f"[yellow]note:[/yellow] case {case.case_id}: {escape(fallback)}", highlight=False)
    spec, notice = resolve_demo_model(runtime_spec(opts))
    spec.validate()  # a bad backend combination stops the batch before any case
    request = BatchRequest(cases, opts["out"], spec, notice, redo=opts["redo"], ray=opts["ray"],
                           workers=opts["workers"], retries=opts["retries"], case_timeout=opts["case_timeout"],
                           worklist=worklist.path)
    report = run_batch(request, console)
    counts = report.counts
    click.echo(f"{counts['ok']} of {len(cases)} cases complete ({report.resumed} from earlier runs), "
               f"{counts['failed']} failed; per-case results in {opts['out']}/summary.csv")
    if report.exit_code:
        raise SystemExit(report.exit_code)
