"""Writing the bench report from its rows: ``bench.json`` (everything), ``bench.md`` (tables), ``bench.png``.

Markdown and the chart read only what ``bench.json`` holds, so both can be redrawn from
a committed JSON. Each table is a list of columns (header, dotted path into a row,
format) over the rows of one kind.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from mvg_rt.bench.rows import lookup

FORMATS = {"x": lambda v: f"{v:.2f}x", "%": lambda v: f"{100 * v:.0f}%", "MiB": lambda v: f"{v / 2**20:,.0f}",
           "ms": lambda v: f"{1e3 * v:.3f}", "G": lambda v: f"{v / 1e9:.1f}", "e": lambda v: f"{v:.1e}",
           "list": lambda v: " / ".join(f"{x:.1f}" for x in v), "text": str}
COLUMNS = {
    "component": [("component", "component", "text"), ("backend", "label", "text"), ("n", "repeat", "text"),
                  ("median s", "median_s", 3), ("p10 s", "p10_s", 3), ("p90 s", "p90_s", 3),
                  ("GFLOP/call", "flops", "G"), ("GFLOP/s", "achieved_flops_per_second", "G"),
                  ("of peak", "fraction_of_peak", "%"), ("vs torch", "speedup_vs_torch", "x"),
                  ("peak RSS MiB", "memory.peak_rss_bytes", "MiB"),
                  ("max abs diff vs torch", "diff_vs_reference.max_abs", "e"),
                  ("scaled", "diff_vs_reference.max_abs_scaled", "e"), ("cosine", "diff_vs_reference.cosine", 7)],
    "pie_round": [("pipeline", "label", "text"), ("round s (median)", "median_s", 2), ("p10 s", "p10_s", 2),
                  ("p90 s", "p90_s", 2), ("s/step", "per_step_s", 3), ("session setup s", "setup_s", 2),
                  ("vs torch", "speedup_vs_torch", "x"), ("vs diffusers", "speedup_vs_diffusers", "x"),
                  ("max abs vs torch", "diff_vs_reference.max_abs", "text"),
                  ("PSNR vs torch dB", "diff_vs_reference.psnr_db", 1),
                  ("PSNR vs diffusers dB", "diff_vs_diffusers.psnr_db", 1),
                  ("peak RSS MiB", "memory.peak_rss_bytes", "MiB")],
    "simulation": [("pipeline", "label", "text"), ("PIE run s", "pie_run_s", 1), ("per round s", "round_s", "list"),
                   ("clips s", "clip_s", "list"), ("simulation s", "simulation_s", 1),
                   ("vs torch", "speedup_vs_torch", "x"),
                   ("final state PSNR vs torch dB", "diff_vs_reference.final_state.psnr_db", 1),
                   ("first clip PSNR vs torch dB", "diff_vs_reference.first_clip.psnr_db", 1)],
    "overhead": [("pipeline", "label", "text"), ("step ms", "step_s", "ms"), ("UNet ms", "network_s", "ms"),
                 ("outside ms", "overhead_s", "ms"), ("diffusers / this", "overhead_ratio_vs_diffusers", "x"),
                 ("UNet timed by", "instrumentation", "text")],
    "overhead_stub": [("pipeline", "label", "text"), ("loop ms/step", "loop_s_per_step", "ms"),
                      ("aten ops/step", "aten_ops_per_step", 0), ("most frequent ops (calls/step)", "top_ops", "ops")],
    "profile": [("op", "op", "text"), ("seconds", "seconds", 3), ("share", "share", "%")],
}
SECTIONS = [
    ("component", "## Components (one call each)", "Peak RSS: the resident-set high-water mark over the timed calls, "
     "on top of the variant's resident weights (torch holds every component; ORT opens a session per component on "
     "first use)."),
    ("pie_round", "## PIE round = img2img (ROI = whole image, beta2 = 1)", "mvg-rt rows time `PieSession.run_round` "
     "(VAE encode, loop, Eq 6, VAE decode); the session setup (prompt + original encoding, once per simulation) is "
     "apart. Peer rows time one pipeline call. Differences are on the uint8 output, same seed, against mvg-rt's "
     "PyTorch FP32 row."),
    ("simulation", "## Simulation (`simulate`'s own stage timings, from its run.json)", ""),
    ("overhead", "## Per-step overhead outside the networks (tiny model)", "Median over rounds of (loop time - UNet "
     "time) / steps, complete steps only. With the UNet stubbed out (everything left is loop overhead; aten ops per "
     "step from torch.profiler):"),
    ("overhead_stub", "", ""),
]


def clean(value: Any) -> Any:
    """JSON-safe: non-finite floats as strings ("inf", "nan"), paths as strings."""
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, dict):
        return {str(k): clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean(v) for v in value]
    return str(value) if isinstance(value, Path) else value


def cell(row: dict[str, Any], path: str, form: str | int) -> str:
    value = lookup(row, path)
    if value is None or isinstance(value, str):
        return value or "-"
    if form == "ops":
        return ", ".join(f"{o['op']} {o['calls_per_step']:.1f}x" for o in value[:5])
    return f"{value:.{form}f}" if isinstance(form, int) else FORMATS[form](value)


def table(rows: list[dict[str, Any]], columns: list[tuple[str, str, str | int]]) -> list[str]:
    lines = ["| " + " | ".join(c[0] for c in columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        cells = [cell(row, *columns[0][1:]), "error: " + row["error"][:300]] + ["-"] * (len(columns) - 2) \
            if row.get("error") else [cell(row, path, form) for _, path, form in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return lines + [""]


def markdown(report: dict[str, Any]) -> str:
    m, peak, s = report["machine"], report["peak"]["fp32"], report["settings"]
    e = s["e2e_settings"]
    lines = [
        "# mvg-rt bench", "",
        f"- **Machine**: {m['cpu']} ({m['cores']['physical']} physical / {m['cores']['logical']} logical cores, "
        f"{' '.join(m['cpu_flags'])}), PyTorch threads {m['torch_threads']}, GPU: "
        f"{', '.join(g['name'] for g in m['gpus']) or 'none'}; load average {m['load_average_at_start']} at start, "
        f"{m.get('load_average_at_end')} at end; matmul peak {peak['flops_per_second'] / 1e9:.1f} GFLOP/s "
        f"({peak['size']}^2 {peak['dtype']}, best of {peak['repeats']}, same run)",
        f"- **Versions**: {', '.join(f'{k} {v}' for k, v in m['versions'].items())}",
        f"- **Runs**: {report['models']['origin']} at {s['resolution']}x{s['resolution']}; {', '.join(s['backends'])} "
        f"on {s['device']}, each variant opened with open_runtime {'in a fresh process' if s['isolate'] else 'here'}; "
        f"components: {s['warmup']} warm-up + up to {s['repeat']} timed calls (at least 2; fewer past "
        f"{s['row_budget_s']} s), SEINE at {s['frames']} frames, FLOPs by FlopCounterMode; end to end: seed "
        f"{e['seed']}, \"{e['prompt']}\", {e['steps']} steps x strength {e['strength']} = "
        f"{e['denoising_steps_per_round']} denoising steps a round, CFG {e['guidance']}, {e['repeat']} timed round(s); "
        f"simulation {e['rounds']} rounds (betas {e['beta1']}, {e['beta2']}, demo heart ROI) + clips of {e['frames']} "
        f"frames, {e['transition_steps']} {e['transition_sampler']} steps", "",
        "## Targets", "", "| # | target | measured | threshold | status |", "|---|---|---|---|---|",
        *[f"| {t['id']} | {t['name']} | {t['value_text']} | {t['threshold_text']} | **{t['status']}** |"
          for t in report["targets"]], ""]
    for kind, title, note in SECTIONS:
        rows = [r for r in report["rows"] if r["kind"] == kind]
        if rows:
            lines += ([title, ""] if title else []) + table(rows, COLUMNS[kind]) + ([note, ""] if note else [])
    for p in (r for r in report["rows"] if r["kind"] == "profile"):
        lines += [f"## Profile of the UNet on {p['label']} (a target was missed)", ""]
        lines += [p["error"], ""] if p.get("error") else [p["tool"], ""] + table(p["by_op"], COLUMNS["profile"])
    lines += ["## Notes", "", *[f"- {n}" for n in report["notes"]], ""] if report["notes"] else []
    lines += ["## Errors", "", *[f"- {e['label']} {e['kind']}: {e['error'][:400]}" for e in report["errors"]], ""] \
        if report["errors"] else []
    return "\n".join(lines + [f"Wall time of the bench: {report['wall_seconds'] / 60:.1f} min.", ""])


def write_all(report: dict[str, Any], out: Path) -> list[Path]:
    from mvg_rt.bench.chart import write_chart

    out.mkdir(parents=True, exist_ok=True)
    report = clean(report)
    (out / "bench.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "bench.md").write_text(markdown(report))
    chart = write_chart(report, out / "bench.png")
    return [out / "bench.json", out / "bench.md"] + ([chart] if chart else [])
