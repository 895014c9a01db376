"""``mvg-rt bench``: every measurement of one run, in order, into one report dict.

Order: machine info and matmul peak; models (+ ONNX export into the cache when an
engines backend is asked); FLOPs per component; per-component timings (each
variant x component in a fresh process unless ``in_process``); end to end per
variant (fresh process each); peers (diffusers img2img eager, Optimum ORT); per-step
overhead on the tiny model (target 3); targets; profiles of missed targets; the
machine's load average again. Nothing here asserts a timing.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mvg_rt.bench import compare
from mvg_rt.bench.e2e import LOOPS, E2ESettings
from mvg_rt.bench.variants import Variant, variants_for
from mvg_rt.components import COMPONENTS, PIE_COMPONENTS
from mvg_rt.errors import MvgError

Progress = Callable[[str], None]

TARGET_PEAK_FRACTION = 0.75
TARGET_ROUND_SPEEDUP = 1.15
TARGET_ROUND_PSNR = 40.0
TARGET_OVERHEAD_RATIO = 2.0


@dataclass
class BenchConfig:
    backends: tuple[str, ...] = ("torch", "ort")
    device: str = "cpu"
    cuda_graphs: bool = False
    resolution: int = 256
    frames: int = 16
    components: tuple[str, ...] = ("text_encoder", "vae_encoder", "vae_decoder", "unet", "seine")
    e2e: bool = False
    peers: bool = False
    repeat: int = 5
    warmup: int = 1
    row_budget_s: float | None = 60.0  # stop timing a row after >= 2 calls once its calls took this long
    model_dir: Path | None = None
    size: str = "sd14"
    seed: int = 0
    engines: Path | None = None
    cache: Path | None = None
    out: Path = Path("runs/bench")
    in_process: bool | None = None  # None: fresh processes unless --size tiny
    loops: tuple[str, ...] = ("eager", "lean")
    e2e_settings: E2ESettings = field(default_factory=E2ESettings)
    transitions: bool = True
    overhead_repeat: int = 5
    optimum: bool = True
    optimum_python: str | None = None
    profile_misses: bool = True

    def __post_init__(self) -> None:
        unknown = [c for c in self.components if c not in COMPONENTS]
        if unknown:
            raise MvgError(f"unknown --components {', '.join(unknown)}: choose from {', '.join(COMPONENTS)}")
        bad = [loop for loop in self.loops if loop not in LOOPS]
        if bad:
            raise MvgError(f"unknown --loops {', '.join(bad)}: choose from {', '.join(LOOPS)}")
        if self.resolution % 64:
            raise MvgError(f"--resolution must be a multiple of 64 (the UNet downsamples latents 3 times), "
                           f"got {self.resolution}")
        if self.repeat < 1 or self.warmup < 0:
            raise MvgError("--repeat must be >= 1 and --warmup >= 0")
        if self.frames < 3:
            raise MvgError(f"--frames must be at least 3, got {self.frames}")

    @property
    def isolate(self) -> bool:
        return not self.in_process if self.in_process is not None else self.size != "tiny" or bool(self.model_dir)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["e2e_settings"] = self.e2e_settings.to_dict()
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in data.items()} | {"isolate": self.isolate}


class Bench:
    def __init__(self, config: BenchConfig, progress: Progress = lambda _: None) -> None:
        from mvg_rt.bench.models import default_cache_dir

        self.config, self.progress = config, progress
        self.cache = Path(config.cache) if config.cache else default_cache_dir()
        self.workdir = Path(config.out) / "work"
        self.report: dict[str, Any] = {"mvg_rt_bench": 1, "notes": [], "errors": []}
        self.started = time.perf_counter()

    # ------------------------------------------------------------------ helpers

    def say(self, text: str) -> None:
        self.progress(f"[{time.perf_counter() - self.started:7.1f} s] {text}")

    def job(self, job: dict[str, Any]) -> dict[str, Any]:
        from mvg_rt.bench.worker import run_here, run_isolated

        job = job | {"threads": torch.get_num_threads(), "source": self.source.describe() | {"size": self.source.size},
                     "engines": str(self.engines) if self.engines else None, "workdir": str(self.workdir)}
        result = run_isolated(job, self.workdir) if self.config.isolate else run_here(job)
        if "error" in result:
            self.report["errors"].append({"job": {k: v for k, v in job.items() if k not in ("source",)},
                                          "error": result["error"]})
            self.say(f"  failed: {result['error'][:300]}")
        return result

    # ------------------------------------------------------------------ stages

    def run(self) -> dict[str, Any]:
        from mvg_rt.bench.machine import load_average, machine_info, matmul_peak

        c = self.config
        self.variants = variants_for(c.backends, c.device, c.cuda_graphs)
        self.report["machine"] = machine_info()
        self.say(f"load average {self.report['machine']['load_average_at_start']}; measuring the matmul peak")
        peaks = {"fp32": matmul_peak(c.device, torch.float32)}
        if c.device.startswith("cuda"):
            peaks["fp16"] = matmul_peak(c.device, torch.float16, size=8192)
        self.report["peak"] = peaks
        self.say(f"matmul peak {peaks['fp32']['flops_per_second'] / 1e9:.1f} GFLOP/s fp32 "
                 f"({peaks['fp32']['size']}^2, {peaks['fp32']['threads']} threads)")
        self.report["settings"] = c.to_dict()
        self.prepare_models()
        if c.components:
            self.components()
        if c.e2e:
            self.end_to_end()
        if c.peers:
            self.peers()
            self.overhead()
        self.targets()
        self.report["machine"]["load_average_at_end"] = load_average()
        self.report["wall_seconds"] = time.perf_counter() - self.started
        self.report["created"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        return self.report

    def prepare_models(self) -> None:
        from mvg_rt.bench.models import check_engines, engines_for, model_source
        from mvg_rt.bench.variants import ensure_trt_engines

        c = self.config
        needed = set(c.components)
        if c.e2e or c.peers:
            needed |= set(PIE_COMPONENTS)
        if c.e2e and c.transitions:
            needed.add("seine")
        self.needed = tuple(sorted(needed))
        self.source = model_source(c.model_dir, c.size, c.seed, self.cache, "seine" in needed, self.say)
        self.report["models"] = self.source.describe()
        self.engines = None
        engine_variants = [v for v in self.variants if v.backend in ("ort", "trt")]
        if engine_variants:
            precision = "fp16" if c.device.startswith("cuda") else "fp32"
            fp32_needed = any(v.precision == "fp32" for v in engine_variants)
            if c.engines:
                self.engines = check_engines(Path(c.engines), self.needed, "fp32" if fp32_needed else precision)
            else:
                started = time.perf_counter()
                self.engines = engines_for(self.source, self.needed, self.cache, fp16=precision == "fp16",
                                           progress=self.say)
                self.report["export_seconds_if_exported"] = time.perf_counter() - started
            for v in engine_variants:
                if v.backend == "trt":
                    ensure_trt_engines(self.engines, v.precision, c.resolution, c.frames, self.needed, self.say)
        self.report["engines"] = str(self.engines) if self.engines else None

    def components(self) -> None:
        from mvg_rt.bench.components import component_inputs
        from mvg_rt.bench.flops import component_flops
        from mvg_rt.bench.models import text_hidden_size, vocab_size

        c = self.config
        rows = []
        for component in c.components:
            feeds = component_inputs(component, c.resolution, c.frames, text_hidden_size(self.source),
                                     vocab_size(self.source))
            flops = component_flops(self.source, component, list(feeds.values()))
            self.say(f"{component}: {flops['flops'] / 1e9:.1f} GFLOP per call")
            reference = None
            for variant in self.variants:
                self.say(f"{component} on {variant.label}: {c.warmup} warm-up + {c.repeat} timed calls")
                row = self.job({"kind": "component", "variant": variant.to_dict(), "component": component,
                                "resolution": c.resolution, "frames": c.frames, "repeat": c.repeat,
                                "warmup": c.warmup, "budget_s": c.row_budget_s})
                if "error" in row:
                    rows.append({"component": component, "variant": variant.to_dict(), "error": row["error"]})
                    continue
                peak = self.report["peak"].get(variant.precision, self.report["peak"]["fp32"])["flops_per_second"]
                row["flops"] = flops["flops"]
                row["flops_top_ops"] = dict(list(flops["by_op"].items())[:4])
                row["achieved_flops_per_second"] = flops["flops"] / row["median_s"]
                row["fraction_of_peak"] = row["achieved_flops_per_second"] / peak
                output = np.load(row["output"])
                if variant.is_reference:
                    reference = row
                    row["diff_vs_reference"] = {"max_abs": 0.0, "max_abs_scaled": 0.0, "cosine": 1.0}
                elif reference is not None:
                    row["diff_vs_reference"] = compare.tensor_difference(output, np.load(reference["output"]))
                row["speedup_vs_torch"] = compare.ratio(reference["median_s"] if reference else None, row["median_s"])
                self.say(f"  median {row['median_s']:.3f} s, {row['achieved_flops_per_second'] / 1e9:.1f} GFLOP/s "
                         f"({100 * row['fraction_of_peak']:.0f}% of peak)")
                rows.append(row)
        self.report["components"] = rows

    def end_to_end(self) -> None:
        c = self.config
        s = c.e2e_settings
        results = []
        for variant in self.variants:
            simulate_loop = "eager" if variant.is_reference else "lean"
            self.say(f"end to end on {variant.label}: PIE round ({', '.join(c.loops)} loop), "
                     f"{s.rounds}-round simulation ({simulate_loop} loop)")
            result = self.job({"kind": "e2e", "variant": variant.to_dict(), "settings": asdict(s),
                               "loops": list(c.loops), "simulate_loop": simulate_loop,
                               "transitions": c.transitions})
            result.setdefault("variant", variant.to_dict())
            results.append(result)
        self.report["e2e_raw"] = results
        reference = next((r for r in results if Variant.from_dict(r["variant"]).is_reference and "error" not in r),
                         None)
        ref_round = reference["rounds"].get("eager") if reference else None
        ref_round_image = np.load(reference["outputs"]["pie_round/eager"]) if ref_round else None
        rounds, sims = [], []
        for result in results:
            variant = Variant.from_dict(result["variant"])
            if "error" in result:
                rounds.append({"label": variant.label, "variant": variant.to_dict(), "error": result["error"]})
                continue
            for loop, row in result["rounds"].items():
                image = np.load(result["outputs"][f"pie_round/{loop}"])
                rounds.append({"label": f"mvg-rt {variant.label} ({loop} loop)", "variant": variant.to_dict(),
                               "loop": loop, **row, "per_step_s": row["median_s"] / max(row["steps"], 1),
                               "speedup_vs_torch": compare.ratio(ref_round["median_s"] if ref_round else None,
                                                                 row["median_s"]),
                               "diff_vs_reference": compare.image_difference(image, ref_round_image)
                               if ref_round_image is not None else None,
                               "output": result["outputs"][f"pie_round/{loop}"]})
            if "simulation" in result:
                sim = result["simulation"]
                loop = sim["loop"]
                row = {"label": f"mvg-rt {variant.label} ({loop} loop)", "variant": variant.to_dict(), **sim,
                       "outputs": {k: v for k, v in result["outputs"].items() if not k.startswith("pie_round")}}
                rows_ref = reference.get("simulation") if reference else None
                if rows_ref is not None:
                    row["speedup_vs_torch"] = compare.ratio(rows_ref["simulation_s"], sim["simulation_s"])
                    ref_loop = rows_ref["loop"]
                    diffs = {}
                    for name in ("final_state", "first_clip"):
                        mine, theirs = result["outputs"].get(f"{name}/{loop}"), reference["outputs"].get(
                            f"{name}/{ref_loop}")
                        if mine and theirs:
                            diffs[name] = compare.image_difference(np.load(mine), np.load(theirs))
                    row["diff_vs_reference"] = diffs
                sims.append(row)
        self.report["pie_round"] = rounds
        self.report["simulation"] = sims

    def peers(self) -> None:
        from mvg_rt.bench.peers import optimum_python, run_optimum

        c = self.config
        s = c.e2e_settings
        peers = []
        for precision in (("fp32",) if not c.device.startswith("cuda") else ("fp32", "fp16")):
            self.say(f"peer: diffusers StableDiffusionImg2ImgPipeline, PyTorch eager {precision}")
            row = self.job({"kind": "diffusers", "settings": asdict(s), "device": c.device, "precision": precision})
            row.setdefault("peer", "diffusers")
            row.setdefault("label", f"diffusers img2img (PyTorch eager {precision})")
            peers.append(row)
        if c.optimum and not c.device.startswith("cuda"):
            python, how = optimum_python(c.optimum_python)
            self.say(f"peer: Optimum ORTStableDiffusionImg2ImgPipeline ({how})")
            peers.append(run_optimum(self.source, s, self.cache, self.workdir, python, how))
        elif c.optimum:
            self.report["notes"].append("Optimum peer: run on CPU only (its CUDA EP pipeline is not wired here)")
        rounds = self.report.get("pie_round", [])
        reference = next((r for r in rounds if r.get("loop") == "eager" and Variant.from_dict(r["variant"]).is_reference
                          and "error" not in r), None)
        diffusers_row = next((p for p in peers if p.get("peer") == "diffusers" and "error" not in p), None)
        for peer in peers:
            if "error" in peer:
                self.say(f"  {peer['label']}: not run: {peer['error'][:300]}")
                continue
            image = np.load(peer["outputs"]["pie_round"])
            peer["per_step_s"] = peer["round"]["median_s"] / max(peer["round"]["steps"], 1)
            if reference:
                peer["diff_vs_reference"] = compare.image_difference(image, np.load(reference["output"]))
                peer["speedup_vs_torch"] = compare.ratio(reference["median_s"], peer["round"]["median_s"])
            if diffusers_row:
                peer["speedup_vs_diffusers"] = compare.ratio(diffusers_row["round"]["median_s"],
                                                             peer["round"]["median_s"])
            self.say(f"  {peer['label']}: {peer['round']['median_s']:.2f} s a round")
        if diffusers_row:
            d_image = np.load(diffusers_row["outputs"]["pie_round"])
            for row in rounds:
                if "error" in row:
                    continue
                row["speedup_vs_diffusers"] = compare.ratio(diffusers_row["round"]["median_s"], row["median_s"])
                row["diff_vs_diffusers"] = compare.image_difference(np.load(row["output"]), d_image)
        self.report["peers"] = peers

    def overhead(self) -> None:
        """Target 3 on the tiny model, in this process (milliseconds per call: no isolation needed)."""
        from mvg_rt.bench.models import engines_for, model_source
        from mvg_rt.bench.overhead import diffusers_overhead, mvg_overhead, stubbed_profiles
        from mvg_rt.bench.peers import load_diffusers_img2img
        from mvg_rt.runtime.factory import ort_runtime, torch_runtime

        c = self.config
        if c.device.startswith("cuda"):
            self.report["notes"].append("per-step overhead (target 3) is measured on the CPU only")
        own = c.size == "tiny"  # the run's own model is tiny (random, or --model-dir with --size tiny)
        tiny = self.source if own else model_source(None, "tiny", c.seed, self.cache, False, self.say)
        settings = E2ESettings(**(asdict(c.e2e_settings) | {"steps": 50, "strength": 0.6}))
        self.say(f"per-step overhead on the tiny model ({settings.denoising_steps} steps, {c.overhead_repeat} rounds "
                 "each)")
        rows: dict[str, Any] = {}
        torch_rt = torch_runtime(tiny.model_dir, with_seine=False)
        for loop in ("eager", "lean"):
            rows[f"mvg-rt torch ({loop} loop)"] = mvg_overhead(torch_rt, loop, settings, c.overhead_repeat)
        if "ort" in c.backends:
            tiny_engines = self.engines if own and self.engines else engines_for(
                tiny, PIE_COMPONENTS, self.cache, fp16=False, progress=self.say)
            ort_rt = ort_runtime(tiny_engines)
            for loop in ("eager", "lean"):
                rows[f"mvg-rt ort ({loop} loop)"] = mvg_overhead(ort_rt, loop, settings, c.overhead_repeat)
        pipe = load_diffusers_img2img(tiny.model_dir, "cpu", torch.float32)
        rows["diffusers img2img"] = diffusers_overhead(pipe, settings, c.overhead_repeat)
        for name, row in rows.items():
            self.say(f"  {name}: {1e3 * row['overhead_s']:.3f} ms outside the UNet per step "
                     f"(UNet {1e3 * row['network_s']:.2f} ms)")
        stub = stubbed_profiles(torch_rt, pipe, settings, c.overhead_repeat)
        self.report["overhead"] = {"model": tiny.describe(), "settings": settings.to_dict(), "rows": rows,
                                   "stubbed_unet": stub}

    # ------------------------------------------------------------------ targets

    def targets(self) -> None:
        targets = [self._target_peak(), self._target_round(), self._target_overhead()]
        self.report["targets"] = [t for t in targets if t is not None]
        for t in self.report["targets"]:
            self.say(f"target {t['id']}: {t['name']}: {t['value_text']} (threshold {t['threshold_text']}) "
                     f"{t['status']}")
        if self.config.profile_misses:
            self.profile_misses()

    def _target_peak(self) -> dict[str, Any] | None:
        rows = [r for r in self.report.get("components", []) if r["component"] == "unet" and "error" not in r]
        if not rows:
            return None
        best = min(rows, key=lambda r: r["median_s"])
        value = best["fraction_of_peak"]
        return {"id": 1, "name": "fastest backend's UNet step vs the measured matmul peak",
                "value": value, "threshold": TARGET_PEAK_FRACTION, "status": "PASS" if value >= TARGET_PEAK_FRACTION
                else "MISS", "value_text": f"{100 * value:.1f}% ({best['achieved_flops_per_second'] / 1e9:.1f} GFLOP/s, "
                f"{best['variant']['label']}, {best['median_s']:.3f} s/step)",
                "threshold_text": f">= {100 * TARGET_PEAK_FRACTION:.0f}%", "row": best["variant"]["label"]}

    def _target_round(self) -> dict[str, Any] | None:
        rows = [r for r in self.report.get("pie_round", []) if "speedup_vs_diffusers" in r]
        if not rows:
            return None
        best = max(rows, key=lambda r: r["speedup_vs_diffusers"])
        speed = best["speedup_vs_diffusers"]
        quality = compare.psnr_value(best.get("diff_vs_diffusers"))
        ok = speed >= TARGET_ROUND_SPEEDUP and quality is not None and quality >= TARGET_ROUND_PSNR
        psnr_text = "inf" if quality == float("inf") else f"{quality:.1f}"
        return {"id": 2, "name": "PIE round (full ROI, beta2=1) vs diffusers img2img eager", "value": speed,
                "psnr_db": quality, "threshold": TARGET_ROUND_SPEEDUP, "status": "PASS" if ok else "MISS",
                "value_text": f"{speed:.2f}x faster, {psnr_text} dB ({best['label']})",
                "threshold_text": f">= {TARGET_ROUND_SPEEDUP}x and >= {TARGET_ROUND_PSNR:.0f} dB", "row": best["label"]}

    def _target_overhead(self) -> dict[str, Any] | None:
        overhead = self.report.get("overhead")
        if not overhead:
            return None
        rows = overhead["rows"]
        theirs = rows["diffusers img2img"]["overhead_s"]
        mine_name = min((k for k in rows if k.startswith("mvg-rt")), key=lambda k: rows[k]["overhead_s"])
        mine = rows[mine_name]["overhead_s"]
        value = theirs / mine if mine > 0 else float("inf")
        return {"id": 3, "name": "time outside the networks per denoising step, diffusers / mvg-rt (tiny model)",
                "value": value, "threshold": TARGET_OVERHEAD_RATIO,
                "status": "PASS" if value >= TARGET_OVERHEAD_RATIO else "MISS",
                "value_text": f"{value:.2f}x lower ({1e3 * mine:.3f} ms {mine_name} vs {1e3 * theirs:.3f} ms diffusers)",
                "threshold_text": f">= {TARGET_OVERHEAD_RATIO:.0f}x", "row": mine_name}

    def profile_misses(self) -> None:
        """For a missed target 1 or 2: where the fastest backend's UNet call spends its time."""
        missed = {t["id"] for t in self.report["targets"] if t["status"] == "MISS"}
        if not missed & {1, 2}:
            return
        rows = [r for r in self.report.get("components", []) if r["component"] == "unet" and "error" not in r]
        if not rows:
            return
        best = Variant.from_dict(min(rows, key=lambda r: r["median_s"])["variant"])
        if best.device != "cpu":
            return
        from mvg_rt.bench.components import component_inputs
        from mvg_rt.bench.models import load_torch_module, text_hidden_size, vocab_size
        from mvg_rt.bench.profiling import ort_profile, torch_profile

        c = self.config
        feeds = component_inputs("unet", c.resolution, c.frames, text_hidden_size(self.source), vocab_size(self.source))
        self.say(f"profiling the UNet on {best.label} (a target was missed)")
        try:
            if best.backend == "ort":
                from mvg_rt.artifacts.manifest import Manifest
                from mvg_rt.runtime.backends.onnxruntime_backend import OrtBackend

                backend = OrtBackend(self.engines, "fp32", "cpu")
                path = Manifest.read(self.engines).verify(backend.artifacts["unet"])
                profile = ort_profile(path, backend.session_options(), feeds)
                profile["tool"] = "onnxruntime profiler (kernel time by op type)"
            else:
                module = load_torch_module(self.source, "unet")
                profile = torch_profile(module, list(feeds.values()))
                profile["tool"] = "torch.profiler (self CPU time by operator)"
        except Exception as err:  # noqa: BLE001 - a failed profile must not lose the measurements
            profile = {"error": f"{type(err).__name__}: {err}"}
        self.report.setdefault("profiles", {})["unet"] = profile | {"variant": best.to_dict()}
