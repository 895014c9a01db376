"""The batch job: validate the worklist, plan against ``--out``, run the cases, keep the summary current.

Order of events, and what a crash at any point costs:

1. (At the CLI edge) the worklist is read and every case resolved into a simulate request, exactly as
   ``simulate`` resolves its options. Any problem in any row: exit 2, naming every row, nothing run.
2. ``--out`` is claimed (``claim_output_dir``: refused if it is, or holds, the worklist or any case's input,
   or holds files mvg-rt did not write; marked as batch's; a lock beside it that the kernel releases when
   the process dies, and what dead runs left there removed; each case folder gets its own lock the same
   way), the plan compares each case with its folder (complete / changed / to run; a case id naming a
   folder mvg-rt did not write is refused, with --redo too), and the summary is written with every
   complete case already in it.
3. The executor (local or Ray) runs the remaining cases. Each case folder appears all-or-nothing, and the
   summary is rewritten atomically after each case, so ``kill -9`` loses at most the cases in flight: a
   rerun of the same command finds the complete folders by their settings hash and runs only the rest.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console

from mvg_rt.batch.case import CaseOutcome
from mvg_rt.batch.plan import CaseRequest, Plan, plan_batch
from mvg_rt.batch.progress import BatchProgress
from mvg_rt.batch.summary import Summary
from mvg_rt.limits import check
from mvg_rt.io.output_dir import claim_output_dir, recover
from mvg_rt.runtime.factory import RuntimeSpec
from mvg_rt.simulation import request_inputs, runtime_inputs

EXIT_SOME_FAILED = 3  # some cases failed (or were lost); the others are complete
KILLED_WORKER_EXIT_S = 10.0  # how long the end-of-batch clean-up waits for killed workers' locks


@dataclass
class BatchRequest:
    cases: list[CaseRequest]  # worklist order
    out: Path
    runtime: RuntimeSpec  # resolved (the demo model filled in); the same for every case
    notice: str | None = None  # e.g. the demo model's, shown once and recorded in every run.json
    redo: bool = False
    ray: str | None = None  # None: local; "local", "auto" or a cluster address
    workers: int | None = None
    retries: int = 1
    case_timeout: float | None = None  # with Ray: seconds before a running case's actor is killed and replaced
    worklist: Path | None = None  # the worklist file: --out may not be, nor hold, it


@dataclass
class BatchReport:
    out: Path
    counts: dict[str, int] = field(default_factory=dict)
    resumed: int = 0

    @property
    def exit_code(self) -> int:
        return 0 if self.counts.get("failed", 0) == 0 and self.counts.get("pending", 0) == 0 else EXIT_SOME_FAILED


def runtime_identity(spec: RuntimeSpec) -> dict[str, Any]:
    """What of the runtime determines a case's outputs (hashed with its settings): the whole spec, its paths
    resolved, its device by type (``cuda:1`` and ``cuda`` run the same), without ``with_seine`` (set per run)."""
    identity = spec.to_dict()
    for name in ("model_dir", "unet_dir", "seine", "engines_dir"):
        if identity[name]:
            identity[name] = str(Path(identity[name]).resolve())
    identity["device"] = spec.device.split(":")[0]
    del identity["with_seine"]
    return identity


def batch_inputs(request: BatchRequest) -> dict[str, Any]:
    """Everything the batch reads, by what it is (case ids, never file names: they may identify a patient)."""
    inputs: dict[str, Any] = {"the worklist": request.worklist, **runtime_inputs(request.runtime)}
    for case in request.cases:
        inputs.update({f"{label} of case {case.case_id}": path
                       for label, path in request_inputs(case.request).items()})
    return inputs


class _Driver:
    """Receives the executor's events: keeps the summary and the progress display current."""

    def __init__(self, plan: Plan, summary: Summary, progress: BatchProgress, console: Console) -> None:
        self.hashes = {case.case_id: case.settings_sha256 for case in plan.cases}
        self.summary = summary
        self.progress = progress
        self.console = console

    def started(self, case_id: str, worker: str) -> None:
        self.progress.case_started(case_id, worker)

    def finished(self, outcome: CaseOutcome, attempts: int) -> None:
        self.summary.update(outcome.case_id, outcome.status, self.hashes[outcome.case_id], outcome.seconds,
                            outcome.record, outcome.error, attempts, worker=outcome.worker)
        self.summary.write()
        self.progress.case_finished(outcome)

    def retried(self, case_id: str, reason: str) -> None:
        self.progress.case_retried(case_id, reason)


def _summarise_complete(plan: Plan, summary: Summary) -> None:
    """Rows for the cases already complete: measures from their run.json, seconds from the last summary."""
    previous = summary.previous_seconds()
    for case in plan.cases:
        if case.case_id not in plan.complete:
            continue
        record = json.loads((summary.out / case.case_id / "run.json").read_text())
        recorded_hash, seconds = previous.get(case.case_id, (None, None))
        if recorded_hash != case.settings_sha256:
            seconds = sum(v for k, v in record.get("timings", {}).items() if k.endswith("_seconds"))
        summary.update(case.case_id, "ok", case.settings_sha256, seconds, record, resumed=True)


def run_batch(request: BatchRequest, console: Console) -> BatchReport:
    check("--retries", request.retries)  # the CLI's own range, for callers that skip the CLI
    if request.case_timeout is not None:
        check("--case-timeout", request.case_timeout)
    # one batch per --out, a folder of batch's own (marked) holding none of the inputs; dead runs' leftovers removed
    with claim_output_dir(request.out, overwrite=True, inputs=batch_inputs(request), kind="batch"):
        plan = plan_batch(request.cases, runtime_identity(request.runtime), request.out, request.redo)
        summary = Summary(request.out, [case.case_id for case in plan.cases])
        _summarise_complete(plan, summary)
        summary.write()
        to_run = plan.to_run
        report = BatchReport(request.out, resumed=len(plan.complete))
        if to_run:
            if request.notice:
                console.print(f"[yellow]note:[/yellow] {request.notice}")
            spec = dataclasses.replace(request.runtime, with_seine=any(
                case.request.options.transition is not None for case in to_run))
            with BatchProgress(console, len(plan.cases), len(plan.complete)) as progress:
                driver = _Driver(plan, summary, progress, console)
                if request.ray:
                    from mvg_rt.batch.ray_executor import run_on_ray

                    run_on_ray(request.ray, request.workers, request.retries, spec, request.notice, to_run, driver,
                               request.case_timeout)
                else:
                    from mvg_rt.batch.local import run_local

                    run_local(spec, request.notice, to_run, driver)
            # staging left by Ray workers killed mid-case (lost, timed out) whose case then failed; a killed
            # worker frees its case's lock only once its process has exited, hence the patience
            recover(request.out, patience_s=KILLED_WORKER_EXIT_S)
        report.counts = summary.counts()
    return report
