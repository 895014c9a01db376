"""The local executor: one process, one opened runtime, the cases in worklist order."""

from __future__ import annotations

from pathlib import Path

from mvg_rt.batch.case import BatchEvents, CaseRunner, worker_name
from mvg_rt.batch.plan import PlannedCase
from mvg_rt.runtime.factory import RuntimeSpec, open_runtime


def run_local(spec: RuntimeSpec, cases: list[PlannedCase], out: Path, record_paths: bool,
              events: BatchEvents) -> None:
    with open_runtime(spec) as runtime:
        if runtime.notice:
            events.notice(runtime.notice)
        runner = CaseRunner(runtime, out, record_paths, graphed_loops=spec.cuda_graphs, low_memory=spec.low_memory)
        for case in cases:
            events.started(case.case_id, worker_name())
            events.finished(runner.run(case), attempts=1)
