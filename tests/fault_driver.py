"""Run ``mvg-rt`` processes that pause at one stage of the output-folder life cycle, so a test can kill them.

The driver imports mvg-rt once and forks one child process per run (imports cost seconds; a fork
costs milliseconds). Each child is a real process running ``mvg_rt.cli.main(ARGS)`` with its own
stderr file, so SIGKILL and SIGTERM reach it exactly as they reach ``mvg-rt``. Protocol on stdin,
one JSON object per line, one JSON answer per line on stdout:

- ``{"args": [...], "stderr": PATH, "stage": STAGE, "marker": PATH}`` -> ``{"pid": N}``: fork a run
  (its stdout discarded);
  when it reaches STAGE it creates MARKER, then waits until ``MARKER.go`` exists (the test signals
  it, then creates that file);
- ``{"wait": N}`` -> ``{"pid": N, "code": C}``: the exit status (``-9``: killed by SIGKILL).

Stages: ``computing`` (inside the locked run, staging folder created, before the first PIE round),
``writing`` (after the first output file landed in the staging folder), ``swap-before`` /
``swap-after`` (around the atomic exchange of staging and ``--out``), ``fallback-between`` (the
exchange made unavailable; between the fallback's two renames). This is a test harness that wraps
module functions from outside: the CLI itself has no fault-injection switch.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import torch

import mvg_rt.commands.simulate  # noqa: F401 - imported once, before forking
import mvg_rt.io.output_dir as output_dir
import mvg_rt.simulation as simulation
from mvg_rt.cli import main


def _pause(marker: Path) -> None:
    marker.write_text("reached")
    go = marker.with_name(marker.name + ".go")
    deadline = time.monotonic() + 60
    while not go.exists() and time.monotonic() < deadline:
        time.sleep(0.02)  # SIGTERM raises here, except inside the commit, where signals wait for the commit


def install(stage: str, marker: Path) -> None:
    if stage == "computing":
        real_pie = simulation._run_pie

        def run_pie(*args, **kwargs):
            _pause(marker)
            return real_pie(*args, **kwargs)

        simulation._run_pie = run_pie
    elif stage == "writing":
        real_save = simulation.save_png

        def save_png(*args, **kwargs):
            real_save(*args, **kwargs)
            if not marker.exists():
                _pause(marker)

        simulation.save_png = save_png
    elif stage in ("swap-before", "swap-after"):
        real_exchange = output_dir.exchange

        def exchange(a, b):
            if stage == "swap-before":
                _pause(marker)
            done = real_exchange(a, b)
            if stage == "swap-after":
                _pause(marker)
            return done

        output_dir.exchange = exchange
    elif stage == "fallback-between":
        output_dir.exchange = lambda a, b: False
        real_rename = Path.rename

        def rename(self, target):
            result = real_rename(self, target)
            if output_dir.OLD in Path(target).name:
                _pause(marker)
            return result

        Path.rename = rename
    elif stage:
        raise SystemExit(f"unknown stage {stage}")


def _child(request: dict) -> None:
    """In the forked process: stderr to its own file, the stage hook, then the CLI; never returns."""
    code = 1
    try:
        fd = os.open(request["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.dup2(fd, 2)
        os.dup2(os.open(os.devnull, os.O_WRONLY), 1)  # stdout is the driver's answer channel
        sys.stderr = os.fdopen(2, "w", buffering=1)
        sys.stdout = os.fdopen(1, "w", buffering=1)
        torch.set_num_threads(1)
        install(request.get("stage") or "", Path(request.get("marker") or os.devnull))
        try:
            main(request["args"])
            code = 0
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else 1
    finally:
        sys.stderr.flush()
        os._exit(code)


def serve() -> None:
    for line in sys.stdin:
        request = json.loads(line)
        if "wait" in request:
            _, status = os.waitpid(request["wait"], 0)
            code = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
            answer = {"pid": request["wait"], "code": code}
        else:
            pid = os.fork()
            if pid == 0:
                _child(request)
            answer = {"pid": pid}
        print(json.dumps(answer), flush=True)


if __name__ == "__main__":
    serve()
