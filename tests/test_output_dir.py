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

from mvg_rt.errors import MvgError
from mvg_rt.io import output_dir
from mvg_rt.io.output_dir import claim_output_dir, staged_output_dir

DRIVER = Path(__file__).with_name("fault_driver.py")
REPO = Path(__file__).resolve().parents[1]
RUN = ["--prompt", "p", "--rounds", "1", "--steps", "2", "--strength", "0.5", "--resolution", "32",
       "--no-transition"]
NEW_RUN_FILES = {"run.json", "mask.png", "progression.mp4", "progression.gif", "states/state_00.png",
                 "states/state_01.png"}


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


def _files(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}


def _old_run(out: Path) -> None:
    (out / "states").mkdir(parents=True)
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


@pytest.fixture
def xray(tmp_path: Path, image_64: np.ndarray) -> Path:
    path = tmp_path / "xray.png"
    Image.fromarray(image_64).save(path)
    return path


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
        with staged_output_dir(out) as staging:
            (staging / "a.txt").write_text("a")
    assert (out / "a.txt").read_text() == "a" and _hidden(tmp_path) == []


def test_overwrite_swaps_in_one_step_and_an_error_keeps_the_old_run(tmp_path: Path):
    out = tmp_path / "out"
    _old_run(out)
    with pytest.raises(RuntimeError):
        with staged_output_dir(out, overwrite=True) as staging:
            (staging / "half").write_text("x")
            raise RuntimeError("boom")
    assert _state(out) == "old" and _hidden(tmp_path) == []
    with staged_output_dir(out, overwrite=True) as staging:
        (staging / "new.txt").write_text("new")
    assert _files(out) == {"new.txt"} and _hidden(tmp_path) == []


def test_two_rename_fallback_and_its_recovery(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    out = tmp_path / "out"
    _old_run(out)
    monkeypatch.setattr(output_dir, "exchange", lambda a, b: False)  # a file system without RENAME_EXCHANGE
    with staged_output_dir(out, overwrite=True) as staging:
        (staging / "new.txt").write_text("new")
    assert _files(out) == {"new.txt"} and _hidden(tmp_path) == []
    # a crash between the fallback's two renames, and leftovers of the earlier layout: the next claim repairs
    out.rename(tmp_path / ".out.mvg-old-abc123")
    (tmp_path / ".out.partial-abcd1234").mkdir()
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
        with staged_output_dir(tmp_path / "out") as staging:
            assert staging.stat().st_mode & 0o777 == 0o700  # nobody reads a half-written run
            (staging / "sub").mkdir()
    finally:
        os.umask(previous)
    assert (tmp_path / "out").stat().st_mode & 0o777 == mode
    assert (tmp_path / "out" / "sub").stat().st_mode & 0o777 == mode
