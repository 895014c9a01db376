"""Worklists: one case per row, CSV or JSON Lines, validated as a whole before anything runs.

Columns (CSV header / JSON keys):

- ``case_id`` (required): the case's output folder name. Letters, digits, ``.``, ``_``, ``-``; no path
  separators, not starting with a dot, at most 100 characters. Ids are the user's choice and are the only
  case identity that reaches the outputs, so a worklist may use pseudonyms.
- ``image`` (required): PNG/JPEG/DICOM path, relative to the worklist file (or absolute).
- ``prompt`` (required): the disease state to simulate.
- ROI, at most one of: ``mask`` (a mask file path, relative like ``image``), ``roi_box`` ``x0,y0,x1,y1``,
  ``roi_ellipse`` ``cx,cy,rx,ry`` (input-image pixels). None: the whole image may change.
- Optional per-case overrides of the shared ``simulate`` settings: the fixed allow-list :data:`OVERRIDES`.
  An empty CSV cell means "use the shared setting". Their values are checked where the command line's are.

Every problem of every row is collected, so one run of ``mvg-rt batch`` names them all.
"""

from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mvg_rt.errors import MvgError
from mvg_rt.io.masks import parse_box, parse_ellipse

CASE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
RESERVED_IDS = frozenset({"summary.csv", "summary.json"})  # the batch's own files in --out
INPUT_COLUMNS = ("case_id", "image", "prompt", "mask", "roi_box", "roi_ellipse")
REQUIRED_COLUMNS = ("case_id", "image", "prompt")
SUFFIXES = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl"}


# Per-case overrides: the simulate options (by their Python names) a row may set. The values are kept as
# given and converted at the CLI edge by the very click types of those options, so a row's value passes the
# same conversion and range checks as the command line's.
OVERRIDES = ("seed", "rounds", "strength", "steps", "guidance", "beta1", "beta2", "scheduler", "negative_prompt",
             "resolution", "feather", "no_transition", "transitions", "frames", "transition_steps",
             "transition_sampler", "transition_guidance", "fps")


@dataclass(frozen=True)
class CaseRow:
    """One validated row: resolved input paths, the ROI as given, and the overrides it sets."""

    case_id: str
    row: int  # 1-based line number in the worklist file
    image: Path
    prompt: str
    mask: Path | None = None
    roi_box: str | None = None
    roi_ellipse: str | None = None
    overrides: dict[str, Any] = field(default_factory=dict)  # as given (CSV text or JSON values)


@dataclass
class Worklist:
    path: Path
    cases: list[CaseRow]


class WorklistInvalid(MvgError):
    """The worklist has problems; ``problems`` holds one line per problem, each naming its row."""

    def __init__(self, path: Path, problems: list[str]) -> None:
        self.problems = problems
        rows = "problem" if len(problems) == 1 else "problems"
        super().__init__(f"worklist {path.name} is invalid ({len(problems)} {rows}, nothing was run): "
                         + "; ".join(problems) + "; fix the worklist and rerun")


def _read_rows(path: Path) -> tuple[list[tuple[int, dict[str, Any]]], list[str]]:
    """(line number, raw row) pairs plus file-level problems (unknown columns, bad lines)."""
    kind = SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise MvgError(f"worklist {path.name}: unknown format; name it .csv or .jsonl (JSON Lines)")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as err:
        raise MvgError(f"cannot read worklist {path}: {err}; give a UTF-8 CSV or JSON Lines file") from err
    known = set(INPUT_COLUMNS) | set(OVERRIDES)
    if kind == "csv":
        reader = csv.DictReader(text.splitlines())
        header = reader.fieldnames or []
        problems = [f"unknown column {name!r} (known: {', '.join(sorted(known))})" for name in header
                    if name not in known]
        problems += [f"missing column {name!r}" for name in REQUIRED_COLUMNS if name not in header]
        rows = []
        for row in reader:
            if None in row:
                problems.append(f"row {reader.line_num}: more cells than header columns")
            rows.append((reader.line_num, {k: v for k, v in row.items() if k in known and v not in (None, "")}))
        return rows, problems
    rows, problems = [], []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            problems.append(f"row {number}: not JSON ({err.msg})")
            continue
        if not isinstance(row, dict):
            problems.append(f"row {number}: not a JSON object")
            continue
        problems += [f"row {number}: unknown key {key!r}" for key in row if key not in known]
        rows.append((number, {k: v for k, v in row.items() if k in known and v not in (None, "")}))
    return rows, problems


def _input_path(base: Path, value: Any, column: str, where: str, problems: list[str]) -> Path | None:
    if not isinstance(value, str):
        problems.append(f"{where}: {column} must be a path")
        return None
    path = (base / value).resolve()
    if not path.is_file():
        problems.append(f"{where}: {column} file {value} not found (paths are relative to the worklist)")
        return None
    return path


def _case(number: int, raw: dict[str, Any], base: Path, seen: dict[str, int],
          problems: list[str]) -> CaseRow | None:
    case_id = str(raw.get("case_id", "")).strip()
    where = f"row {number}" + (f" ({case_id})" if case_id else "")
    before = len(problems)
    if not case_id:
        problems.append(f"{where}: case_id is empty")
    elif not CASE_ID.fullmatch(case_id) or case_id in RESERVED_IDS:
        problems.append(f"{where}: case_id {case_id!r} is not a safe folder name (letters, digits, '.', '_', "
                        "'-'; no path separators; not starting with '.'; at most 100 characters)")
    elif case_id in seen:
        problems.append(f"{where}: case_id {case_id!r} repeats row {seen[case_id]}")
    else:
        seen[case_id] = number
    image = _input_path(base, raw["image"], "image", where, problems) if "image" in raw else None
    if "image" not in raw:
        problems.append(f"{where}: image is empty")
    prompt = raw.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        problems.append(f"{where}: prompt is empty")
    given = [name for name in ("mask", "roi_box", "roi_ellipse") if name in raw]
    if len(given) > 1:
        problems.append(f"{where}: give one ROI, not {' and '.join(given)}")
    mask = _input_path(base, raw["mask"], "mask", where, problems) if "mask" in raw else None
    for name, parse in (("roi_box", parse_box), ("roi_ellipse", parse_ellipse)):
        if name in raw:
            try:
                parse(str(raw[name]))
            except MvgError as err:
                problems.append(f"{where}: {err}")
    if len(problems) > before:
        return None
    overrides = {name: raw[name] for name in OVERRIDES if name in raw}
    return CaseRow(case_id, number, image, prompt, mask, raw.get("roi_box"), raw.get("roi_ellipse"), overrides)


def read_worklist(path: str | Path) -> Worklist:
    """Parse and validate the whole worklist; raises :class:`WorklistInvalid` naming every bad row."""
    path = Path(path)
    if not path.is_file():
        raise MvgError(f"worklist {path} not found: give a .csv or .jsonl file")
    rows, problems = _read_rows(path)
    seen: dict[str, int] = {}
    cases = [case for number, raw in rows if (case := _case(number, raw, path.resolve().parent, seen, problems))]
    if not rows and not problems:
        problems.append("no cases")
    if problems:
        raise WorklistInvalid(path, problems)
    return Worklist(path, cases)
