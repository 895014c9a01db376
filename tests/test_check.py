"""``mvg-rt check``: parity report, exit codes, and the metrics it uses."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from mvg_rt.eval.metrics import gaussian_window, psnr, ssim
from mvg_rt.artifacts.hashing import sha256_file


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_check_passes_and_writes_json(tiny_engines: Path, tiny_model_dir: Path, tmp_path: Path, run_cli):
    report_path = tmp_path / "check.json"
    code, out, err = run_cli(["check", "--engines", str(tiny_engines), "--model-dir", str(tiny_model_dir),
                              "--rounds", "2", "--steps", "4", "--json", str(report_path)])
    assert code == 0, err
    assert "max abs" in out and "PSNR" in out
    report = json.loads(report_path.read_text())
    assert report["passed"] and report["failed"] == []
    components = {r["component"] for r in report["components"]}
    assert components == {"text_encoder", "vae_encoder", "vae_decoder", "unet", "seine"}
    assert len(report["components"]) == 10  # every component at two shapes ...
    assert all(r["max_abs"] <= 1e-4 and r["cosine"] >= 0.99999 for r in report["components"])  # ... within 1e-4
    seine_cases = [r["case"] for r in report["components"] if r["component"] == "seine"]
    assert len(seine_cases) == 2 and seine_cases[0] != seine_cases[1]  # two frame counts
    stages = [r["stage"] for r in report["end_to_end"]]
    assert stages.count("pie") == 3 and stages.count("transition") == 5
    assert all(r["psnr_db"] == "inf" or r["psnr_db"] >= 45 for r in report["end_to_end"])


def _perturb_unet(engines: Path, scale: float = 1.05) -> Path:
    """Scale the largest UNet weight: a file that still loads but computes something else."""
    path = engines / "unet" / "model.onnx"
    model = onnx.load(str(path))
    weight = max(model.graph.initializer, key=lambda t: np.prod(t.dims))
    values = onnx.numpy_helper.to_array(weight) * scale
    weight.CopyFrom(onnx.numpy_helper.from_array(values.astype(np.float32), weight.name))
    onnx.save(model, str(path))
    return path


def test_check_fails_on_perturbed_weights_with_updated_hash(tiny_engines: Path, tmp_path: Path, run_cli):
    engines = tmp_path / "engines"
    shutil.copytree(tiny_engines, engines)
    path = _perturb_unet(engines)
    manifest = json.loads((engines / "manifest.json").read_text())
    manifest["artifacts"] = [a for a in manifest["artifacts"] if a["component"] != "seine"]  # keeps the test fast
    for artifact in manifest["artifacts"]:
        if artifact["component"] == "unet" and artifact["precision"] == "fp32":
            artifact["sha256"] = sha256_file(path)  # the hash check passes: the numbers must catch it
    (engines / "manifest.json").write_text(json.dumps(manifest))
    report_path = tmp_path / "check.json"
    code, _, err = run_cli(["check", "--engines", str(engines), "--skip-end-to-end", "--json", str(report_path)])
    assert code == 1
    assert "check failed: unet exceeded the fp32 tolerance" in err
    report = json.loads(report_path.read_text())
    assert report["failed"] == ["unet"]
    assert all(r["passed"] for r in report["components"] if r["component"] != "unet")


def test_check_refuses_a_file_that_no_longer_matches_its_hash(tiny_engines: Path, tmp_path: Path, run_cli):
    engines = tmp_path / "engines"
    shutil.copytree(tiny_engines, engines)
    _perturb_unet(engines)
    code, _, err = run_cli(["check", "--engines", str(engines), "--skip-end-to-end"])
    assert code == 2 and "unet file unet/model.onnx changed since export" in err and "re-export" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_check_bad_sources_exit_2(tiny_engines: Path, tiny_model_dir: Path, tmp_path: Path, run_cli):
    engines = tmp_path / "engines"
    shutil.copytree(tiny_engines, engines)
    manifest = json.loads((engines / "manifest.json").read_text())
    manifest["source"]["model_dir"] = str(tmp_path / "moved_away")
    (engines / "manifest.json").write_text(json.dumps(manifest))
    other = tmp_path / "other"
    shutil.copytree(tiny_model_dir, other)
    (other / "vae" / "config.json").write_text((other / "vae" / "config.json").read_text() + " ")
    cases = [
        (["check", "--engines", str(engines)], "pass --model-dir (the manifest records"),
        (["check", "--engines", str(engines), "--model-dir", str(other)], "is not the source"),
        (["check", "--engines", str(engines), "--model-dir", str(tiny_model_dir), "--seine",
          str(tmp_path / "none.safetensors")], "does not exist"),
        (["check", "--engines", str(tmp_path / "nothing")], "does not exist"),
    ]
    for args, message in cases:
        code, _, err = run_cli(args)
        assert code == 2 and message in err, (args, err)
        assert len(err.strip().splitlines()) == 1


def test_psnr():
    a = np.zeros((8, 8, 3), np.uint8)
    b = a.copy()
    assert psnr(a, b) == math.inf
    b[0, 0, 0] = 255  # MSE = 255^2 / 192
    assert psnr(a, b) == pytest.approx(10 * math.log10(192))


def test_ssim_matches_a_hand_computed_window():
    """On an 11x11 image there is exactly one window: SSIM from its weighted moments by hand."""
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (11, 11)).astype(np.float64)
    y = np.clip(x + rng.normal(0, 20, (11, 11)), 0, 255)
    g = np.exp(-((np.arange(11) - 5) ** 2) / (2 * 1.5**2))
    w = np.outer(g, g) / np.outer(g, g).sum()
    mx, my = (w * x).sum(), (w * y).sum()
    vx, vy = (w * x * x).sum() - mx**2, (w * y * y).sum() - my**2
    cov = (w * x * y).sum() - mx * my
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    expected = ((2 * mx * my + c1) * (2 * cov + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    assert ssim(x, y) == pytest.approx(expected, rel=1e-12)
    assert ssim(x, x) == pytest.approx(1.0)
    assert torch.allclose(gaussian_window().sum(), torch.tensor(1.0, dtype=torch.float64))


def test_ssim_of_constant_images_is_the_luminance_term():
    a, b = np.full((16, 16, 3), 100.0), np.full((16, 16, 3), 120.0)
    c1 = (0.01 * 255) ** 2
    assert ssim(a, b) == pytest.approx((2 * 100 * 120 + c1) / (100**2 + 120**2 + c1))


def test_trt_cases_are_filtered_by_engine_profile():
    from types import SimpleNamespace

    import torch

    from mvg_rt.check.components import within_profile

    engine = SimpleNamespace(details={"profiles": {"sample": {"min": [1, 4, 8, 8], "opt": [2, 4, 8, 8],
                                                              "max": [2, 4, 16, 16]}}})
    assert within_profile(engine, {"sample": torch.zeros(2, 4, 16, 8), "timestep": torch.zeros(2)})
    assert not within_profile(engine, {"sample": torch.zeros(2, 4, 24, 8)})  # outside: reported, not compared
    assert not within_profile(engine, {"sample": torch.zeros(2, 4, 8)})  # wrong rank


def test_check_trt_without_tensorrt_is_one_line(tiny_engines, tiny_model_dir, run_cli):
    code, _, err = run_cli(["check", "--engines", str(tiny_engines), "--model-dir", str(tiny_model_dir),
                            "--backend", "trt", "--precision", "fp16", "--device", "cuda", "--skip-end-to-end"])
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
