"""Writing the bench report from its rows: ``bench.json`` (everything), ``bench.md`` (tables), ``bench.png``.

Markdown and the chart read only ``bench.json``'s content, so either can be redrawn
from a committed JSON. Each table is a list of (header, cell) columns over the rows of
one kind.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

Column = tuple[str, Callable[[dict[str, Any]], str]]


def clean(value: Any) -> Any:
    """JSON-safe: non-finite floats as strings ("inf", "nan"), paths as strings."""
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, dict):
        return {str(k): clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean(v) for v in value]
    return str(value) if isinstance(value, Path) else value


def _s(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    return value if isinstance(value, str) else f"{value:.{digits}f}"


def _x(value: Any) -> str:
    return "-" if value is None else f"{value:.2f}x"


def _mb(value: Any) -> str:
    return "-" if value is None else f"{value / 2**20:,.0f}"


def _psnr(diff: dict[str, Any] | None) -> str:
    if not diff or "psnr_db" not in diff:
        return (diff or {}).get("error", "-")
    return _s(diff["psnr_db"], 1)


def _rss(row: dict[str, Any]) -> str:
    return _mb(row.get("memory", {}).get("peak_rss_bytes"))


def table(rows: list[dict[str, Any]], columns: list[Column]) -> list[str]:
    lines = ["| " + " | ".join(h for h, _ in columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        cells = [columns[0][1](row), "error: " + row["error"][:300]] + ["-"] * (len(columns) - 2) \
            if row.get("error") else [cell(row) for _, cell in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return lines + [""]


def _diff_cell(row: dict[str, Any]) -> str:
    diff = row.get("diff_vs_reference") or {}
    return "-" if "cosine" not in diff else f"{diff['max_abs']:.1e} ({diff['max_abs_scaled']:.1e}), {diff['cosine']:.7f}"


COMPONENTS: list[Column] = [
    ("component (first input)", lambda r: f"{r['component']} {tuple(next(iter(r.get('shapes', {}).values()), ()))}"),
    ("backend", lambda r: r["label"]), ("n", lambda r: str(r["repeat"])), ("median s", lambda r: _s(r["median_s"])),
    ("p10 s", lambda r: _s(r["p10_s"])), ("p90 s", lambda r: _s(r["p90_s"])),
    ("GFLOP/call", lambda r: _s(r["flops"] / 1e9, 1)),
    ("GFLOP/s", lambda r: _s(r["achieved_flops_per_second"] / 1e9, 1)),
    ("of peak", lambda r: f"{100 * r['fraction_of_peak']:.0f}%"), ("vs torch", lambda r: _x(r.get("speedup_vs_torch"))),
    ("peak RSS MiB", _rss), ("max abs diff vs torch (scaled), cosine", _diff_cell),
]
ROUNDS: list[Column] = [
    ("pipeline", lambda r: r["label"]), ("round s (median)", lambda r: _s(r["median_s"], 2)),
    ("p10 s", lambda r: _s(r["p10_s"], 2)), ("p90 s", lambda r: _s(r["p90_s"], 2)),
    ("s/step", lambda r: _s(r["per_step_s"])), ("session setup s", lambda r: _s(r.get("setup_s"), 2)),
    ("vs torch", lambda r: _x(r.get("speedup_vs_torch"))), ("vs diffusers", lambda r: _x(r.get("speedup_vs_diffusers"))),
    ("max abs vs torch", lambda r: str((r.get("diff_vs_reference") or {}).get("max_abs", "-"))),
    ("PSNR vs torch dB", lambda r: _psnr(r.get("diff_vs_reference"))),
    ("PSNR vs diffusers dB", lambda r: _psnr(r.get("diff_vs_diffusers"))), ("peak RSS MiB", _rss),
]
SIMULATION: list[Column] = [
    ("pipeline", lambda r: r["label"]), ("PIE run s", lambda r: _s(r["pie_run_s"], 1)),
    ("per round s", lambda r: " / ".join(_s(x, 1) for x in r["round_s"])),
    ("first clip s", lambda r: _s((r["clip_s"] or [None])[0], 1)), ("all clips s", lambda r: _s(r["transitions_s"], 1)),
    ("simulation s", lambda r: _s(r["simulation_s"], 1)), ("vs torch", lambda r: _x(r.get("speedup_vs_torch"))),
    ("final state PSNR vs torch dB", lambda r: _psnr((r.get("diff_vs_reference") or {}).get("final_state"))),
    ("first clip PSNR vs torch dB", lambda r: _psnr((r.get("diff_vs_reference") or {}).get("first_clip"))),
]
OVERHEAD: list[Column] = [
    ("pipeline", lambda r: r["label"]), ("step ms", lambda r: _s(1e3 * r["step_s"])),
    ("UNet ms", lambda r: _s(1e3 * r["network_s"])), ("outside ms", lambda r: _s(1e3 * r["overhead_s"])),
    ("diffusers / this", lambda r: _x(r.get("overhead_ratio_vs_diffusers"))),
    ("UNet timed by", lambda r: r["instrumentation"]),
]
STUB: list[Column] = [
    ("pipeline", lambda r: r["label"]), ("loop ms/step", lambda r: _s(1e3 * r["loop_s_per_step"])),
    ("aten ops/step", lambda r: f"{r['aten_ops_per_step']:.0f}"),
    ("most frequent ops (calls/step)",
     lambda r: ", ".join(f"{o['op']} {o['calls_per_step']:.1f}x" for o in r["top_ops"][:5])),
]
RUNTIMES: list[Column] = [("variant", lambda r: r["label"]), ("open s", lambda r: _s(r.get("open_s"), 2)),
                          ("warm-up s", lambda r: _s(r.get("warmup_s"), 2))]


def _header(report: dict[str, Any]) -> list[str]:
    m, peak, s = report["machine"], report["peak"]["fp32"], report["settings"]
    e = s["e2e_settings"]
    fp16 = f"; fp16 {report['peak']['fp16']['flops_per_second'] / 1e12:.1f} TFLOP/s" if "fp16" in report["peak"] else ""
    return [
        "# mvg-rt bench", "",
        f"- **CPU**: {m['cpu']} ({m['cores']['physical']} physical / {m['cores']['logical']} logical cores, SIMD "
        f"{' '.join(m['cpu_flags']) or '?'}); PyTorch threads {m['torch_threads']}; RAM {_mb(m['ram_bytes'])} MiB; "
        f"GPU: {', '.join(g['name'] for g in m['gpus']) or 'none'}",
        f"- **Load average** (1/5/15 min) at start {m['load_average_at_start']}, at end {m.get('load_average_at_end')}",
        f"- **Matmul peak** (same run): {peak['flops_per_second'] / 1e9:.1f} GFLOP/s ({peak['size']}x{peak['size']} "
        f"{peak['dtype']} matmul, {peak['threads']} threads, best of {peak['repeats']}){fp16}",
        f"- **Versions**: {', '.join(f'{k} {v}' for k, v in m['versions'].items())}",
        f"- **Models**: {report['models']['origin']}; {s['resolution']}x{s['resolution']}, SEINE frames {s['frames']}; "
        f"backends {', '.join(s['backends'])} on {s['device']}, each opened with open_runtime "
        f"{'in a fresh process' if s['isolate'] else 'in this process'}",
        f"- **Components**: {s['warmup']} warm-up + {s['repeat']} timed calls (fewer, at least 2, once they exceed "
        f"{s['row_budget_s']} s: see n); FLOPs counted once per component with torch's FlopCounterMode (meta device)",
        f"- **End to end**: seed {e['seed']}, prompt \"{e['prompt']}\", {e['steps']} steps x strength {e['strength']} "
        f"= {e['denoising_steps_per_round']} denoising steps a round, CFG {e['guidance']}, the model's scheduler; "
        f"simulation {e['rounds']} rounds (beta1 {e['beta1']}, beta2 {e['beta2']}, demo heart ROI) + clips of "
        f"{e['frames']} frames, {e['transition_steps']} {e['transition_sampler']} steps, CFG {e['transition_guidance']}; "
        f"{e['repeat']} timed PIE round(s) after warm-up", "",
    ]


def markdown(report: dict[str, Any]) -> str:
    rows = report["rows"]

    def of(*kinds: str) -> list[dict[str, Any]]:
        return [r for r in rows if r["kind"] in kinds]

    lines = _header(report) + ["## Targets", "", "| # | target | measured | threshold | status |", "|---|---|---|---|---|"]
    lines += [f"| {t['id']} | {t['name']} | {t['value_text']} | {t['threshold_text']} | **{t['status']}** |"
              for t in report["targets"]] + [""]
    steps = report["settings"]["e2e_settings"]["denoising_steps_per_round"]
    sections = [
        ("## Runtimes", of("runtime"), RUNTIMES, []),
        ("## Components (one call each)", of("component"), COMPONENTS,
         ["Peak RSS: the resident-set high-water mark over the timed calls, on top of the variant's resident "
          "weights (torch holds every component; ORT creates a session per component on first use)."]),
        (f"## PIE round = img2img ({steps} denoising steps, ROI = whole image, beta2 = 1)", of("pie_round"), ROUNDS,
         ["mvg-rt rows time `PieSession.run_round` (VAE encode, loop, Eq 6, VAE decode); the session setup (prompt "
          "+ original encoding, once per simulation) is apart. Peer rows time one pipeline call. Differences are "
          "on the uint8 output image, same seed, against mvg-rt's PyTorch FP32 row (the table step)."]),
        ("## Simulation (`simulate`'s stages from its run.json)", of("simulation"), SIMULATION, []),
        ("## Per-step overhead outside the networks (tiny model)", of("overhead"), OVERHEAD,
         ["Median over rounds of (loop time - UNet time) / steps, complete steps only. With the UNet replaced by a "
          "stub (everything left is loop overhead; aten ops per step from torch.profiler):", ""]
         + table(of("overhead_stub"), STUB)),
    ]
    for title, selected, columns, after in sections:
        if selected:
            lines += [title, ""] + table(selected, columns) + after + [""]
    for p in of("profile"):
        lines += [f"## Profile of the UNet on {p['label']} (a target was missed)", ""]
        lines += [p["error"], ""] if p.get("error") else [p["tool"], ""] + table(p["by_op"], [
            ("op", lambda e: e["op"]), ("seconds", lambda e: _s(e["seconds"])),
            ("share", lambda e: f"{100 * e['share']:.1f}%")])
    lines += ["## Notes", ""] + [f"- {n}" for n in report["notes"]] + [""] if report["notes"] else []
    lines += ["## Errors", ""] + [f"- {e['label']} {e['kind']}: {e['error'][:400]}" for e in report["errors"]] + [""] \
        if report["errors"] else []
    return "\n".join(lines + [f"Wall time of the bench: {report.get('wall_seconds', 0) / 60:.1f} min.", ""])


def write_all(report: dict[str, Any], out: Path) -> list[Path]:
    from mvg_rt.bench.chart import write_chart

    out.mkdir(parents=True, exist_ok=True)
    report = clean(report)
    (out / "bench.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "bench.md").write_text(markdown(report))
    chart = write_chart(report, out / "bench.png")
    return [out / "bench.json", out / "bench.md"] + ([chart] if chart else [])
