"""Running one planned case on an opened runtime: exactly ``simulate``, with the case's settings.

The runtime is opened once per worker and serves every case. A case that fails (unreadable DICOM, an
ROI that is empty at model resolution, a full disk, ...) becomes a ``failed`` outcome carrying its one-line
error (the line simulate prints, without input file names: :func:`scrub`), and its folder is never created
(``simulate`` writes all-or-nothing); the batch goes on.

Test hook: ``MVG_RT_TEST_KILL_IN_CASE=CASE_ID[:MARKER]`` makes the process running CASE_ID kill itself
with SIGKILL after the case's first PIE round, the way a crash or ``kill -9`` would; with MARKER (a file
path) only the first time, when MARKER does not exist yet. The tests use it to kill a local batch or a Ray
actor mid-case; never set it otherwise.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import signal
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from mvg_rt.batch.plan import PlannedCase
from mvg_rt.errors import MvgError, user_errors
from mvg_rt.runtime.factory import Runtime
from mvg_rt.simulation import load_inputs, simulate

KILL_HOOK = "MVG_RT_TEST_KILL_IN_CASE"


@dataclass
class CaseOutcome:
    """What the driver needs for the summary; ``record`` is the case's run.json when it succeeded."""

    case_id: str
    status: str  # "ok" or "failed"
    seconds: float
    error: str | None = None
    record: dict[str, Any] | None = None
    worker: str = ""


class BatchEvents(Protocol):
    """What an executor reports to the driver (summary + progress), in the driver's process."""

    def started(self, case_id: str, worker: str) -> None: ...

    def finished(self, outcome: CaseOutcome, attempts: int) -> None: ...

    def retried(self, case_id: str, reason: str) -> None: ...


def _kill_hook(case_id: str) -> None:
    target, _, marker = os.environ.get(KILL_HOOK, "").partition(":")
    if target != case_id:
        return
    if marker:
        if Path(marker).exists():
            return
        Path(marker).touch()
    os.kill(os.getpid(), signal.SIGKILL)


def _spellings(path: str) -> list[str]:
    """How a path or name may appear in an error line: as is, and as ``repr`` writes it inside quotes (an
    OSError's text, a name with a quote, a backslash or bytes that are not UTF-8)."""
    return [spelling for spelling in dict.fromkeys((path, repr(path)[1:-1])) if spelling]


def scrub(message: str, case: PlannedCase) -> str:
    """An error line without the case's input paths and file names, with or without ``--record-paths``.

    A file name may identify the patient (``Doe_Jane.dcm``), so the image and mask are called by their
    worklist columns, ``<image>`` and ``<mask>`` (the summary row and the progress line name the case id);
    ``--record-paths`` keeps paths in each run.json only. The batch folder becomes ``OUT``, so a line about a
    file being written (a full disk) reads the same wherever the batch ran. A file name is replaced where it
    stands as a word (``7`` in ``7x7`` stays); longer spellings first, so a path goes before its name.
    """
    request = case.request
    words = []
    for path, label in ((request.image, "<image>"), (request.roi.mask_path, "<mask>")):
        if path:
            words += [(spelling, label) for spelling in _spellings(str(Path(path)))]
            words += [(spelling, label) for spelling in _spellings(Path(path).name)]
    batch_folder = str(request.options.out.parent)
    if batch_folder not in (".", ".."):  # a word of every sentence otherwise
        words += [(spelling, "OUT") for spelling in _spellings(batch_folder)]
    for spelling, label in sorted(words, key=lambda word: -len(word[0])):
        message = re.sub(rf"(?<![A-Za-z0-9]){re.escape(spelling)}(?![A-Za-z0-9])", label, message)
    return message


def worker_name() -> str:
    """Host and process id: which worker ran a case (no user data)."""
    return f"{socket.gethostname()}:{os.getpid()}"


class CaseRunner:
    """Runs cases into their folders on one opened runtime (as ``run_simulation`` does, minus the opening)."""

    def __init__(self, runtime: Runtime, notice: str | None = None) -> None:
        runtime.notice = notice  # recorded in every run.json, as simulate records it
        self.runtime = runtime

    def _simulate(self, case: PlannedCase) -> dict[str, Any]:
        request = case.request
        assert request.image is not None and request.prompt is not None  # every worklist row has both
        inputs = load_inputs(request.image, request.prompt, request.negative_prompt, request.record_paths)
        inputs.roi, inputs.prompt_source = request.roi, request.prompt_source
        options = dataclasses.replace(request.options, annotations={
            "batch": {"case_id": case.case_id, "settings_sha256": case.settings_sha256}})
        folder = simulate(self.runtime, inputs, options, on_round=lambda _: _kill_hook(case.case_id))
        return json.loads((folder / "run.json").read_text())

    def run(self, case: PlannedCase) -> CaseOutcome:
        started = time.perf_counter()
        try:
            with user_errors():  # a full disk, no permission, out of memory: the user's to fix, as for simulate
                record = self._simulate(case)
        except MvgError as err:
            return CaseOutcome(case.case_id, "failed", time.perf_counter() - started, scrub(str(err), case),
                               worker=worker_name())
        except Exception as err:  # noqa: BLE001 - one broken case must not stop the cohort; its line says why
            message = scrub(" ".join(f"internal error: {type(err).__name__}: {err}".split()), case)
            return CaseOutcome(case.case_id, "failed", time.perf_counter() - started, message, worker=worker_name())
        return CaseOutcome(case.case_id, "ok", time.perf_counter() - started, record=record, worker=worker_name())
