"""CUDA-graph bookkeeping and the static-buffer loops, exercised on the CPU with real computation.

No CUDA is faked: :class:`EagerCapture` "captures" by recording the call and "replays"
by running it again on the static buffers, so every result below is a real
computation and the assertions are about the decisions (what is captured, when,
what is replayed, what is dropped) and about the loops' math.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mvg_rt.components import UNET, VAE_ENCODER
from mvg_rt.runtime.graphs.component_graphs import GraphCache, GraphedBackend, GraphKey
from mvg_rt.runtime.graphs.capture import EagerCapture
from mvg_rt.runtime.graphs.step_graph import LoopGraph
from mvg_rt.runtime.pipelines.pie import PieSession, PieSettings
from mvg_rt.runtime.pipelines.roi import latent_mask
from mvg_rt.runtime.pipelines.transition import TransitionSampler, TransitionSettings


class Recorder:
    """A real computation that counts its calls."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, feeds: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        self.calls += 1
        return {"y": feeds["x"] * 2 + 1}


def _cache(**kwargs) -> tuple[GraphCache, list[EagerCapture]]:
    captures: list[EagerCapture] = []

    def capture(call, inputs):
        captures.append(EagerCapture.capture(call, inputs))
        return captures[-1]

    return GraphCache(capture, **kwargs), captures


def test_warmup_then_capture_then_replay_with_new_feeds():
    cache, captures = _cache(warmup=2, components=None)
    call = Recorder()
    for k in range(5):
        x = torch.full((2, 3), float(k))
        out = cache.run("unet", {"x": x}, call)
        assert torch.equal(out["y"], x * 2 + 1)  # replays see the new feeds: they were copied in
    assert cache.stats.eager == 2 and cache.stats.captures == 1 and cache.stats.replays == 3
    assert len(captures) == 1 and captures[0].replays == 3
    assert cache.captured() == [GraphKey("unet", (("x", (2, 3), "float32"),))]
    out_identity = cache.run("unet", {"x": torch.zeros(2, 3)}, call)["y"]
    assert out_identity is cache.run("unet", {"x": torch.ones(2, 3)}, call)["y"]  # static output buffer


def test_a_new_shape_or_dtype_is_a_new_capture_and_other_components_stay_eager():
    cache, captures = _cache(warmup=0)
    call = Recorder()
    cache.run("unet", {"x": torch.zeros(2, 4)}, call)
    cache.run("unet", {"x": torch.zeros(1, 4)}, call)
    cache.run("unet", {"x": torch.zeros(1, 4, dtype=torch.float64)}, call)
    cache.run("unet", {"x": torch.zeros(2, 4)}, call)  # replayed, not captured again
    assert cache.stats.captures == 3 and cache.stats.replays == 4
    for _ in range(3):
        cache.run("vae_decoder", {"x": torch.zeros(1, 4)}, call)  # not a graphed component by default
    assert cache.stats.eager == 3 and not cache.captured("vae_decoder")


def test_one_graph_per_component_recaptures_when_the_shape_changes():
    """The TensorRT policy: the context holds one set of shapes, so a new shape replaces the graph."""
    cache, _ = _cache(warmup=1, max_per_component=1)
    call = Recorder()
    a, b = {"x": torch.zeros(2, 4)}, {"x": torch.zeros(1, 4)}
    cache.run("unet", a, call)  # warm-up
    cache.run("unet", a, call)  # capture
    assert [k.inputs[0][1] for k in cache.captured("unet")] == [(2, 4)]
    cache.run("unet", b, call)  # warm-up of the new shape; a's graph still replays
    cache.run("unet", a, call)
    assert cache.stats.replays == 2
    cache.run("unet", b, call)  # capture b, drop a
    assert [k.inputs[0][1] for k in cache.captured("unet")] == [(1, 4)]
    eager = cache.stats.eager
    cache.run("unet", a, call)  # a warms up again before its re-capture
    assert cache.stats.eager == eager + 1 and cache.stats.invalidated == 1


def test_invalidate_drops_graphs_and_warmup_restarts():
    cache, _ = _cache(warmup=1, components=None)
    call = Recorder()
    for name in ("unet", "seine", "unet", "seine"):
        cache.run(name, {"x": torch.zeros(3)}, call)
    assert len(cache.captured()) == 2
    assert cache.invalidate("unet") == 1 and [k.component for k in cache.captured()] == ["seine"]
    cache.run("unet", {"x": torch.zeros(3)}, call)
    assert not cache.captured("unet")  # warming up again
    assert cache.invalidate() == 1 and cache.captured() == []


def test_calls_inside_a_capture_run_straight_through():
    capturing = [True]
    cache, captures = _cache(warmup=0, is_capturing=lambda: capturing[0])
    call = Recorder()
    out = cache.run("unet", {"x": torch.ones(2)}, call)
    assert torch.equal(out["y"], torch.full((2,), 3.0)) and not captures and cache.stats.passthrough == 1


def test_graphed_backend_outputs_survive_later_calls(tiny_runtime):
    """PIE keeps the original's VAE moments for the whole run: replayed outputs must be copies."""
    cache, _ = _cache(warmup=1, components=("vae_encoder", "unet"))
    backend = GraphedBackend(tiny_runtime.backend, cache)
    images = [torch.rand(1, 3, 64, 64) * 2 - 1 for _ in range(4)]
    kept = [backend.encode_images(x) for x in images]
    for x, moments in zip(images, kept):
        assert torch.equal(moments, tiny_runtime.backend.encode_images(x))
    assert cache.stats.captures == 1 and cache.stats.replays == 3
    feeds = (torch.randn(2, 4, 8, 8), torch.tensor([999.0, 1.0]), torch.randn(2, 77, 32))
    for _ in range(3):
        assert torch.equal(backend.predict_noise(*feeds), tiny_runtime.backend.predict_noise(*feeds))
    assert backend.describe()["cuda_graphs"]["captured"][0].startswith("vae_encoder(")
    assert {k.component for k in cache.captured()} == {VAE_ENCODER.name, UNET.name}


def test_loop_graph_warms_up_captures_once_and_recaptures_on_a_new_generation():
    state = {"x": 0, "generation": 0}
    captures: list[EagerCapture] = []

    def capture(call, inputs):
        captures.append(EagerCapture.capture(call, inputs))
        return captures[-1]

    def step() -> None:
        state["x"] += 1

    loop = LoopGraph(step, capture, warmup=2, generation=lambda: state["generation"])
    loop.run(5)
    assert state["x"] == 5 and len(captures) == 1 and captures[0].replays == 3
    loop.run(4)  # the next round: replays only
    assert state["x"] == 9 and len(captures) == 1 and captures[0].replays == 7
    state["generation"] += 1  # e.g. the backend reallocated its buffers
    loop.run(3)
    assert state["x"] == 12 and len(captures) == 2 and captures[1].replays == 1


# ------------------------------------------------------------------ static-buffer loops vs the pipelines


def _capture_recorder():
    captures: list[EagerCapture] = []

    def capture(call, inputs):
        captures.append(EagerCapture.capture(call, inputs))
        return captures[-1]

    return capture, captures


@pytest.fixture(scope="module")
def image() -> torch.Tensor:
    y, x = np.mgrid[0:64, 0:64] / 63.0
    gray = 0.5 + 0.35 * np.sin(3 * x) * np.cos(2 * y)
    return torch.from_numpy((np.stack([gray, gray * 0.9, gray * 0.8], axis=2) * 255).round().astype(np.uint8))


@pytest.fixture(scope="module")
def mask() -> torch.Tensor:
    gray = np.zeros((64, 64), np.uint8)
    gray[16:48, 20:52] = 255
    gray[16:48, 18:20] = 128
    return latent_mask(torch.from_numpy(gray), 8, 4)


@torch.no_grad()
@pytest.mark.parametrize("scheduler, guidance", [(None, 7.5), ("ddim", 7.5), ("euler", 1.0), ("dpm-multistep", 7.5)])
@pytest.mark.parametrize("captured", [False, True], ids=["eager", "captured"])
def test_static_pie_round_equals_the_eager_round(tiny_runtime, image, mask, scheduler, guidance, captured):
    """Two rounds, same seed: the device-table step, run eagerly or as replays of a captured step, gives the
    latents of PieSession stepping with diffusers' own scheduler."""
    settings = PieSettings(rounds=2, steps=10, strength=0.6, scheduler=scheduler, guidance_scale=guidance)
    args = (tiny_runtime.backend, tiny_runtime.model, settings, image, mask, "severe cardiomegaly")
    eager = PieSession(*args, stepper="scheduler")
    static = PieSession(*args, stepper="tables", capture=_capture_recorder()[0] if captured else None)
    g_eager, g_static = torch.Generator().manual_seed(4), torch.Generator().manual_seed(4)
    previous = image
    steps_seen: list[tuple[int, int, int]] = []
    for round_index in (1, 2):
        expected = eager.round_latents(previous, g_eager, round_index)
        got = static.round_latents(previous, g_static, round_index, on_step=lambda *a: steps_seen.append(a))
        assert float((got - expected).abs().max()) <= 1e-5 * max(1.0, float(expected.abs().max()))
        previous = eager.run_round(previous, torch.Generator().manual_seed(round_index))
    assert torch.equal(g_eager.get_state(), g_static.get_state())  # the same random numbers were drawn
    assert steps_seen[-1] == (2, len(static.step_tables), len(static.step_tables))


@torch.no_grad()
def test_pie_loop_capture_logic_with_eager_capture(tiny_runtime, image, mask):
    """One step captured per session and replayed for every other step of every round; the parity policy:
    eager and captured loops run the same table step, so they agree bitwise."""
    capture, captures = _capture_recorder()
    settings = PieSettings(rounds=2, steps=8, strength=0.5, scheduler="ddim")
    args = (tiny_runtime.backend, tiny_runtime.model, settings, image, mask, "severe cardiomegaly")
    graphed = PieSession(*args, capture=capture, warmup=1)
    eager = PieSession(*args)
    for seed in (1, 2):
        expected = eager.round_latents(image, torch.Generator().manual_seed(seed))
        got = graphed.round_latents(image, torch.Generator().manual_seed(seed))
        assert torch.equal(got, expected)
    steps = graphed.loop.steps
    assert len(captures) == 1 and captures[0].replays == 2 * steps - 1  # round 1: 1 warm-up step


@torch.no_grad()
@pytest.mark.parametrize("sampler, chunk", [("ddpm", 25), ("ddpm", 2), ("ddim", 25), ("dpm++2m", 25),
                                            ("unipc", 25)])
def test_static_clip_equals_the_eager_clip(tiny_runtime, image, sampler, chunk):
    """SEINE clip, same seed, every sampler (multistep ones included): the captured step's latents are the eager
    step's, bitwise; DDPM noise drawn (whole or in chunks) in the same order."""
    settings = TransitionSettings(frames=4, steps=5, sampler=sampler)
    start, end = image, image.flip(0).contiguous()
    eager = TransitionSampler(tiny_runtime.backend, tiny_runtime.model, settings, "severe cardiomegaly",
                              noise_chunk=chunk + 1)
    capture, captures = _capture_recorder()
    static = TransitionSampler(tiny_runtime.backend, tiny_runtime.model, settings, "severe cardiomegaly",
                               capture=capture, noise_chunk=chunk)
    for seed in (0, 1):
        g_eager, g_static = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed)
        expected = eager.sample_latents(start, end, g_eager)
        got = static.sample_latents(start, end, g_static)
        assert torch.equal(got, expected)
        assert torch.equal(g_eager.get_state(), g_static.get_state())
    assert len(captures) == 1 and captures[0].replays == 2 * 5 - 1


def test_gpu_only_options_are_refused_on_cpu_in_one_line(run_cli, tmp_path, tiny_model_dir, image):
    from PIL import Image

    Image.fromarray(image.numpy()).save(tmp_path / "x.png")
    base = ["simulate", "--model-dir", str(tiny_model_dir), "--image", str(tmp_path / "x.png"), "--prompt", "p",
            "--rounds", "1", "--steps", "2", "--no-transition"]
    cases = [(["--cuda-graphs"], "--cuda-graphs needs a CUDA device"),
             (["--low-memory"], "--low-memory loads TensorRT engines one stage at a time; it applies to --backend trt: "
                                "drop it or use --backend trt"),  # on any device: refused for what it is first
             (["--precision", "fp16"], "--precision fp16 with --backend torch runs on a GPU")]
    for extra, message in cases:
        code, _, err = run_cli([*base, *extra, "--out", str(tmp_path / "x")])
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err


def test_ort_captures_its_own_graphs_and_runs_whole_steps_eagerly(tiny_engines):
    """ONNX Runtime's calls are not captured inside a whole-step graph: its capability says so, no name test."""
    from mvg_rt.runtime.backends.onnxruntime_backend import OrtBackend

    assert OrtBackend(tiny_engines).step_capture() is None
