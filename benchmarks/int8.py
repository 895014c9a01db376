"""INT8 (Q/DQ, export/int8.py) against FP32 on the ONNX Runtime CPU EP, side by side in one run.

Five parts, each written to ``<out>.json`` and ``<out>.md``:

1. ``sensitivity``: which layers stay FP32. The demo UNet (128 px, trained weights) is
   quantized with each keep set of ``export.int8.SENSITIVE`` (calibrated on the demo
   phantoms' PIE inputs) and compared with its FP32 graph on held-out inputs: the UNet
   calls of a PIE run on the demo case (a patient the calibration never saw).
2. ``demo_ctr``: the demo case's CTR trajectory (``mvg-rt simulate``'s defaults: 10 rounds,
   strength 0.3, seed 0) with the FP32 and the INT8 UNet (other networks FP32 in both).
3. ``ctr_seeds``: the same CTR comparison over 8 seeds, for FP16, the INT8 UNet and its
   weight-only variant (the INT8 graph with the activation Q/DQ pairs removed: INT8
   per-channel weights, float activations, the error floor of any INT8 scheme with these
   weights), and the readout's own resolution: how far the CTR of each FP32 state moves
   when ±1 grey level of random noise (the PNG's rounding quantum) is added to it.
4. ``seine``: whether SEINE holds up in INT8 (demo model): quantized with the UNet's keep
   sets (calibrated on clips of the demo phantoms), its error on held-out inputs, and its
   clips' frames inside the ROI against FP32's at the demo's sampler (DDIM-25) and the fast
   preset (DPM-Solver++(2M)-10), with FP16 SEINE as the yardstick.
5. ``full``: the full SD 1.4 architecture (random weights) at 256x256: the INT8 UNet
   calibrated on a few phantom PIE inputs; UNet latency FP32 vs INT8 (batch 2, the CFG
   pair; calls interleaved), error on held-out inputs, and the PSNR between one PIE round
   run with each.

Usage::

    python benchmarks/int8.py --full-engines /tmp/sd14_engines --out benchmarks/results/cpu-2core/int8

``--full-engines`` is an FP32 engines folder of the SD 1.4 architecture (PIE components;
``mvg-rt make-tiny-model`` does not make it: ``build_models("sd14")`` + ``write_model_folder``,
then ``mvg-rt export --no-seine``, once; it is copied, never changed). Leave it out to run
parts 1-4 only; ``--skip-demo`` runs part 5 only, ``--seine-only`` part 4 only (the JSON
keeps the other parts' results).
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime
import torch

from mvg_rt.artifacts.manifest import Manifest
from mvg_rt.calibration import CalibrationSettings, RecordingBackend, calibration_cases, record_unet_feeds
from mvg_rt.components import PIE_COMPONENTS, SEINE
from mvg_rt.demo.default import DEMO_CASE, DEMO_WEIGHTS
from mvg_rt.eval.ctr import noise_jitter
from mvg_rt.eval.metrics import psnr
from mvg_rt.eval.progression import evaluate_states
from mvg_rt.export.export_job import ExportRequest, add_int8, export_engines
from mvg_rt.export.int8 import DEFAULT_KEEP, SENSITIVE, quantize_int8
from mvg_rt.io.images import read_image, resize_and_crop
from mvg_rt.io.masks import choose_mask
from mvg_rt.runtime.backends.base import Backend
from mvg_rt.runtime.factory import Runtime, RuntimeSpec, open_runtime
from mvg_rt.runtime.pipelines.pie import PieSession, PieSettings, run_pie
from mvg_rt.runtime.pipelines.roi import latent_mask
from mvg_rt.runtime.pipelines.transition import run_transitions, transition_sampler
from mvg_rt.runtime.pipelines.transition import TransitionSettings

DEMO_RESOLUTION = 128
SEEDS = tuple(range(8))
JITTER_DRAWS = 16
KEEP_SETS = ((), ("time_embedding",), ("conv_in_out",), ("attention_scores",), ("up_block_convs",),
             ("time_embedding", "conv_in_out"), DEFAULT_KEEP, tuple(SENSITIVE))


def demo_case(resolution: int) -> tuple[np.ndarray, np.ndarray]:
    image = read_image(DEMO_CASE.image).pixels
    roi = choose_mask(image.shape, resolution, mask_path=str(DEMO_CASE.mask))
    return resize_and_crop(image, resolution), roi.pixels


def pie_states(runtime: Runtime, case: tuple[np.ndarray, np.ndarray], settings: PieSettings, seed: int = 0
               ) -> list[np.ndarray]:
    image, roi = case
    model = runtime.model
    mask = latent_mask(torch.from_numpy(roi), model.vae_scale_factor, model.latent_channels)
    session = PieSession(runtime.backend, model, settings, torch.from_numpy(image), mask, DEMO_CASE.prompt)
    with torch.inference_mode():
        return [s.numpy() for s in run_pie(session, torch.Generator().manual_seed(seed))]


def demo_settings(**overrides: Any) -> PieSettings:
    case = {k: v for k, v in DEMO_CASE.settings.items() if k in ("rounds", "strength")}
    return PieSettings(**(case | overrides))


def held_out_feeds(runtime: Runtime, case: tuple[np.ndarray, np.ndarray], settings: PieSettings
                   ) -> list[dict[str, np.ndarray]]:
    """The UNet inputs of a PIE run on the demo case (never part of the calibration)."""
    recorder = RecordingBackend(runtime.backend)
    pie_states(Runtime(recorder, runtime.model, runtime.provenance), case, settings)
    return recorder.recorded


def session(path: Path) -> Any:
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def graph_error(fp32: Path, int8: Path, feeds: list[dict[str, np.ndarray]]) -> dict[str, float]:
    """Worst max abs error (relative to max(1, max|FP32|)) and worst cosine over the feeds."""
    a, b = session(fp32), session(int8)
    rel, cosines = [], []
    for feed in feeds:
        ref = a.run(None, feed)[0].astype(np.float64).ravel()
        out = b.run(None, feed)[0].astype(np.float64).ravel()
        rel.append(float(np.abs(ref - out).max() / max(1.0, np.abs(ref).max())))
        cosines.append(float(ref @ out / (np.linalg.norm(ref) * np.linalg.norm(out))))
    return {"max_abs_rel": max(rel), "mean_max_abs_rel": float(np.mean(rel)), "min_cosine": min(cosines),
            "mean_cosine": float(np.mean(cosines)), "feeds": len(feeds)}


def latency(paths: dict[str, Path], feed: dict[str, np.ndarray], repeat: int) -> dict[str, dict[str, float]]:
    """Calls interleaved (a, b, a, b, ...) after one warm-up each, so load on the shared machine hits both."""
    sessions = {k: session(p) for k, p in paths.items()}
    times: dict[str, list[float]] = {k: [] for k in paths}
    for s in sessions.values():
        s.run(None, feed)
    for _ in range(repeat):
        for k, s in sessions.items():
            started = time.perf_counter()
            s.run(None, feed)
            times[k].append(time.perf_counter() - started)
    return {k: {"min_s": min(v), "median_s": float(np.median(v)), "calls": len(v)} for k, v in times.items()}


def ort_runtime(engines: Path, precision: str) -> Runtime:
    return open_runtime(RuntimeSpec(backend="ort", engines_dir=engines, precision=precision))


def part_sensitivity_and_ctr(work: Path) -> dict[str, Any]:
    torch.set_num_threads(1)
    reference = open_runtime(RuntimeSpec(model_dir=DEMO_WEIGHTS, with_seine=False))
    calibration = CalibrationSettings(count=4)
    started = time.perf_counter()
    feeds = record_unet_feeds(reference, calibration)
    record_s = time.perf_counter() - started
    case = demo_case(DEMO_RESOLUTION)
    held_out = held_out_feeds(reference, case, demo_settings(rounds=2))
    engines = work / "demo"
    export_engines(ExportRequest(model_dir=DEMO_WEIGHTS, out=engines, with_seine=False, components=PIE_COMPONENTS,
                                 fp16=True, int8=True, calibration_feeds=feeds,
                                 calibration_source=calibration.describe()))
    fp32 = engines / "unet" / "model.onnx"
    rows = []
    for keep in KEEP_SETS:
        out = work / f"unet_int8_{'_'.join(keep) or 'none'}.onnx"
        details = quantize_int8(fp32, out, feeds, keep)
        rows.append({"fp32_groups": list(keep) or ["(none)"], "fp32_nodes": len(details["fp32_nodes"]),
                     "default": keep == DEFAULT_KEEP} | graph_error(fp32, out, held_out))
        print(rows[-1], flush=True)
    sessions = {}
    ctr = {}
    for precision in ("fp32", "fp16", "int8"):
        started = time.perf_counter()
        states = pie_states(ort_runtime(engines, precision), case, demo_settings())
        sessions[precision] = round(time.perf_counter() - started, 1)
        ctr[precision] = evaluate_states(states, case[1] / 255.0)["ctr"]
    gap = float(np.abs(np.array(ctr["int8"]) - np.array(ctr["fp32"])).max())
    fp16_gap = float(np.abs(np.array(ctr["fp16"]) - np.array(ctr["fp32"])).max())
    return {"sensitivity": {"model": "demo UNet (trained, 128 px)", "calibration": calibration.describe(),
                            "calibration_feeds": len(feeds), "record_seconds": round(record_s, 1),
                            "held_out": "UNet inputs of 2 PIE rounds on the demo case", "rows": rows},
            "demo_ctr": {"settings": demo_settings().to_dict(), "seed": 0, "ctr": ctr, "max_abs_gap": gap, "fp16_max_abs_gap": fp16_gap,
                         "seconds": sessions}}


class GraphFromFile(Backend):
    """``inner`` with one component replaced by an ONNX file outside any manifest (a bench-only graph variant)."""

    def __init__(self, inner: Backend, component: str, path: Path) -> None:
        super().__init__(inner.device)
        self.inner, self.name, self.component, self.graph = inner, inner.name, component, session(path)

    @property
    def components(self) -> frozenset[str]:
        return self.inner.components

    def _infer(self, component: Any, feeds: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if component.name != self.component:
            return self.inner.infer(component, feeds)
        out = self.graph.run(None, {k: v.cpu().numpy() for k, v in feeds.items()})[0]
        return {component.output_names[0]: torch.from_numpy(out)}


def with_graph(runtime: Runtime, component: str, path: Path) -> Runtime:
    return Runtime(GraphFromFile(runtime.backend, component, path), runtime.model, runtime.provenance)


def weight_only(int8: Path, out: Path) -> Path:
    """The Q/DQ graph with every activation Q/DQ pair bypassed: INT8 weights, float activations."""
    model = onnx.load(str(int8))
    weights = {i.name for i in model.graph.initializer}
    producer = {o: n for n in model.graph.node for o in n.output}
    bypass, dropped = {}, set()
    for node in model.graph.node:
        quant = producer.get(node.input[0]) if node.op_type == "DequantizeLinear" else None
        if quant is not None and quant.op_type == "QuantizeLinear" and quant.input[0] not in weights:
            bypass[node.output[0]] = quant.input[0]
            dropped |= {id(node), id(quant)}
    kept = [n for n in model.graph.node if id(n) not in dropped]
    for node in kept:
        node.input[:] = [bypass.get(name, name) for name in node.input]
    del model.graph.node[:]
    model.graph.node.extend(kept)
    onnx.save(model, str(out))
    return out


def part_ctr_seeds(engines: Path, work: Path) -> dict[str, Any]:
    """Max CTR gap to FP32 per seed for FP16, INT8 and INT8 weight-only; the FP32 readout's jitter."""
    case = demo_case(DEMO_RESOLUTION)
    fp32 = ort_runtime(engines, "fp32")
    int8_file = engines / Manifest.read(engines).require("unet", "onnx", "int8").file
    variants = {"fp16": ort_runtime(engines, "fp16"), "int8": ort_runtime(engines, "int8"),
                "int8_weight_only": with_graph(fp32, "unet", weight_only(int8_file, work / "wo.onnx"))}
    rng = np.random.default_rng(0)
    gaps: dict[str, list[float]] = {k: [] for k in variants}
    jitter = []
    for seed in SEEDS:
        states = pie_states(fp32, case, demo_settings(), seed)
        reference = np.array(evaluate_states(states, case[1] / 255.0)["ctr"])
        jitter.append(max(noise_jitter(s, rng, JITTER_DRAWS) for s in states))
        for name, runtime in variants.items():
            ctr = evaluate_states(pie_states(runtime, case, demo_settings(), seed), case[1] / 255.0)["ctr"]
            gaps[name].append(round(float(np.abs(np.array(ctr) - reference).max()), 4))
        print(seed, {k: v[-1] for k, v in gaps.items()}, "jitter", jitter[-1], flush=True)
    return {"seeds": list(SEEDS), "max_abs_gap": gaps, "fp32_readout_jitter": [round(j, 4) for j in jitter],
            "jitter_draws": JITTER_DRAWS}


SEINE_KEEP_SETS = (DEFAULT_KEEP, tuple(SENSITIVE))
SEINE_SAMPLERS = {"ddim-25 (demo)": ("ddim", 25), "dpm++2m-10 (--transitions fast)": ("dpm++2m", 10)}


def clip_frames(runtime: Runtime, states: list[np.ndarray], roi: np.ndarray, sampler: str, steps: int
                ) -> np.ndarray:
    """The transition clips between consecutive ``states`` (8 frames each, seed 0), joined."""
    settings = TransitionSettings(frames=8, steps=steps, sampler=sampler)
    clips = transition_sampler(runtime.backend, runtime.model, settings, DEMO_CASE.prompt)
    with torch.inference_mode():
        return run_transitions(clips, [torch.from_numpy(s) for s in states], torch.from_numpy(roi / 255.0)
                               .float(), torch.Generator().manual_seed(0)).numpy()


def seine_feeds(runtime: Runtime, pairs: list[tuple[np.ndarray, np.ndarray, np.ndarray]], sampler: str, steps: int
                ) -> list[dict[str, np.ndarray]]:
    """SEINE's inputs while the clips of ``pairs`` ((start, end, roi) each) are sampled."""
    recorder = RecordingBackend(runtime.backend, SEINE)
    recording = Runtime(recorder, runtime.model, runtime.provenance)
    for start, end, roi in pairs:
        clip_frames(recording, [start, end], roi, sampler, steps)
    return recorder.recorded


def part_seine(work: Path) -> dict[str, Any]:
    """SEINE quantized like the UNet: error on held-out inputs and the clips' frames inside the ROI vs FP32."""
    torch.set_num_threads(2)
    engines = work / "demo_seine"
    export_engines(ExportRequest(model_dir=DEMO_WEIGHTS, out=engines, components=("text_encoder", "vae_encoder",
                                 "vae_decoder", "unet", "seine"), fp16=True))
    fp32 = ort_runtime(engines, "fp32")
    manifest = Manifest.read(engines)
    fp32_file, fp16_file = (engines / manifest.require("seine", "onnx", p).file for p in ("fp32", "fp16"))
    phantoms = calibration_cases(CalibrationSettings(count=4), DEMO_RESOLUTION)
    full = np.full((DEMO_RESOLUTION, DEMO_RESOLUTION, 3), 255, np.uint8)
    edited = [pie_states(fp32, (image, full), PieSettings(rounds=1, strength=0.6), seed=1)[1] for image, _ in phantoms]
    calibration = seine_feeds(fp32, [(image, e, full) for (image, _), e in zip(phantoms, edited)], "ddim", 10)
    case = demo_case(DEMO_RESOLUTION)
    states = pie_states(fp32, case, demo_settings(rounds=3))
    held_out = seine_feeds(fp32, [(a, b, case[1]) for a, b in zip(states[:-1], states[1:])], "ddim", 25)
    inside = case[1] > 127
    reference = {name: clip_frames(fp32, states, case[1], *how) for name, how in SEINE_SAMPLERS.items()}

    def row(label: str, graph: Path, fp32_nodes: int | None) -> dict[str, Any]:
        runtime = with_graph(fp32, "seine", graph)
        frames = {}
        for name, how in SEINE_SAMPLERS.items():
            db = [psnr(a[inside], b[inside]) for a, b in zip(reference[name], clip_frames(runtime, states, case[1], *how))]
            frames[name] = {"min_db": float(min(db)), "median_db": float(np.median(db))}
        result = {"seine": label, "fp32_nodes": fp32_nodes, "frames_inside_roi": frames} | graph_error(
            fp32_file, graph, held_out)
        print(result, flush=True)
        return result

    rows = [row("FP16 (all of SEINE)", fp16_file, None)]
    for keep in SEINE_KEEP_SETS:
        out = work / f"seine_int8_{len(keep)}.onnx"
        details = quantize_int8(fp32_file, out, calibration, keep)
        rows.append(row(f"INT8, FP32 kept: {', '.join(keep)}", out, len(details["fp32_nodes"])))
    rows.append(row("INT8 weights only (first INT8 row, activations float)", weight_only(
        work / f"seine_int8_{len(DEFAULT_KEEP)}.onnx", work / "seine_wo.onnx"), None))
    return {"model": "demo SEINE (trained, 128 px, 8 frames)", "calibration_feeds": len(calibration),
            "calibration": "4 demo phantoms: one PIE round each, then the DDIM-10 clip from the phantom to it",
            "held_out": f"SEINE inputs of the demo case's 3 DDIM-25 clips ({len(held_out)} calls)", "rows": rows}


def part_full(engines_src: Path, work: Path, repeat: int) -> dict[str, Any]:
    torch.set_num_threads(2)
    engines = work / "sd14"
    shutil.copytree(engines_src, engines)  # the INT8 graph is added to a copy; the source folder stays FP32
    resolution = 256
    fp32_runtime = ort_runtime(engines, "fp32")
    calibration = CalibrationSettings(count=2, steps=10, strength=0.3, resolution=resolution)
    started = time.perf_counter()
    feeds = record_unet_feeds(fp32_runtime, calibration)
    record_s = time.perf_counter() - started
    case = demo_case(resolution)
    round_settings = PieSettings(rounds=1, steps=10, strength=0.6)
    held_out = held_out_feeds(fp32_runtime, case, round_settings)
    started = time.perf_counter()
    artifact = add_int8(engines, feeds, calibration_source=calibration.describe())
    quantize_s = time.perf_counter() - started
    fp32, int8 = engines / "unet" / "model.onnx", engines / artifact.file
    error = graph_error(fp32, int8, held_out)
    timing = latency({"fp32": fp32, "int8": int8}, held_out[0], repeat)
    states = {p: pie_states(ort_runtime(engines, p), case, round_settings) for p in ("fp32", "int8")}
    round_psnr = float(psnr(states["fp32"][1], states["int8"][1]))
    return {"model": "SD 1.4 architecture, random weights (seed 0)", "resolution": resolution,
            "batch": 2, "calibration": calibration.describe(), "calibration_feeds": len(feeds),
            "record_seconds": round(record_s, 1), "quantize_seconds": round(quantize_s, 1),
            "unet_mib": {"fp32": round(_size(engines, "fp32") / 2**20), "int8": round(artifact.size / 2**20)},
            "error": error, "latency": timing,
            "speedup_median": timing["fp32"]["median_s"] / timing["int8"]["median_s"],
            "speedup_min": timing["fp32"]["min_s"] / timing["int8"]["min_s"],
            "pie_round": {"settings": round_settings.to_dict(), "psnr_db": round_psnr}}


def _size(engines: Path, precision: str) -> int:
    return Manifest.read(engines).require("unet", "onnx", precision).size


def markdown(report: dict[str, Any]) -> str:
    lines = [f"# INT8 (Q/DQ) vs FP32, ONNX Runtime {report['onnxruntime']} CPU EP ({report['machine']})", ""]
    if "sensitivity" in report:
        s = report["sensitivity"]
        lines += [f"## Which layers stay FP32 ({s['model']})", "",
                  (f"Calibrated on {s['calibration_feeds']} UNet inputs (4 demo phantoms, one PIE round each); errors "
                  f"on {s['held_out']} ({s['rows'][0]['feeds']} calls), relative to max(1, max|FP32|)."), "",
                  "| kept FP32 | FP32 nodes | max abs (worst) | max abs (mean) | cosine (worst) | default |",
                  "|---|---:|---:|---:|---:|:---:|"]
        for r in s["rows"]:
            lines.append(f"| {', '.join(r['fp32_groups'])} | {r['fp32_nodes']} | {r['max_abs_rel']:.4f} | "
                         f"{r['mean_max_abs_rel']:.4f} | {r['min_cosine']:.5f} | {'yes' if r['default'] else ''} |")
        c = report["demo_ctr"]
        lines += ["", "## Demo CTR trajectory (10 rounds, strength 0.3, seed 0)", "",
                  "| round | " + " | ".join(str(i) for i in range(len(c["ctr"]["fp32"]))) + " |",
                  "|---|" + "---:|" * len(c["ctr"]["fp32"])]
        for p in ("fp32", "fp16", "int8"):
            lines.append(f"| {p} | " + " | ".join(f"{v:.3f}" for v in c["ctr"][p]) + " |")
        lines += ["", (f"Largest gap to FP32: INT8 **{c['max_abs_gap']:.4f}** (target <= 0.02), FP16 "
                       f"{c['fp16_max_abs_gap']:.4f}. Run time (ORT CPU, whole PIE run): FP32 {c['seconds']['fp32']} "
                       f"s, FP16 {c['seconds']['fp16']} s, INT8 {c['seconds']['int8']} s."), ""]
    if "ctr_seeds" in report:
        c = report["ctr_seeds"]
        lines += ["## Demo CTR gap to FP32 over seeds (largest gap of the 11 states, per seed)", "",
                  "| UNet | " + " | ".join(f"seed {s}" for s in c["seeds"]) + " | seeds within 0.02 | median |",
                  "|---|" + "---:|" * (len(c["seeds"]) + 2)]
        rows = c["max_abs_gap"] | {"FP32 readout, ±1 grey noise": c["fp32_readout_jitter"]}
        for name, gaps in rows.items():
            lines.append(f"| {name} | " + " | ".join(f"{g:.3f}" for g in gaps) +
                         f" | {sum(g <= 0.02 for g in gaps)}/{len(gaps)} | {float(np.median(gaps)):.3f} |")
        lines += ["", ("The last row is no model: the largest CTR change of an FP32 state when uniform noise of ±1 "
                       f"grey level is added to it ({c['jitter_draws']} draws per state), i.e. the readout's own "
                       "resolution at that seed."), ""]
    if "seine" in report:
        s = report["seine"]
        names = list(SEINE_SAMPLERS)
        lines += [f"## SEINE in INT8? ({s['model']})", "",
                  (f"Calibrated on {s['calibration_feeds']} SEINE inputs ({s['calibration']}); error on {s['held_out']}, "
                   "relative to max(1, max|FP32|). Frames: PSNR inside the ROI of every frame of the demo case's 3 "
                   "clips against FP32's (seed 0; outside the ROI the frames are the endpoints')."), "",
                  "| SEINE | FP32 nodes | max abs (worst) | cosine (worst) | " +
                  " | ".join(f"{n}: min / median dB" for n in names) + " |", "|---|---:|---:|---:|" + "---:|" * len(names)]
        for r in s["rows"]:
            lines.append(f"| {r['seine']} | {r['fp32_nodes'] if r['fp32_nodes'] is not None else '-'} | "
                         f"{r['max_abs_rel']:.4f} | {r['min_cosine']:.5f} | " + " | ".join(
                             f"{r['frames_inside_roi'][n]['min_db']:.1f} / {r['frames_inside_roi'][n]['median_db']:.1f}"
                             for n in names) + " |")
        lines.append("")
    if "full" in report:
        f = report["full"]
        t = f["latency"]
        lines += [f"## Full SD 1.4 UNet at {f['resolution']}x{f['resolution']} ({f['model']})", "",
                  (f"Calibrated on {f['calibration_feeds']} UNet inputs (2 phantoms, one PIE round of 10 steps at "
                  f"strength 0.3 each) in {f['record_seconds']} s; quantized in {f['quantize_seconds']} s. "
                  f"UNet file: FP32 {f['unet_mib']['fp32']} MiB, INT8 {f['unet_mib']['int8']} MiB."), "",
                  "| UNet call (batch 2) | min s | median s |", "|---|---:|---:|",
                  f"| FP32 | {t['fp32']['min_s']:.2f} | {t['fp32']['median_s']:.2f} |",
                  f"| INT8 | {t['int8']['min_s']:.2f} | {t['int8']['median_s']:.2f} |", "",
                  (f"Speed-up (median): **{f['speedup_median']:.2f}x** (min: {f['speedup_min']:.2f}x), "
                  f"{t['fp32']['calls']} interleaved calls each."), "",
                  (f"Error on {f['error']['feeds']} held-out UNet inputs (one PIE round on the demo case): max abs "
                  f"{f['error']['max_abs_rel']:.4f} of max(1, max|FP32|) (mean {f['error']['mean_max_abs_rel']:.4f}), "
                  f"cosine >= {f['error']['min_cosine']:.5f}."), "",
                  (f"One PIE round (10 steps, strength 0.6, same seed), INT8 vs FP32 UNet: "
                  f"**{f['pie_round']['psnr_db']:.2f} dB** PSNR. Random weights: the images are not meaningful, the "
                  "agreement is."), ""]
    lines += [f"Note: {n}\n" for n in report.get("notes", [])]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--full-engines", type=Path)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--skip-demo", action="store_true")
    parser.add_argument("--seine-only", action="store_true", help="run part 4 (SEINE) only")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/cpu-2core/int8"))
    args = parser.parse_args(argv)
    report: dict[str, Any] = {"onnxruntime": onnxruntime.__version__, "torch": torch.__version__,
                              "machine": f"{platform.machine()}, 2 shared cores"}
    previous = args.out.with_suffix(".json")
    if previous.is_file():  # parts not rerun keep their last results
        report = json.loads(previous.read_text()) | report
    with tempfile.TemporaryDirectory(prefix="mvg-int8-") as scratch:
        work = Path(scratch)
        if not (args.skip_demo or args.seine_only):
            report |= part_sensitivity_and_ctr(work)
            report["ctr_seeds"] = part_ctr_seeds(work / "demo", work)
        if not args.skip_demo or args.seine_only:
            report["seine"] = part_seine(work)
        if args.full_engines and not args.seine_only:
            report["full"] = part_full(args.full_engines, work, args.repeat)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
