"""Worklist parsing and validation, the settings hash and the resume plan (no model runs here)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mvg_rt.batch.plan import plan_batch, recorded_hash
from mvg_rt.batch.worklist import WorklistInvalid, read_worklist
from mvg_rt.cli import batch
from mvg_rt.commands.batch import case_requests
from mvg_rt.errors import MvgError
from mvg_rt.limits import check


def _options(*args: str) -> dict:
    """The options click hands the batch command for these arguments (a tiny model's settings)."""
    argv = ["w.csv", "--out", "o", "--model-dir", "/models/tiny", "--resolution", "32", "--rounds", "1",
            "--steps", "2", "--strength", "0.5", "--no-transition", *args]
    return dict(batch.make_context("batch", argv).params)


SHARED = _options()
PARAMS = {param.name: param for param in batch.params}
RUNTIME = {"backend": "torch", "model_dir": "/models/tiny"}


def _plan(path: Path, out: Path, shared: dict | None = None, redo: bool = False):
    return plan_batch(case_requests(read_worklist(path), shared or SHARED, out, PARAMS), RUNTIME, out, redo)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    (tmp_path / "wl" / "images").mkdir(parents=True)
    Image.fromarray(np.full((40, 40), 128, np.uint8)).save(tmp_path / "wl" / "images" / "a.png")
    Image.fromarray(np.full((40, 40), 255, np.uint8)).save(tmp_path / "wl" / "images" / "roi.png")
    return tmp_path / "wl"


def _csv(folder: Path, text: str) -> Path:
    path = folder / "worklist.csv"
    path.write_text(text)
    return path


def test_csv_and_jsonl_give_the_same_cases(folder: Path):
    csv_path = _csv(folder, "case_id,image,mask,roi_box,prompt,seed,no_transition\n"
                            "p1,images/a.png,images/roi.png,,cardiomegaly,7,\n"
                            "p2,images/a.png,,\"4,4,20,20\",effusion,,false\n")
    jsonl = folder / "worklist.jsonl"
    jsonl.write_text(json.dumps({"case_id": "p1", "image": "images/a.png", "mask": "images/roi.png",
                                 "prompt": "cardiomegaly", "seed": 7}) + "\n\n"
                     + json.dumps({"case_id": "p2", "image": "images/a.png", "roi_box": "4,4,20,20",
                                   "prompt": "effusion", "no_transition": False}) + "\n")
    from_csv, from_jsonl = read_worklist(csv_path).cases, read_worklist(jsonl).cases
    assert [c.case_id for c in from_csv] == ["p1", "p2"]
    assert from_csv[0].image == (folder / "images" / "a.png").resolve()  # relative to the worklist file
    assert [(c.case_id, c.image, c.mask, c.roi_box) for c in from_csv] == \
           [(c.case_id, c.image, c.mask, c.roi_box) for c in from_jsonl]
    requests = [[c.request for c in case_requests(read_worklist(path), SHARED, folder / "out", PARAMS)]
                for path in (csv_path, jsonl)]
    assert requests[0] == requests[1]  # "7" from CSV and 7 from JSON: the same typed request
    assert requests[0][0].options.seed == 7 and requests[0][0].options.transition is None
    assert requests[0][1].options.seed == 0 and requests[0][1].options.transition.frames == 16


def _problems(path: Path, shared: dict | None = None) -> list[str]:
    """Every problem the batch command finds in a worklist (its one pass: rows, then overrides)."""
    with pytest.raises(WorklistInvalid) as caught:
        case_requests(read_worklist(path), shared or SHARED, path.parent / "out", PARAMS)
    return caught.value.problems


def _jsonl(folder: Path, *rows: dict | str) -> Path:
    path = folder / "worklist.jsonl"
    path.write_text("".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows))
    return path


def test_every_bad_row_is_named(folder: Path):
    path = _csv(folder, "case_id,image,prompt,roi_box,roi_ellipse,steps,colour\n"
                        "ok1,images/a.png,x,,,,\n"
                        "../evil,images/a.png,x,,,,\n"
                        "ok1,images/a.png,x,,,,\n"
                        "gone,images/missing.png,x,,,,\n"
                        "twoRoi,images/a.png,x,\"1,1,5,5\",\"3,3,2,2\",,\n"
                        "badbox,images/a.png,x,\"5,5,1\",,,\n"
                        "noprompt,images/a.png,,,,,\n")
    with pytest.raises(WorklistInvalid) as caught:
        case_requests(read_worklist(path), SHARED, folder / "out", PARAMS)
    text = str(caught.value)
    problems = caught.value.problems
    assert "unknown column 'colour'" in problems[0] and len(problems) == 7
    for needle in ("line 3 (../evil): case_id '../evil' is not a safe folder name",
                   "line 4 (ok1): case_id 'ok1' repeats line 2",
                   "line 5 (gone): image: no such file (paths are relative to the worklist's folder)",
                   "line 6 (twoRoi): give one ROI, not roi_box and roi_ellipse", "line 7 (badbox): --roi-box takes 4",
                   "line 8 (noprompt): prompt is empty"):
        assert needle in text, needle
    assert "\n" not in text and "nothing was run" in text and "(7 problems" in text


def test_unsafe_and_reserved_ids(folder: Path):
    for bad in ("a/b", "a\\b", ".hidden", "summary.json", "Summary.CSV", "x" * 101, "sp ace"):
        path = _jsonl(folder, {"case_id": bad, "image": "images/a.png", "prompt": "x"})
        assert "not a safe folder name" in _problems(path)[0], bad


def test_ids_differing_only_in_case_collide(folder: Path):
    """Case1 and case1 are one folder on a case-insensitive file system (macOS, Windows): refused."""
    path = _csv(folder, "case_id,image,prompt\nCase1,images/a.png,x\ncase2,images/a.png,x\ncase1,images/a.png,x\n"
                        "CASE1,images/a.png,x\n")
    assert _problems(path) == [
        "line 4 (case1): case_id 'case1' is the folder of 'Case1' on a case-insensitive file system: line 2; "
        "give each case its own id",
        "line 5 (CASE1): case_id 'CASE1' is the folder of 'Case1' on a case-insensitive file system: line 2; "
        "give each case its own id"]


def test_a_quoted_newline_stays_in_its_cell(folder: Path):
    """The csv module reads the file opened with newline='': a prompt over two lines is one cell, one row,
    and the next row's line number is where it starts."""
    path = _csv(folder, 'case_id,image,prompt\np1,images/a.png,"severe\ncardiomegaly"\r\n'
                        'p2,images/a.png,"mild\r\neffusion"\nbad,images/none.png,x\n')
    worklist = read_worklist(path)
    assert [(row.case_id, row.row, row.prompt) for row in worklist.rows] == [
        ("p1", 2, "severe\ncardiomegaly"), ("p2", 4, "mild\r\neffusion"), ("bad", 6, "x")]
    assert [text.split(":")[0] for _, text in worklist.problems] == ["line 6 (bad)"]


def test_jsonl_lines_end_at_newline_only(folder: Path):
    """A JSON string may hold U+2028 (str.splitlines would end a line there): the row stays whole."""
    path = _jsonl(folder, '{"case_id": "p1", "image": "images/a.png", "prompt": "severe\u2028cardiomegaly"}')
    assert [row.prompt for row in read_worklist(path).cases] == ["severe\u2028cardiomegaly"]


def test_every_problem_of_every_row_in_one_pass(folder: Path):
    """Type errors, bad values and missing files across rows: all named in one run, each with its line.

    On today's main a row with a missing image hid its bad overrides, the overrides were checked only after
    the rows, a JSON 1e400 was an OverflowError, ``no_transition: 1`` an AttributeError, and ``prompt: 123``
    read as "empty"; ``scheduler: bogus`` passed and failed at run time.
    """
    good = {"image": "images/a.png", "prompt": "x"}
    path = _jsonl(folder,
                  {"case_id": "t1", **good, "rounds": True},
                  {"case_id": "t2", **good, "guidance": float("nan")},
                  '{"case_id": "t3", "image": "images/a.png", "prompt": "x", "seed": 1e400}',
                  {"case_id": "t4", **good, "no_transition": "maybe"},
                  {"case_id": "t5", **good, "no_transition": 1},
                  {"case_id": "t6", "image": "images/a.png", "prompt": 123},
                  {"case_id": "t7", **good, "scheduler": "bogus"},
                  {"case_id": "t8", "image": "images/missing.png", "prompt": "x", "steps": "many", "frames": 2},
                  {"case_id": "t9", **good, "seed": 10 ** 400},
                  {"case_id": 7, **good},
                  {"case_id": "t11", **good, "negative_prompt": 5, "scheduler": ["ddim"]},
                  {"case_id": "fine", **good})
    problems = _problems(path, SHARED | {"no_transition": False})
    assert [p.split(":")[0] for p in problems] == [
        "line 1 (t1)", "line 2 (t2)", "line 3 (t3)", "line 4 (t4)", "line 5 (t5)", "line 6 (t6)", "line 7 (t7)",
        "line 8 (t8)", "line 8 (t8)", "line 8 (t8)", "line 9 (t9)", "line 10", "line 11 (t11)", "line 11 (t11)"]
    text = "\n".join(problems)
    for needle in ("--rounds must be an integer in [1, 1000] (got True)", "--guidance must be a finite number",
                   "--seed must be an integer in [0, ", "'maybe' is not a valid boolean",
                   "--no-transition takes true or false (got int 1)", "prompt must be text, got int",
                   "unknown scheduler 'bogus': use one of pndm", "image: no such file", "--steps takes an integer",
                   "--frames must be an integer in [3, 256]",
                   "--seed must be an integer in [0, 9223372036854775807] (got 10000000000000000000... (401 characters))",
                   "case_id must be text, got int", "--negative-prompt takes text (got int 5)",
                   "--scheduler takes text (got list"):
        assert needle in text, needle
    assert "fine" not in text


def test_fps_is_checked_by_the_command_lines_limit(folder: Path):
    """A row's fps passes exactly where ``--fps`` passes (mvg_rt.limits), e.g. 0.001 once that limit says the
    GIF writer cannot honour it."""
    values = [0.001, 0, -1, 0.5, 8, 100, 101, float("inf")]
    path = _jsonl(folder, *({"case_id": f"f{i}", "image": "images/a.png", "prompt": "x", "fps": v}
                            for i, v in enumerate(values)))
    refused = {int(p.split("(f")[1].split(")")[0]) for p in _problems(path)}
    for index, value in enumerate(values):
        try:
            check("--fps", value)
            allowed = True
        except MvgError:
            allowed = False
        assert (index not in refused) == allowed, value


def test_bad_lines_are_problems_not_crashes(folder: Path):
    """Not JSON, not an object, a key twice, nested 100k levels (a RecursionError on today's main)."""
    path = _jsonl(folder, '{"case_id": "p1", "image": "images/a.png", "prompt": "x"',
                  '["p2"]', '{"case_id": "p3", "case_id": "p4", "image": "images/a.png", "prompt": "x"}',
                  "[" * 100_000 + "]" * 100_000, '{"case_id": "p5", "image": "images/a.png", "prompt": "x"}')
    problems = _problems(path)
    assert [p.split(":")[0] for p in problems] == ["line 1", "line 2", "line 3", "line 4"]
    assert "not JSON" in problems[0] and "not a JSON object" in problems[1]
    assert "key 'case_id' appears twice" in problems[2] and "nested too deeply" in problems[3]


def test_problems_never_name_an_input_file(folder: Path):
    """A missing image or mask is named by its line, case id and column, never by its file name or path."""
    path = _csv(folder, "case_id,image,mask,prompt\nc1,images/SECRET_missing_Doe.png,,x\n"
                        "c2,images/a.png,/data/MRN-4711/SECRET_mask_Doe.png,x\nc3,7,,x\n")
    text = " ".join(_problems(path))
    assert "line 2 (c1): image: no such file" in text and "line 3 (c2): mask: no such file" in text
    assert "SECRET" not in text and "MRN" not in text and "images/" not in text


def test_problems_are_listed_up_to_a_cap(folder: Path):
    path = _csv(folder, "case_id,image,prompt\n" + "".join(f"c{i},images/none.png,x\n" for i in range(50)))
    with pytest.raises(WorklistInvalid) as caught:
        case_requests(read_worklist(path), SHARED, folder / "out", PARAMS)
    assert len(caught.value.problems) == 50
    text = str(caught.value)
    assert "(50 problems" in text and "line 21 (c19)" in text and "line 22 " not in text and "and 30 more" in text


def test_override_values_are_checked_as_the_command_line_checks_them(folder: Path, tmp_path: Path):
    path = _csv(folder, "case_id,image,prompt,rounds,strength,frames,steps,transition_sampler,no_transition,fps,"
                        "resolution\n"
                        "r0,images/a.png,x,0,,,,,,,\n"
                        "s2,images/a.png,x,,2.0,,,,,,\n"
                        "f2,images/a.png,x,,,2,,,,,\n"
                        "many,images/a.png,x,,,,many,,,,\n"
                        "sampler,images/a.png,x,,,,,euler,,,\n"
                        "flag,images/a.png,x,,,,,,maybe,,\n"
                        "fine,images/a.png,x,,,,,,,,\n"
                        "fps0,images/a.png,x,,,,,,,0,\n"
                        "res33,images/a.png,x,,,,,,,,33\n")
    with pytest.raises(WorklistInvalid) as caught:
        case_requests(read_worklist(path), SHARED | {"no_transition": False}, tmp_path / "out", PARAMS)
    text = str(caught.value)
    assert "line 2 (r0): --rounds must be" in text
    assert "line 3 (s2): --strength must be" in text
    assert "line 4 (f2): --frames must be" in text
    assert "line 5 (many): --steps takes an integer (got 'many')" in text
    assert "line 6 (sampler): Invalid value for '--transition-sampler': 'euler'" in text
    assert "line 7 (flag): Invalid value for '--no-transition': 'maybe'" in text
    assert "line 9 (fps0): --fps must be" in text and "line 10 (res33): --resolution must be" in text
    assert "fine" not in text


def test_every_override_is_a_simulate_option():
    from mvg_rt.batch.worklist import OVERRIDES
    from mvg_rt.cli import simulate

    assert set(OVERRIDES) <= {param.name for param in simulate.params}


def test_plan_resumes_complete_folders_and_refuses_changed_ones(folder: Path, tmp_path: Path):
    from mvg_rt.io.output_dir import mark_output

    path = _csv(folder, "case_id,image,prompt\np1,images/a.png,x\np2,images/a.png,x\np3,images/a.png,x\n")
    out = tmp_path / "out"
    plan = _plan(path, out)
    assert [c.case_id for c in plan.to_run] == ["p1", "p2", "p3"]
    for case in plan.cases[:2]:  # what a finished case leaves: run.json with its hash, and the output marker
        (out / case.case_id).mkdir(parents=True)
        mark_output(out / case.case_id, "run")
        (out / case.case_id / "run.json").write_text(json.dumps({"batch": {"settings_sha256": case.settings_sha256}}))
    again = _plan(path, out)
    assert [c.case_id for c in again.to_run] == ["p3"] and again.complete == {"p1", "p2"}
    assert recorded_hash(out / "p1") == plan.cases[0].settings_sha256

    with pytest.raises(MvgError, match=r"2 case folder\(s\) .* p1, p2; pass --redo"):
        _plan(path, out, _options("--steps", "3"))  # a changed shared setting
    Image.fromarray(np.full((40, 40), 129, np.uint8)).save(folder / "images" / "a.png")  # a changed input
    with pytest.raises(MvgError, match="p1, p2"):
        _plan(path, out)
    redo = _plan(path, out, redo=True)
    assert [(c.case_id, c.request.options.overwrite) for c in redo.to_run] == \
           [("p1", True), ("p2", True), ("p3", False)]
    assert redo.to_run[0].request.options.out == out / "p1"


def test_settings_hash_ignores_paths_but_not_bytes(folder: Path, tmp_path: Path):
    path = _csv(folder, "case_id,image,prompt\np1,images/a.png,x\n")
    first = _plan(path, tmp_path / "o").cases[0].settings_sha256
    moved = tmp_path / "moved"
    folder.rename(moved)
    assert _plan(moved / "worklist.csv", tmp_path / "o").cases[0].settings_sha256 == first
    assert _plan(moved / "worklist.csv", tmp_path / "o", _options("--seed", "1")).cases[0].settings_sha256 != first


def test_the_shipped_example_worklist_is_valid(tmp_path: Path):
    example = Path(__file__).parents[1] / "examples" / "worklist.csv"
    cases = case_requests(read_worklist(example), SHARED | {"steps": 50}, tmp_path / "out", PARAMS)
    assert [c.case_id for c in cases] == ["demo-heart-s0", "demo-heart-s1", "demo-ellipse", "demo-box-mild"]
    assert all(Path(c.request.image).is_file() for c in cases)  # relative to the worklist, into the package
    assert cases[3].request.options.pie.rounds == 3 and cases[3].request.roi.box == "66,80,226,194"
