"""``mvg-rt batch`` end to end on the tiny model: failures, resume after kill -9, changed settings, Ray.

Every case is tiny (32x32, 1 PIE round of 2 steps, transitions only where a row asks for them: 3 frames,
2 steps). One torch thread throughout, as each Ray actor uses, so local and Ray runs are bit-comparable.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_io import _write_dicom

pytestmark = pytest.mark.usefixtures("one_torch_thread")

FAST = ["--resolution", "32", "--rounds", "1", "--steps", "2", "--strength", "0.5", "--no-transition",
        "--frames", "3", "--transition-steps", "2", "--transition-sampler", "ddim"]
GOOD = ["c1", "c2", "c3", "c6"]
IDENTIFIERS = ("Doe^Jane", "SECRET-123", "MRN-4711", "Doe_Jane")  # DICOM fields, folder and file names


def _picture(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:48, 0:48] / 47.0
    phase = rng.uniform(0, 3, size=2)
    return np.round((0.5 + 0.35 * np.sin(3 * x + phase[0]) * np.cos(2 * y + phase[1])) * 255).astype(np.uint8)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Six cases: a DICOM with patient fields (good), box, ellipse + transitions, an unreadable DICOM, an
    ROI that is empty at model resolution, and the whole image; paths carry identifiers on purpose."""
    root = tmp_path_factory.mktemp("cohort") / "MRN-4711"
    (root / "images").mkdir(parents=True)
    _write_dicom(root / "images" / "Doe_Jane.dcm", _picture(1).astype(np.uint16) * 16)
    for seed in (2, 3, 4):
        Image.fromarray(_picture(seed)).save(root / "images" / f"p{seed}.png")
    (root / "images" / "Doe_Jane_old.dcm").write_bytes(b"DICM but not really" * 10)
    disk = np.zeros((48, 48), np.uint8)
    disk[12:36, 12:36] = 255
    Image.fromarray(disk).save(root / "images" / "heart.png")
    Image.fromarray(np.zeros((48, 48), np.uint8)).save(root / "images" / "empty.png")
    (root / "worklist.csv").write_text(
        "case_id,image,mask,roi_box,roi_ellipse,prompt,seed,no_transition\n"
        "c1,images/Doe_Jane.dcm,images/heart.png,,,severe cardiomegaly,,\n"
        "c2,images/p2.png,,\"8,8,40,40\",,severe cardiomegaly,3,\n"
        "c3,images/p3.png,,,\"24,24,14,10\",pleural effusion,5,false\n"
        "c4,images/Doe_Jane_old.dcm,,,,severe cardiomegaly,,\n"
        "c5,images/p4.png,images/empty.png,,,severe cardiomegaly,,\n"
        "c6,images/p4.png,,,,severe cardiomegaly,9,\n")
    return root / "worklist.csv"


def _cli(args: list[str]) -> int:
    from mvg_rt.cli import main

    try:
        main(args)
    except SystemExit as exit_:
        return int(exit_.code or 0)
    return 0


def _args(worklist: Path, out: Path, model_dir: Path, *extra: str) -> list[str]:
    return ["batch", str(worklist), "--out", str(out), "--model-dir", str(model_dir), *FAST, *extra]


def _summary(out: Path) -> dict[str, dict[str, str]]:
    with (out / "summary.csv").open() as handle:
        return {row["case_id"]: row for row in csv.DictReader(handle)}


def _images(folder: Path) -> dict[str, bytes]:
    """Every picture a case wrote (run.json holds timings, so it is compared by its settings only)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*.png"))}


@pytest.fixture(scope="module")
def local_run(cohort: Path, tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[int, Path]:
    out = tmp_path_factory.mktemp("local") / "batch"
    return _cli(_args(cohort, out, tiny_model_dir)), out


def test_bad_cases_are_recorded_and_the_batch_goes_on(local_run: tuple[int, Path]):
    code, out = local_run
    assert code == 3  # some cases failed
    rows = _summary(out)
    assert [rows[c]["status"] for c in ("c1", "c2", "c3", "c4", "c5", "c6")] == ["ok"] * 3 + ["failed"] * 2 + ["ok"]
    assert rows["c4"]["error"].startswith("cannot read DICOM <image>:")  # the file name may identify
    assert "the --mask file is empty" in rows["c5"]["error"]  # all zeros: refused as read, before any resize
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == GOOD  # no folder for a failed case
    assert not [p for p in out.iterdir() if "partial" in p.name]
    for case in GOOD:
        record = json.loads((out / case / "run.json").read_text())
        assert record["batch"]["case_id"] == case and len(record["batch"]["settings_sha256"]) == 64
        assert (out / case / "states" / "state_01.png").is_file() and (out / case / "progression.mp4").is_file()
        assert float(rows[case]["ssim_outside_roi_min"] or 1) <= 1 and float(rows[case]["seconds"]) > 0
    assert json.loads((out / "c3" / "run.json").read_text())["transition"]["frames"] == 3  # the row's override
    assert len(list((out / "c3" / "frames").glob("*.png"))) == 3 and not (out / "c1" / "frames").exists()
    assert json.loads((out / "c2" / "run.json").read_text())["seed"] == 3
    document = json.loads((out / "summary.json").read_text())
    assert document["counts"] == {"ok": 4, "failed": 2, "pending": 0}
    assert "ray" not in sys.modules  # a batch without --ray never imports Ray


def test_no_identifier_reaches_the_outputs(local_run: tuple[int, Path], cohort: Path, tiny_model_dir: Path):
    """Case ids are the user's; no DICOM field, no input path or file name, in any text the batch wrote; and
    no model folder path in run.json without --record-paths (today's main recorded backend.spec.model_dir)."""
    _, out = local_run
    texts = [p.read_text() for p in out.rglob("*.json")] + [(out / "summary.csv").read_text()]
    for text in texts:
        assert str(cohort.parent) not in text and str(tiny_model_dir) not in text
        for identifier in IDENTIFIERS:
            assert identifier not in text, identifier
    record = json.loads((out / "c1" / "run.json").read_text())
    assert "model_dir" not in record["backend"]["spec"] and record["model"]["model_dir_sha256"]


def test_record_paths_keeps_paths_in_run_json_only(cohort: Path, tiny_model_dir: Path, tmp_path: Path, capsys):
    """With --record-paths, paths go to run.json; a failing file's name still never reaches the summary or
    stderr (today's main put SECRET_trunc_Doe.dcm in both)."""
    images = cohort.parent / "images"
    (images / "SECRET_trunc_Doe.dcm").write_bytes((images / "Doe_Jane.dcm").read_bytes()[:400])
    worklist = cohort.parent / "one.jsonl"
    worklist.write_text(json.dumps({"case_id": "x", "image": "images/p2.png", "prompt": "severe cardiomegaly"}) + "\n"
                        + json.dumps({"case_id": "y", "image": "images/SECRET_trunc_Doe.dcm", "prompt": "effusion"}))
    out = tmp_path / "batch"
    capsys.readouterr()
    assert _cli(_args(worklist, out, tiny_model_dir, "--record-paths")) == 3
    err = capsys.readouterr().err
    record = json.loads((out / "x" / "run.json").read_text())
    assert record["input"]["path"] == str(images / "p2.png")
    assert record["backend"]["spec"]["model_dir"] == str(tiny_model_dir)  # asked for: recorded
    summary = (out / "summary.csv").read_text() + (out / "summary.json").read_text()
    assert _summary(out)["y"]["error"].startswith("cannot read DICOM <image>:")
    for text in (summary, err):
        assert str(cohort.parent) not in text and "SECRET" not in text and "Doe" not in text


def _full_disk(folder: Path, free: int) -> Path:
    """A real file system with ``free`` bytes left: a 1 MiB tmpfs at ``folder`` (unmount it after)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(folder)], capture_output=True,
                             text=True, check=False)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {mounted.stderr.strip()}")
    stats = os.statvfs(folder)
    (folder / "filler").write_bytes(bytes(stats.f_bavail * stats.f_frsize - free))
    return folder


def test_a_full_disk_in_a_case_is_the_one_line_user_error(cohort: Path, tiny_model_dir: Path, tmp_path: Path):
    """16 KiB free: the summary fits, the case's outputs do not. The case fails with simulate's line for a full
    disk (today's main: ``internal error: OSError: [Errno 28] ...``), leaves nothing, and the batch goes on."""
    worklist = cohort.parent / "full.csv"
    worklist.write_text("case_id,image,prompt\nc1,images/p2.png,severe cardiomegaly\n")
    disk = _full_disk(tmp_path / "disk", free=16 * 1024)
    try:
        out = disk / "batch"
        assert _cli(_args(worklist, out, tiny_model_dir)) == 3
        row = _summary(out)["c1"]
        assert row["status"] == "failed" and row["error"].startswith("no space left on the device"), row["error"]
        assert "internal error" not in row["error"] and "nothing partial was kept" in row["error"]
        assert sorted(p.name for p in out.iterdir()) == [".mvg-rt-output", "summary.csv", "summary.json"]  # no staging left
        assert sorted(p.name for p in disk.iterdir()) == ["batch", "filler"]
    finally:
        subprocess.run(["umount", str(disk)], check=False)


def test_resume_after_kill_9_recomputes_only_the_rest(local_run: tuple[int, Path], cohort: Path,
                                                      tiny_model_dir: Path, tmp_path: Path):
    _, reference = local_run
    out = tmp_path / "batch"
    env = {**os.environ, "MVG_RT_TEST_KILL_IN_CASE": "c3", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1]), os.environ.get("PYTHONPATH", "")])}
    killed = subprocess.run([sys.executable, "-m", "mvg_rt.cli", *_args(cohort, out, tiny_model_dir)], env=env,
                            capture_output=True, text=True, timeout=300, check=False)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    rows = _summary(out)
    assert [rows[c]["status"] for c in rows] == ["ok", "ok"] + ["pending"] * 4
    assert sorted(p.name for p in out.iterdir() if p.is_dir() and not p.name.startswith(".")) == ["c1", "c2"]
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for case in ("c1", "c2") for p in (out / case).rglob("*")
              if p.is_file()}

    assert _cli(_args(cohort, out, tiny_model_dir)) == 3
    assert {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in before} == before  # untouched
    rows = _summary(out)
    assert [rows[c]["resumed"] for c in GOOD] == ["True", "True", "False", "False"]
    assert not [p for p in out.iterdir() if "partial" in p.name]  # the killed case's staging is gone
    for case in GOOD:
        assert _images(out / case) == _images(reference / case), case  # same seeds, same bits
    assert _cli(_args(cohort, out, tiny_model_dir)) == 3  # a third run: only the two bad cases are retried


def test_a_changed_setting_is_refused_unless_redo(cohort: Path, tiny_model_dir: Path, tmp_path: Path, capsys):
    worklist = cohort.parent / "two.csv"
    worklist.write_text("case_id,image,prompt\na,images/p2.png,severe cardiomegaly\nb,images/p3.png,x\n")
    out = tmp_path / "batch"
    assert _cli(_args(worklist, out, tiny_model_dir)) == 0
    first = (out / "a" / "states" / "state_01.png").read_bytes()
    capsys.readouterr()
    assert _cli(_args(worklist, out, tiny_model_dir, "--seed", "1")) == 2
    err = capsys.readouterr().err
    assert "2 case folder(s)" in err and "a, b" in err and "--redo" in err
    assert (out / "a" / "states" / "state_01.png").read_bytes() == first  # nothing ran
    assert _cli(_args(worklist, out, tiny_model_dir, "--seed", "1", "--redo")) == 0
    assert (out / "a" / "states" / "state_01.png").read_bytes() != first
    assert json.loads((out / "a" / "run.json").read_text())["seed"] == 1


def test_an_invalid_worklist_runs_nothing(cohort: Path, tiny_model_dir: Path, tmp_path: Path, capsys):
    worklist = cohort.parent / "bad.csv"
    worklist.write_text("case_id,image,prompt,steps\nok,images/p2.png,x,\nok,images/p2.png,x,\n"
                        "a/b,images/none.png,x,0\n")
    out = tmp_path / "batch"
    assert _cli(_args(worklist, out, tiny_model_dir)) == 2
    err = capsys.readouterr().err
    assert "line 3 (ok): case_id 'ok' repeats line 2" in err and "line 4 (a/b): case_id 'a/b' is not" in err
    assert "line 4 (a/b): image: no such file" in err and "line 4 (a/b): --steps must be" in err  # one pass
    assert "none.png" not in err and "(4 problems" in err
    assert not out.exists()


def test_ray_options_are_checked_before_anything_runs(cohort: Path, tiny_model_dir: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch, capsys):
    out = tmp_path / "batch"
    assert _cli(_args(cohort, out, tiny_model_dir, "--workers", "2")) == 2
    assert "--workers sets the Ray actor count" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    assert _cli(_args(cohort, out, tiny_model_dir, "--ray", "local")) == 2
    assert "pip install 'mvg-rt[cluster]'" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.skipif(importlib.util.find_spec("ray") is None,
                    reason="Ray is not installed (pip install mvg-rt[cluster])")
def test_ray_gives_the_local_bits_and_survives_a_lost_actor(local_run: tuple[int, Path], cohort: Path,
                                                             tiny_model_dir: Path, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch):
    import ray

    _, reference = local_run
    marker = tmp_path / "killed-once"
    monkeypatch.setenv("MVG_RT_TEST_KILL_IN_CASE", f"c2:{marker}")  # the actor running c2 dies, once
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(Path(__file__).parents[1]),
                                                      os.environ.get("PYTHONPATH", "")]))
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)  # workers inherit this environment
    try:
        out = tmp_path / "batch"
        assert _cli(_args(cohort, out, tiny_model_dir, "--ray", "auto", "--workers", "2")) == 3
    finally:
        ray.shutdown()
    assert marker.exists()
    rows = _summary(out)
    assert [rows[c]["status"] for c in rows] == ["ok"] * 3 + ["failed"] * 2 + ["ok"]
    assert rows["c2"]["attempts"] == "2" and rows["c1"]["attempts"] == "1"
    assert not [p for p in out.iterdir() if "partial" in p.name]
    for case in GOOD:
        assert _images(out / case) == _images(reference / case), case


@pytest.mark.skipif(importlib.util.find_spec("ray") is None,
                    reason="Ray is not installed (pip install mvg-rt[cluster])")
def test_ray_case_timeout_kills_a_hung_case_and_the_rest_completes(cohort: Path, tiny_model_dir: Path,
                                                                   tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A case that overruns ``--case-timeout`` (here: 20 rounds of 999 steps, minutes of work) has its actor
    killed and replaced, is retried once, then failed with the reason; the quick case completes beside it and
    no staging folder is left behind."""
    import ray

    image = cohort.parent / "images" / "p2.png"
    worklist = tmp_path / "hang.csv"
    worklist.write_text("case_id,image,prompt,rounds,steps,strength\n"
                        f"quick,{image},severe cardiomegaly,,,\n"
                        f"slow,{image},severe cardiomegaly,20,999,1.0\n")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(Path(__file__).parents[1]),
                                                      os.environ.get("PYTHONPATH", "")]))
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        out = tmp_path / "batch"
        assert _cli(_args(worklist, out, tiny_model_dir, "--ray", "auto", "--case-timeout", "4")) == 3
    finally:
        ray.shutdown()
    rows = _summary(out)
    assert rows["quick"]["status"] == "ok" and (out / "quick" / "run.json").is_file()
    assert rows["slow"]["status"] == "failed" and rows["slow"]["attempts"] == "2"
    assert rows["slow"]["error"] == "timed out after 4 s on every one of 2 attempts"
    assert sorted(p.name for p in out.iterdir()) == [".mvg-rt-output", "quick", "summary.csv", "summary.json"]


def test_case_timeout_without_ray_is_one_line(cohort: Path, tiny_model_dir: Path, tmp_path: Path, capsys):
    code = _cli(_args(cohort, tmp_path / "b", tiny_model_dir, "--case-timeout", "10"))
    err = capsys.readouterr().err
    assert code == 2 and "--case-timeout needs --ray" in err and len(err.strip().splitlines()) == 1
    code = _cli(_args(cohort, tmp_path / "b", tiny_model_dir, "--ray", "local", "--case-timeout", "0"))
    err = capsys.readouterr().err
    assert code == 2 and "--case-timeout must be a finite number in (0, 2592000]" in err
