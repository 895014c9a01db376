"""Writing the bench report: ``bench.json`` (everything), ``bench.md`` (tables), ``bench.png`` (chart)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

JSON_NAME, MARKDOWN_NAME, CHART_NAME = "bench.json", "bench.md", "bench.png"


def _clean(value: Any) -> Any:
    """JSON-safe: non-finite floats as strings, paths as strings."""
    if isinstance(value, float):
        return value if math.isfinite(value) else ("inf" if value > 0 else ("-inf" if value < 0 else "nan"))
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def _strip_paths(report: dict[str, Any]) -> dict[str, Any]:
    """Drop the temporary .npy paths (the work folder is deleted after the comparisons)."""
    def walk(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: walk(v) for k, v in value.items() if k not in ("output", "outputs")}
        if isinstance(value, list):
            return [walk(v) for v in value]
        return value

    return walk(report)


def write_json(report: dict[str, Any], out: Path) -> Path:
    path = out / JSON_NAME
    path.write_text(json.dumps(_clean(_strip_paths(report)), indent=2, default=str) + "\n")
    return path


# ------------------------------------------------------------------ Markdown


def _s(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, str):
        return value
    if isinstance(value, float) and math.isinf(value):
        return "inf"
    return f"{value:.{digits}f}"


def _x(value: Any) -> str:
    return "-" if value is None else f"{value:.2f}x"


def _mb(value: Any) -> str:
    return "-" if value is None else f"{value / 2**20:,.0f}"


def _psnr(diff: dict[str, Any] | None) -> str:
    if not diff or "psnr_db" not in diff:
        return "-" if not diff or "error" not in diff else diff["error"]
    value = diff["psnr_db"]
    return "inf" if value == "inf" else f"{value:.1f}"


def _maxabs(diff: dict[str, Any] | None) -> str:
    return "-" if not diff or "max_abs" not in diff else str(diff["max_abs"])


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return lines + [""]


def _machine(report: dict[str, Any]) -> list[str]:
    m = report["machine"]
    peak = report["peak"]["fp32"]
    versions = ", ".join(f"{k} {v}" for k, v in m["versions"].items())
    gpus = ", ".join(g["name"] for g in m["gpus"]) or "none"
    cores = m["cores"]
    return [
        f"- **CPU**: {m['cpu']} ({cores['physical']} physical / {cores['logical']} logical cores, "
        f"SIMD {' '.join(m['cpu_flags']) or '?'}); PyTorch threads {m['torch_threads']}; "
        f"RAM {_mb(m['ram_bytes'])} MiB; GPU: {gpus}",
        f"- **Load average** (1/5/15 min) at start {m.get('load_average_at_start')}, at end "
        f"{m.get('load_average_at_end')}",
        f"- **Matmul peak** (same run): {peak['flops_per_second'] / 1e9:.1f} GFLOP/s "
        f"({peak['size']}x{peak['size']} {peak['dtype']} matmul, {peak['threads']} threads, best of {peak['repeats']})"
        + (f"; fp16 {report['peak']['fp16']['flops_per_second'] / 1e12:.1f} TFLOP/s" if "fp16" in report["peak"]
           else ""),
        f"- **Versions**: {versions}",
    ]


def _settings(report: dict[str, Any]) -> list[str]:
    s = report["settings"]
    e = s["e2e_settings"]
    return [
        f"- **Models**: {report['models']['origin']}; resolution {s['resolution']}x{s['resolution']}, "
        f"SEINE frames {s['frames']}; backends {', '.join(s['backends'])} on {s['device']}",
        f"- **Timing**: {s['warmup']} warm-up + {s['repeat']} timed calls per component (fewer, at least 2, once a "
        f"row's timed calls exceed {s['row_budget_s']} s: see n); each variant x component "
        f"{'in a fresh process' if s['isolate'] else 'in this process'}; FLOPs counted once per component with "
        "torch's FlopCounterMode (meta device)",
        f"- **End to end**: seed {e['seed']}, prompt \"{e['prompt']}\", {e['steps']} scheduler steps x strength "
        f"{e['strength']} = {e['denoising_steps_per_round']} denoising steps a round, CFG {e['guidance']}, model's "
        f"scheduler; simulation {e['rounds']} rounds (beta1 {e['beta1']}, beta2 {e['beta2']}, demo heart ROI) + "
        f"{e['rounds']} clips of {e['frames']} frames, {e['transition_steps']} {e['transition_sampler']} steps, "
        f"CFG {e['transition_guidance']}; {e['repeat']} timed PIE round(s) after warm-up",
    ]


def _targets(report: dict[str, Any]) -> list[str]:
    rows = [[str(t["id"]), t["name"], t["value_text"], t["threshold_text"], f"**{t['status']}**"]
            for t in report.get("targets", [])]
    return ["## Targets", ""] + _table(["#", "target", "measured", "threshold", "status"], rows)


def _components(report: dict[str, Any]) -> list[str]:
    rows = []
    for r in report.get("components", []):
        label = r["variant"]["label"]
        if "error" in r:
            rows.append([r["component"], label, "error: " + r["error"][:120]] + ["-"] * 10)
            continue
        diff = r.get("diff_vs_reference") or {}
        shape = next(iter(r["shapes"].values()))
        rows.append([
            f"{r['component']} {tuple(shape)}", label, str(r["repeat"]), _s(r["median_s"]), _s(r["p10_s"]),
            _s(r["p90_s"]),
            _s(r["flops"] / 1e9, 1), _s(r["achieved_flops_per_second"] / 1e9, 1),
            f"{100 * r['fraction_of_peak']:.0f}%", _x(r.get("speedup_vs_torch")),
            _mb(r["memory"]["peak_rss_bytes"]),
            "-" if "max_abs" not in diff else f"{diff['max_abs']:.1e} ({diff['max_abs_scaled']:.1e})",
            "-" if "cosine" not in diff else f"{diff['cosine']:.7f}",
        ])
    if not rows:
        return []
    header = ["component (first input)", "backend", "n", "median s", "p10 s", "p90 s", "GFLOP/call", "GFLOP/s", "of peak",
              "vs torch", "peak RSS MiB", "max abs diff vs torch (scaled)", "cosine vs torch"]
    return (["## Components (one call each)", ""] + _table(header, rows) +
            ["Peak RSS: the resident-set high-water mark over the timed calls (reset before them), i.e. the "
             "component's weights plus its working memory; each row ran in a fresh process when isolated.", ""])


def _rounds(report: dict[str, Any]) -> list[str]:
    rows = []
    for r in report.get("pie_round", []):
        if "error" in r:
            rows.append([r["label"], "error: " + r["error"][:120]] + ["-"] * 9)
            continue
        rows.append([r["label"], _s(r["median_s"], 2), _s(r["p10_s"], 2), _s(r["p90_s"], 2), _s(r["per_step_s"], 3),
                     _s(r.get("setup_s"), 2), _x(r.get("speedup_vs_torch")), _x(r.get("speedup_vs_diffusers")),
                     _maxabs(r.get("diff_vs_reference")), _psnr(r.get("diff_vs_reference")),
                     _psnr(r.get("diff_vs_diffusers")), _mb(r["memory"]["peak_rss_bytes"])])
    for p in report.get("peers", []):
        if "error" in p:
            rows.append([p["label"], "not run: " + p["error"][:300]] + ["-"] * 10)
            continue
        round_ = p["round"]
        diffusers_diff = "same" if p["peer"] == "diffusers" else None
        rows.append([p["label"], _s(round_["median_s"], 2), _s(round_["p10_s"], 2), _s(round_["p90_s"], 2),
                     _s(p["per_step_s"], 3), "-", _x(p.get("speedup_vs_torch")), _x(p.get("speedup_vs_diffusers")),
                     _maxabs(p.get("diff_vs_reference")), _psnr(p.get("diff_vs_reference")),
                     diffusers_diff or _psnr(_peer_vs_diffusers(report, p)),
                     _mb(round_.get("memory", {}).get("peak_rss_bytes"))])
    if not rows:
        return []
    steps = report["settings"]["e2e_settings"]["denoising_steps_per_round"]
    header = ["pipeline", "round s (median)", "p10 s", "p90 s", "s/step", "session setup s", "vs torch eager",
              "vs diffusers", "max abs vs torch ref", "PSNR vs torch ref dB", "PSNR vs diffusers dB", "peak RSS MiB"]
    return ([f"## PIE round = img2img ({steps} denoising steps, ROI = whole image, beta2 = 1)", ""] +
            _table(header, rows) +
            ["mvg-rt rows time `PieSession.run_round` (VAE encode, loop, Eq 6, VAE decode); the session setup "
             "(prompt + original encoding, once per simulation) is listed apart. Peer rows time one pipeline call "
             "(which also encodes the prompt). Differences are on the uint8 output image, same seed; the torch "
             "reference is mvg-rt's PyTorch FP32 eager loop.", ""])


def _peer_vs_diffusers(report: dict[str, Any], peer: dict[str, Any]) -> dict[str, Any] | None:
    return peer.get("diff_vs_diffusers")


def _simulation(report: dict[str, Any]) -> list[str]:
    rows = []
    for r in report.get("simulation", []):
        diff = r.get("diff_vs_reference") or {}
        clip = r.get("clip_s") or []
        rows.append([r["label"], _s(r["pie_run_s"], 1), " / ".join(_s(x, 1) for x in r["round_s"]),
                     _s(clip[0], 1) if clip else "-", _s(r.get("transitions_s"), 1), _s(r["simulation_s"], 1),
                     _x(r.get("speedup_vs_torch")), _psnr(diff.get("final_state")), _psnr(diff.get("first_clip"))])
    if not rows:
        return []
    header = ["pipeline", "PIE run s", "per round s", "first clip s", "all clips s", "simulation s", "vs torch",
              "final state PSNR vs torch dB", "first clip PSNR vs torch dB"]
    return ["## Simulation (reduced settings, see above)", ""] + _table(header, rows)


def _overhead(report: dict[str, Any]) -> list[str]:
    overhead = report.get("overhead")
    if not overhead:
        return []
    rows = [[name, _s(1e3 * r["step_s"], 3), _s(1e3 * r["network_s"], 3), _s(1e3 * r["overhead_s"], 3),
             r["instrumentation"]] for name, r in overhead["rows"].items()]
    stub_rows = [[name, _s(1e3 * r["loop_s_per_step"], 3), f"{r['aten_ops_per_step']:.0f}",
                  ", ".join(f"{o['op']} {o['calls_per_step']:.1f}x" for o in r["top_ops"][:5])]
                 for name, r in overhead["stubbed_unet"].items()]
    s = overhead["settings"]
    return (["## Per-step overhead outside the networks (tiny model)", "",
             f"{s['denoising_steps_per_round']} denoising steps at {s['resolution']}x{s['resolution']}; median over "
             f"rounds of (loop time - UNet time) / steps, complete steps only.", ""] +
            _table(["pipeline", "step ms", "UNet ms", "outside ms", "UNet timed by"], rows) +
            ["With the UNet replaced by a stub returning a fixed tensor (everything left is loop overhead; aten "
             "ops per step from torch.profiler, as the difference of two rounds with different step counts):", ""] +
            _table(["pipeline", "loop ms/step", "aten ops/step", "most frequent ops (calls/step)"],
                   stub_rows))


def _profiles(report: dict[str, Any]) -> list[str]:
    profiles = report.get("profiles")
    if not profiles:
        return []
    lines = ["## Profiles (a target was missed)", ""]
    for name, p in profiles.items():
        if "error" in p:
            lines += [f"{name}: profiling failed: {p['error']}", ""]
            continue
        lines += [f"**{name}** on {p['variant']['label']} ({p['tool']}):", ""]
        entries = p.get("by_op_type") or p.get("by_op") or []
        lines += _table(["op", "seconds", "share"],
                        [[e["op"], _s(e["seconds"], 3), f"{100 * e['share']:.1f}%"] for e in entries])
    return lines


def markdown(report: dict[str, Any]) -> str:
    lines = ["# mvg-rt bench", ""] + _machine(report) + _settings(report) + [""]
    lines += _targets(report) + _components(report) + _rounds(report) + _simulation(report) + _overhead(report)
    lines += _profiles(report)
    if report.get("notes"):
        lines += ["## Notes", ""] + [f"- {n}" for n in report["notes"]] + [""]
    if report.get("errors"):
        lines += ["## Errors", ""] + [f"- {e['error'][:400]}" for e in report["errors"]] + [""]
    lines += [f"Wall time of the bench: {report.get('wall_seconds', 0) / 60:.1f} min.", ""]
    return "\n".join(lines)


def write_markdown(report: dict[str, Any], out: Path) -> Path:
    path = out / MARKDOWN_NAME
    path.write_text(markdown(report))
    return path


def write_all(report: dict[str, Any], out: Path) -> list[Path]:
    from mvg_rt.bench.chart import write_chart

    out.mkdir(parents=True, exist_ok=True)
    paths = [write_json(report, out), write_markdown(report, out)]
    chart = write_chart(report, out / CHART_NAME)
    if chart is not None:
        paths.append(chart)
    return paths
