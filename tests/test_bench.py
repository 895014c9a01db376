"""``mvg-rt bench`` on the tiny model: the report's structure (never its timings)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest


def test_bench_tiny_writes_json_markdown_and_chart(tmp_path: Path, tiny_model_dir: Path, tiny_engines: Path, run_cli):
    out = tmp_path / "bench"
    code, stdout, err = run_cli([
        "bench", "--size", "tiny", "--model-dir", str(tiny_model_dir), "--engines", str(tiny_engines),
        "--cache", str(tmp_path / "cache"), "--out", str(out), "--in-process",
        "--resolution", "64", "--frames", "3", "--components", "unet,vae_decoder", "--repeat", "2", "--warmup", "1",
        "--e2e", "--peers", "--steppers", "auto,scheduler", "--steps", "4", "--rounds", "1",
        "--transition-frames", "3", "--transition-steps", "2", "--e2e-repeat", "1", "--overhead-repeat", "1"])
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == [".mvg-rt-output", "bench.json", "bench.md", "bench.png"]
    report = json.loads((out / "bench.json").read_text())
    assert report["mvg_rt_bench"] == 2

    machine = report["machine"]
    assert machine["cpu"] and machine["cores"]["logical"] >= 1 and machine["versions"]["torch"]
    assert machine["load_average_at_start"] is not None and "load_average_at_end" in machine
    assert report["peak"]["fp32"]["flops_per_second"] > 0 and report["peak"]["fp32"]["size"] == 2048
    assert report["settings"]["resolution"] == 64 and report["settings"]["backends"] == ["torch", "ort"]
    assert not report["errors"]

    def of(kind: str) -> list[dict]:
        return [r for r in report["rows"] if r["kind"] == kind]

    rows = of("component")
    assert [(r["component"], r["label"]) for r in rows] == [
        ("unet", "torch"), ("unet", "ort"), ("vae_decoder", "torch"), ("vae_decoder", "ort")]
    for row in rows:
        assert row["p10_s"] <= row["median_s"] <= row["p90_s"] and len(row["samples_s"]) == 2
        assert row["flops"] > 0 and row["achieved_flops_per_second"] > 0 and 0 < row["fraction_of_peak"]
        assert row["memory"]["peak_rss_bytes"] > 0 and row["speedup_vs_torch"] > 0
        assert row["diff_vs_reference"]["cosine"] > 0.9999
    assert rows[0]["shapes"] == {"sample": [2, 4, 8, 8], "timestep": [2], "encoder_hidden_states": [2, 77, 32]}

    rounds = {r["label"]: r for r in of("pie_round") if r["spec"]}
    assert set(rounds) == {f"mvg-rt {b}{s}" for b in ("torch", "ort") for s in ("", " (scheduler step)")}
    for row in rounds.values():
        assert row["steps"] == 2 and row["speedup_vs_diffusers"] > 0 and row["setup_s"] >= 0
        assert row["diff_vs_reference"]["psnr_db"] == "inf" or row["diff_vs_reference"]["psnr_db"] > 40
        assert row["diff_vs_diffusers"]["psnr_db"] == "inf" or row["diff_vs_diffusers"]["psnr_db"] > 40
    peers = {r["peer"]: r for r in of("pie_round") if not r["spec"]}
    assert set(peers) == {"diffusers"} and peers["diffusers"]["median_s"] > 0

    sims = {r["label"]: r for r in of("simulation")}
    assert set(sims) == {"mvg-rt torch", "mvg-rt ort"}
    for sim in sims.values():  # simulate's own stage timings, from its run.json
        assert len(sim["round_s"]) == 1 and len(sim["clip_s"]) == 1 and sim["simulation_s"] >= sim["pie_run_s"]
    assert sims["mvg-rt ort"]["diff_vs_reference"]["final_state"]["psnr_db"] != "nan"
    assert sims["mvg-rt ort"]["diff_vs_reference"]["first_clip"]["psnr_db"] != "nan"

    overhead = {r["label"]: r for r in of("overhead")}
    assert {"diffusers img2img", "mvg-rt torch", "mvg-rt torch (scheduler step)", "mvg-rt ort"} <= set(overhead)
    assert all(r["step_s"] >= r["network_s"] >= 0 for r in overhead.values())
    stubs = {r["label"]: r for r in of("overhead_stub")}
    assert stubs["diffusers img2img"]["aten_ops_per_step"] > 0 and stubs["mvg-rt torch"]["aten_ops_per_step"] > 0

    assert [t["id"] for t in report["targets"]] == [1, 2, 3]
    assert all(t["status"] in ("PASS", "MISS") for t in report["targets"])
    text = (out / "bench.md").read_text()
    for heading in ("## Targets", "## Components", "## PIE round", "## Simulation", "## Per-step overhead"):
        assert heading in text
    assert (out / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for target in report["targets"]:
        assert f"target {target['id']} {target['status']}" in stdout

    # every mvg-rt row was opened through open_runtime from a RuntimeSpec it carries
    from mvg_rt.runtime.factory import RuntimeSpec

    specs = [RuntimeSpec(**r["spec"]) for r in report["rows"] if r["spec"]]
    assert {(s.backend, s.device, s.precision) for s in specs} == {("torch", "cpu", "fp32"), ("ort", "cpu", "fp32")}
    assert all(r["backend"]["spec"] == r["spec"] for r in of("runtime"))


def test_bench_opens_every_variant_with_open_runtime(tmp_path: Path, tiny_model_dir: Path, tiny_engines: Path,
                                                     monkeypatch):
    from mvg_rt.bench import measure
    from mvg_rt.bench.config import BenchConfig
    from mvg_rt.bench.runner import run_bench
    from mvg_rt.runtime.factory import RuntimeSpec, open_runtime

    opened: list[RuntimeSpec] = []
    monkeypatch.setattr(measure, "open_runtime", lambda spec: opened.append(spec) or open_runtime(spec))
    config = BenchConfig(components=("unet",), resolution=64, repeat=2, model_dir=tiny_model_dir, size="tiny",
                         engines=tiny_engines, cache=tmp_path / "cache", in_process=True)
    report = run_bench(config)
    assert not report["errors"]
    assert [(s.backend, s.precision, s.cuda_graphs) for s in opened] == [("torch", "fp32", False),
                                                                          ("ort", "fp32", False)]
    assert opened[0].model_dir == tiny_model_dir and opened[1].engines_dir == tiny_engines
    assert [RuntimeSpec(**r["spec"]) for r in report["rows"] if r["kind"] == "component"] == opened


def test_bench_options_are_checked(tmp_path: Path, run_cli):
    code, _, err = run_cli(["bench", "--size", "tiny", "--components", "unet,nope", "--out", str(tmp_path / "b")])
    assert code == 2 and "unknown --components nope" in err
    code, _, err = run_cli(["bench", "--size", "tiny", "--resolution", "100", "--out", str(tmp_path / "b")])
    assert code == 2 and "multiple of 64" in err


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks the CPU-only refusal")
def test_gpu_variants_say_they_need_cuda(tmp_path: Path, run_cli):
    code, _, err = run_cli(["bench", "--size", "tiny", "--backend", "trt", "--out", str(tmp_path / "b")])
    assert code == 2 and "needs CUDA" in err
    code, _, err = run_cli(["bench", "--size", "tiny", "--cuda-graphs", "--out", str(tmp_path / "b")])
    assert code == 2 and "needs CUDA" in err


def test_backends_profile_time_and_stub_their_networks_as_capabilities(tiny_runtime, tiny_engines: Path):
    """What the bench needs from a backend (no backend names, no reaching into modules or sessions)."""
    import torch

    from mvg_rt.components import UNET
    from mvg_rt.errors import MvgError
    from mvg_rt.runtime.backends.onnxruntime_backend import OrtBackend
    from mvg_rt.runtime.graphs.capture import EagerCapture
    from mvg_rt.runtime.graphs.component_graphs import GraphCache, GraphedBackend

    g = torch.Generator().manual_seed(0)
    feeds = {"sample": torch.randn(2, 4, 8, 8, generator=g), "timestep": torch.tensor([1.0, 500.0]),
             "encoder_hidden_states": torch.randn(2, 77, 32, generator=g)}
    torch_backend, ort_backend = tiny_runtime.backend, OrtBackend(tiny_engines)
    for backend, op in ((torch_backend, "aten::conv2d"), (ort_backend, "Conv")):
        times = backend.profile(UNET, feeds)
        assert op in times.seconds and set(times.seconds) == set(times.calls) and times.calls[op] > 0, times
        marks: list[str] = []
        with backend.timed_network(UNET, lambda: marks.append("enter"), lambda: marks.append("leave")) as how:
            backend.infer(UNET, feeds)
        backend.infer(UNET, feeds)  # the context closed: no longer timed
        assert marks == ["enter", "leave"] and how
    real = torch_backend.infer(UNET, feeds)["noise_pred"]
    fixed = torch.full((2, 4, 8, 8), 0.5)
    with torch_backend.stubbed_network(UNET, fixed):
        assert torch.equal(torch_backend.infer(UNET, feeds)["noise_pred"], fixed)
    assert torch.equal(torch_backend.infer(UNET, feeds)["noise_pred"], real)  # the network is back
    graphed = GraphedBackend(torch_backend, GraphCache(EagerCapture.capture), step_capture=None)
    for refuse, words in ((lambda: graphed.profile(UNET, feeds), "this torch backend cannot profile its calls"),
                          (lambda: graphed.timed_network(UNET, print, print), "without --cuda-graphs"),
                          (lambda: ort_backend.stubbed_network(UNET, fixed), "this ort backend cannot stub out")):
        with pytest.raises(MvgError, match=words) as err:
            refuse()
        assert "\n" not in str(err.value)
