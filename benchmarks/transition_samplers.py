"""Sampler study: every transition sampler x step count against SEINE's DDPM-250, on the demo case.

The demo model and demo case (a phantom chest X-ray, heart ROI, "severe cardiomegaly")
run PIE once (seed 0, the demo's settings); the consecutive pair of states whose CTR
moves most is then the clip every setting generates, for each seed. Each clip is
scored with :mod:`mvg_rt.eval.transition_quality`, and timed (the clip call only:
sampling + decoding + compositing; the sampler is built once per setting). Settings
run interleaved (seed-major), so a load change on the machine hits all of them alike.

A setting is *within the spread* of DDPM-250 when, for every primary measure, its
mean over the seeds is no worse than DDPM-250's worst seed (the bad edge of its
seed-to-seed range: the max for measures where lower is better, the min for the
CTR monotone fraction). Being better than every DDPM-250 seed is not held against a
sampler; the table also says whether the mean lies inside the range. The fastest
setting within the spread is the ``fast`` preset.

Time per clip is reported as wall seconds and as the process's CPU seconds: this
2-core machine is shared, so wall time carries other people's load, while CPU time
(one torch thread by default, so no spinning threads inflate it) is the cost of the
clip itself; speed-ups are CPU-time ratios.

    python benchmarks/transition_samplers.py --seeds 5 --out benchmarks/results/cpu-2core

Writes ``transition_samplers.json`` and ``transition_samplers.md`` under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mvg_rt.eval.ctr import measure_ctr
from mvg_rt.eval.transition_quality import transition_quality

REFERENCE = ("ddpm", 250)
GRID = (REFERENCE, ("ddpm", 100), ("ddpm", 50), ("ddim", 50), ("ddim", 25), ("ddim", 10),
        ("dpm++2m", 20), ("dpm++2m", 10), ("dpm++2m", 5), ("unipc", 20), ("unipc", 10), ("unipc", 5))
PRIMARY = {"ctr_max_deviation": "lower", "ctr_monotone_fraction": "higher", "jerkiness": "lower",
           "path_ratio": "lower"}  # measure -> which way is better
REPORTED = (*PRIMARY, "change_mean", "outside_psnr_min", "outside_ssim_min")
PIE_ROUNDS = 3


def _label(sampler: str, steps: int) -> str:
    return f"{sampler}-{steps}"


def demo_states(runtime: Any, rounds: int) -> tuple[list[np.ndarray], np.ndarray, str]:
    """The demo case's PIE states (seed 0, demo settings), its ROI (H, W) uint8 gray and prompt."""
    from mvg_rt.bench.e2e import demo_inputs
    from mvg_rt.demo.default import DEMO_CASE
    from mvg_rt.runtime.pipelines.pie import PieSettings, run_pie
    from mvg_rt.runtime.pipelines.sessions import pie_session

    original, roi = demo_inputs(runtime.default_resolution)
    settings = PieSettings(rounds=rounds, strength=DEMO_CASE.settings["strength"])
    session = pie_session(runtime.backend, runtime.model, settings, original, roi, DEMO_CASE.prompt)
    states = run_pie(session, torch.Generator().manual_seed(0))
    return [s.cpu().numpy() for s in states], roi, DEMO_CASE.prompt


def pick_pair(states: list[np.ndarray]) -> tuple[int, list[float]]:
    """Index n of the pair (states[n], states[n+1]) whose CTR changes most; the CTR of every state."""
    ctr = [measure_ctr(state).ctr for state in states]
    steps = [abs(b - a) for a, b in zip(ctr[:-1], ctr[1:])]
    return int(np.argmax(steps)), ctr


def summarise(values: list[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "min": min(values), "max": max(values)}


def within_spread(row: dict[str, Any], reference: dict[str, Any]) -> dict[str, bool]:
    """Per primary measure: is this setting's mean no worse than the reference's worst seed?"""
    out = {}
    for name, better in PRIMARY.items():
        mean, ref = row["measures"][name]["mean"], reference["measures"][name]
        out[name] = mean <= ref["max"] if better == "lower" else mean >= ref["min"]
    return out


def inside_range(row: dict[str, Any], reference: dict[str, Any]) -> dict[str, bool]:
    """Per primary measure: does this setting's mean lie inside the reference's seed-to-seed [min, max]?"""
    return {name: reference["measures"][name]["min"] <= row["measures"][name]["mean"] <= reference["measures"][name]["max"]
            for name in PRIMARY}


def run_study(seeds: list[int], grid: tuple[tuple[str, int], ...], frames: int, rounds: int) -> dict[str, Any]:
    """Run every setting x seed (seed-major, interleaved) and summarise against the reference."""
    from mvg_rt.demo.default import demo_model_dir
    from mvg_rt.runtime.factory import RuntimeSpec, open_runtime

    model_dir, notice = demo_model_dir()
    with open_runtime(RuntimeSpec(model_dir=model_dir)) as runtime:
        return _study(runtime, notice, seeds, grid, frames, rounds)


def _study(runtime: Any, notice: str, seeds: list[int], grid: tuple[tuple[str, int], ...], frames: int,
           rounds: int) -> dict[str, Any]:
    from mvg_rt.runtime.pipelines.transition import TransitionSampler, TransitionSettings

    started = time.perf_counter()
    states, roi, prompt = demo_states(runtime, rounds)
    pie_seconds = time.perf_counter() - started
    pair, state_ctr = pick_pair(states)
    start, end = states[pair], states[pair + 1]
    weight = torch.from_numpy(roi.astype(np.float32) / 255.0)
    samplers = {setting: TransitionSampler(runtime.backend, runtime.model,
                                           TransitionSettings(frames=frames, steps=setting[1], sampler=setting[0]),
                                           prompt) for setting in grid}
    results: dict[tuple[str, int], list[dict[str, Any]]] = {setting: [] for setting in grid}
    with torch.no_grad():
        samplers[grid[-1]].clip(torch.from_numpy(start), torch.from_numpy(end), weight,
                                torch.Generator().manual_seed(10_000))  # warm-up, not recorded
        for seed in seeds:
            for setting in grid:
                wall, cpu = time.perf_counter(), time.process_time()
                clip = samplers[setting].clip(torch.from_numpy(start), torch.from_numpy(end), weight,
                                              torch.Generator().manual_seed(seed))
                wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
                quality = transition_quality(clip.numpy(), roi, start, end).to_dict()
                results[setting].append({"seed": seed, "clip_s": wall, "clip_cpu_s": cpu, **quality})
                print(f"seed {seed} {_label(*setting):>12}: {wall:6.2f} s wall {cpu:6.2f} s cpu  "
                      + "  ".join(f"{k}={quality[k]:.4g}" for k in PRIMARY if quality[k] is not None), flush=True)

    rows = []
    for (sampler, steps), per_seed in results.items():
        measures = {name: summarise([r[name] for r in per_seed if r[name] is not None]) for name in REPORTED}
        rows.append({"label": _label(sampler, steps), "sampler": sampler, "steps": steps,
                     "clip_s": summarise([r["clip_s"] for r in per_seed]),
                     "clip_cpu_s": summarise([r["clip_cpu_s"] for r in per_seed]), "measures": measures,
                     "per_seed": per_seed})
    reference = next(r for r in rows if (r["sampler"], r["steps"]) == REFERENCE)
    for row in rows:
        row["within_spread"] = within_spread(row, reference)
        row["inside_range"] = inside_range(row, reference)
        row["speedup_vs_reference"] = reference["clip_cpu_s"]["mean"] / row["clip_cpu_s"]["mean"]
    eligible = [r for r in rows if all(r["within_spread"].values())]
    fast = min(eligible, key=lambda r: r["clip_cpu_s"]["mean"])
    return {
        "study": "transition samplers vs DDPM-250 on the demo case",
        "host": {"machine": platform.machine(), "processor": platform.processor(), "torch": torch.__version__,
                 "threads": torch.get_num_threads()},
        "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                 check=False).stdout.strip() or None,
        "model": runtime.provenance, "notice": notice,
        "resolution": runtime.default_resolution, "frames": frames, "seeds": seeds,
        "pie": {"rounds": rounds, "seconds": pie_seconds, "state_ctr": state_ctr, "pair": [pair, pair + 1]},
        "criterion": "within the spread: for every primary measure, the mean over seeds is no worse than "
                     "DDPM-250's worst seed; fast preset: the fastest setting (CPU time per clip) within",
        "primary": PRIMARY, "reference": reference["label"], "fast": fast["label"], "rows": rows,
    }


def _cell(stats: dict[str, float], digits: int = 3) -> str:
    return f"{stats['mean']:.{digits}f} ± {stats['std']:.{digits}f}"


def _flags(flags: dict[str, bool]) -> str:
    return "yes" if all(flags.values()) else "no (" + ", ".join(k for k, v in flags.items() if not v) + ")"


def markdown(report: dict[str, Any]) -> str:
    pie = report["pie"]
    ctr = ", ".join(f"{c:.3f}" for c in pie["state_ctr"])
    lines = [
        "# Transition samplers vs SEINE's DDPM-250 (demo model, 2-core CPU)",
        "",
        f"Demo case, {report['resolution']} px, {report['frames']}-frame clips between PIE states "
        f"{pie['pair'][0]} and {pie['pair'][1]} (state CTRs over {pie['rounds']} rounds: {ctr}); seeds "
        f"{report['seeds']}. Mean ± seed-to-seed std; time per clip measured side by side in one run "
        "(settings interleaved per seed). Measures: `mvg_rt/eval/transition_quality.py`.",
        "",
        f"CPU s/clip is the process's CPU time with {report['host']['threads']} torch thread(s): the 2 cores are "
        "shared with other jobs, so wall time carries their load; speed-ups are CPU-time ratios.",
        "",
        f"Criterion: {report['criterion']}. **fast preset: {report['fast']}**.",
        "",
        "| setting | CPU s/clip | wall s/clip | speed-up (CPU) | CTR max dev. ↓ | CTR monotone ↑ | jerkiness ↓ "
        "| path ratio ↓ | change/step | outside PSNR min | within the spread | inside the range |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in report["rows"]:
        m = row["measures"]
        within, inside = (_flags(row[key]) for key in ("within_spread", "inside_range"))
        if row["label"] == report["reference"]:
            within = inside = "reference"
        lines.append(f"| {row['label']} | {_cell(row['clip_cpu_s'], 2)} | {_cell(row['clip_s'], 2)} "
                     f"| {row['speedup_vs_reference']:.1f}x "
                     f"| {_cell(m['ctr_max_deviation'])} | {_cell(m['ctr_monotone_fraction'], 2)} "
                     f"| {_cell(m['jerkiness'], 2)} | {_cell(m['path_ratio'], 2)} | {_cell(m['change_mean'], 2)} "
                     f"| {m['outside_psnr_min']['mean']:.1f} dB | {within} | {inside} |")
    ref = next(r for r in report["rows"] if r["label"] == report["reference"])
    lines += ["", f"{report['reference']} seed-to-seed range (the spread): " + ", ".join(
        f"{k} [{ref['measures'][k]['min']:.3f}, {ref['measures'][k]['max']:.3f}]" for k in PRIMARY) + ".", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=PIE_ROUNDS, help="PIE rounds to pick the pair from.")
    parser.add_argument("--only", nargs="*", help="Labels to run (e.g. ddpm-250 ddim-10); default: the grid.")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: CPU time is not inflated).")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/cpu-2core"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    grid = tuple(s for s in GRID if not args.only or _label(*s) in args.only)
    if REFERENCE not in grid:
        grid = (REFERENCE, *grid)
    report = run_study(list(range(args.seeds)), grid, args.frames, args.rounds)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "transition_samplers.json").write_text(json.dumps(report, indent=2))
    (args.out / "transition_samplers.md").write_text(markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
