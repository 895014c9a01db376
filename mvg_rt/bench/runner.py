"""``mvg-rt bench``: every measurement of one run, in order, into one report of typed rows. Each variant's
rows run in a fresh process unless ``in_process`` (a clean peak-memory reading; one backend's allocator state
cannot slow the next). Nothing here asserts a timing."""

from __future__ import annotations

import multiprocessing
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from contextlib import ExitStack
from dataclasses import asdict, replace
from functools import partial
from pathlib import Path
from typing import Any

import torch

from mvg_rt.bench import models
from mvg_rt.bench.config import BenchConfig
from mvg_rt.bench.machine import load_average, machine_info, matmul_peak
from mvg_rt.bench.measure import diffusers_row, load_diffusers_img2img, measure_variant
from mvg_rt.bench.overhead import overhead_rows, stub_rows
from mvg_rt.bench.profiling import profile_unet
from mvg_rt.bench.rows import KINDS, TARGETS, Row, attempt, compare_with, evaluate, paper_projection
from mvg_rt.components import PIE_COMPONENTS
from mvg_rt.runtime.factory import RuntimeSpec, open_runtime

SCHEMA = 2  # bench.json's version (the ``mvg_rt_bench`` key); see benchmarks/README.md
Progress = Callable[[str], None]


def call(config: BenchConfig, function: Callable[..., Any], *args: Any) -> Any:
    """``function(*args)``: in a fresh (spawned) Python with this thread count when the run isolates, else here."""
    if not config.isolate:
        return function(*args)
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"), initializer=torch.set_num_threads,
                             initargs=(torch.get_num_threads(),)) as pool:
        return pool.submit(function, *args).result()


def report_rows(rows: list[Row], say: Progress) -> list[Row]:
    for row in rows:
        times = ", ".join(f"{k} {v:.4g}" for k, v in row.metrics.items() if k.endswith("_s") and isinstance(v, float))
        say(f"  {row.kind} {row.component or ''} {row.label}: " + (f"failed: {row.error}" if row.error else times))
    return rows


def run_bench(config: BenchConfig, progress: Progress = lambda _: None) -> dict[str, Any]:
    started = time.perf_counter()

    def say(text: str) -> None:
        progress(f"[{time.perf_counter() - started:7.1f} s] {text}")

    c, cache = config, config.cache or models.default_cache_dir()
    report: dict[str, Any] = {"mvg_rt_bench": SCHEMA, "machine": machine_info(), "settings": c.to_dict(), "notes": []}
    say(f"load average {report['machine']['load_average_at_start']}; measuring the matmul peak")
    report["peak"] = {"fp32": matmul_peak(c.device)} | ({"fp16": matmul_peak(c.device, torch.float16, size=8192)}
                                                        if c.cuda else {})
    with_seine = "seine" in c.components or (c.e2e and c.transitions)
    source = models.model_source(c.model_dir, c.size, c.seed, cache, say)
    engines = prepare_engines(c, source, with_seine, cache, say)
    report |= {"models": asdict(source), "engines": str(engines) if engines else None}
    specs = [replace(v, model_dir=source.model_dir, seine=source.seine, with_seine=with_seine) if v.backend == "torch"
             else replace(v, engines_dir=engines) for v in c.variants()]

    inputs = {name: models.component_inputs(source, name, c.resolution, c.frames) for name in c.components}
    rows: list[Row] = []
    for spec in specs:
        say(f"{spec.label}: {', '.join(c.components) or 'no'} components, {'' if c.e2e else 'no '}end to end")
        try:
            rows += report_rows(call(c, measure_variant, spec, c, inputs), say)
        except Exception as err:  # noqa: BLE001 - a crashed worker (memory) loses its variant's rows only
            rows.append(Row("runtime", spec.label, spec.to_dict(), error=f"{type(err).__name__}: {err}"))
    for name in c.components:
        flops = models.count_flops(source, name, inputs[name])
        for row in (r for r in rows if r.kind == "component" and r.component == name and r.error is None):
            peak = report["peak"].get(row.spec["precision"], report["peak"]["fp32"])["flops_per_second"]
            achieved = flops["flops"] / row.metrics["median_s"]
            row.metrics |= flops | {"achieved_flops_per_second": achieved, "fraction_of_peak": achieved / peak}
    if c.peers:
        rows += peer_rows(c, source, cache, engines, say, report["notes"])
    compare_with(rows, lambda r: r.is_reference, "speedup_vs_torch", "diff_vs_reference")
    compare_with(rows, lambda r: r.metrics.get("peer") == "diffusers", "speedup_vs_diffusers", "diff_vs_diffusers")
    report["notes"] += paper_projection(rows)
    report["targets"] = [t for t in (evaluate(target, [r.to_dict() for r in rows]) for target in TARGETS) if t]
    for t in report["targets"]:
        say(f"target {t['id']}: {t['name']}: {t['value_text']} (threshold {t['threshold_text']}) {t['status']}")
    missed = {t["id"] for t in report["targets"] if t["status"] == "MISS"}
    unet = [r for r in rows if r.kind == "component" and r.component == "unet" and r.error is None]
    if c.profile_misses and missed & {1, 2} and unet and not c.cuda:  # where the fastest UNet call spends its time
        fastest = min(unet, key=lambda r: r.metrics["median_s"])
        say(f"profiling the UNet on {fastest.label} (a target was missed)")
        inputs = models.component_inputs(source, "unet", c.resolution, c.frames)
        rows += report_rows([attempt(Row("profile", fastest.label, fastest.spec, "unet"),
                                     partial(profile_unet, RuntimeSpec(**fastest.spec), inputs))], say)
    rows.sort(key=lambda r: (KINDS.index(r.kind), c.components.index(r.component) if r.kind == "component" else 0))
    report["rows"] = [r.to_dict() for r in rows]
    report["errors"] = [{"kind": r.kind, "label": r.label, "component": r.component, "error": r.error}
                        for r in rows if r.error]
    report["machine"]["load_average_at_end"] = load_average()
    return report | {"wall_seconds": time.perf_counter() - started, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def prepare_engines(c: BenchConfig, source: models.ModelSource, with_seine: bool, cache: Path,
                    say: Progress) -> Path | None:
    """The engines folder of the ort/trt variants: --engines, else exported into the cache (+ TensorRT plans)."""
    if not {"ort", "trt"} & set(c.backends):
        return None
    engines = c.engines or models.engines_for(source, with_seine, cache, fp16=c.cuda, progress=say)
    if "trt" in c.backends:
        needed = tuple(sorted(set(c.components) | set(PIE_COMPONENTS) | ({"seine"} if with_seine else set())))
        models.ensure_trt_engines(engines, "fp16", c.resolution, c.frames, needed, say)
    return engines


def peer_rows(c: BenchConfig, source: models.ModelSource, cache: Path, engines: Path | None, say: Progress,
              notes: list[str]) -> list[Row]:
    """diffusers img2img rows (fp32, + fp16 on CUDA), then the tiny model's overhead rows."""
    rows = []
    for precision in ("fp32", "fp16") if c.cuda else ("fp32",):
        say(f"peer: diffusers StableDiffusionImg2ImgPipeline, PyTorch eager {precision}")
        empty = Row("pie_round", f"diffusers img2img (PyTorch eager {precision})", metrics={"peer": "diffusers"})
        rows.append(attempt(empty, partial(call, c, diffusers_row, source.model_dir, c.e2e_settings, c.device,
                                           precision)))
    if c.cuda:
        notes.append("per-step overhead (target 3) is measured on the CPU only")
    own = c.size == "tiny"  # the run's own model is tiny (random, or --model-dir with --size tiny)
    tiny = source if own else models.model_source(None, "tiny", c.seed, cache, say)
    settings = replace(c.e2e_settings, steps=50, strength=0.6)
    say(f"per-step overhead on the tiny model ({settings.denoising_steps} steps, {c.overhead_repeat} rounds each)")
    specs = [RuntimeSpec(model_dir=tiny.model_dir, with_seine=False)]
    if "ort" in c.backends:
        tiny_engines = engines if own and engines else models.engines_for(tiny, False, cache, False, say)
        specs.append(RuntimeSpec("ort", engines_dir=tiny_engines))
    pipe = load_diffusers_img2img(tiny.model_dir, "cpu", torch.float32)
    with ExitStack() as stack:
        runtimes = [stack.enter_context(open_runtime(spec)) for spec in specs]
        rows += overhead_rows(runtimes, pipe, settings, c.overhead_repeat)
        return report_rows(rows + stub_rows(runtimes[0], pipe, settings, c.overhead_repeat), say)
