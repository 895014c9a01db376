"""``OUT/summary.csv`` and ``OUT/summary.json``: one row per worklist case, rewritten atomically after each.

Per case: ``status`` (``ok``, ``failed``, or ``pending``: not run yet, or in flight when the batch
stopped), its one-line ``error``, ``seconds`` (wall time of the run that computed it), ``attempts``,
``resumed`` (complete before this run started), the eval measures from run.json where the model allows
(first and last CTR, whether the CTR rose monotonically, the lowest SSIM outside the ROI against the input,
the lowest identity similarity), the settings hash and the worker that ran it.

What reaches these files: case ids (the user's choice) and measures. No input path (the
``--record-paths`` runs keep theirs in each run.json only), no DICOM field, no prompt.
Each file is written to a temporary sibling and renamed over the old one, so a reader, or a batch
killed mid-write, sees either the previous or the new summary, never half of one.
"""

from __future__ import annotations

import csv
import io
import json
import time
from pathlib import Path
from typing import Any

from mvg_rt.io.files import write_text_atomic

COLUMNS = ("case_id", "status", "error", "seconds", "attempts", "resumed", "ctr_first", "ctr_last",
           "ctr_monotone", "ssim_outside_roi_min", "identity_similarity_min", "settings_sha256", "worker")


def eval_columns(record: dict[str, Any]) -> dict[str, Any]:
    """The summary's measures from a run.json record (None where the model or image allows none)."""
    report = record.get("eval") or {}
    ctr = report.get("ctr") or None
    ssim = report.get("ssim_outside_roi") or None
    identity = report.get("identity_similarity") or None
    return {
        "ctr_first": ctr[0] if ctr else None,
        "ctr_last": ctr[-1] if ctr else None,
        "ctr_monotone": report.get("ctr_monotone"),
        "ssim_outside_roi_min": min(ssim) if ssim else None,
        "identity_similarity_min": min(identity) if identity else None,
    }


def _write_atomic(path: Path, text: str) -> None:
    write_text_atomic(path, text)


class Summary:
    """The rows of every worklist case, in worklist order; ``write`` publishes both files."""

    def __init__(self, out: Path, case_ids: list[str]) -> None:
        self.out = out
        self.rows: dict[str, dict[str, Any]] = {case_id: self._row(case_id, status="pending") for case_id in case_ids}

    @staticmethod
    def _row(case_id: str, **values: Any) -> dict[str, Any]:
        return dict.fromkeys(COLUMNS) | {"case_id": case_id, "attempts": 0, "resumed": False} | values

    def previous_seconds(self) -> dict[str, tuple[str, float]]:
        """(settings hash, seconds) of each case in the summary.json already in ``out``, if any."""
        try:
            cases = json.loads((self.out / "summary.json").read_text())["cases"]
            return {c["case_id"]: (c["settings_sha256"], c["seconds"]) for c in cases if c["status"] == "ok"}
        except (OSError, ValueError, KeyError, TypeError):
            return {}

    def update(self, case_id: str, status: str, settings_sha256: str, seconds: float | None,
               record: dict[str, Any] | None = None, error: str | None = None, attempts: int = 0,
               resumed: bool = False, worker: str | None = None) -> None:
        self.rows[case_id] = self._row(
            case_id, status=status, error=error, seconds=None if seconds is None else round(seconds, 3),
            attempts=attempts, resumed=resumed, settings_sha256=settings_sha256, worker=worker,
            **(eval_columns(record) if record else {}))

    def counts(self) -> dict[str, int]:
        statuses = [row["status"] for row in self.rows.values()]
        return {name: statuses.count(name) for name in ("ok", "failed", "pending")}

    def write(self) -> None:
        rows = list(self.rows.values())
        table = io.StringIO()
        writer = csv.DictWriter(table, fieldnames=COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        _write_atomic(self.out / "summary.csv", table.getvalue())
        document = {"mvg_rt_batch": 1, "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "counts": self.counts(),
                    "cases": rows}
        _write_atomic(self.out / "summary.json", json.dumps(document, indent=2))
