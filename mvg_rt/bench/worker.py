"""One measurement job, in this process or in a fresh one (``python -m mvg_rt.bench.worker JOB RESULT``).

Isolating each (variant, component) and each end-to-end variant in its own process
gives a clean peak-memory reading (only that job's weights are resident) and keeps
one backend's allocator state from slowing the next. Jobs are JSON-serialisable
dicts, so the same job runs in-process (tests, ``--in-process``) or in a child.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import traceback
from pathlib import Path
from typing import Any

import torch


def run_job(job: dict[str, Any]) -> dict[str, Any]:
    from mvg_rt.bench.e2e import E2ESettings, run_e2e
    from mvg_rt.bench.models import ModelSource
    from mvg_rt.bench.variants import Variant

    if job.get("threads"):
        torch.set_num_threads(int(job["threads"]))
    source = ModelSource(Path(job["source"]["model_dir"]),
                         Path(job["source"]["seine"]) if job["source"].get("seine") else None,
                         job["source"]["origin"], job["source"].get("size"))
    engines = Path(job["engines"]) if job.get("engines") else None
    workdir = Path(job["workdir"])
    kind = job["kind"]
    if kind == "component":
        from mvg_rt.bench.components import bench_component

        return bench_component(Variant.from_dict(job["variant"]), source, engines, job["component"],
                               job["resolution"], job["frames"], job["repeat"], job["warmup"], workdir,
                               job.get("budget_s"))
    if kind == "e2e":
        settings = E2ESettings(**job["settings"])
        return run_e2e(Variant.from_dict(job["variant"]), source, engines, settings, tuple(job["loops"]),
                       job.get("simulate_loop"), bool(job.get("transitions")), workdir)
    if kind == "diffusers":
        from mvg_rt.bench.peers import run_diffusers

        return run_diffusers(source, E2ESettings(**job["settings"]), job["device"], job["precision"], workdir)
    raise ValueError(f"unknown job kind {kind!r}")


def run_isolated(job: dict[str, Any], workdir: Path, timeout: float | None = None) -> dict[str, Any]:
    """``run_job`` in a fresh Python; errors come back as ``{"error": ...}``."""
    workdir.mkdir(parents=True, exist_ok=True)
    index = len(list(workdir.glob("job-*.json")))
    job_path, result_path = workdir / f"job-{index:03d}.json", workdir / f"result-{index:03d}.json"
    job_path.write_text(json.dumps(job, indent=2))
    env = os.environ | {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error", "DIFFUSERS_VERBOSITY": "error"}
    try:
        done = subprocess.run([sys.executable, "-m", "mvg_rt.bench.worker", str(job_path), str(result_path)],
                              capture_output=True, text=True, env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout} s"}
    if result_path.is_file():
        return json.loads(result_path.read_text())
    tail = (done.stderr or done.stdout).strip().splitlines()[-4:]
    return {"error": f"worker exited {done.returncode}: {' | '.join(tail)[:800]}"}


def run_here(job: dict[str, Any]) -> dict[str, Any]:
    try:
        return run_job(job)
    except Exception as err:  # noqa: BLE001 - one failed row must not lose the others
        from mvg_rt.errors import MvgError

        if isinstance(err, MvgError):
            return {"error": str(err)}
        return {"error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc()[-2000:]}


def main(job_path: str, result_path: str) -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import diffusers.utils.logging as dlog
    import transformers.utils.logging as tlog

    for log in (dlog, tlog):
        log.set_verbosity_error()
        log.disable_progress_bar()
    result = run_here(json.loads(Path(job_path).read_text()))
    Path(result_path).write_text(json.dumps(result, indent=2, default=str))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
