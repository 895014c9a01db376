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
        read_worklist(path)
    text = str(caught.value)
    problems = caught.value.problems
    assert "unknown column 'colour'" in problems[0]
    for needle in ("row 3 (../evil): case_id '../evil' is not a safe folder name",
                   "row 4 (ok1): case_id 'ok1' repeats row 2", "row 5 (gone): image file images/missing.png not found",
                   "row 6 (twoRoi): give one ROI, not roi_box and roi_ellipse", "row 7 (badbox): --roi-box takes 4",
                   "row 8 (noprompt): prompt is empty"):
        assert needle in text, needle
    assert "\n" not in text and "nothing was run" in text


def test_unsafe_and_reserved_ids(folder: Path):
    for bad in ("a/b", "a\\b", ".hidden", "summary.json", "x" * 101, "sp ace"):
        path = folder / "w.jsonl"
        path.write_text(json.dumps({"case_id": bad, "image": "images/a.png", "prompt": "x"}) + "\n")
        with pytest.raises(WorklistInvalid, match="not a safe folder name"):
            read_worklist(path)


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
    assert "row 2 (r0): --rounds must be" in text
    assert "row 3 (s2): --strength must be" in text
    assert "row 4 (f2): --frames must be" in text
    assert "row 5 (many): --steps takes an integer (got 'many')" in text
    assert "row 6 (sampler): Invalid value for '--transition-sampler': 'euler'" in text
    assert "row 7 (flag): Invalid value for '--no-transition': 'maybe'" in text
    assert "row 9 (fps0): --fps must be" in text and "row 10 (res33): --resolution must be" in text
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
