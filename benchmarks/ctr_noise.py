"""How far the classical CTR readout (``mvg_rt/eval/ctr.py``) moves under ±1 grey level of noise, and how
accurate it is on phantoms: the yardstick's own resolution, the floor under any CTR difference it judges.

Three parts, written to ``<out>/ctr_noise.json`` and ``<out>/ctr_noise.md``:

1. ``demo``: the demo case's PIE states (the shipped demo model, ``mvg-rt simulate``'s demo settings: 128 px,
   strength 0.3, 10 rounds) for seeds 0..7; per seed the largest CTR change over its 11 states when uniform
   integer noise in {-1, 0, 1} (a PNG's rounding quantum) is added, ``--draws`` times per state (the
   measurement of ``benchmarks/int8.py``'s "FP32 readout, ±1 grey noise" row); and each seed's CTR trajectory,
   with whether ``mvg-rt eval`` reads it as the expected rise then plateau.
2. ``phantom_noise``: the same jitter on ``--noise-phantoms`` phantoms of ``sample_dataset``.
3. ``phantom_accuracy``: |measured - true CTR| on ``--phantoms`` phantoms of ``sample_dataset`` (the true CTR
   counts whole columns of the phantom's masks), over all of them and over those without effusion.

``--baseline REV`` measures the readout as it was at git revision REV too, with the same states and the same
noise draws, side by side.

Usage::

    python benchmarks/ctr_noise.py --baseline 69cae00 --out benchmarks/results/cpu-2core
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch

import mvg_rt.eval.ctr as current
from mvg_rt.demo.default import DEMO_CASE, demo_model_dir
from mvg_rt.demo.phantom import render_phantom, sample_dataset
from mvg_rt.eval.progression import ctr_course
from mvg_rt.io.images import read_image, resize_and_crop
from mvg_rt.io.masks import choose_mask
from mvg_rt.runtime.factory import RuntimeSpec, open_runtime
from mvg_rt.runtime.pipelines.pie import PieSettings, run_pie
from mvg_rt.runtime.pipelines.pie import pie_session

CTR_MODULE = "mvg_rt/eval/ctr.py"
PHANTOM_SEED = 5
TARGET = 0.01


def git(*args: str) -> str:
    return subprocess.run(["git", *args], capture_output=True, text=True, check=True).stdout.strip()


def cpu_model() -> str | None:
    """``lscpu``'s model name."""
    lines = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout.splitlines()
    return next((line.split(":", 1)[1].strip() for line in lines if line.startswith("Model name")), None)


def readout_at(revision: str, folder: Path) -> ModuleType:
    """``mvg_rt/eval/ctr.py`` as it was at ``revision``, imported as a module of its own."""
    path = folder / f"ctr_{revision}.py"
    path.write_text(git("show", f"{revision}:{CTR_MODULE}") + "\n")
    spec = importlib.util.spec_from_file_location(f"ctr_{revision}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def demo_states(seeds: list[int]) -> dict[int, list[np.ndarray]]:
    """Each seed's PIE states (input first) on the demo case, as ``mvg-rt simulate`` runs it with no arguments."""
    folder, _ = demo_model_dir()
    runtime = open_runtime(RuntimeSpec(model_dir=folder))
    resolution = runtime.default_resolution
    image = read_image(DEMO_CASE.image).pixels
    roi = choose_mask(image.shape, resolution, mask_path=str(DEMO_CASE.mask))
    original = resize_and_crop(image, resolution)
    settings = PieSettings(**{k: v for k, v in DEMO_CASE.settings.items() if k in ("rounds", "strength")})
    states = {}
    for seed in seeds:
        session = pie_session(runtime.backend, runtime.model, settings, original, roi.pixels, DEMO_CASE.prompt)
        with torch.inference_mode():
            states[seed] = [s.cpu().numpy() for s in run_pie(session, torch.Generator().manual_seed(seed))]
    return states


def jitter_of(measure: Callable[[np.ndarray], Any], image: np.ndarray, rng: np.random.Generator, draws: int
              ) -> float:
    """``noise_jitter`` for any readout's ``measure_ctr`` (a baseline revision may not have the helper)."""
    ctr = measure(image).ctr
    noisy = (np.clip(image.astype(np.int16) + rng.integers(-1, 2, image.shape), 0, 255).astype(np.uint8)
             for _ in range(draws))
    return max(abs(measure(copy).ctr - ctr) for copy in noisy)


def part_demo(readout: ModuleType, states: dict[int, list[np.ndarray]], draws: int) -> dict[str, Any]:
    """Jitter per seed and state; each seed's CTR trajectory and whether ``mvg-rt eval`` reads it as the
    expected rise then plateau (``ctr_course``)."""
    rng = np.random.default_rng(0)  # one stream over seeds and states in order, as benchmarks/int8.py draws it
    per_state = {seed: [round(jitter_of(readout.measure_ctr, s, rng, draws), 4) for s in seq]
                 for seed, seq in states.items()}
    trajectories = {seed: [round(readout.measure_ctr(s).ctr, 4) for s in seq] for seed, seq in states.items()}
    return {"jitter": {str(seed): max(values) for seed, values in per_state.items()},
            "jitter_per_state": {str(seed): values for seed, values in per_state.items()},
            "trajectory": {str(seed): ctr for seed, ctr in trajectories.items()},
            "rise_then_plateau": {str(seed): ctr_course(ctr)["rise_then_plateau"]
                                  for seed, ctr in trajectories.items()}}


def columns_spanned(mask: np.ndarray) -> int:
    columns = np.flatnonzero(mask.any(axis=0))
    return int(columns[-1] - columns[0] + 1)


def phantoms(n: int) -> list[dict[str, Any]]:
    """The first ``n`` samples of ``sample_dataset``: image, true CTR and widths (mask columns), effusions."""
    cases = []
    for image, _, disease, anatomy in sample_dataset(n, seed=PHANTOM_SEED):
        phantom = render_phantom(anatomy, disease)
        cases.append({"image": image, "ctr": phantom.ctr, "heart_width": columns_spanned(phantom.masks["heart"]),
                      "thorax_width": columns_spanned(phantom.masks["thorax"]),
                      "effusion": {"right": disease.effusion_right, "left": disease.effusion_left}})
    return cases


def part_phantom_noise(readout: ModuleType, cases: list[dict[str, Any]], draws: int) -> dict[str, Any]:
    rng = np.random.default_rng(1)
    jitter = [round(jitter_of(readout.measure_ctr, case["image"], rng, draws), 4) for case in cases]
    return {"max": max(jitter), "mean": round(float(np.mean(jitter)), 4), "per_phantom": jitter}


def summary(errors: np.ndarray) -> dict[str, float]:
    return {"n": len(errors), "mean": round(float(errors.mean()), 4), "p90": round(float(np.quantile(errors, 0.9)), 4),
            "max": round(float(errors.max()), 4)}


def part_phantom_accuracy(readout: ModuleType, cases: list[dict[str, Any]], worst: int = 5) -> dict[str, Any]:
    measured = [readout.measure_ctr(case["image"]) for case in cases]
    signed = np.array([m.ctr - case["ctr"] for m, case in zip(measured, cases)])
    clear = np.array([not any(case["effusion"].values()) for case in cases])
    width_error = {name: round(float(np.mean([getattr(m, name) - case[name]
                                              for m, case, c in zip(measured, cases, clear) if c])), 3)
                   for name in ("heart_width", "thorax_width")}
    largest = [{"phantom": int(i), "true_ctr": round(cases[i]["ctr"], 4), "error": round(float(signed[i]), 4),
                "effusion": cases[i]["effusion"]} for i in np.argsort(-np.abs(signed))[:worst]]
    return {"all": summary(np.abs(signed)), "no_effusion": summary(np.abs(signed[clear])),
            "signed_mean": round(float(signed.mean()), 4),
            "signed_mean_no_effusion": round(float(signed[clear].mean()), 4),
            "mean_width_error_px_no_effusion": width_error, "largest_errors": largest}


def measure(readout: ModuleType, states: dict[int, list[np.ndarray]], noisy: list[dict[str, Any]],
            accuracy: list[dict[str, Any]], draws: int) -> dict[str, Any]:
    started = time.perf_counter()
    result = {"demo": part_demo(readout, states, draws), "phantom_noise": part_phantom_noise(readout, noisy, draws),
              "phantom_accuracy": part_phantom_accuracy(readout, accuracy)}
    print(f"{readout.__name__}: demo jitter {result['demo']['jitter']}, {time.perf_counter() - started:.1f} s",
          flush=True)
    return result


def demo_section(report: dict[str, Any]) -> list[str]:
    readouts, seeds, settings = report["readouts"], report["settings"]["seeds"], report["settings"]
    lines = ["## Demo PIE states", "",
             (f"Demo model, demo case, {settings['resolution']} px, strength 0.3, 10 rounds. Jitter: the largest "
              f"|CTR change| over the seed's 11 states when uniform integer noise in {{-1, 0, 1}} is added "
              f"({settings['draws']} draws per state; the same draws for every readout). Target <= {TARGET}."), "",
             "| readout | " + " | ".join(f"seed {s}" for s in seeds) + f" | seeds <= {TARGET} | max |",
             "|---|" + "---:|" * (len(seeds) + 2)]
    for name, result in readouts.items():
        jitter = [result["demo"]["jitter"][str(s)] for s in seeds]
        lines.append(f"| {name} | " + " | ".join(f"{j:.4f}" for j in jitter)
                     + f" | {sum(j <= TARGET for j in jitter)}/{len(jitter)} | {max(jitter):.4f} |")
    rounds = len(next(iter(readouts.values()))["demo"]["trajectory"][str(seeds[0])])
    lines += ["", ("CTR trajectories (round 0 = the input); last column: whether `mvg-rt eval` reads the trajectory as "
                   "the expected rise then plateau (`mvg_rt.eval.progression.ctr_course`):"), "",
              "| seed | readout | " + " | ".join(str(r) for r in range(rounds)) + " | rise then plateau |",
              "|---|---|" + "---:|" * rounds + ":---:|"]
    for seed in seeds:
        for name, result in readouts.items():
            ctr = result["demo"]["trajectory"][str(seed)]
            reads = "yes" if result["demo"]["rise_then_plateau"][str(seed)] else "no"
            lines.append(f"| {seed} | {name} | " + " | ".join(f"{c:.3f}" for c in ctr) + f" | {reads} |")
    for name, result in readouts.items():
        reads = sum(result["demo"]["rise_then_plateau"].values())
        lines += ["", f"{name}: rise then plateau on {reads}/{len(seeds)} seeds."]
    return lines


def phantom_section(report: dict[str, Any]) -> list[str]:
    settings = report["settings"]
    lines = ["## Phantoms", "",
             (f"`sample_dataset(seed={PHANTOM_SEED})` at 128 px (30% have an effusion, which can hide a heart "
              f"border). Jitter as above on the first {settings['noise_phantoms']}; accuracy |measured - true CTR| "
              f"on the first {settings['phantoms']} (the true CTR counts whole mask columns, so it is itself "
              "rounded by up to half a pixel per border, ~0.005 CTR)."), "",
             (f"| readout | jitter max ({settings['noise_phantoms']}) | jitter mean | error mean | error p90 "
              "| error max | no effusion: mean | no effusion: max | signed mean (no effusion) |"),
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, result in report["readouts"].items():
        noise, accuracy = result["phantom_noise"], result["phantom_accuracy"]
        every, clear = accuracy["all"], accuracy["no_effusion"]
        lines.append(f"| {name} | {noise['max']:.4f} | {noise['mean']:.4f} | {every['mean']:.4f} | {every['p90']:.4f}"
                     f" | {every['max']:.4f} | {clear['mean']:.4f} | {clear['max']:.4f}"
                     f" | {accuracy['signed_mean_no_effusion']:+.4f} |")
    for name, result in report["readouts"].items():
        accuracy = result["phantom_accuracy"]
        worst = ", ".join(f"{w['error']:+.3f} (effusion R {w['effusion']['right']:.2f} L {w['effusion']['left']:.2f})"
                          for w in accuracy["largest_errors"])
        width = accuracy["mean_width_error_px_no_effusion"]
        lines += ["", (f"{name}: {accuracy['no_effusion']['n']} phantoms without effusion, mean width error (px) "
                       f"heart {width['heart_width']:+.2f}, thorax {width['thorax_width']:+.2f}; largest errors: "
                       f"{worst}.")]
    lines += ["", ("The width errors are the signed bias: a border is put at the intensity rise, which on these "
                   "phantoms lies a fraction of a pixel on the lung side of the masks' edge (a wider heart, a narrower "
                   "thorax); a sub-pixel centre of the rise lies further to that side than a whole pixel next to it.")]
    return lines


def markdown(report: dict[str, Any]) -> str:
    baseline = f"; baseline: the same file at {report['baseline']}" if report["baseline"] else ""
    header = [f"# CTR readout under ±1 grey level of noise ({report['cpu']})", "",
              f"Commit {report['commit']}; `{report['command']}`. Readout: `{CTR_MODULE}`{baseline}.", ""]
    return "\n".join([*header, *demo_section(report), "", *phantom_section(report), ""])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/cpu-2core"))
    parser.add_argument("--seeds", type=int, default=8, help="demo seeds 0..N-1")
    parser.add_argument("--draws", type=int, default=16, help="noise draws per image")
    parser.add_argument("--phantoms", type=int, default=100, help="phantoms for the accuracy")
    parser.add_argument("--noise-phantoms", type=int, default=20, help="phantoms for the jitter")
    parser.add_argument("--baseline", help="also measure mvg_rt/eval/ctr.py as it was at this git revision")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    seeds = list(range(args.seeds))
    started = time.perf_counter()
    states = demo_states(seeds)
    print(f"PIE states for seeds {seeds}: {time.perf_counter() - started:.1f} s", flush=True)
    cases = phantoms(max(args.phantoms, args.noise_phantoms))
    noisy, accuracy = cases[:args.noise_phantoms], cases[:args.phantoms]
    readouts = {}
    with tempfile.TemporaryDirectory() as folder:
        if args.baseline:
            baseline = readout_at(args.baseline, Path(folder))
            readouts[f"before ({args.baseline})"] = measure(baseline, states, noisy, accuracy, args.draws)
        readouts["this commit"] = measure(current, states, noisy, accuracy, args.draws)
    report = {"study": "CTR readout jitter under ±1 grey level of noise, and its accuracy on phantoms",
              "cpu": cpu_model(), "commit": git("rev-parse", "--short", "HEAD"), "baseline": args.baseline,
              "command": "python benchmarks/ctr_noise.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              "settings": {"seeds": seeds, "draws": args.draws, "phantoms": args.phantoms,
                           "noise_phantoms": args.noise_phantoms, "resolution": int(states[seeds[0]][0].shape[0]),
                           "phantom_seed": PHANTOM_SEED, "noise": "uniform integer in {-1, 0, 1}, clipped to uint8",
                           "target": TARGET},
              "readouts": readouts, "seconds": round(time.perf_counter() - started, 1)}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "ctr_noise.json").write_text(json.dumps(report, indent=1) + "\n")
    (args.out / "ctr_noise.md").write_text(markdown(report))
    print(f"wrote {args.out / 'ctr_noise.json'} and {args.out / 'ctr_noise.md'}")


if __name__ == "__main__":
    main()
