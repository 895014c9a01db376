"""Property-based fuzzing of worklist validation (issue 18): hypothesis writes damaged worklists, CSV and JSON
Lines, and runs the real ``mvg-rt batch`` entry point on them.

Each generated worklist mixes good rows (with quoted newlines or U+2028 in prompts, CRLF line ends, blank
lines, good overrides) with injected defects, each of which is exactly one problem: a value outside its
option's range, a value of the wrong type (``true``, NaN, 1e400, a 400-digit integer, ``"maybe"``, a number for
a prompt), an unknown scheduler, a missing image or mask file, an id that repeats an earlier one but for case,
an unsafe id, an empty prompt, two ROIs, a bad box, an unknown column, a line that is not JSON, nested 100,000
levels deep, or has more cells than the header. For every worklist:

- the exit code is 2, and stderr is one line;
- the problems are named in one pass: the count in that line equals the number of injected defects;
- no input file name (they all hold ``SECRET``) reaches stderr, and nothing is written (no ``--out``);
- every file that was there before is still there, byte for byte.

Validation only (nothing runs), so a case takes milliseconds. Profiles as in tests/test_fuzz_cli.py:
``MVG_FUZZ_PROFILE=ci`` (default, derandomized, 300 worklists) or ``long`` (ten times as many, random).
"""

from __future__ import annotations

import csv
import io
import json
import re
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from fuzzing import SCALE, run_main


IMAGE, MASK = "SECRET_img_Doe.png", "SECRET_mask_Doe.png"
FAST = ["--resolution", "32", "--rounds", "1", "--steps", "2", "--strength", "0.5", "--no-transition"]
COUNT = re.compile(r"is invalid \((\d+) problems?, nothing was run\)")
JSON_1E400 = "__1e400__"  # json.dumps writes inf as Infinity; this marker becomes the literal 1e400

# (column, JSON value, CSV text): each one problem. JSON-only ones have CSV text None.
VALUE_DEFECTS = [
    ("rounds", 0, "0"), ("steps", 1001, "1001"), ("guidance", -1, "-1"), ("fps", 0, "0"), ("fps", 101, "101"),
    ("frames", 2, "2"), ("seed", -1, "-1"), ("resolution", 33, "33"), ("beta1", 2, "2"), ("strength", 0, "0"),
    ("feather", -5, "-5"), ("scheduler", "bogus", "bogus"), ("transition_sampler", "euler", "euler"),
    ("transitions", "slow", "slow"), ("rounds", True, "maybe"), ("guidance", float("nan"), "nan"),
    ("strength", JSON_1E400, "1e400"), ("no_transition", "maybe", "maybe"), ("no_transition", 1, "2"),
    ("seed", 10**400, "1" * 400), ("steps", [2], "two"), ("scheduler", 5, None), ("negative_prompt", 5, None),
    ("transition_steps", 0.5, "0.5"),
]
GOOD_OVERRIDES = [("seed", 7, "7"), ("rounds", 2, "2"), ("fps", 4, "4"), ("scheduler", "ddim", "ddim"),
                  ("no_transition", True, "true"), ("guidance", 5.5, "5.5")]
# structural defects of a row: each one problem
ROW_DEFECTS = ["missing_image", "missing_mask", "unsafe_id", "same_id_but_case", "empty_prompt", "two_rois",
               "bad_box", "prompt_not_text", "id_not_text", "unknown_key"]
JSON_ONLY = {"prompt_not_text", "id_not_text", "unknown_key"}
# lines that are not rows: each one problem
LINE_DEFECTS = {"jsonl": ["not_json", "nested", "not_object", "key_twice"], "csv": ["too_many_cells"]}


@pytest.fixture(scope="module")
def fuzz_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("fuzz_worklist")
    Image.fromarray(np.full((40, 40), 128, np.uint8)).save(root / IMAGE)
    Image.fromarray(np.full((40, 40), 255, np.uint8)).save(root / MASK)
    return root


@st.composite
def worklists(draw: st.DrawFn) -> tuple[str, list, int]:
    """(kind, items, injected problems); an item is a row dict or ("line", defect)."""
    kind = draw(st.sampled_from(["csv", "jsonl"]))
    items: list = []
    clean_ids: list[str] = []
    expected = 0
    for index in range(draw(st.integers(1, 8))):
        if draw(st.integers(0, 5)) == 0:
            items.append(("line", draw(st.sampled_from(LINE_DEFECTS[kind]))))
            expected += 1
            continue
        prompt = draw(st.sampled_from(["severe cardiomegaly", "severe\ncardiomegaly", "mild\r\neffusion",
                                       "effusion\u2028left", "a, \"quoted\" prompt"]))
        row: dict = {"case_id": f"case{index}", "image": IMAGE, "prompt": prompt}
        if draw(st.booleans()):
            row["mask"] = MASK
        columns = set()
        for column, json_value, csv_text in draw(st.lists(st.sampled_from(GOOD_OVERRIDES), max_size=2)):
            row[column] = json_value if kind == "jsonl" else csv_text
            columns.add(column)
        defects = [d for d in VALUE_DEFECTS if kind == "jsonl" or d[2] is not None]
        for column, json_value, csv_text in draw(st.lists(st.sampled_from(defects), max_size=2,
                                                          unique_by=lambda d: d[0])):
            row[column] = json_value if kind == "jsonl" else csv_text
            expected += 1
        structural = [d for d in ROW_DEFECTS if kind == "jsonl" or d not in JSON_ONLY]
        defect = draw(st.one_of(st.none(), st.sampled_from(structural)))
        if defect == "same_id_but_case" and not clean_ids:
            defect = None
        if defect is not None:
            expected += 1
        if defect == "missing_image":
            row["image"] = "SECRET_missing_Doe.png"
        elif defect == "missing_mask":
            row["mask"] = "sub/SECRET_gone_Doe.png"
        elif defect == "unsafe_id":
            row["case_id"] = draw(st.sampled_from(["../evil", ".hidden", "a/b", "sp ace", "Summary.json"]))
        elif defect == "same_id_but_case":
            row["case_id"] = draw(st.sampled_from(clean_ids)).upper()
        elif defect == "empty_prompt":
            row["prompt"] = draw(st.sampled_from(["", "   "]))
        elif defect == "two_rois":
            row.pop("mask", None)
            row["roi_box"], row["roi_ellipse"] = "1,1,20,20", "20,20,5,5"
        elif defect == "bad_box":
            row.pop("mask", None)
            row["roi_box"] = draw(st.sampled_from(["5,5,1", "5,5,1,1", "nan,1,2,3", "a,b,c,d"]))
        elif defect == "prompt_not_text":
            row["prompt"] = draw(st.sampled_from([123, True, ["x"], {"text": "x"}]))
        elif defect == "id_not_text":
            row["case_id"] = draw(st.sampled_from([7, 1.5, False]))
        elif defect == "unknown_key":
            row["colour"] = "red"
        if defect not in ("unsafe_id", "same_id_but_case", "id_not_text"):
            clean_ids.append(row["case_id"])
        items.append(row)
    if expected == 0:
        items.append({"case_id": "last", "image": "SECRET_missing_Doe.png", "prompt": "x"})
        expected = 1
    return kind, items, expected


def _jsonl(items: list) -> str:
    lines = []
    for item in items:
        if isinstance(item, tuple):
            lines.append({"not_json": '{"case_id": "broken", "image": ', "nested": "[" * 100_000 + "]" * 100_000,
                          "not_object": '["case_id", "x"]',
                          "key_twice": '{"case_id": "k", "case_id": "K", "image": "x", "prompt": "x"}'}[item[1]])
        else:
            lines.append(json.dumps(item).replace(f'"{JSON_1E400}"', "1e400"))
    return "\n\n".join(lines) + "\n"


def _csv(items: list) -> str:
    columns = list(dict.fromkeys(["case_id", "image", "prompt",
                                  *(k for item in items if isinstance(item, dict) for k in item)]))
    table = io.StringIO()
    writer = csv.writer(table, lineterminator="\r\n")
    writer.writerow(columns)
    for item in items:
        if isinstance(item, tuple):  # too many cells
            writer.writerow(["extra", IMAGE, "x", *([""] * len(columns))])
        else:
            writer.writerow([item.get(column, "") for column in columns])
    return table.getvalue()


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@settings(max_examples=300 * SCALE)
@given(worklist=worklists())
def test_damaged_worklists_name_every_problem_in_one_pass(fuzz_root: Path, worklist: tuple[str, list, int]):
    kind, items, expected = worklist
    folder = Path(tempfile.mkdtemp(dir=fuzz_root))
    try:
        for name in (IMAGE, MASK):
            shutil.copy(fuzz_root / name, folder / name)
        (folder / "precious.txt").write_text("the user's own notes")
        path = folder / f"worklist.{kind}"
        path.write_bytes((_jsonl(items) if kind == "jsonl" else _csv(items)).encode())
        before = _snapshot(folder)
        out = folder / "batch"
        code, _, err = run_main(["batch", str(path), "--out", str(out), "--model-dir", str(folder / "no-model"),
                                 *FAST])
        assert code == 2, err
        assert len(err.splitlines()) == 1 and err.startswith("mvg-rt: error: worklist "), err
        found = COUNT.search(err)
        assert found and int(found.group(1)) == expected, (expected, err)
        assert "SECRET" not in err and "Traceback" not in err, err
        assert not out.exists() and _snapshot(folder) == before
    finally:
        shutil.rmtree(folder, ignore_errors=True)
