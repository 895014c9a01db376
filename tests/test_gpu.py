"""GPU tests: TensorRT engines and CUDA graphs on the tiny model. Skipped, with the reason, without a GPU.

Tolerances are ``mvg-rt check``'s (``mvg_rt.check.tolerances``), so passing here means
the check passes too:

* FP32 engines and PyTorch FP32 references (TF32 off, the runtime's policy): max abs <= 1e-4 x max(1, max|ref|), cosine >= 0.99999 --
  float32 rounding only, in a different kernel order.
* FP16 engines: max abs <= 3e-2 x max(1, max|ref|), cosine >= 0.999. FP16 keeps 11
  significant bits (relative rounding 2^-11 ~ 4.9e-4 per operation); through the tens
  of normalised layers of a UNet/VAE the errors add up to ~1e-2 of the output scale,
  so 3e-2 leaves ~3x margin, while a wrong layer (a broken cast, a swapped input)
  drops the cosine far below 0.999.
* CUDA-graph replay vs eager: the same kernels on the same data, so agreement to
  1e-6 (in practice bitwise).
* End to end (FP16 TensorRT vs PyTorch FP32, same seed): every state and frame
  >= 35 dB PSNR, the acceptance bar for the fast path.
"""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mvg_rt.components import SEINE, TEXT_ENCODER, UNET, VAE_DECODER, VAE_ENCODER

HAS_CUDA = torch.cuda.is_available()
HAS_TRT = importlib.util.find_spec("tensorrt") is not None
needs_cuda = pytest.mark.skipif(not HAS_CUDA, reason="needs an NVIDIA GPU (CUDA): none on this machine")
needs_trt = pytest.mark.skipif(not (HAS_CUDA and HAS_TRT),
                               reason="needs an NVIDIA GPU and TensorRT 10 or 11: none on this machine")
pytestmark = pytest.mark.gpu

RESOLUTIONS = ("64", "32x96")


@pytest.fixture(autouse=True, scope="module")
def fp32_means_fp32():
    """The runtime's TF32 policy (off): PyTorch's default TF32 convolutions put the eager and graphed
    PIE rounds 6.5e-3 apart on an H200, against 1.1e-5 with TF32 off (the 1e-5 bar below)."""
    from mvg_rt.runtime.backends.precision import apply_tf32_policy

    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    apply_tf32_policy(tf32=False)
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before  # the tiny model's size and mvg-rt check's second, non-square size
FRAMES = (16, 5)


@pytest.fixture(scope="module")
def trt_engines(tiny_engines: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny engines folder with FP16 and FP32 TensorRT engines of every component."""
    from mvg_rt.commands.build import settings_from_options
    from mvg_rt.export.tensorrt_build import build_engines

    root = tmp_path_factory.mktemp("trt") / "tiny"
    shutil.copytree(tiny_engines, root)
    for precision in ("fp16", "fp32"):
        settings = settings_from_options({"resolutions": RESOLUTIONS, "frames": FRAMES, "precision": precision}, 64)
        build_engines(root, settings)
    return root


def _close(reference: torch.Tensor, candidate: torch.Tensor, precision: str) -> tuple[bool, str]:
    from mvg_rt.check.tolerances import COMPONENT

    tolerance = COMPONENT[precision]
    ref, out = reference.double().cpu().flatten(), candidate.double().cpu().flatten()
    max_abs = float((ref - out).abs().max())
    cosine = float(torch.nn.functional.cosine_similarity(ref, out, dim=0))
    limit = tolerance.max_abs * max(1.0, float(ref.abs().max()))
    return max_abs <= limit and cosine >= tolerance.cosine, f"max abs {max_abs:.3g} (limit {limit:.3g}), cos {cosine}"


def _component_feeds(tiny_runtime) -> list[tuple[object, dict[str, torch.Tensor]]]:
    from mvg_rt.runtime.pipelines.text import tokenize

    g = torch.Generator().manual_seed(0)
    ids = tokenize(tiny_runtime.model.tokenizer, ["", "severe cardiomegaly"])
    texts = tiny_runtime.backend.encode_text(ids)
    return [
        (TEXT_ENCODER, {"input_ids": ids}),
        (VAE_ENCODER, {"images": torch.rand(3, 3, 64, 64, generator=g) * 2 - 1}),
        (VAE_DECODER, {"latents": torch.randn(4, 4, 8, 8, generator=g)}),
        (UNET, {"sample": torch.randn(2, 4, 8, 12, generator=g), "timestep": torch.tensor([999.0, 1.0]),
                "encoder_hidden_states": texts}),
        (SEINE, {"sample": torch.randn(2, 9, 5, 8, 8, generator=g), "timestep": torch.tensor([500.0, 20.0]),
                 "encoder_hidden_states": texts}),
    ]


@needs_trt
def test_every_tiny_component_builds_and_loads(trt_engines: Path):
    from mvg_rt.artifacts.manifest import Manifest
    from mvg_rt.artifacts.tensorrt import check_engine, current_environment
    from mvg_rt.runtime.backends.tensorrt_backend import TrtBackend

    manifest = Manifest.read(trt_engines)
    environment = current_environment()
    for precision in ("fp16", "fp32"):
        engines = {a.component: a for a in manifest.artifacts if a.kind == "trt" and a.precision == precision}
        assert set(engines) == {"text_encoder", "vae_encoder", "vae_decoder", "unet", "seine"}
        for artifact in engines.values():
            check_engine(manifest, artifact, environment)
            assert artifact.details["device_memory_bytes"] >= 0 and artifact.size > 0
        assert engines["unet"].details["strongly_typed"] == (precision == "fp16")
        backend = TrtBackend(trt_engines, precision, "cuda")
        assert set(backend.engines) == set(engines)
        backend.close()
    assert (trt_engines / "timing.cache").stat().st_size > 0  # reused by the second build


@needs_trt
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_each_engine_matches_pytorch(trt_engines: Path, tiny_runtime, precision: str):
    from mvg_rt.runtime.backends.tensorrt_backend import TrtBackend

    backend = TrtBackend(trt_engines, precision, "cuda")
    failures = []
    for spec, feeds in _component_feeds(tiny_runtime):
        reference = tiny_runtime.backend.infer(spec, feeds)[spec.output_names[0]]
        out = backend.infer(spec, {k: v.cuda() for k, v in feeds.items()})[spec.output_names[0]]
        assert out.is_cuda and out.dtype == torch.float32 and out.shape == reference.shape
        ok, detail = _close(reference, out, precision)
        if not ok:
            failures.append(f"{spec.name}: {detail}")
    backend.close()
    assert not failures, failures


@needs_trt
def test_shape_outside_the_profile_is_one_line_with_the_build_command(trt_engines: Path):
    from mvg_rt.errors import MvgError
    from mvg_rt.runtime.backends.tensorrt_backend import TrtBackend

    backend = TrtBackend(trt_engines, "fp16", "cuda")
    with pytest.raises(MvgError) as err:
        backend.predict_noise(torch.zeros(2, 4, 16, 16, device="cuda"), torch.zeros(2, device="cuda"),
                              torch.zeros(2, 77, 32, device="cuda"))
    assert "unet: input sample has shape (2, 4, 16, 16)" in str(err.value)
    assert "--resolution 128x128" in str(err.value) and "\n" not in str(err.value)


@needs_cuda
def test_torch_cuda_graph_replay_equals_eager(tiny_model_dir: Path):
    from mvg_rt.runtime.graphs.component_graphs import GraphedBackend
    from mvg_rt.runtime.factory import RuntimeSpec, open_runtime

    eager = open_runtime(RuntimeSpec(model_dir=tiny_model_dir, device="cuda")).backend
    graphed = GraphedBackend(eager)
    g = torch.Generator().manual_seed(1)
    for _ in range(4):  # warm-up, capture, replays with new data each time
        feeds = (torch.randn(2, 4, 8, 8, generator=g).cuda(), torch.tensor([999.0, 1.0]).cuda(),
                 torch.randn(2, 77, 32, generator=g).cuda())
        assert torch.allclose(graphed.predict_noise(*feeds), eager.predict_noise(*feeds), atol=1e-6, rtol=0)
    assert graphed.cache.stats.captures == 1 and graphed.cache.stats.replays == 3


@needs_trt
def test_trt_cuda_graph_replay_equals_eager(trt_engines: Path):
    from mvg_rt.runtime.backends.tensorrt_backend import TrtBackend

    eager = TrtBackend(trt_engines, "fp16", "cuda")
    graphed = TrtBackend(trt_engines, "fp16", "cuda", cuda_graphs=True)
    g = torch.Generator().manual_seed(2)
    for shape in ((2, 4, 8, 8), (2, 4, 8, 8), (2, 4, 8, 8), (1, 4, 8, 12), (1, 4, 8, 12), (2, 4, 8, 8)):
        feeds = (torch.randn(*shape, generator=g).cuda(), torch.full((shape[0],), 500.0).cuda(),
                 torch.randn(shape[0], 77, 32, generator=g).cuda())
        assert torch.allclose(graphed.predict_noise(*feeds), eager.predict_noise(*feeds), atol=1e-6, rtol=0)
    stats = graphed.graphs.stats
    assert stats.captures >= 2 and stats.replays >= 3  # a new shape replaced the graph (one per component)


def _pie_args(runtime, device: str, scheduler: str | None = None):
    from mvg_rt.runtime.pipelines.pie import PieSettings
    from mvg_rt.runtime.pipelines.roi import latent_mask

    y, x = np.mgrid[0:64, 0:64] / 63.0
    image = torch.from_numpy((np.stack([0.5 + 0.3 * np.sin(3 * x) * np.cos(2 * y)] * 3, 2) * 255).astype(np.uint8))
    gray = np.zeros((64, 64), np.uint8)
    gray[16:48, 20:52] = 255
    settings = PieSettings(rounds=2, steps=10, strength=0.6, scheduler=scheduler)
    return (runtime.backend, runtime.model, settings, image.to(device),
            latent_mask(torch.from_numpy(gray), 8, 4), "severe cardiomegaly"), image


@needs_cuda
@pytest.mark.parametrize("scheduler", [None, "euler"])
def test_whole_step_graph_pie_round_equals_eager_torch(tiny_model_dir: Path, scheduler):
    from mvg_rt.runtime.factory import RuntimeSpec, open_runtime
    from mvg_rt.runtime.pipelines.pie import PieSession

    runtime = open_runtime(RuntimeSpec(model_dir=tiny_model_dir, device="cuda"))
    args, image = _pie_args(runtime, "cuda", scheduler)
    capture = runtime.backend.step_capture()
    eager, static, graphed = PieSession(*args, stepper="scheduler"), PieSession(*args), PieSession(*args, capture=capture)
    for seed in (0, 1):  # round 1 captures, round 2 only replays
        a = eager.round_latents(image.cuda(), torch.Generator().manual_seed(seed))
        b = static.round_latents(image.cuda(), torch.Generator().manual_seed(seed))
        c = graphed.round_latents(image.cuda(), torch.Generator().manual_seed(seed))
        assert torch.allclose(b, c, atol=1e-6, rtol=0)  # replay == the same step run eagerly
        assert float((a - c).abs().max()) <= 1e-5 * max(1.0, float(a.abs().max()))
    assert graphed.loop.graph.captures == 1 and graphed.loop.graph.replays == 2 * graphed.loop.steps - 1


@needs_trt
def test_whole_step_graphs_with_tensorrt(trt_engines: Path):
    from mvg_rt.runtime.factory import RuntimeSpec, open_runtime
    from mvg_rt.runtime.pipelines.pie import PieSession
    from mvg_rt.runtime.pipelines.transition import TransitionSampler, TransitionSettings

    runtime = open_runtime(RuntimeSpec(backend="trt", engines_dir=trt_engines, precision="fp16", device="cuda"))
    args, image = _pie_args(runtime, "cuda")
    capture = runtime.backend.step_capture()
    static, graphed = PieSession(*args), PieSession(*args, capture=capture)
    for seed in (0, 1):
        b = static.round_latents(image.cuda(), torch.Generator().manual_seed(seed))
        c = graphed.round_latents(image.cuda(), torch.Generator().manual_seed(seed))
        assert torch.allclose(b, c, atol=1e-6, rtol=0)
    settings = TransitionSettings(frames=5, steps=6)
    start, end = image.cuda(), image.flip(0).contiguous().cuda()
    eager_clip = TransitionSampler(runtime.backend, runtime.model, settings, "p")
    graphed_clip = TransitionSampler(runtime.backend, runtime.model, settings, "p", capture=capture)
    for seed in (0, 1):
        b = eager_clip.sample_latents(start, end, torch.Generator().manual_seed(seed))
        c = graphed_clip.sample_latents(start, end, torch.Generator().manual_seed(seed))
        assert torch.allclose(b, c, atol=1e-6, rtol=0)


@needs_trt
def test_low_memory_holds_one_stage_and_gives_the_same_result(trt_engines: Path):
    from mvg_rt.runtime.factory import RuntimeSpec, open_runtime
    from mvg_rt.runtime.pipelines.pie import PieSession
    from mvg_rt.runtime.pipelines.transition import TransitionSampler, TransitionSettings

    results, loaded = [], []
    for low_memory in (False, True):
        runtime = open_runtime(RuntimeSpec(backend="trt", engines_dir=trt_engines, precision="fp16", device="cuda",
                                               low_memory=low_memory))
        args, image = _pie_args(runtime, "cuda")
        state = PieSession(*args).run_round(image.cuda(), torch.Generator().manual_seed(0))
        clip = TransitionSampler(runtime.backend, runtime.model, TransitionSettings(frames=5, steps=3), "p").clip(
            image.cuda(), state, torch.ones(64, 64), torch.Generator().manual_seed(0))
        results.append((state.cpu(), clip.cpu()))
        loaded.append(set(runtime.backend.engines))
        runtime.backend.close()
    for normal, staged in zip(results[0], results[1]):  # same engines: same uint8 output (1 level for rounding)
        assert (normal.int() - staged.int()).abs().max() <= 1
    assert loaded[1] == {"vae_encoder", "seine", "vae_decoder"}  # the transition stage only


@needs_trt
@pytest.mark.parametrize("extra", [[], ["--cuda-graphs"]])
def test_simulate_trt_fp16_reaches_35_db_against_pytorch_fp32(trt_engines, tiny_model_dir, tmp_path, image_64,
                                                              run_cli, extra):
    from mvg_rt.eval.metrics import psnr

    Image.fromarray(image_64).save(tmp_path / "x.png")
    common = ["simulate", "--image", str(tmp_path / "x.png"), "--prompt", "severe cardiomegaly", "--roi-ellipse",
              "32,30,18,14", "--feather", "4", "--rounds", "2", "--steps", "6", "--strength", "0.5", "--frames", "5",
              "--transition-steps", "4", "--seed", "3"]
    code, _, err = run_cli([*common, "--model-dir", str(tiny_model_dir), "--out", str(tmp_path / "torch")])
    assert code == 0, err
    code, _, err = run_cli([*common, "--backend", "trt", "--engines", str(trt_engines), "--precision", "fp16",
                            "--device", "cuda", *extra, "--out", str(tmp_path / "trt")])
    assert code == 0, err
    for folder in ("states", "frames"):
        names = sorted(p.name for p in (tmp_path / "torch" / folder).iterdir())
        assert names == sorted(p.name for p in (tmp_path / "trt" / folder).iterdir())
        for name in names:
            a = np.asarray(Image.open(tmp_path / "torch" / folder / name))
            b = np.asarray(Image.open(tmp_path / "trt" / folder / name))
            assert psnr(a, b) >= 35.0, (folder, name, psnr(a, b))
