"""The ONNX Runtime backend: end-to-end parity with PyTorch, shape checks, integrity checks, CLI errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mvg_rt.components import SEINE, TEXT_ENCODER, UNET, VAE_DECODER, VAE_ENCODER
from mvg_rt.errors import MvgError
from mvg_rt.eval.metrics import psnr
from mvg_rt.artifacts.manifest import Manifest

FAST = ["--rounds", "2", "--steps", "6", "--strength", "0.5", "--seed", "3"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def ort_backend(tiny_engines: Path):
    from mvg_rt.runtime.backends.onnxruntime_backend import OrtBackend

    return OrtBackend(tiny_engines, "fp32")


def test_simulate_ort_reproduces_torch(tmp_path: Path, tiny_model_dir: Path, tiny_engines: Path, xray: Path, run_cli):
    """Same seed, FP32 artifacts: every state >= 45 dB PSNR against the PyTorch backend (PIE only: the
    transition clips are compared by ``mvg-rt check``, see tests/test_check.py)."""
    common = ["simulate", "--image", str(xray), "--prompt", "severe cardiomegaly", "--roi-ellipse", "32,30,18,14",
              "--feather", "4", "--no-transition", *FAST]
    code, _, err = run_cli([*common, "--model-dir", str(tiny_model_dir), "--out", str(tmp_path / "torch")])
    assert code == 0, err
    code, _, err = run_cli([*common, "--backend", "ort", "--engines", str(tiny_engines), "--out",
                            str(tmp_path / "ort")])
    assert code == 0, err
    states = sorted(p.name for p in (tmp_path / "torch" / "states").iterdir())
    assert len(states) == 3 and states == sorted(p.name for p in (tmp_path / "ort" / "states").iterdir())
    for name in states:
        a = np.asarray(Image.open(tmp_path / "torch" / "states" / name))
        b = np.asarray(Image.open(tmp_path / "ort" / "states" / name))
        assert psnr(a, b) >= 45.0, name
    record = json.loads((tmp_path / "ort" / "run.json").read_text())
    assert record["backend"]["backend"] == "ort" and record["backend"]["precision"] == "fp32"
    torch_record = json.loads((tmp_path / "torch" / "run.json").read_text())
    assert record["model"]["model_dir_sha256"] == torch_record["model"]["model_dir_sha256"]


def test_fp16_artifacts_run_pie_on_cpu(tiny_engines: Path, tiny_runtime):
    from mvg_rt.check.end_to_end import synthetic_case
    from mvg_rt.runtime.factory import RuntimeSpec, open_runtime
    from mvg_rt.runtime.pipelines.pie import PieSettings
    from mvg_rt.check.end_to_end import pie_states

    image, roi = synthetic_case(64)
    settings = PieSettings(rounds=1, steps=4, strength=0.5)
    fp16 = pie_states(open_runtime(RuntimeSpec(backend="ort", engines_dir=tiny_engines, precision="fp16")), image, roi, settings, seed=0)
    fp32 = pie_states(tiny_runtime, image, roi, settings, seed=0)
    assert psnr(fp32[1], fp16[1]) >= 30.0  # the FP16 end-to-end tolerance


@pytest.mark.parametrize("component, feeds, message", [
    (UNET, {"sample": (2, 5, 8, 8), "timestep": (2,), "encoder_hidden_states": (2, 77, 32)},
     "unet: input sample has shape (2, 5, 8, 8), allowed (batch, 4, latent_height, latent_width)"),
    (UNET, {"sample": (2, 4, 8, 8), "timestep": (2,), "encoder_hidden_states": (2, 77, 48)},
     "input encoder_hidden_states has shape (2, 77, 48), allowed (batch, 77, 32)"),
    (UNET, {"sample": (2, 4, 8, 8), "timestep": (3,), "encoder_hidden_states": (2, 77, 32)},
     "batch is 3 here but 2 in another input"),
    (UNET, {"sample": (2, 4, 7, 8), "timestep": (2,), "encoder_hidden_states": (2, 77, 32)},
     "latent_height must be >= 2 and a multiple of 2"),
    (TEXT_ENCODER, {"input_ids": (2, 76)}, "text_encoder: input input_ids has shape (2, 76), allowed (batch, 77)"),
    (VAE_ENCODER, {"images": (1, 3, 60, 64)}, "height must be >= 8 and a multiple of 8"),
    (VAE_DECODER, {"latents": (1, 4, 8)}, "3 dims instead of 4"),
    (SEINE, {"sample": (1, 4, 3, 8, 8), "timestep": (1,), "encoder_hidden_states": (1, 77, 32)},
     "seine: input sample has shape (1, 4, 3, 8, 8), allowed (batch, 9, frames, latent_height, latent_width)"),
])
def test_shapes_outside_the_exported_axes_are_one_line_errors(ort_backend, component, feeds, message):
    tensors = {name: torch.zeros(shape, dtype=torch.int64 if name == "input_ids" else torch.float32)
               for name, shape in feeds.items()}
    with pytest.raises(MvgError) as err:
        ort_backend.infer(component, tensors)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_feeds_are_checked_once_per_shape_combination(tiny_engines: Path, monkeypatch):
    """Backend.infer checks against the backend's declarations, and a denoising loop's repeated shapes only once;
    a refused shape is refused every time."""
    from mvg_rt.runtime.backends.onnxruntime_backend import OrtBackend

    backend = OrtBackend(tiny_engines, "fp32")
    asked = []
    declared = backend.input_metadata
    monkeypatch.setattr(backend, "input_metadata", lambda component: asked.append(component.name) or declared(component))
    for batch in (2, 2, 2, 1, 2):
        backend.predict_noise(torch.zeros(batch, 4, 8, 8), torch.ones(batch), torch.zeros(batch, 77, 32))
    assert asked == ["unet", "unet"]  # batch 2, then batch 1
    for _ in range(2):
        with pytest.raises(MvgError, match="batch is 3 here but 2 in another input"):
            backend.predict_noise(torch.zeros(2, 4, 8, 8), torch.ones(3), torch.zeros(2, 77, 32))
    assert asked == ["unet"] * 4
    with pytest.raises(MvgError, match=r"unet: input timestep was not fed \(inputs: sample, timestep, "
                                       r"encoder_hidden_states\)"):
        backend.infer(UNET, {"sample": torch.zeros(2, 4, 8, 8), "encoder_hidden_states": torch.zeros(2, 77, 32)})


def test_variable_shapes_inside_the_axes_run(ort_backend):
    out = ort_backend.predict_noise(torch.zeros(3, 4, 6, 10), torch.tensor([1.0, 500.0, 999.0]), torch.zeros(3, 77, 32))
    assert out.shape == (3, 4, 6, 10) and out.dtype == torch.float32
    video = ort_backend.predict_video_noise(torch.zeros(1, 9, 7, 4, 6), torch.tensor([10.0]), torch.zeros(1, 77, 32))
    assert video.shape == (1, 4, 7, 4, 6)
    assert ort_backend.describe()["precision"] == "fp32"


def _copy(tiny_engines: Path, tmp_path: Path) -> Path:
    out = tmp_path / "engines"
    shutil.copytree(tiny_engines, out)
    return out


def test_integrity_failures_are_one_line_errors(tiny_engines: Path, tmp_path: Path):
    from mvg_rt.runtime.factory import RuntimeSpec, open_runtime

    engines = _copy(tiny_engines, tmp_path)
    manifest_path = engines / "manifest.json"
    original = manifest_path.read_text()

    (engines / "vae_decoder" / "model.onnx").unlink()
    with pytest.raises(MvgError, match=r"vae_decoder file vae_decoder/model.onnx is missing; re-export"):
        open_runtime(RuntimeSpec(backend="ort", engines_dir=engines))
    shutil.copy(tiny_engines / "vae_decoder" / "model.onnx", engines / "vae_decoder" / "model.onnx")

    with open(engines / "unet" / "model.onnx", "ab") as handle:  # a stale/edited file
        handle.write(b"\0")
    with pytest.raises(MvgError, match=r"unet file unet/model.onnx changed since export"):
        open_runtime(RuntimeSpec(backend="ort", engines_dir=engines))
    shutil.copy(tiny_engines / "unet" / "model.onnx", engines / "unet" / "model.onnx")

    data = json.loads(original)
    data["artifacts"] = [a for a in data["artifacts"] if a["component"] != "vae_encoder"]
    manifest_path.write_text(json.dumps(data))
    with pytest.raises(MvgError, match=r"has no fp32 onnx artifact for vae_encoder"):
        open_runtime(RuntimeSpec(backend="ort", engines_dir=engines))

    manifest_path.write_text(original[:-40])
    with pytest.raises(MvgError, match="is not valid JSON"):
        open_runtime(RuntimeSpec(backend="ort", engines_dir=engines))
    manifest_path.write_text(original.replace('"format_version": 1', '"format_version": 99'))
    with pytest.raises(MvgError, match="format version 99"):
        open_runtime(RuntimeSpec(backend="ort", engines_dir=engines))


def test_verified_hashes_are_cached_until_a_file_changes(tiny_engines: Path, tmp_path: Path, monkeypatch):
    from mvg_rt.artifacts import hashing as manifest_module

    engines = _copy(tiny_engines, tmp_path)
    calls: list[str] = []
    real = manifest_module.sha256_file
    monkeypatch.setattr(manifest_module, "sha256_file", lambda p: calls.append(str(p)) or real(p))
    manifest = Manifest.read(engines)
    unet = manifest.require("unet")
    manifest.verify(unet)
    assert len(calls) == 1
    manifest.verify(unet)
    assert len(calls) == 1  # cached by (size, mtime, ctime, inode)
    path = engines / unet.file
    path.write_bytes(path.read_bytes())  # same content, rewritten: hashed again, still valid
    manifest.verify(unet)
    assert len(calls) == 2


def test_simulate_bad_engine_input_exits_2_without_traceback(tmp_path: Path, tiny_engines: Path, tiny_model_dir: Path,
                                                             xray: Path, run_cli):
    engines = _copy(tiny_engines, tmp_path)
    shutil.rmtree(engines / "unet")
    base = ["simulate", "--image", str(xray), "--prompt", "p", "--rounds", "1", "--steps", "2", "--strength", "0.5",
            "--no-transition",
            "--backend", "ort"]
    other = tmp_path / "other_model"
    shutil.copytree(tiny_model_dir, other)
    (other / "scheduler" / "scheduler_config.json").write_text('{"_class_name": "DDIMScheduler"}')
    cases = [
        ([*base, "--engines", str(engines), "--out", str(tmp_path / "a")], "unet file unet/model.onnx is missing"),
        ([*base, "--out", str(tmp_path / "b")], "--backend ort needs --engines"),
        ([*base, "--engines", str(tmp_path / "nowhere"), "--out", str(tmp_path / "c")], "does not exist"),
        ([*base, "--engines", str(tiny_engines), "--model-dir", str(other), "--out", str(tmp_path / "d")],
         "is not the source"),
        ([*base[:-2], "--engines", str(tiny_engines), "--out", str(tmp_path / "e")], "--engines is read by"),
    ]
    for args, message in cases:
        code, _, err = run_cli(args)
        assert code == 2 and message in err, (args, err)
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU with onnxruntime-gpu (CUDA EP, "
                    "I/O binding, CUDA graphs); this machine has none")
@pytest.mark.parametrize("cuda_graph", [False, True])
def test_cuda_io_binding_matches_cpu(tiny_engines: Path, ort_backend, cuda_graph: bool):
    from mvg_rt.runtime.backends.onnxruntime_backend import OrtBackend, OrtSettings

    gpu = OrtBackend(tiny_engines, "fp32", "cuda", OrtSettings(cuda_graph=cuda_graph))
    feeds = (torch.randn(2, 4, 8, 8), torch.tensor([999.0, 1.0]), torch.randn(2, 77, 32))
    expected = ort_backend.predict_noise(*feeds)
    for _ in range(3):  # capture, then replays
        out = gpu.predict_noise(*(t.cuda() for t in feeds))
        assert out.is_cuda and torch.allclose(out.cpu(), expected, atol=1e-4)
