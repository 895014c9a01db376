"""Planning a batch: each case's resolved settings, its settings hash, and what resume must do with it.

A case's folder ``OUT/<case_id>/`` appears all-or-nothing (``staged_output_dir``), so a folder whose
``run.json`` carries this case's settings hash is complete and is skipped on a rerun. The hash covers
everything that determines the outputs:

    sha256(json({"prompt", "roi" (box/ellipse text or the mask file's sha256), "image_sha256",
                 "settings" (the shared settings with the row's overrides applied), "runtime"}))

where "runtime" names the backend, precision, device type and model/engines locations. Input paths are
not hashed (moving a worklist keeps its results valid); input bytes are. A complete folder with another
hash, or a folder batch did not write, is a *changed* case: refused (exit 2, naming the cases) unless
``redo`` is set, when it is recomputed and replaces the old folder only once the new one is complete.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mvg_rt.batch.settings import check_case_settings
from mvg_rt.batch.worklist import CaseRow, Worklist, WorklistInvalid
from mvg_rt.errors import MvgError

HASH_FORMAT = 1


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class PlannedCase:
    """A validated case with its resolved settings; ``redo`` replaces an existing (changed) folder."""

    row: CaseRow
    settings: dict[str, Any]
    settings_sha256: str
    redo: bool = False

    @property
    def case_id(self) -> str:
        return self.row.case_id


@dataclass
class Plan:
    cases: list[PlannedCase]  # worklist order
    complete: set[str] = field(default_factory=set)  # ids whose folder already holds this case's results

    @property
    def to_run(self) -> list[PlannedCase]:
        return [case for case in self.cases if case.case_id not in self.complete]


def settings_sha256(row: CaseRow, settings: dict[str, Any], runtime: dict[str, Any]) -> str:
    document = {
        "format": HASH_FORMAT,
        "prompt": row.prompt,
        "roi": {"mask_sha256": file_sha256(row.mask) if row.mask else None, "box": row.roi_box,
                "ellipse": row.roi_ellipse},
        "image_sha256": file_sha256(row.image),
        "settings": settings,
        "runtime": runtime,
    }
    return hashlib.sha256(json.dumps(document, sort_keys=True, default=str).encode()).hexdigest()


def recorded_hash(folder: Path) -> str | None:
    """The settings hash in a case folder's run.json, or None when batch did not write the folder."""
    try:
        record = json.loads((folder / "run.json").read_text())
        return str(record["batch"]["settings_sha256"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def plan_batch(worklist: Worklist, shared: dict[str, Any], runtime: dict[str, Any], out: Path,
               redo: bool = False) -> Plan:
    """Resolve every case's settings (all problems named at once) and compare with ``out``'s folders."""
    problems: list[str] = []
    resolved: list[tuple[CaseRow, dict[str, Any]]] = []
    for row in worklist.cases:
        settings = {**shared, **row.overrides}
        try:
            check_case_settings(settings)
        except MvgError as err:
            problems.append(f"row {row.row} ({row.case_id}): {err}")
            continue
        resolved.append((row, settings))
    if problems:
        raise WorklistInvalid(worklist.path, problems)
    plan = Plan([])
    changed = []
    for row, settings in resolved:
        digest = settings_sha256(row, settings, runtime)
        folder = out / row.case_id
        is_changed = folder.exists() and recorded_hash(folder) != digest
        if folder.exists() and not is_changed:
            plan.complete.add(row.case_id)
        if is_changed:
            changed.append(row.case_id)
        plan.cases.append(PlannedCase(row, settings, digest, redo=is_changed))
    if changed and not redo:
        raise MvgError(f"{len(changed)} case folder(s) in {out} hold results of other settings or inputs: "
                       f"{', '.join(changed)}; pass --redo to recompute them (each old folder is replaced only "
                       "once its new results are complete), or choose another --out")
    return plan
