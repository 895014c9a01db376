"""Worklists: one case per row, CSV or JSON Lines, validated as a whole before anything runs.

Columns (CSV header / JSON keys):

- ``case_id`` (required): the case's output folder name. Letters, digits, ``.``, ``_``, ``-``; no path
  separators, not starting with a dot, at most 100 characters; unique ignoring case (``Case1`` and ``case1``
  are one folder on a case-insensitive file system). Ids are the user's choice and are the only case
  identity that reaches the outputs, so a worklist may use pseudonyms.
- ``image`` (required): PNG/JPEG/DICOM path, relative to the worklist file (or absolute).
- ``prompt`` or ``report`` (one of them): the disease state to simulate, or a text file of the report of the
  expected terminal state (a path relative like ``image``), made into the prompt as ``simulate --report`` makes
  it (:mod:`mvg_rt.prompts.report`) when the worklist is read.
- ROI, at most one of: ``mask`` (a mask file path, relative like ``image``), ``roi_box`` ``x0,y0,x1,y1``,
  ``roi_ellipse`` ``cx,cy,rx,ry`` (input-image pixels). None: the whole image may change.
- Optional per-case overrides of the shared ``simulate`` settings: the fixed allow-list :data:`OVERRIDES`.
  An empty CSV cell means "use the shared setting". Their values are checked where the command line's are
  (:func:`mvg_rt.commands.batch.case_requests`), in the same pass as everything here.

Reading never stops at the first problem: every row is read and every problem of every row is kept, with
its line number, so one run of ``mvg-rt batch`` names them all. A problem names the line, the case id and
the column, never an input file's name or path (they may identify the patient). CSV is parsed by the csv
module on the file opened with ``newline=''`` (a quoted newline inside a prompt stays in its cell); JSON
Lines are split at ``\\n`` only (a JSON string may hold U+2028 and other characters ``str.splitlines`` ends
lines at).
"""

from __future__ import annotations

import csv
import json
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mvg_rt.errors import MvgError
from mvg_rt.io.masks import parse_box, parse_ellipse

CASE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
RESERVED_IDS = frozenset({"summary.csv", "summary.json"})  # the batch's own files in --out (any case)
INPUT_COLUMNS = ("case_id", "image", "prompt", "report", "mask", "roi_box", "roi_ellipse")
REQUIRED_COLUMNS = ("case_id", "image")
PROMPT_COLUMNS = ("prompt", "report")  # the header names at least one, a row gives exactly one
ROI_COLUMNS = ("mask", "roi_box", "roi_ellipse")
SUFFIXES = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl"}
LISTED_PROBLEMS = 20  # named in full in the error line; the rest are counted
PROBLEM_CHARS = 400  # one problem's text at most (a value quoted back may be huge)
SHOWN_ID_CHARS = 40  # of a case id quoted in a problem (an unsafe id may be any length)


# Per-case overrides: the simulate options (by their Python names) a row may set. The values are kept as
# given and converted at the CLI edge by the very click types of those options, so a row's value passes the
# same conversion and range checks as the command line's.
OVERRIDES = ("seed", "rounds", "strength", "steps", "guidance", "beta1", "beta2", "scheduler", "negative_prompt",
             "resolution", "feather", "no_transition", "transitions", "frames", "transition_steps",
             "transition_sampler", "transition_guidance", "fps")

Problem = tuple[int, str]  # (line number, text naming the line); 0: the file as a whole


@dataclass(frozen=True)
class CaseRow:
    """One row as read: resolved input paths, the ROI as given, the overrides it sets, and its problems.

    ``image`` is None only in a row with problems (a missing or absent image file); ``prompt`` is "" in a row
    that gives a ``report`` instead.
    """

    case_id: str
    row: int  # 1-based line number in the worklist file (where the row starts)
    image: Path | None
    prompt: str
    report: Path | None = None
    mask: Path | None = None
    roi_box: str | None = None
    roi_ellipse: str | None = None
    overrides: dict[str, Any] = field(default_factory=dict)  # as given (CSV text or JSON values)
    problems: tuple[str, ...] = ()

    @property
    def where(self) -> str:
        """How a problem line names this row: its line and (when it has one) its case id."""
        return _where(self.row, self.case_id)


@dataclass
class Worklist:
    """Every row read (valid or not, in file order) and the problems of the file as a whole."""

    path: Path
    rows: list[CaseRow]
    file_problems: list[Problem] = field(default_factory=list)

    @property
    def cases(self) -> list[CaseRow]:
        """The rows without problems."""
        return [row for row in self.rows if not row.problems]

    @property
    def problems(self) -> list[Problem]:
        """Every problem found reading the file, in line order."""
        found = self.file_problems + [(row.row, text) for row in self.rows for text in row.problems]
        return sorted(found, key=lambda problem: problem[0])


def _short(case_id: str) -> str:
    return case_id if len(case_id) <= SHOWN_ID_CHARS else case_id[: SHOWN_ID_CHARS - 3] + "..."


def _where(line: int, case_id: str) -> str:
    return f"line {line}" + (f" ({_short(case_id)})" if case_id else "")


def _clip(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= PROBLEM_CHARS else text[: PROBLEM_CHARS - 3] + "..."


class WorklistInvalid(MvgError):
    """The worklist has problems; ``problems`` holds one line per problem, each naming its line."""

    def __init__(self, path: Path, problems: list[Problem]) -> None:
        self.problems = [_clip(text) for _, text in sorted(problems, key=lambda problem: problem[0])]
        count = len(self.problems)
        listed = self.problems[:LISTED_PROBLEMS]
        more = [f"and {count - len(listed)} more"] if count > len(listed) else []
        super().__init__(f"worklist {path.name} is invalid ({count} problem{'' if count == 1 else 's'}, nothing "
                         "was run): " + "; ".join(listed + more) + "; fix the worklist and rerun")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object, refusing a key given twice (``json`` would keep the last one silently)."""
    row = dict(pairs)
    if len(row) < len(pairs):
        twice = next(key for key, count in Counter(key for key, _ in pairs).items() if count > 1)
        raise ValueError(f"key {twice!r} appears twice")
    return row


class _Rows:
    """Raw rows (line number, column -> value) of a worklist file, plus the file's own problems."""

    def __init__(self) -> None:
        self.rows: list[tuple[int, dict[str, Any]]] = []
        self.problems: list[Problem] = []
        self.known = set(INPUT_COLUMNS) | set(OVERRIDES)

    def columns(self, names: list[str], where: str, line: int) -> None:
        self.problems += [(line, f"{where}: unknown column {name!r} (known: {', '.join(sorted(self.known))})")
                          for name in dict.fromkeys(names) if name not in self.known]

    def add(self, line: int, raw: dict[str, Any]) -> None:
        self.rows.append((line, {k: v for k, v in raw.items() if k in self.known and v not in (None, "")}))

    def read_csv(self, path: Path) -> None:
        with path.open(encoding="utf-8-sig", newline="") as handle:
            reader = csv.reader(handle)
            header: list[str] | None = None
            while True:
                line = reader.line_num + 1  # where the next record starts (it may span lines)
                try:
                    cells = next(reader)
                except StopIteration:
                    break
                except csv.Error as err:
                    self.problems.append((line, f"line {line}: not CSV ({err}); the lines after it were not read"))
                    break
                if not any(cell.strip() for cell in cells):
                    continue  # a blank line
                if header is None:
                    header = cells
                    self.columns(header, "header", line)
                    self.problems += [(line, f"header: column {name!r} appears twice")
                                      for name in sorted({n for n in header if header.count(n) > 1})]
                    self.problems += [(line, f"header: missing column {name!r}") for name in REQUIRED_COLUMNS
                                      if name not in header]
                    if not set(PROMPT_COLUMNS) & set(header):
                        self.problems.append((line, "header: missing column 'prompt' (or 'report')"))
                    continue
                if len(cells) > len(header):
                    self.problems.append((line, f"line {line}: {len(cells)} cells but the header has "
                                                f"{len(header)} columns"))
                    continue
                self.add(line, dict(zip(header, cells)))
            if header is None:
                self.problems.append((0, "no header line (case_id,image,prompt,...)"))

    def read_jsonl(self, path: Path) -> None:
        with path.open(encoding="utf-8-sig", newline="") as handle:
            text = handle.read()
        for line, content in enumerate(text.split("\n"), start=1):
            content = content.removesuffix("\r")
            if not content.strip():
                continue
            try:
                raw = json.loads(content, object_pairs_hook=_unique_keys)
            except json.JSONDecodeError as err:
                self.problems.append((line, f"line {line}: not JSON ({err.msg} at column {err.colno})"))
                continue
            except RecursionError:
                self.problems.append((line, f"line {line}: not a worklist row (JSON nested too deeply)"))
                continue
            except ValueError as err:  # a key given twice, an integer of over 4300 digits
                self.problems.append((line, f"line {line}: not a worklist row ({err})"))
                continue
            if not isinstance(raw, dict):
                self.problems.append((line, f"line {line}: not a JSON object (one {{...}} per line)"))
                continue
            self.columns(list(raw), f"line {line}", line)
            self.add(line, raw)


def _read_rows(path: Path) -> _Rows:
    """The raw rows and file-level problems; a file that cannot be read at all is one :class:`MvgError`."""
    kind = SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise MvgError(f"worklist {path.name}: unknown format; name it .csv or .jsonl (JSON Lines)")
    rows = _Rows()
    try:
        if kind == "csv":
            rows.read_csv(path)
        else:
            rows.read_jsonl(path)
    except UnicodeDecodeError as err:
        raise MvgError(f"cannot read worklist {path}: not UTF-8 text (byte {err.start}); save it as UTF-8") from err
    except OSError as err:
        raise MvgError(f"cannot read worklist {path}: {err.strerror or err}; give a readable CSV or JSON Lines "
                       "file") from err
    return rows


def _input_path(base: Path, value: Any, column: str, where: str, problems: list[str]) -> Path | None:
    """The resolved input file of a path column; its problems name the column, never the value (a name
    or path may identify the patient)."""
    if not isinstance(value, str):
        problems.append(f"{where}: {column} must be a path (text), got {type(value).__name__}")
        return None
    try:
        path = (base / value).resolve()
        is_file = path.is_file()
    except (OSError, ValueError):  # a NUL character, a loop of links
        is_file = False
    if not is_file:
        problems.append(f"{where}: {column}: no such file (paths are relative to the worklist's folder); fix the "
                        f"{column} column")
        return None
    return path


def _text(raw: dict[str, Any], column: str, where: str, problems: list[str]) -> str | None:
    """A text column's value; JSON numbers, booleans, lists are refused, not turned into text."""
    value = raw.get(column)
    if value is not None and not isinstance(value, str):
        problems.append(f"{where}: {column} must be text, got {type(value).__name__}")
        return None
    return value


def _case_id(case_id: str, where: str, seen: dict[str, tuple[str, int]], number: int,
             problems: list[str]) -> None:
    """The id is a safe folder name, unique ignoring case (the ids are ASCII: ``lower`` is the fold)."""
    if not case_id:
        problems.append(f"{where}: case_id is empty")
    elif not CASE_ID.fullmatch(case_id) or case_id.lower() in RESERVED_IDS:
        problems.append(f"{where}: case_id {_short(case_id)!r} is not a safe folder name (letters, digits, '.', '_', "
                        "'-'; no path separators; not starting with '.'; at most 100 characters; not summary.csv "
                        "or summary.json)")
    elif case_id.lower() in seen:
        first, line = seen[case_id.lower()]
        same = "repeats" if first == case_id else f"is the folder of {first!r} on a case-insensitive file system:"
        problems.append(f"{where}: case_id {case_id!r} {same} line {line}; give each case its own id")
    else:
        seen[case_id.lower()] = (case_id, number)


def _case(number: int, raw: dict[str, Any], base: Path, seen: dict[str, tuple[str, int]]) -> CaseRow:
    problems: list[str] = []
    case_id = raw.get("case_id", "")
    case_id = case_id.strip() if isinstance(case_id, str) else case_id
    shown = case_id if isinstance(case_id, str) else ""
    where = _where(number, shown)
    if isinstance(case_id, str):
        _case_id(case_id, where, seen, number, problems)
    else:
        problems.append(f"{where}: case_id must be text, got {type(case_id).__name__}")
    image = _input_path(base, raw["image"], "image", where, problems) if "image" in raw else None
    if "image" not in raw:
        problems.append(f"{where}: image is empty")
    prompt = _text(raw, "prompt", where, problems)
    report = _input_path(base, raw["report"], "report", where, problems) if "report" in raw else None
    if "prompt" in raw and "report" in raw:
        problems.append(f"{where}: give a prompt or a report, not both")
    elif "report" not in raw and ("prompt" not in raw or (prompt is not None and not prompt.strip())):
        problems.append(f"{where}: prompt is empty")
    given = [name for name in ROI_COLUMNS if name in raw]
    if len(given) > 1:
        problems.append(f"{where}: give one ROI, not {' and '.join(given)}")
    mask = _input_path(base, raw["mask"], "mask", where, problems) if "mask" in raw else None
    shapes = {}
    for name, parse in (("roi_box", parse_box), ("roi_ellipse", parse_ellipse)):
        shapes[name] = _text(raw, name, where, problems)
        if shapes[name] is not None:
            try:
                parse(shapes[name])
            except MvgError as err:
                problems.append(f"{where}: {err}")
    overrides = {name: raw[name] for name in OVERRIDES if name in raw}
    return CaseRow(shown, number, image, prompt or "", report, mask, shapes["roi_box"], shapes["roi_ellipse"],
                   overrides, tuple(problems))


def read_worklist(path: str | Path) -> Worklist:
    """Read every row and collect every problem (``Worklist.problems``); raises only when the file itself
    cannot be read. The caller checks the overrides too and raises :class:`WorklistInvalid` once."""
    path = Path(path)
    if not path.is_file():
        raise MvgError(f"worklist {path} not found: give a .csv or .jsonl file")
    read = _read_rows(path)
    seen: dict[str, tuple[str, int]] = {}
    rows = [_case(number, raw, path.resolve().parent, seen) for number, raw in read.rows]
    if not rows and not read.problems:
        read.problems.append((0, "no cases"))
    return Worklist(path, rows, read.problems)
