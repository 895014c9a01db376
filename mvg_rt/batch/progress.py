"""The batch's progress: cases done / failed / remaining and the projected finish time.

On a terminal this is a live rich progress bar; otherwise (a log file, a scheduler's captured stderr)
one line per finished case. The projection is ``now + remaining * elapsed / finished``, over the cases
finished in this run: with several workers the elapsed time already reflects their parallelism.
"""

from __future__ import annotations

import time
from types import TracebackType

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)

from mvg_rt.batch.case import CaseOutcome


class BatchProgress:
    def __init__(self, console: Console, total: int, resumed: int) -> None:
        self.console = console
        self.total = total
        self.done = resumed
        self.failed = 0
        self.finished_here = 0
        self.started = time.monotonic()
        self.progress: Progress | None = None
        self.task = None

    def __enter__(self) -> BatchProgress:
        if self.console.is_terminal:
            columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                       TextColumn("{task.fields[status]}"))
            self.progress = Progress(*columns, console=self.console, transient=False)
            self.progress.start()
            self.task = self.progress.add_task("cases", total=self.total, completed=self.done,
                                               status=self._status())
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        if self.progress is not None:
            self.progress.stop()

    @property
    def remaining(self) -> int:
        return self.total - self.done - self.failed

    def _finish_time(self) -> str:
        if not self.finished_here:
            return "?"
        per_case = (time.monotonic() - self.started) / self.finished_here
        return time.strftime("%H:%M:%S", time.localtime(time.time() + per_case * self.remaining))

    def _status(self) -> str:
        return (f"done {self.done}, failed {self.failed}, remaining {self.remaining}, "
                f"projected finish {self._finish_time()}")

    def case_started(self, case_id: str, worker: str = "") -> None:
        if self.progress is None:
            self.console.print(f"case {case_id}: started" + (f" on {worker}" if worker else ""), highlight=False)

    def case_finished(self, outcome: CaseOutcome) -> None:
        self.finished_here += 1
        if outcome.status == "ok":
            self.done += 1
        else:
            self.failed += 1
        result = "ok" if outcome.status == "ok" else f"FAILED: {outcome.error}"
        line = f"case {outcome.case_id}: {result} ({outcome.seconds:.1f} s); {self._status()}"
        if self.progress is None:
            self.console.print(line, highlight=False, soft_wrap=True)
        else:
            if outcome.status != "ok":
                self.progress.console.print(line, highlight=False, soft_wrap=True)
            self.progress.update(self.task, completed=self.done + self.failed, status=self._status())

    def case_retried(self, case_id: str, reason: str) -> None:
        message = f"case {case_id}: {reason}; retrying on another worker"
        (self.progress.console if self.progress else self.console).print(message, highlight=False, soft_wrap=True)
