"""The local executor: one process, one opened runtime, the cases in worklist order."""

from __future__ import annotations

from mvg_rt.batch.case import BatchEvents, CaseRunner, worker_name
from mvg_rt.batch.plan import PlannedCase
from mvg_rt.runtime.factory import RuntimeSpec, open_runtime


def run_local(spec: RuntimeSpec, notice: str | None, cases: list[PlannedCase], events: BatchEvents) -> None:
    with open_runtime(spec) as runtime:
        runner = CaseRunner(runtime, notice)
        for case in cases:
            events.started(case.case_id, worker_name())
            events.finished(runner.run(case), attempts=1)
