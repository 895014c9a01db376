"""Stop requests end a run within seconds, even inside one long native call (issue 18, "Signals").

Each test starts a real process that enters the CLI's stop-request block and then one torch matmul
that alone takes far longer than the test waits (a float64 6144^2 product on one thread: ~20 s here),
sends it a signal, and measures how long the process takes to end.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

LONG_CALL = """
import sys, torch
from pathlib import Path
from mvg_rt.io import stop_requests
torch.set_num_threads(1)
staging = Path(sys.argv[1])
stop_requests.on_forced_exit(lambda: staging.rmdir())
with stop_requests.stop_requests(grace_s=float(sys.argv[2])):
    staging.mkdir()
    a = torch.ones(6144, 6144, dtype=torch.float64)
    print("computing", flush=True)
    try:
        (a @ a).sum()
    except KeyboardInterrupt:
        print("unwound normally", flush=True)
        staging.rmdir()
        sys.exit(130)
"""


def _start(tmp_path: Path, grace_s: float) -> tuple[subprocess.Popen, Path]:
    staging = tmp_path / ".run.mvg-partial-test"
    process = subprocess.Popen([sys.executable, "-c", LONG_CALL, str(staging), str(grace_s)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert process.stdout is not None
    assert process.stdout.readline().strip() == "computing"
    return process, staging


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGINT])
def test_a_stop_request_ends_a_long_native_call_within_the_grace(tmp_path: Path, sig: signal.Signals):
    process, staging = _start(tmp_path, grace_s=1.0)
    time.sleep(0.3)  # inside the matmul
    sent = time.monotonic()
    process.send_signal(sig)
    out, err = process.communicate(timeout=30)
    took = time.monotonic() - sent
    assert process.returncode == 130, (out, err)
    assert took < 1.0 + 4.0, took  # the grace, plus a loaded 2-core machine's slack; the call alone is ~20 s
    assert "interrupted; no partial output was kept" in err and "Traceback" not in err
    assert not staging.exists()  # the clean-up hooks ran


def test_a_request_outside_a_long_call_unwinds_normally(tmp_path: Path):
    """A stop between bytecodes raises KeyboardInterrupt at once; the watchdog then has nothing to do."""
    code = ("import sys, time\nfrom mvg_rt.io import stop_requests\n"
            "with stop_requests.stop_requests(grace_s=1.0):\n"
            "    try:\n        print('ready', flush=True)\n        time.sleep(30)\n"
            "    except KeyboardInterrupt:\n        print('unwound', flush=True)\n"
            "time.sleep(2)\nprint('after', flush=True)\n")  # past the grace: no forced exit once disarmed
    process = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert process.stdout is not None and process.stdout.readline().strip() == "ready"
    process.send_signal(signal.SIGHUP)
    out, err = process.communicate(timeout=30)
    assert process.returncode == 0, err
    assert out.split() == ["unwound", "after"]


STUCK_SIMULATE = """
import sys, torch
import mvg_rt.simulation as simulation
from mvg_rt.cli import main

def stuck_in_one_call(*args, **kwargs):  # a PIE round whose first network call never returns in time
    torch.set_num_threads(1)
    a = torch.ones(6144, 6144, dtype=torch.float64)
    print("computing", flush=True)
    (a @ a).sum()

simulation._run_pie = stuck_in_one_call
main(sys.argv[1:])
"""


def test_simulate_stopped_inside_a_long_call_leaves_no_staging_and_no_lock(tmp_path: Path, tiny_model_dir: Path):
    """The CLI end to end: SIGTERM while a network call holds the main thread -> exit 130 within the grace,
    the staging folder and the lock file removed, an earlier run in --out untouched."""
    out = tmp_path / "run"
    args = ["simulate", "--model-dir", str(tiny_model_dir), "--rounds", "1", "--steps", "2", "--resolution", "32",
            "--no-transition", "--out", str(out)]
    process = subprocess.Popen([sys.executable, "-c", STUCK_SIMULATE, *args], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    assert process.stdout is not None
    assert process.stdout.readline().strip() == "computing"
    assert [p.name for p in tmp_path.glob(".run.mvg-partial-*")]  # staging exists while it computes
    sent = time.monotonic()
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    assert time.monotonic() - sent < 3.0 + 4.0
    assert "interrupted; no partial output was kept" in err and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no staging, no lock, no --out
