"""Output folders are never shared and never half-written (issue 13, defects 1-3 and 7).

The fault tests run real ``mvg-rt simulate`` processes on the tiny model, pause them at each stage
of the output folder's life (tests/fault_driver.py), kill them there with SIGKILL or SIGTERM, and
check that ``--out`` holds the complete old run or the complete new run, and that the next start
leaves no hidden folder behind.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fuzzing import tree_snapshot

from mvg_rt.errors import MvgError
from mvg_rt.io import output_dir
from mvg_rt.io.output_dir import MARKER, claim_output_dir, mark_output, staged_output_dir

DRIVER = Path(__file__).with_name("fault_driver.py")
REPO = Path(__file__).resolve().parents[1]
RUN = ["--prompt", "p", "--rounds", "1", "--steps", "2", "--strength", "0.5", "--resolution", "32",
       "--no-transition"]
NEW_RUN_FILES = {"run.json", "mask.png", "progression.mp4", "progression.gif", "states/state_00.png",
                 "states/state_01.png"}


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


def _files(folder: Path) -> set[str]:
    """The files of an output, without its marker (checked on its own)."""
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() and p.name != MARKER}


def _old_run(out: Path) -> None:
    (out / "states").mkdir(parents=True)
    mark_output(out, "run")  # an earlier mvg-rt run: --overwrite may replace it
    (out / "run.json").write_text('{"old": true}')
    (out / "states" / "state_00.png").write_bytes(b"old state")


def _state(out: Path) -> str:
    """'old', 'new', 'absent' or what is wrong."""
    if not out.exists():
        return "absent"
    files = _files(out)
    if files == {"run.json", "states/state_00.png"} and json.loads((out / "run.json").read_text()) == {"old": True}:
        return "old"
    if files == NEW_RUN_FILES and json.loads((out / "run.json").read_text())["pie"]["rounds"] == 1:
        return "new"
    return f"mixed: {sorted(files)}"


def _hidden(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


class Driver:
    """tests/fault_driver.py: mvg-rt imported once, one forked real process per run."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen([sys.executable, str(DRIVER)], env=_env(), stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)

    def _ask(self, request: dict) -> dict:
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def start(self, args: list[str], stderr: Path, stage: str | None = None, marker: Path | None = None) -> int:
        return self._ask({"args": args, "stderr": str(stderr), "stage": stage,
                          "marker": str(marker) if marker else None})["pid"]

    def wait(self, pid: int) -> int:
        return self._ask({"wait": pid})["code"]

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


# (stage, signal, --out held an old run) -> what --out holds once the process is gone
FAULTS = [
    ("computing", signal.SIGKILL, True, "old"),
    ("writing", signal.SIGKILL, True, "old"),
    ("writing", signal.SIGKILL, False, "absent"),
    ("swap-before", signal.SIGKILL, True, "old"),
    ("swap-after", signal.SIGKILL, True, "new"),
    ("fallback-between", signal.SIGKILL, True, "absent"),  # the fallback's window; the next start restores "old"
    ("computing", signal.SIGTERM, True, "old"),
    ("writing", signal.SIGTERM, True, "old"),
    ("swap-before", signal.SIGTERM, True, "new"),  # signals wait for the commit, then end the run
    ("swap-after", signal.SIGTERM, True, "new"),
    ("fallback-between", signal.SIGTERM, True, "new"),
]


@pytest.mark.slow  # about 15 s alone, up to a minute on 2 shared cores: 11 real processes killed at each stage
def test_kill_at_every_stage_leaves_the_old_or_the_new_run(tmp_path: Path, tiny_model_dir: Path, xray: Path):
    parent = tmp_path / "runs"
    parent.mkdir()
    logs = tmp_path / "logs"
    logs.mkdir()

    def args(out: Path, *extra: str) -> list[str]:
        return ["simulate", "--model-dir", str(tiny_model_dir), "--image", str(xray), *RUN, "--out", str(out),
                *extra]

    driver = Driver()
    try:
        pids = []
        for index, (stage, _, had_old, _) in enumerate(FAULTS):
            if had_old:
                _old_run(parent / f"case{index}")
            pids.append(driver.start(args(parent / f"case{index}", "--overwrite"), logs / f"{index}.err", stage,
                                     logs / f"marker{index}"))
        concurrent = None
        deadline = time.monotonic() + 180
        for index, pid in enumerate(pids):
            marker = logs / f"marker{index}"
            while not marker.exists():
                assert time.monotonic() < deadline, (FAULTS[index], (logs / f"{index}.err").read_text())
                time.sleep(0.02)
            if FAULTS[index][:2] == ("computing", signal.SIGTERM):
                # defect 1: a second run on the same --out while the first computes fails at once, exit 2
                second = driver.start(args(parent / f"case{index}", "--overwrite"), logs / "second.err")
                concurrent = driver.wait(second), (logs / "second.err").read_text()
            os.kill(pid, FAULTS[index][1])
            marker.with_name(marker.name + ".go").write_text("")
        codes = [driver.wait(pid) for pid in pids]

        for index, (stage, sig, _, expected) in enumerate(FAULTS):
            err = (logs / f"{index}.err").read_text()
            assert codes[index] == (-9 if sig == signal.SIGKILL else 130), (stage, sig, err)
            if sig == signal.SIGTERM:
                assert err.strip().splitlines()[-1].startswith("mvg-rt: interrupted"), err
            assert _state(parent / f"case{index}") == expected, (stage, sig)
        assert concurrent is not None and concurrent[0] == 2, concurrent
        assert "another mvg-rt run is writing" in concurrent[1] and concurrent[1].count("\n") == 1, concurrent

        # the next start (any run in the folder) removes what dead runs left, and restores a stranded old run
        code = driver.wait(driver.start(args(parent / "case0"), logs / "next.err"))
        assert code == 2 and "already holds results" in (logs / "next.err").read_text()
    finally:
        driver.close()
    assert _hidden(parent) == []
    for index, (stage, sig, _, expected) in enumerate(FAULTS):
        after = "old" if stage == "fallback-between" and sig == signal.SIGKILL else expected
        assert _state(parent / f"case{index}") == after, (stage, sig)


def test_second_claim_on_one_folder_fails_at_once_and_waits_when_asked(tmp_path: Path):
    out = tmp_path / "out"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from mvg_rt.io.output_dir import "
                               "claim_output_dir as c\nwith c(sys.argv[1]):\n print('held', flush=True); "
                               "time.sleep(30)", str(out)], env=_env(), stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        started = time.monotonic()
        with pytest.raises(MvgError, match="another mvg-rt run is writing"):
            with claim_output_dir(out):
                pass
        assert time.monotonic() - started < 1.0
    finally:
        holder.kill()
        holder.wait()
    with claim_output_dir(out, wait=True):  # the kernel released the dead holder's lock
        pass
    assert _hidden(tmp_path) == []


def test_claims_are_reentrant_within_a_process(tmp_path: Path):
    out = tmp_path / "out"
    with claim_output_dir(out):
        with staged_output_dir(out, kind="run") as staging:
            (staging / "a.txt").write_text("a")
    assert (out / "a.txt").read_text() == "a" and _hidden(tmp_path) == []


def test_overwrite_swaps_in_one_step_and_an_error_keeps_the_old_run(tmp_path: Path):
    out = tmp_path / "out"
    _old_run(out)
    with pytest.raises(RuntimeError):
        with staged_output_dir(out, overwrite=True, kind="run") as staging:
            (staging / "half").write_text("x")
            raise RuntimeError("boom")
    assert _state(out) == "old" and _hidden(tmp_path) == []
    with staged_output_dir(out, overwrite=True, kind="run") as staging:
        (staging / "new.txt").write_text("new")
    assert _files(out) == {"new.txt"} and _hidden(tmp_path) == []


def test_two_rename_fallback_and_its_recovery(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    out = tmp_path / "out"
    _old_run(out)
    monkeypatch.setattr(output_dir, "exchange", lambda a, b: False)  # a file system without RENAME_EXCHANGE
    with staged_output_dir(out, overwrite=True, kind="run") as staging:
        (staging / "new.txt").write_text("new")
    assert _files(out) == {"new.txt"} and _hidden(tmp_path) == []
    # a crash between the fallback's two renames, and a dead run's marked staging folder: the next claim repairs
    out.rename(tmp_path / ".out.mvg-old-abc_1234")
    staging = tmp_path / ".out.mvg-partial-abcd1234"
    staging.mkdir()
    mark_output(staging, "run")
    (staging / "half.png").write_bytes(b"half")
    (tmp_path / ".out.mvg-lock").write_text("")
    with claim_output_dir(tmp_path / "other"):
        pass
    assert _files(out) == {"new.txt"} and _hidden(tmp_path) == []


def test_renameat2_exchange_is_available_here(tmp_path: Path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    (a / "x").write_text("a")
    assert output_dir.exchange(a, b), "RENAME_EXCHANGE unsupported: the fault matrix then tests the fallback only"
    assert (b / "x").read_text() == "a" and not (a / "x").exists()


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o755), (0o077, 0o700), (0o002, 0o775)])
def test_final_folders_honour_the_umask(tmp_path: Path, umask: int, mode: int):
    previous = os.umask(umask)
    try:
        with staged_output_dir(tmp_path / "out", kind="run") as staging:
            assert staging.stat().st_mode & 0o777 == 0o700  # nobody reads a half-written run
            (staging / "sub").mkdir()
    finally:
        os.umask(previous)
    assert (tmp_path / "out").stat().st_mode & 0o777 == mode
    assert (tmp_path / "out" / "sub").stat().st_mode & 0o777 == mode


# ---- issue 18: nothing of the user's is ever destroyed -----------------------------------------------------

def _one_line_refusal(code: int, err: str) -> None:
    assert code == 2, err
    assert err.count("\n") == 1 and err.startswith("mvg-rt: error: ") and "Traceback" not in err, err


def _simulate(model_dir: Path, image: str | Path, out: str, *extra: str) -> list[str]:
    return ["simulate", "--model-dir", str(model_dir), "--image", str(image), *RUN, "--out", out, *extra]


@pytest.fixture
def nested_cwd(tmp_path: Path, image_64: np.ndarray, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The issue's layout: a/precious.txt, the working folder a/b with the input image and other work."""
    work = tmp_path / "a" / "b"
    work.mkdir(parents=True)
    (tmp_path / "a" / "precious.txt").write_text("precious")
    (work / "notes.txt").write_text("notes")
    Image.fromarray(image_64).save(work / "img.png")
    monkeypatch.chdir(work)
    return tmp_path


@pytest.mark.parametrize("out", [".", "", "./", "..", "../..", "../b", "../../a", "./.", "x/.."])
def test_data_loss_1_out_dot_and_the_working_folders_ancestors_are_refused(
        nested_cwd: Path, tiny_model_dir: Path, run_cli, out: str):
    """Issue 18 case 1: `--out .` (also "", ./, ..) resolved to the parent and --overwrite replaced it."""
    before = tree_snapshot(nested_cwd)
    code, _, err = run_cli(_simulate(tiny_model_dir, "img.png", out, "--overwrite"))
    _one_line_refusal(code, err)
    assert tree_snapshot(nested_cwd) == before


def test_data_loss_1_the_home_folder_and_the_root_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(tmp_path)
    for out in (home, "/", "~/..", Path("/").joinpath(*tmp_path.parts[1:2])):
        with pytest.raises(MvgError, match="--out"):
            output_dir.check_output_dir(out, overwrite=True)


LOOK_ALIKES = [".notes.partial-abcdefgh", ".config.old-backup01", ".photos.old-20240101", ".thesis.mvg-old-v2",
               # the exact shape of mvg-rt's own staging names, but without its marker: a user's folders too
               ".run.mvg-partial-abcd1234", ".run.mvg-old-abcd1234"]


def test_data_loss_2_hidden_look_alike_folders_survive_a_run_next_to_them(tmp_path: Path, tiny_model_dir: Path,
                                                                           xray: Path, run_cli):
    """Issue 18 case 2: a run "recovered" hidden folders whose names merely looked like its leftovers."""
    parent = tmp_path / "runs"
    for name in LOOK_ALIKES:
        (parent / name).mkdir(parents=True)
        (parent / name / "mine.txt").write_text(name)
    before = tree_snapshot(parent)
    code, _, err = run_cli(_simulate(tiny_model_dir, xray, str(parent / "run")))
    assert code == 0, err
    after = tree_snapshot(parent)
    assert {k: v for k, v in after.items() if k.split("/")[0] != "run"} == before  # untouched, not renamed
    assert _files(parent / "run") == NEW_RUN_FILES and output_dir.output_kind(parent / "run") == "run"


@pytest.fixture
def marked_model(tmp_path: Path, tiny_model_dir: Path) -> Path:
    """A model folder as make-tiny-model writes it (so it carries the marker: only the inputs rule guards it)."""
    import shutil

    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    mark_output(model, "model")
    return model


def test_data_loss_3_the_model_folder_is_not_an_output(marked_model: Path, xray: Path, run_cli):
    before = tree_snapshot(marked_model)
    code, _, err = run_cli(_simulate(marked_model, xray, str(marked_model), "--overwrite"))
    _one_line_refusal(code, err)
    assert "the model folder (--model-dir)" in err
    assert tree_snapshot(marked_model) == before


def test_data_loss_3_export_keeps_its_source_model(marked_model: Path, run_cli):
    before = tree_snapshot(marked_model)
    code, _, err = run_cli(["export", "--model-dir", str(marked_model), "--out", str(marked_model), "--overwrite"])
    _one_line_refusal(code, err)
    assert "the model folder (--model-dir)" in err
    assert tree_snapshot(marked_model) == before


@pytest.mark.parametrize("marked", [False, True])
def test_data_loss_3_a_folder_holding_the_input_image_is_not_an_output(tmp_path: Path, tiny_model_dir: Path,
                                                                        image_64: np.ndarray, run_cli, marked: bool):
    work = tmp_path / "d"
    work.mkdir()
    Image.fromarray(image_64).save(work / "SECRET_Doe.png")
    (work / "draft.txt").write_text("other work")
    if marked:  # even an earlier run's folder, once the input was put into it
        mark_output(work, "run")
    before = tree_snapshot(tmp_path)
    code, _, err = run_cli(_simulate(tiny_model_dir, work / "SECRET_Doe.png", str(work), "--overwrite"))
    _one_line_refusal(code, err)
    assert "SECRET" not in err  # the input's name is not echoed (it may identify the patient)
    assert tree_snapshot(tmp_path) == before


def _worklist(path: Path, rows: list[tuple[str, Path]]) -> Path:
    path.write_text("case_id,image,prompt\n" + "".join(f"{case},{image},severe cardiomegaly\n" for case, image in rows))
    return path


def test_data_loss_3_batch_out_dot_redo_in_a_folder_of_images(tmp_path: Path, tiny_model_dir: Path,
                                                               image_64: np.ndarray, run_cli,
                                                               monkeypatch: pytest.MonkeyPatch):
    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(image_64).save(images / "p1.png")
    _worklist(images / "list.csv", [("images", images / "p1.png")])
    monkeypatch.chdir(images)
    before = tree_snapshot(tmp_path)
    code, _, err = run_cli(["batch", "list.csv", "--out", ".", "--redo", "--model-dir", str(tiny_model_dir), *RUN[2:]])
    _one_line_refusal(code, err)
    assert tree_snapshot(tmp_path) == before


def test_data_loss_3_a_case_id_naming_a_users_folder_is_refused_with_redo(tmp_path: Path, tiny_model_dir: Path,
                                                                           image_64: np.ndarray, run_cli):
    """An earlier batch folder (marked) into which a folder of input images was put, and a case of that name."""
    batch = tmp_path / "batch"
    (batch / "imgs").mkdir(parents=True)
    mark_output(batch, "batch")
    Image.fromarray(image_64).save(batch / "imgs" / "SECRET_Doe.png")
    Image.fromarray(image_64).save(tmp_path / "p1.png")
    worklist = _worklist(tmp_path / "list.csv", [("imgs", tmp_path / "p1.png")])
    before = tree_snapshot(tmp_path)
    code, _, err = run_cli(["batch", str(worklist), "--out", str(batch), "--redo", "--model-dir", str(tiny_model_dir),
                            *RUN[2:]])
    _one_line_refusal(code, err)
    assert "imgs" in err and "SECRET" not in err  # the case id, never a file name
    assert tree_snapshot(tmp_path) == before
    # and a case whose input lies inside --out: the batch folder holds an input, refused before any case
    worklist = _worklist(tmp_path / "list.csv", [("c1", batch / "imgs" / "SECRET_Doe.png")])
    before = tree_snapshot(tmp_path)
    code, _, err = run_cli(["batch", str(worklist), "--out", str(batch), "--model-dir", str(tiny_model_dir), *RUN[2:]])
    _one_line_refusal(code, err)
    assert "case c1" in err and "SECRET" not in err
    assert tree_snapshot(tmp_path) == before


def test_overwrite_replaces_only_what_mvg_rt_wrote(tmp_path: Path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "thesis.tex").write_text("years of work")
    with pytest.raises(MvgError, match="holds files mvg-rt did not write"):
        with staged_output_dir(out, overwrite=True, kind="run"):
            pass
    assert tree_snapshot(tmp_path) == {"out": None, "out/thesis.tex": b"years of work"}
    mark_output(out, "run")  # an mvg-rt run's folder: --overwrite replaces it
    with staged_output_dir(out, overwrite=True, kind="engines") as staging:
        (staging / "new.txt").write_text("new")
    assert _files(out) == {"new.txt"} and output_dir.output_kind(out) == "engines"


def test_a_symbolic_link_is_refused_naming_its_folder(tmp_path: Path):
    target = tmp_path / "real"
    _old_run(target)
    (tmp_path / "link").symlink_to(target)
    before = tree_snapshot(tmp_path)
    with pytest.raises(MvgError, match=f"symbolic link to {target}: pass --out {target}"):
        with staged_output_dir(tmp_path / "link", overwrite=True, kind="run"):
            pass
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    with pytest.raises(MvgError, match="symbolic link"):
        output_dir.check_output_dir(tmp_path / "dangling", overwrite=False)
    assert {k: v for k, v in tree_snapshot(tmp_path).items() if k != "dangling"} == before


def test_an_out_name_too_long_for_the_staging_name_is_refused_before_any_work(tmp_path: Path, xray: Path,
                                                                               tiny_model_dir: Path, run_cli):
    """Issue 18: a 255-byte limit that the name passes alone but not with `.` and `.mvg-partial-XXXXXXXX`."""
    name_max = os.pathconf(tmp_path, "PC_NAME_MAX")
    longest = name_max - len(".") - len(output_dir.PARTIAL) - 8
    code, _, err = run_cli(_simulate(tiny_model_dir, xray, str(tmp_path / ("r" * (longest + 1)))))
    _one_line_refusal(code, err)
    assert f"at most {longest} bytes" in err
    output_dir.check_output_dir(tmp_path / "deep" / ("é" * (longest // 2)), overwrite=False)  # bytes, not letters
    with pytest.raises(MvgError, match="bytes"):
        output_dir.check_output_dir(tmp_path / ("é" * (longest // 2 + 1)), overwrite=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["deep", "xray.png"]


def test_a_lock_name_holding_a_users_file_is_refused_and_kept(tmp_path: Path):
    (tmp_path / ".out.mvg-lock").write_text("my notes")
    with pytest.raises(MvgError, match="not mvg-rt's lock|did not write"):
        with claim_output_dir(tmp_path / "out"):
            pass
    with claim_output_dir(tmp_path / "other"):  # recovery next to it leaves it alone too
        pass
    assert tree_snapshot(tmp_path) == {".out.mvg-lock": b"my notes"}


def test_bench_replaces_only_its_own_report(tmp_path: Path, run_cli):
    """The guard bench had of its own ("not a bench report") is now the one marker rule."""
    user, run = tmp_path / "user", tmp_path / "run"
    user.mkdir()
    (user / "data.csv").write_text("1,2")
    _old_run(run)
    before = tree_snapshot(tmp_path)
    for out, words in ((user, "holds files mvg-rt did not write"), (run, "not a bench report")):
        code, _, err = run_cli(["bench", "--size", "tiny", "--out", str(out), "--in-process"])
        _one_line_refusal(code, err)
        assert words in err
    assert tree_snapshot(tmp_path) == before
    bench = tmp_path / "bench"
    bench.mkdir()
    mark_output(bench, "bench")
    output_dir.check_output_dir(bench, overwrite=False, kind="bench")  # an earlier report: replaced


def test_build_locks_an_engines_folder_without_the_marker_rules(tmp_path: Path):
    """build updates an export's folder in place: it takes the lock only (even an export made before markers)."""
    engines = tmp_path / "engines"
    engines.mkdir()
    (engines / "manifest.json").write_text("{}")
    with output_dir.lock_dir(engines):
        assert output_dir._try_lock(tmp_path / ".engines.mvg-lock") is None  # what another process's claim meets
    assert tree_snapshot(tmp_path) == {"engines": None, "engines/manifest.json": b"{}"}


def test_an_old_demo_cache_without_the_marker_is_rebuilt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from mvg_rt.demo.default import tiny_model_dir

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    stale = tmp_path / "mvg-rt" / "tiny-random-v2"
    (stale / "unet").mkdir(parents=True)  # an incomplete cache of an earlier mvg-rt: no model_index.json, no marker
    (stale / "unet" / "config.json").write_text("{}")
    folder = tiny_model_dir()
    assert folder == stale and (folder / "model_index.json").is_file() and output_dir.output_kind(folder) == "model"


def test_live_staging_lists_this_process_staging_and_locks(tmp_path: Path):
    with staged_output_dir(tmp_path / "out", kind="run") as staging:
        assert output_dir.live_staging() == [staging, tmp_path / ".out.mvg-lock"]
        assert output_dir.output_kind(staging) == "run"  # marked from the start: a kill leaves it recognisable
    assert output_dir.live_staging() == []


@pytest.mark.parametrize("name", ["SIGHUP", "SIGQUIT", "SIGTERM"])
def test_hangup_and_quit_wait_for_the_commit_like_sigterm(name: str):
    number = getattr(signal, name)
    seen: list[int] = []
    previous = signal.signal(number, lambda sig, _frame: seen.append(sig))
    try:
        with output_dir._signals_deferred():
            os.kill(os.getpid(), number)
            time.sleep(0.01)
            assert seen == []  # held until the commit is done
        assert seen == [number]
    finally:
        signal.signal(number, previous)


def test_a_users_file_named_like_the_marker_does_not_make_a_folder_replaceable(tmp_path: Path):
    out = tmp_path / "out"
    out.mkdir()
    (out / MARKER).write_text("my own notes")
    with pytest.raises(MvgError, match="holds files mvg-rt did not write"):
        with staged_output_dir(out, overwrite=True, kind="run"):
            pass
    assert tree_snapshot(tmp_path) == {"out": None, f"out/{MARKER}": b"my own notes"}
