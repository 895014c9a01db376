"""Planning a batch: each case's settings hash, and what resume must do with the case.

A case's folder ``OUT/<case_id>/`` appears all-or-nothing (``staged_output_dir``), so a folder whose
``run.json`` carries this case's settings hash is complete and is skipped on a rerun. The hash covers
everything that determines the outputs, resolved (shared settings with the row's overrides applied):

    sha256(json({"prompt", "negative_prompt", "image_sha256",
                 "roi" (box / ellipse text, feather, or the mask file's sha256),
                 "options" (PIE and transition settings, seed, resolution, fps), "record_paths",
                 "runtime" (the runtime spec: backend, precision, device type, switches, model locations),
                 "prompt_source" (a prompt made of a report: its sha256, recaptioner, findings, not its path; absent
                 otherwise)}))

Input paths are not hashed (moving a worklist keeps its results valid); input bytes are. A complete
folder with another hash, or a case folder of mvg-rt's without batch's hash, is a *changed* case: refused
(exit 2, naming the cases) unless ``redo`` is set, when it is recomputed and replaces the old folder only
once the new one is complete. A file or folder at a case's place that mvg-rt did not write (no output
marker, see :mod:`mvg_rt.io.output_dir`) is refused even with ``redo``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mvg_rt.batch.worklist import CaseRow
from mvg_rt.errors import MvgError
from mvg_rt.io.output_dir import foreign
from mvg_rt.simulation import SimulationRequest

HASH_FORMAT = 1
_NOT_OUTPUTS = ("out", "overwrite", "annotations")  # where and how a case is written, not what it holds


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class CaseRequest:
    """A worklist row and the simulate request it resolves to (built at the CLI edge, like simulate's)."""

    row: CaseRow
    request: SimulationRequest

    @property
    def case_id(self) -> str:
        return self.row.case_id


@dataclass(frozen=True)
class PlannedCase:
    """A case to run (or already complete) with its settings hash; ``request.options.overwrite`` is --redo."""

    case_id: str
    request: SimulationRequest
    settings_sha256: str


@dataclass
class Plan:
    cases: list[PlannedCase]  # worklist order
    complete: set[str] = field(default_factory=set)  # ids whose folder already holds this case's results

    @property
    def to_run(self) -> list[PlannedCase]:
        return [case for case in self.cases if case.case_id not in self.complete]


def settings_sha256(request: SimulationRequest, runtime: dict[str, Any]) -> str:
    options = {k: v for k, v in dataclasses.asdict(request.options).items() if k not in _NOT_OUTPUTS}
    roi = request.roi
    document = {
        "format": HASH_FORMAT,
        "prompt": request.prompt,
        "negative_prompt": request.negative_prompt,
        "image_sha256": file_sha256(request.image),
        "roi": {"mask_sha256": file_sha256(roi.mask_path) if roi.mask_path else None, "box": roi.box,
                "ellipse": roi.ellipse, "feather": roi.feather},
        "options": options,
        "record_paths": request.record_paths,
        "runtime": runtime,
        **({"prompt_source": {k: v for k, v in request.prompt_source.items() if k != "path"}}
           if request.prompt_source else {}),
    }
    return hashlib.sha256(json.dumps(document, sort_keys=True, default=str).encode()).hexdigest()


def recorded_hash(folder: Path) -> str | None:
    """The settings hash in a case folder's run.json, or None when batch did not write the folder."""
    try:
        record = json.loads((folder / "run.json").read_text())
        return str(record["batch"]["settings_sha256"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def plan_batch(cases: list[CaseRequest], runtime: dict[str, Any], out: Path, redo: bool = False) -> Plan:
    """Hash every case and compare it with its folder in ``out``: complete, changed or to run."""
    unwritten = [case.case_id for case in cases if foreign(out / case.case_id)]
    if unwritten:  # with --redo too: mvg-rt replaces only what it wrote (case ids named, never file names)
        raise MvgError(f"{len(unwritten)} case id(s) in {out} name a file or folder mvg-rt did not write: "
                       f"{', '.join(unwritten)}; rename those cases (or move the folders away), or choose another "
                       "--out")
    plan = Plan([])
    changed = []
    for case in cases:
        digest = settings_sha256(case.request, runtime)
        folder = out / case.case_id
        is_changed = folder.exists() and recorded_hash(folder) != digest
        if folder.exists() and not is_changed:
            plan.complete.add(case.case_id)
        if is_changed:
            changed.append(case.case_id)
        options = dataclasses.replace(case.request.options, out=folder, overwrite=is_changed)
        plan.cases.append(PlannedCase(case.case_id, dataclasses.replace(case.request, options=options), digest))
    if changed and not redo:
        raise MvgError(f"{len(changed)} case folder(s) in {out} hold results of other settings or inputs: "
                       f"{', '.join(changed)}; pass --redo to recompute them (each old folder is replaced only "
                       "once its new results are complete), or choose another --out")
    return plan
