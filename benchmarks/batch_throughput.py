"""Cases per hour for a worklist: ``mvg-rt simulate`` per case vs ``mvg-rt batch`` locally vs on Ray.

Usage::

    python benchmarks/batch_throughput.py --out benchmarks/results/cpu-2core

The worklist: ``--cases`` copies of the bundled demo case (demo image, heart mask, "severe cardiomegaly")
with seeds 0..N-1, on the embedded demo model with the demo case's settings (strength 0.3, 50 steps) but
reduced to ``--rounds`` PIE rounds and no transition clips, so the whole bench stays within minutes.
Rows, one after another in this run, each a fresh command measured end to end (wall clock, process
start and model load included, which is the point):

- ``simulate per case``: one ``mvg-rt simulate`` process per case (models load once per case);
- ``batch, local``: one ``mvg-rt batch`` process (models load once);
- ``batch, Ray 2 workers``: ``mvg-rt batch --ray local --workers 2`` (starts a private Ray instance; two
  actors with one torch thread each, each loading the models once).

Every process runs ``--threads`` torch threads (``OMP_NUM_THREADS``; default 1, what each Ray actor
uses), so the rows differ only in how cases are distributed, and their states are bit-identical (a
different thread count changes float summation order, hence the last bits); each row says whether they
are. Nothing here is asserted; the JSON and the Markdown table are committed.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from mvg_rt.demo.default import DEMO_CASE


def _worklist(folder: Path, cases: int) -> Path:
    path = folder / "worklist.csv"
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["case_id", "image", "mask", "prompt", "seed"])
        for seed in range(cases):
            writer.writerow([f"case{seed:02d}", DEMO_CASE.image, DEMO_CASE.mask, DEMO_CASE.prompt, seed])
    return path


def _timed(command: list[str], env: dict[str, str] | None = None) -> tuple[float, subprocess.CompletedProcess]:
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, check=False, env={**os.environ, **(env or {})})
    return time.perf_counter() - started, done


def _load() -> float:
    """1-minute load average: the machine is shared, so each row records what it ran beside."""
    return round(os.getloadavg()[0], 2)


def _states(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.glob("*/states/*.png"))}


def _row(name: str, seconds: float, cases: int, done: subprocess.CompletedProcess, out: Path,
         reference: tuple[str, dict[str, bytes]] | None, load_before: float) -> dict[str, Any]:
    states = _states(out)
    return {"row": name, "seconds": round(seconds, 1), "cases": cases, "load_before": load_before,
            "load_after": _load(),
            "cases_per_hour": round(3600 * cases / seconds, 1), "exit_code": done.returncode,
            "states": len(states), "same_bits_as": None if reference is None else reference[0],
            "same_bits": None if reference is None else states == reference[1],
            "stderr_tail": done.stderr.strip().splitlines()[-1:] if done.returncode else []}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process (Ray actors: 1)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/cpu-2core"))
    args = parser.parse_args(argv)
    mvg = [sys.executable, "-m", "mvg_rt.cli"]
    settings = ["--rounds", str(args.rounds), "--no-transition"]
    env = {"OMP_NUM_THREADS": str(args.threads)}
    work = Path(tempfile.mkdtemp(prefix="mvg-batch-bench-"))
    try:
        worklist = _worklist(work, args.cases)
        started = time.perf_counter()
        per_case = work / "simulate"
        wall, load = 0.0, _load()
        for seed in range(args.cases):
            seconds, done = _timed([*mvg, "simulate", "--seed", str(seed), *settings,
                                    "--out", str(per_case / f"case{seed:02d}")], env)
            wall += seconds
            if done.returncode:
                break
        rows = [_row("simulate per case", wall, args.cases, done, per_case, None, load)]
        reference = ("simulate per case", _states(per_case))
        load = _load()
        seconds, done = _timed([*mvg, "batch", str(worklist), "--out", str(work / "local"), *settings], env)
        rows.append(_row("batch, local", seconds, args.cases, done, work / "local", reference, load))
        load = _load()
        seconds, done = _timed([*mvg, "batch", str(worklist), "--out", str(work / "ray"), *settings,
                                "--ray", "local", "--workers", str(args.workers)], env)
        rows.append(_row(f"batch, Ray {args.workers} workers", seconds, args.cases, done, work / "ray", reference,
                         load))
        base = rows[0]["cases_per_hour"]
        for row in rows:
            row["vs_simulate_per_case"] = round(row["cases_per_hour"] / base, 2)
        report = {"bench": "batch_throughput", "date": time.strftime("%Y-%m-%d %H:%M"),
                  "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
                  "settings": {"cases": args.cases, "model": "embedded demo model", "rounds": args.rounds,
                               "transitions": False, "strength": 0.3, "steps": 50, "resolution": 256,
                               "torch_threads_per_process": args.threads},
                  "total_seconds": round(time.perf_counter() - started, 1), "rows": rows}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "batch_throughput.json").write_text(json.dumps(report, indent=2))
    lines = [(f"# Batch throughput ({args.cases} demo cases, {args.rounds} PIE rounds each, no transitions, "
              f"{args.threads} torch thread(s) per process)"), "",
             ("| row | wall seconds | cases per hour | vs simulate per case | states bit-identical to "
              "| load before/after |"), "|---|---|---|---|---|---|"]
    lines += [f"| {r['row']} | {r['seconds']} | {r['cases_per_hour']} | {r['vs_simulate_per_case']}x | "
              f"{'-' if r['same_bits'] is None else ('yes: ' if r['same_bits'] else 'NO: ') + r['same_bits_as']} | "
              f"{r['load_before']} / {r['load_after']} |" for r in rows]
    (args.out / "batch_throughput.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
