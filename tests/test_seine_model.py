"""SEINE denoiser: architecture fidelity to the official checkpoint, numerics of its parts, loading, export."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import pytest
import torch

from mvg_rt.errors import MvgError
from mvg_rt.models.seine_checkpoint import (
    load_seine_model,
    load_seine_state_dict,
    save_seine_checkpoint,
    seine_from_unet2d,
)
from mvg_rt.models.seine_unet import (
    ROTARY_FREQS_KEY,
    SeineConfig,
    SeineUNet3D,
    TemporalAttention,
    apply_rotary,
    load_builtin_config,
    relative_position_bucket,
    rotary_inv_freq,
)

FIXTURE = Path(__file__).parent / "fixtures" / "seine_full_keys.json"
TEXT_LEN = 77


@pytest.fixture(scope="module")
def official_listing() -> dict:
    return json.loads(FIXTURE.read_text())


@pytest.fixture(scope="module")
def tiny_config() -> SeineConfig:
    return load_builtin_config("tiny")


def tiny_model(config: SeineConfig, seed: int = 0, live_temporal: bool = True) -> SeineUNet3D:
    """A random tiny model; ``live_temporal`` replaces SEINE's zero init of the temporal output weights."""
    torch.manual_seed(seed)
    model = SeineUNet3D(config).eval()
    if live_temporal:
        with torch.no_grad():
            for name, param in model.named_parameters():
                if "attn_temp.to_out" in name or "relative_attention_bias" in name:
                    param.normal_(0.0, 0.3)
    return model


def inputs(config: SeineConfig, batch: int = 2, frames: int = 4, size: tuple[int, int] = (8, 8), seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    sample = torch.randn(batch, config.in_channels, frames, *size, generator=g)
    timestep = torch.rand(batch, generator=g) * 999
    context = torch.randn(batch, TEXT_LEN, config.cross_attention_dim, generator=g)
    return sample, timestep, context


def with_rotary_freqs(model: SeineUNet3D, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` as rotary-embedding-torch versions that store the frequencies would save it."""
    freqs = rotary_inv_freq(model.config.rotary_dim)
    return state | {key: freqs.clone() for key in model.optional_state_keys()}


# --------------------------------------------------------------------------- architecture vs official


def test_full_model_has_the_official_tensors(official_listing: dict) -> None:
    official = official_listing["tensors"]
    with torch.device("meta"):
        model = SeineUNet3D(load_builtin_config("full"))
    ours = {k: list(v.shape) for k, v in model.state_dict().items()}
    optional = set(model.optional_state_keys())

    assert len(official) == official_listing["num_tensors"] == 830
    assert optional <= set(official) and len(optional) == 16
    assert ours == {k: v for k, v in official.items() if k not in optional}
    n_params = sum(math.prod(shape) for shape in ours.values())
    assert n_params + model.config.rotary_dim // 2 == official_listing["num_parameters"] == 909_138_516


def test_full_config_is_the_dataclass_default() -> None:
    assert load_builtin_config("full") == SeineConfig()


@pytest.mark.parametrize("freqs", [False, True], ids=["without_freqs", "with_freqs"])
def test_official_state_dict_loads_strictly_on_meta(official_listing: dict, freqs: bool) -> None:
    official = official_listing["tensors"]
    state = {k: torch.empty(shape, device="meta") for k, shape in official.items()
             if freqs or not k.endswith(ROTARY_FREQS_KEY)}
    with torch.device("meta"):
        model = SeineUNet3D(load_builtin_config("full"))
    model.load_state_dict(state, strict=True, assign=True)
    assert model.conv_in.weight.shape == (320, 9, 3, 3)


@pytest.mark.parametrize("freqs", [False, True], ids=["without_freqs", "with_freqs"])
def test_tiny_state_dict_loads_strictly(tiny_config: SeineConfig, freqs: bool) -> None:
    source, target = tiny_model(tiny_config, seed=0), tiny_model(tiny_config, seed=1)
    state = with_rotary_freqs(source, source.state_dict()) if freqs else source.state_dict()
    target.load_state_dict(state, strict=True)
    pairs = zip(source.state_dict().values(), target.state_dict().values(), strict=True)
    assert all(torch.equal(a, b) for a, b in pairs)


def test_wrong_rotary_freqs_are_refused(tiny_config: SeineConfig) -> None:
    model = tiny_model(tiny_config)
    state = with_rotary_freqs(model, model.state_dict())
    state[model.optional_state_keys()[0]] = torch.ones(tiny_config.rotary_dim // 2)
    with pytest.raises(RuntimeError, match=r"rotary_emb\.freqs: values differ"):
        model.load_state_dict(state)


def test_loader_reports_wrong_rotary_freqs_in_one_line(tiny_config: SeineConfig, tmp_path: Path) -> None:
    model = tiny_model(tiny_config)
    state = with_rotary_freqs(model, model.state_dict())
    state[model.optional_state_keys()[-1]] = torch.ones(tiny_config.rotary_dim // 2)
    torch.save({"ema": state}, tmp_path / "seine.pt")
    with pytest.raises(MvgError, match=r"does not fit the SEINE architecture: .*rotary_emb\.freqs: values differ"):
        load_seine_model(tmp_path / "seine.pt", tiny_config)


# --------------------------------------------------------------------------- forward behaviour


@pytest.mark.parametrize("frames", [3, 4, 7])
def test_forward_shape(tiny_config: SeineConfig, frames: int) -> None:
    model = tiny_model(tiny_config)
    with torch.no_grad():
        out = model(*inputs(tiny_config, batch=2, frames=frames))
    assert out.shape == (2, tiny_config.out_channels, frames, 8, 8)
    assert torch.isfinite(out).all()


def test_latent_size_not_a_multiple_of_the_downsampling(tiny_config: SeineConfig) -> None:
    with torch.no_grad():
        out = tiny_model(tiny_config)(*inputs(tiny_config, batch=1, frames=3, size=(7, 10)))
    assert out.shape == (1, 4, 3, 7, 10)


def test_frames_influence_each_other(tiny_config: SeineConfig) -> None:
    model = tiny_model(tiny_config)
    sample, timestep, context = inputs(tiny_config, frames=6)
    nudged = sample.clone()
    nudged[:, :, 0] += 1.0
    with torch.no_grad():
        base, moved = model(sample, timestep, context), model(nudged, timestep, context)
    assert (moved[:, :, 3:] - base[:, :, 3:]).abs().amax() > 1e-3


def test_temporal_attention_mixes_frames_only_when_its_output_weight_is_live(tiny_config: SeineConfig) -> None:
    attn = TemporalAttention(32, heads=8, config=tiny_config).eval()
    x = torch.randn(5, 6, 32)
    nudged = x.clone()
    nudged[:, 0] += 1.0
    with torch.no_grad():
        # SEINE's init (zero output weight): the layer outputs its bias whatever the input.
        torch.testing.assert_close(attn(nudged), attn(x), rtol=0, atol=0)
        attn.to_out[0].weight.normal_()
        change = (attn(nudged) - attn(x))[:, 3:]
    assert change.abs().amax() > 1e-3


def test_batch_items_are_independent(tiny_config: SeineConfig) -> None:
    model = tiny_model(tiny_config)
    sample, timestep, context = inputs(tiny_config, batch=2, frames=4)
    nudged = sample.clone()
    nudged[0] += 1.0
    with torch.no_grad():
        base, moved = model(sample, timestep, context), model(nudged, timestep, context)
    torch.testing.assert_close(moved[1], base[1], rtol=0, atol=1e-6)
    assert (moved[0] - base[0]).abs().amax() > 1e-3


# --------------------------------------------------------------------------- fused attention


def explicit_attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float,
                    bias: torch.Tensor | None = None) -> torch.Tensor:
    """The attention SEINE's module computed before SDPA: scaled scores, additive bias, softmax, values."""
    scores = (q * scale) @ k.transpose(-1, -2)
    if bias is not None:
        scores = scores + bias
    return scores.softmax(dim=-1) @ v


@pytest.mark.usefixtures("one_torch_thread")
def test_sdpa_attention_equals_the_explicit_math(tiny_config: SeineConfig, monkeypatch: pytest.MonkeyPatch) -> None:
    """Spatial, cross and temporal (rotary + relative bias) attention through SDPA == the explicit
    matmul/softmax, over the whole model in FP32 (the issue's bar: <= 1e-5 relative)."""
    from mvg_rt.models import seine_unet

    model = tiny_model(tiny_config)
    feeds = inputs(tiny_config, batch=2, frames=5, size=(8, 10))
    calls = []

    def counted(*args: torch.Tensor) -> torch.Tensor:
        calls.append(len(args))
        return explicit_attend(*args)

    with torch.no_grad():
        fused = model(*feeds)
        monkeypatch.setattr(seine_unet, "attend", counted)
        reference = model(*feeds)
    assert sorted(set(calls)) == [4, 5]  # spatial/cross (no bias) and temporal (bias) both went through it
    assert float((fused - reference).abs().max()) <= 1e-5 * float(reference.abs().max())


def test_sdpa_temporal_attention_uses_the_bias_per_head() -> None:
    """The (heads, F, F) bias broadcasts over the batch exactly as the explicit ``scores + bias`` did."""
    from mvg_rt.models.seine_unet import attend

    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(5, 4, 7, 8, generator=g) for _ in range(3))
    bias = torch.randn(4, 7, 7, generator=g) * 3
    torch.testing.assert_close(attend(q, k, v, 8 ** -0.5, bias), explicit_attend(q, k, v, 8 ** -0.5, bias),
                               rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------- rotary embedding, position bias


def reference_bucket(offset: int, num_buckets: int = 32, max_distance: int = 32) -> int:
    """T5's relative position bucket for key_pos - query_pos, written from the formula with scalars."""
    half = num_buckets // 2
    exact = half // 2
    distance = -offset
    bucket = half if distance < 0 else 0
    distance = abs(distance)
    if distance < exact:
        return bucket + distance
    far = exact + int(math.log(distance / exact) / math.log(max_distance / exact) * (half - exact))
    return bucket + min(far, half - 1)


def test_relative_position_buckets_follow_t5() -> None:
    offsets = torch.arange(-70, 71)
    got = relative_position_bucket(offsets, num_buckets=32, max_distance=32)
    assert got.tolist() == [reference_bucket(o) for o in offsets.tolist()]
    assert got.min() == 0 and got.max() == 31


def test_rotary_matches_complex_rotation() -> None:
    rot_dim, head_dim, frames = 32, 40, 9
    x = torch.randn(3, 2, frames, head_dim, dtype=torch.float64)
    got = apply_rotary(x.float(), rot_dim, head_dim).double()

    freqs = torch.tensor([10000.0 ** (-2 * i / rot_dim) for i in range(rot_dim // 2)], dtype=torch.float64)
    turn = torch.polar(torch.ones(frames, rot_dim // 2, dtype=torch.float64),
                       torch.arange(frames, dtype=torch.float64)[:, None] * freqs[None])
    pairs = torch.view_as_complex(x[..., :rot_dim].reshape(3, 2, frames, rot_dim // 2, 2).contiguous())
    expected = torch.cat([torch.view_as_real(pairs * turn).flatten(-2), x[..., rot_dim:]], dim=-1)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
    torch.testing.assert_close(rotary_inv_freq(rot_dim).double(), freqs, rtol=1e-6, atol=0)


def test_rotary_matches_rotary_embedding_torch() -> None:
    rotary_embedding_torch = pytest.importorskip("rotary_embedding_torch")
    reference = rotary_embedding_torch.RotaryEmbedding(32)
    x = torch.randn(4, 8, 16, 40)
    torch.testing.assert_close(apply_rotary(x, 32, 40), reference.rotate_queries_or_keys(x), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(rotary_inv_freq(32), reference.freqs.detach(), rtol=0, atol=0)


# --------------------------------------------------------------------------- checkpoints


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_checkpoint_round_trip(tiny_config: SeineConfig, tmp_path: Path, suffix: str) -> None:
    model = tiny_model(tiny_config)
    path = save_seine_checkpoint(model, tmp_path / f"seine{suffix}")
    loaded = load_seine_model(path, tiny_config)
    assert not loaded.training
    pairs = zip(model.state_dict().values(), loaded.state_dict().values(), strict=True)
    assert all(torch.equal(a, b) for a, b in pairs)
    if suffix == ".pt":
        assert set(torch.load(path, weights_only=True)) == {"ema"}


def test_official_layout_with_freqs_and_fp16_loads(tiny_config: SeineConfig, tmp_path: Path) -> None:
    model = tiny_model(tiny_config)
    state = with_rotary_freqs(model, {k: v.half() for k, v in model.state_dict().items()})
    torch.save({"ema": state, "model": {}, "step": torch.tensor(1000)}, tmp_path / "seine.pt")
    assert set(load_seine_state_dict(tmp_path / "seine.pt")) == set(state)
    loaded = load_seine_model(tmp_path / "seine.pt", tiny_config)
    assert loaded.conv_in.weight.dtype == torch.float32
    torch.testing.assert_close(loaded.conv_in.weight, model.conv_in.weight.half().float())


def test_wrong_architecture_names_the_keys(tiny_config: SeineConfig, tmp_path: Path) -> None:
    path = save_seine_checkpoint(tiny_model(tiny_config), tmp_path / "tiny.safetensors")
    deeper = SeineConfig.from_dict(tiny_config.to_dict() | {"layers_per_block": 2})
    with pytest.raises(MvgError, match=r"does not fit the SEINE architecture: \d+ missing keys \(down_blocks"):
        load_seine_model(path, deeper)

    state = tiny_model(tiny_config).state_dict()
    del state["conv_out.bias"]
    state["extra.weight"] = torch.zeros(1)
    torch.save({"ema": state}, tmp_path / "edited.pt")
    with pytest.raises(MvgError) as err:
        load_seine_model(tmp_path / "edited.pt", tiny_config)
    message = str(err.value)
    assert "1 missing keys (conv_out.bias)" in message and "1 unexpected keys (extra.weight)" in message
    assert "\n" not in message and "edited.pt" in message


def test_unreadable_checkpoints_raise_one_line_errors(tmp_path: Path) -> None:
    cases = {
        "garbage.pt": b"definitely not a checkpoint" * 20,
        "truncated.pt": None,
        "garbage.safetensors": b"\x00" * 64,
    }
    real = tmp_path / "real.pt"
    torch.save({"ema": {"w": torch.zeros(4)}}, real)
    cases["truncated.pt"] = real.read_bytes()[:200]
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(MvgError, match="corrupt or truncated") as err:
            load_seine_state_dict(tmp_path / name)
        assert name in str(err.value) and "\n" not in str(err.value)

    torch.save({"ema": {"w": torch.zeros(4)}, "args": argparse.Namespace(lr=1e-4)}, tmp_path / "pickled.pt")
    with pytest.raises(MvgError, match=r"argparse.Namespace\) that a safe load refuses"):
        load_seine_state_dict(tmp_path / "pickled.pt")
    with pytest.raises(MvgError, match="does not exist"):
        load_seine_state_dict(tmp_path / "missing.pt")
    torch.save([torch.zeros(1)], tmp_path / "list.pt")
    with pytest.raises(MvgError, match="not a state dict"):
        load_seine_state_dict(tmp_path / "list.pt")


# --------------------------------------------------------------------------- init from the 2D UNet


@pytest.fixture(scope="module")
def unet2d(tiny_config: SeineConfig):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(3)
    return UNet2DConditionModel(
        sample_size=tiny_config.sample_size,
        in_channels=4,
        out_channels=tiny_config.out_channels,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=tiny_config.block_out_channels,
        layers_per_block=tiny_config.layers_per_block,
        norm_num_groups=tiny_config.norm_num_groups,
        cross_attention_dim=tiny_config.cross_attention_dim,
        attention_head_dim=tiny_config.attention_head_dim,
    ).eval()


def test_from_unet2d_copies_weights_and_widens_conv_in(tiny_config: SeineConfig, unet2d) -> None:
    model = seine_from_unet2d(unet2d, tiny_config)
    image = unet2d.state_dict()
    state = model.state_dict()
    torch.testing.assert_close(state["conv_in.weight"][:, :4], image["conv_in.weight"], rtol=0, atol=0)
    assert not state["conv_in.weight"][:, 4:].any()
    for key, value in image.items():
        if key != "conv_in.weight":
            assert torch.equal(state[key], value), key
    temporal_out = [v for k, v in state.items() if k.endswith("attn_temp.to_out.0.weight")]
    assert len(temporal_out) == 4 and not any(w.any() for w in temporal_out)


def test_from_unet2d_on_a_still_video_is_the_image_model(tiny_config: SeineConfig, unet2d) -> None:
    """Provable at init: with the temporal output biases also zero, every temporal layer adds
    nothing, GroupNorm over identical frames equals per-image GroupNorm and the extra input
    channels have zero weights, so each frame's output is the 2D UNet's."""
    model = seine_from_unet2d(unet2d, tiny_config)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("attn_temp.to_out.0.bias"):
                param.zero_()
        latents = torch.randn(2, 4, 8, 8)
        timestep = torch.tensor([20.0, 700.0])
        context = torch.randn(2, TEXT_LEN, tiny_config.cross_attention_dim)
        video = latents[:, :, None].expand(-1, -1, 5, -1, -1)
        sample = torch.cat([video, torch.randn(2, 5, 5, 8, 8)], dim=1)  # mask + masked latents: ignored
        expected = unet2d(latents, timestep, context).sample
        got = model(sample, timestep, context)
    for frame in range(5):
        torch.testing.assert_close(got[:, :, frame], expected, rtol=1e-4, atol=1e-5)


def test_from_unet2d_refuses_other_widths(tiny_config: SeineConfig, unet2d) -> None:
    other = SeineConfig.from_dict(tiny_config.to_dict() | {"block_out_channels": [32, 96]})
    with pytest.raises(MvgError, match="shape mismatches"):
        seine_from_unet2d(unet2d, other)
    fewer_heads = SeineConfig.from_dict(tiny_config.to_dict() | {"attention_head_dim": 4})
    with pytest.raises(MvgError, match="heads=8"):
        seine_from_unet2d(unet2d, fewer_heads)


# --------------------------------------------------------------------------- configs


def test_config_json_round_trip(tiny_config: SeineConfig, tmp_path: Path) -> None:
    tiny_config.to_json(tmp_path / "c.json")
    assert SeineConfig.from_json(tmp_path / "c.json") == tiny_config
    (tmp_path / "bad.json").write_text(json.dumps(tiny_config.to_dict() | {"attention_heads": 3}))
    with pytest.raises(MvgError, match=r"bad\.json.*unknown fields"):
        SeineConfig.from_json(tmp_path / "bad.json")
    (tmp_path / "odd.json").write_text(json.dumps(tiny_config.to_dict() | {"rotary_dim": 6}))
    with pytest.raises(MvgError, match="rotary_dim"):
        SeineConfig.from_json(tmp_path / "odd.json")
    with pytest.raises(MvgError, match="full, tiny"):
        load_builtin_config("huge")


# --------------------------------------------------------------------------- export


ONNX_INPUTS = ("sample", "timestep", "encoder_hidden_states")
ONNX_DYNAMIC_AXES = {
    "sample": {0: "batch", 2: "frames", 3: "height", 4: "width"},
    "timestep": {0: "batch"},
    "encoder_hidden_states": {0: "batch"},
    "noise_pred": {0: "batch", 2: "frames", 3: "height", 4: "width"},
}


def assert_onnx_matches(path: Path, model: SeineUNet3D, config: SeineConfig) -> None:
    ort = pytest.importorskip("onnxruntime")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch, frames, size in [(2, 3, (8, 8)), (1, 7, (16, 12))]:
        feeds = inputs(config, batch=batch, frames=frames, size=size, seed=frames)
        with torch.no_grad():
            expected = model(*feeds).numpy()
        (got,) = session.run(None, {name: t.numpy() for name, t in zip(ONNX_INPUTS, feeds, strict=True)})
        assert got.shape == expected.shape
        assert abs(got - expected).max() < 1e-4


def test_onnx_export_torchscript_dynamic_axes(tiny_config: SeineConfig, tmp_path: Path) -> None:
    model = tiny_model(tiny_config)
    path = tmp_path / "seine_tiny.onnx"
    torch.onnx.export(model, inputs(tiny_config), str(path), dynamo=False, opset_version=17,
                      input_names=list(ONNX_INPUTS), output_names=["noise_pred"], dynamic_axes=ONNX_DYNAMIC_AXES)
    assert_onnx_matches(path, model, tiny_config)


@pytest.mark.slow
def test_onnx_export_dynamo_dynamic_shapes(tiny_config: SeineConfig, tmp_path: Path) -> None:
    from torch.export import Dim

    model = tiny_model(tiny_config)
    batch, frames = Dim("batch", min=1, max=64), Dim("frames", min=1, max=128)
    height, width = Dim("height", min=8, max=256), Dim("width", min=8, max=256)
    dynamic_shapes = {
        "sample": {0: batch, 2: frames, 3: height, 4: width},
        "timestep": {0: batch},
        "encoder_hidden_states": {0: batch},
    }
    path = tmp_path / "seine_tiny.onnx"
    torch.onnx.export(model, inputs(tiny_config), str(path), dynamo=True, dynamic_shapes=dynamic_shapes,
                      input_names=list(ONNX_INPUTS), output_names=["noise_pred"])
    assert_onnx_matches(path, model, tiny_config)


# --------------------------------------------------------------------------- FP16


def _within_fp16_check(reference: torch.Tensor, candidate: torch.Tensor) -> tuple[bool, str]:
    """``mvg-rt check``'s FP16 component tolerance, measured with its own comparator."""
    from mvg_rt.check.components import compare_outputs
    from mvg_rt.check.tolerances import COMPONENT

    tolerance = COMPONENT["fp16"]
    max_abs, _, cosine = compare_outputs(reference, candidate)
    limit = tolerance.max_abs * max(1.0, float(reference.abs().max()))
    return max_abs <= limit and cosine >= tolerance.cosine, f"max abs {max_abs:.3g} (limit {limit:.3g}), cos {cosine:.7f}"


def fp16_case(config: SeineConfig) -> tuple[torch.Tensor, ...]:
    """12x12 latents, 6 frames, the two ends of the schedule (t=999 is where FP16 timestep math breaks)."""
    sample, _, context = inputs(config, batch=2, frames=6, size=(12, 12), seed=5)
    return sample, torch.tensor([999.0, 20.0]), context


@pytest.mark.usefixtures("one_torch_thread")
def test_fp16_onnx_graph_on_onnxruntime_cpu_is_within_the_fp16_check(tiny_config: SeineConfig,
                                                                       tmp_path: Path) -> None:
    """The FP16 graph ``mvg-rt export`` writes (FP32 islands of export/fp16.py) passes ``mvg-rt check``'s
    FP16 tolerance on ONNX Runtime's CPU EP (tiny config: the real block structure at toy widths)."""
    ort = pytest.importorskip("onnxruntime")
    from mvg_rt.components import SEINE
    from mvg_rt.export.fp16 import convert_to_fp16
    from mvg_rt.export.onnx_export import export_component

    model = tiny_model(tiny_config)
    feeds = fp16_case(tiny_config)
    fp32 = export_component(model, SEINE, inputs(tiny_config), tmp_path / "seine.onnx")
    fp16 = convert_to_fp16(fp32, tmp_path / "seine_fp16.onnx")
    session = ort.InferenceSession(str(fp16), providers=["CPUExecutionProvider"])
    (out,) = session.run(None, {n: t.numpy() for n, t in zip(SEINE.input_names, feeds, strict=True)})
    with torch.no_grad():
        reference = model(*feeds)
    ok, detail = _within_fp16_check(reference, torch.from_numpy(out))
    assert ok, detail


def test_sdpa_in_fp16_keeps_the_scores_in_fp32() -> None:
    """Why FP16 SEINE needed SDPA: the explicit form rounds the (L, L) scores to FP16 before the softmax."""
    from mvg_rt.models.seine_unet import attend

    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 4, 512, 40, generator=g) * 3 for _ in range(3))
    scale = 40 ** -0.5
    exact = explicit_attend(q.double(), k.double(), v.double(), scale)
    fused = (attend(q.half(), k.half(), v.half(), scale).double() - exact).abs().max()
    explicit = (explicit_attend(q.half(), k.half(), v.half(), scale).double() - exact).abs().max()
    assert fused < explicit / 2


@pytest.mark.usefixtures("one_torch_thread")
def test_fp16_module_is_within_the_fp16_check(tiny_config: SeineConfig) -> None:
    """The PyTorch FP16 path (what the CUDA backend runs): SDPA and the norms accumulate in FP32 inside
    their kernels, the timestep sinusoid is computed in FP32 before the cast."""
    model = tiny_model(tiny_config)
    sample, timestep, context = fp16_case(tiny_config)
    with torch.no_grad():
        reference = model(sample, timestep, context)
        out = model.half()(sample.half(), timestep, context.half()).float()
    ok, detail = _within_fp16_check(reference, out)
    assert ok, detail


def test_a_v_prediction_seine_says_so_to_the_transition_sampler(tmp_path: Path) -> None:
    """The prediction type travels in the checkpoint's metadata to the runtime's ModelInfo (which picks the
    sampler tables); an unknown one is refused when the config is read."""
    from dataclasses import replace

    from mvg_rt.models.builders import build_models, build_seine, write_model_folder
    from mvg_rt.runtime.factory import RuntimeSpec, open_runtime

    models = build_models("tiny", seed=0)
    seine = build_seine(models.unet, "tiny", seed=0)
    seine.config = replace(seine.config, prediction_type="v_prediction")
    folder = write_model_folder(models, tmp_path / "model", seine=seine)
    with open_runtime(RuntimeSpec(model_dir=folder)) as runtime:
        assert runtime.model.seine_prediction_type == "v_prediction"
    with pytest.raises(ValueError, match="prediction_type must be one of epsilon, v_prediction"):
        SeineConfig.from_dict(seine.config.to_dict() | {"prediction_type": "sample"})
