"""A report as the prompt's source (issue 21): ``mvg-rt prompt``, ``simulate --report``, a worklist's ``report``
column, and what run.json records. Reports are PHI: their text reaches no output unless --record-report asks."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mvg_rt.batch.plan import plan_batch
from mvg_rt.batch.worklist import WorklistInvalid, read_worklist
from mvg_rt.cli import batch
from mvg_rt.commands.batch import case_requests

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SECRET = "Jane Doe MRN-4711"
REPORT = f"Patient: {SECRET}\nFINDINGS: The heart is markedly enlarged. Small left pleural effusion.\n" \
         "IMPRESSION: No pneumothorax. Possible right lower lobe pneumonia.\n"
PROMPT = "severe cardiomegaly with small left pleural effusion"
FAST = ["--resolution", "32", "--rounds", "1", "--steps", "2", "--strength", "0.5", "--no-transition"]


@pytest.fixture
def case(tmp_path: Path) -> Path:
    """A folder with an image, the report and a report that names no finding."""
    folder = tmp_path / "case"
    folder.mkdir()
    Image.fromarray(np.full((48, 48), 120, np.uint8)).save(folder / "image.png")
    (folder / "report.txt").write_text(REPORT)
    (folder / "normal.txt").write_text(f"Patient: {SECRET}\nNo acute cardiopulmonary process.\n")
    return folder


def test_prompt_prints_the_prompt_and_says_what_it_kept(case: Path, run_cli):
    code, out, err = run_cli(["prompt", "--report", str(case / "report.txt")])
    assert code == 0 and out == PROMPT + "\n"
    assert err.splitlines() == ["mvg-rt: kept: severe cardiomegaly (asserted)",
                                "mvg-rt: kept: small left pleural effusion (asserted)",
                                "mvg-rt: dropped: pneumothorax (negated ('no'))",
                                "mvg-rt: dropped: right lower lobe pneumonia (uncertain ('possible'))"]
    code, out, err = run_cli(["prompt", "--report", str(case / "report.txt"), "--json"])
    answer = json.loads(out)
    assert code == 0 and answer["prompt"] == PROMPT and err == ""
    assert answer["prompt_source"] | {"findings": None} == {
        "kind": "report", "sha256": hashlib.sha256(REPORT.encode()).hexdigest(), "recaptioner": "rules v1",
        "findings": None}
    assert [f["kept"] for f in answer["prompt_source"]["findings"]] == [True, True, False, False]
    assert SECRET not in out + err


def test_a_report_without_a_known_finding_is_one_line_naming_the_fix(case: Path, run_cli):
    code, out, err = run_cli(["prompt", "--report", str(case / "normal.txt")])
    assert code == 2 and out == "" and err.count("\n") == 1
    assert "asserts no finding the rule-based recaptioner knows" in err and "--prompt" in err and SECRET not in err


@pytest.mark.parametrize(("content", "needle"), [(b"", "is empty"), (b"\xff\xfe\x00bad", "not UTF-8"),
                                                 (None, "was not found")])
def test_an_unusable_report_file_is_one_line_without_its_name(tmp_path: Path, run_cli, content, needle):
    path = tmp_path / "Doe_Jane_report.txt"
    if content is not None:
        path.write_bytes(content)
    code, _, err = run_cli(["prompt", "--report", str(path)])
    assert code == 2 and needle in err and "Doe_Jane" not in err and err.count("\n") == 1


def test_simulate_refuses_a_prompt_and_a_report_together(case: Path, tiny_model_dir: Path, run_cli):
    base = ["simulate", "--model-dir", str(tiny_model_dir), "--image", str(case / "image.png"), *FAST]
    code, _, err = run_cli([*base, "--prompt", "x", "--report", str(case / "report.txt")])
    assert code == 2 and "give --prompt or --report, not both" in err and err.count("\n") == 1
    code, _, err = run_cli([*base, "--prompt", "x", "--llm-url", "http://127.0.0.1:9/v1"])
    assert code == 2 and "--llm-url re-captions a --report" in err


def test_simulate_records_how_the_prompt_was_made_and_the_report_only_when_asked(case: Path, tiny_model_dir: Path,
                                                                                  tmp_path: Path, run_cli):
    base = ["simulate", "--model-dir", str(tiny_model_dir), "--image", str(case / "image.png"), *FAST]
    code, _, err = run_cli([*base, "--report", str(case / "report.txt"), "--out", str(tmp_path / "a")])
    assert code == 0, err
    text = (tmp_path / "a" / "run.json").read_text()
    record = json.loads(text)
    assert record["prompt"] == PROMPT
    source = record["prompt_source"]
    assert (source["kind"], source["recaptioner"]) == ("report", "rules v1")
    assert source["sha256"] == hashlib.sha256((case / "report.txt").read_bytes()).hexdigest()
    assert SECRET not in text + err and "text" not in source and "path" not in source

    code, _, err = run_cli([*base, "--report", str(case / "report.txt"), "--record-report", "--record-paths",
                            "--out", str(tmp_path / "b")])
    assert code == 0, err
    source = json.loads((tmp_path / "b" / "run.json").read_text())["prompt_source"]
    assert source["text"] == REPORT and source["path"] == str(case / "report.txt")

    code, _, err = run_cli([*base, "--prompt", "mild cardiomegaly", "--out", str(tmp_path / "c")])
    assert code == 0, err
    assert json.loads((tmp_path / "c" / "run.json").read_text())["prompt_source"] == {"kind": "prompt"}


def test_an_out_that_holds_the_report_is_refused(case: Path, tiny_model_dir: Path, tmp_path: Path, run_cli):
    reports = tmp_path / "reports"
    reports.mkdir()
    (reports / "report.txt").write_text(REPORT)
    code, _, err = run_cli(["simulate", "--model-dir", str(tiny_model_dir), "--image", str(case / "image.png"),
                            *FAST, "--report", str(reports / "report.txt"), "--out", str(reports), "--overwrite"])
    assert code == 2 and "the report (--report)" in err
    assert (reports / "report.txt").read_text() == REPORT


SHARED = dict(batch.make_context("batch", ["w.csv", "--out", "o", "--model-dir", "/models/tiny", *FAST]).params)
PARAMS = {param.name: param for param in batch.params}


def _worklist(case: Path, text: str) -> Path:
    path = case / "worklist.csv"
    path.write_text(text)
    return path


def test_a_worklist_report_column_makes_each_row_s_prompt(case: Path):
    path = _worklist(case, "case_id,image,prompt,report\np1,image.png,,report.txt\np2,image.png,mild cardiomegaly,\n")
    cases = case_requests(read_worklist(path), SHARED, case / "out", PARAMS)
    assert [(c.case_id, c.request.prompt) for c in cases] == [("p1", PROMPT), ("p2", "mild cardiomegaly")]
    assert cases[0].request.prompt_source["sha256"] == hashlib.sha256(REPORT.encode()).hexdigest()
    assert cases[1].request.prompt_source is None
    assert SECRET not in json.dumps(cases[0].request.prompt_source)


def test_a_worklist_report_is_checked_as_the_other_columns(case: Path):
    path = _worklist(case, "case_id,image,prompt,report\n"
                           "both,image.png,x,report.txt\n"
                           "gone,image.png,,SECRET_Doe_missing.txt\n"
                           "normal,image.png,,normal.txt\n"
                           "neither,image.png,,\n")
    with pytest.raises(WorklistInvalid) as caught:
        case_requests(read_worklist(path), SHARED, case / "out", PARAMS)
    text = str(caught.value)
    for needle in ("line 2 (both): give a prompt or a report, not both",
                   "line 3 (gone): report: no such file (paths are relative to the worklist's folder)",
                   "line 4 (normal): the report asserts no finding the rule-based recaptioner knows",
                   "line 5 (neither): prompt is empty"):
        assert needle in text, needle
    assert "SECRET" not in text and "Doe" not in text and "\n" not in text
    header = _worklist(case, "case_id,image\np1,image.png\n")
    with pytest.raises(WorklistInvalid, match=r"header: missing column 'prompt' \(or 'report'\)"):
        case_requests(read_worklist(header), SHARED, case / "out", PARAMS)


def test_a_changed_report_changes_the_case_s_settings_hash(case: Path):
    path = _worklist(case, "case_id,image,report\np1,image.png,report.txt\n")
    runtime = {"backend": "torch"}

    def digest() -> str:
        return plan_batch(case_requests(read_worklist(path), SHARED, case / "out", PARAMS), runtime,
                          case / "out").cases[0].settings_sha256

    first = digest()
    (case / "report.txt").write_text(REPORT + "Electronically signed.\n")  # the same prompt, another report
    assert digest() != first


def test_batch_records_the_prompt_source_in_each_case(case: Path, tiny_model_dir: Path, tmp_path: Path, run_cli):
    path = _worklist(case, "case_id,image,report\np1,image.png,report.txt\n")
    code, _, err = run_cli(["batch", str(path), "--out", str(tmp_path / "batch"), "--model-dir", str(tiny_model_dir),
                            *FAST])
    assert code == 0, err
    text = (tmp_path / "batch" / "p1" / "run.json").read_text()
    record = json.loads(text)
    assert record["prompt"] == PROMPT and record["prompt_source"]["recaptioner"] == "rules v1"
    assert SECRET not in text + err + (tmp_path / "batch" / "summary.csv").read_text()
