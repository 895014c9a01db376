"""The eager PIE step's own cost outside the UNet: aten ops and time per step, on the tiny model.

The UNet is replaced by a constant (``Backend.predict_noise`` returns a fixed tensor), so what is left
is the loop: PIE's pre-step, CFG, the stepper and the buffers. Per-step figures are differences
between a 160-step and a 10-step round (the one-off work before and after the loop cancels); the time
is the minimum over repeats (the machine is shared), the op count is torch.profiler's aten ops.
Run it in two checkouts to compare them side by side (issue 20 compared the table step before and
after the step engine):

    python benchmarks/step_overhead.py --out benchmarks/results/cpu-2core

Writes ``step_overhead.json`` and ``step_overhead.md`` under ``--out`` (or prints with no --out).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.profiler import ProfilerActivity, profile

from mvg_rt.models.builders import build_models, write_model_folder
from mvg_rt.runtime.factory import RuntimeSpec, open_runtime
from mvg_rt.runtime.pipelines.pie import PieSettings, pie_session

SHORT, LONG = 10, 160


def measure(stepper: str, repeat: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        write_model_folder(build_models("tiny", seed=0), Path(tmp) / "model")
        runtime = open_runtime(RuntimeSpec(model_dir=Path(tmp) / "model"))
    backend = runtime.backend
    fixed = torch.zeros(2, 4, 8, 8)
    backend.predict_noise = lambda sample, timestep, text: fixed  # the loop alone
    image = (np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8)
    ops, seconds = {}, {}
    for steps in (SHORT, LONG):
        session = pie_session(backend, runtime.model, PieSettings(rounds=1, steps=steps, strength=1.0,
                                                                  scheduler="ddim"),
                              image, np.full((64, 64), 255, np.uint8), "p", stepper=stepper)
        previous = torch.from_numpy(image)
        session.round_latents(previous, torch.Generator().manual_seed(0))
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            session.round_latents(previous, torch.Generator().manual_seed(0))
        ops[steps] = sum(e.count for e in prof.key_averages() if e.key.startswith("aten::"))
        times = []
        for _ in range(repeat):
            started = time.perf_counter()
            session.round_latents(previous, torch.Generator().manual_seed(0))
            times.append(time.perf_counter() - started)
        seconds[steps] = min(times)
    extra = LONG - SHORT
    return {"aten_ops_per_step": (ops[LONG] - ops[SHORT]) / extra,
            "ms_per_step": (seconds[LONG] - seconds[SHORT]) / extra * 1e3}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=30)
    parser.add_argument("--out", type=Path, help="Folder for step_overhead.json / .md (default: print only).")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    cpu = next((line.split(":", 1)[1].strip() for line in subprocess.run(["lscpu"], capture_output=True,
                text=True).stdout.splitlines() if line.startswith("Model name")), "unknown")
    rows = {stepper: measure(stepper, args.repeat) for stepper in ("auto", "scheduler")}
    result = {"commit": commit, "cpu": cpu, "threads": 1, "rows": rows}
    print(json.dumps(result, indent=2))
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "step_overhead.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
