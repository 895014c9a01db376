"""SEINE's video denoiser: a LaVie-style 3D UNet, written for export.

SEINE (Vchitect, ICLR 2024) inflates Stable Diffusion 1.4's UNet to video:

* every 2D conv runs on each frame separately (frames folded into the batch);
* the GroupNorms inside ResNet blocks and before ``conv_out`` see the whole
  (C/G, F, H, W) volume, so their statistics span all frames of a video;
* every transformer block gains a temporal self-attention (``attn_temp``) over
  the frames at each pixel, with rotary position embedding on the first
  ``rotary_dim`` channels of each head (interleaved pairs, theta 10000) and a
  learned T5-style relative position bias (32 buckets, max distance 32);
* the input has 9 channels: noisy latents (4), the frame mask (1) and the
  masked video latents (4).

Parameter names and shapes equal the official checkpoint's (``seine.pt``,
weights under ``'ema'``), so it loads with ``strict=True``. The module is
written for ONNX/TensorRT export: control flow depends only on the config,
never on tensor values; frames, batch, height and width are free dimensions;
attention is ``F.scaled_dot_product_attention`` (fused kernels in PyTorch, exported
as MatMul + Softmax); the rotary frequencies are computed, not
stored (whether a checkpoint holds them depends on the rotary library version
that saved it, see :mod:`mvg_rt.models.seine_checkpoint`).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields
from importlib import resources
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mvg_rt.components import PREDICTION_TYPES
from mvg_rt.errors import MvgError

CROSS_DOWN, PLAIN_DOWN = "CrossAttnDownBlock3D", "DownBlock3D"
CROSS_UP, PLAIN_UP = "CrossAttnUpBlock3D", "UpBlock3D"
BUILTIN_CONFIGS = ("full", "tiny")
ROTARY_THETA = 10000.0
ROTARY_FREQS_KEY = "rotary_emb.freqs"  # what rotary-embedding-torch saves under each attn_temp


@dataclass(frozen=True)
class SeineConfig:
    """Architecture of the SEINE denoiser; the defaults are the published model (SD 1.4 layout).

    ``attention_head_dim`` keeps SD 1.x's (misleading) name: it is the NUMBER of
    heads; each head has ``channels // attention_head_dim`` dims. ``sample_size`` is
    the latent size the model was trained at (512 px / 8), for runtimes to default to;
    the module itself accepts any size.
    """

    sample_size: int = 64
    in_channels: int = 9
    out_channels: int = 4
    down_block_types: tuple[str, ...] = (CROSS_DOWN, CROSS_DOWN, CROSS_DOWN, PLAIN_DOWN)
    up_block_types: tuple[str, ...] = (PLAIN_UP, CROSS_UP, CROSS_UP, CROSS_UP)
    block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280)
    layers_per_block: int = 2
    norm_num_groups: int = 32
    norm_eps: float = 1e-5
    cross_attention_dim: int = 768
    attention_head_dim: int = 8
    rotary_dim: int = 32
    rel_pos_num_buckets: int = 32
    rel_pos_max_distance: int = 32
    #: What the output is: "epsilon" (SEINE's) or "v_prediction" (the demo's, see mvg_rt.demo.training).
    #: It travels with the weights (safetensors metadata, engines manifest) so every sampler reads it.
    prediction_type: str = "epsilon"

    def __post_init__(self) -> None:
        for name in ("down_block_types", "up_block_types", "block_out_channels"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        levels = len(self.block_out_channels)
        if len(self.down_block_types) != levels or len(self.up_block_types) != levels:
            raise ValueError("down_block_types, up_block_types and block_out_channels need one entry per level")
        if set(self.down_block_types) - {CROSS_DOWN, PLAIN_DOWN} or set(self.up_block_types) - {CROSS_UP, PLAIN_UP}:
            raise ValueError(f"block types must be {CROSS_DOWN}/{PLAIN_DOWN} and {CROSS_UP}/{PLAIN_UP}")
        for channels in self.block_out_channels:
            if channels % self.norm_num_groups or channels % self.attention_head_dim:
                raise ValueError(f"{channels} channels do not divide into {self.norm_num_groups} norm groups "
                                 f"and {self.attention_head_dim} heads")
        if self.prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"prediction_type must be one of {', '.join(PREDICTION_TYPES)}, "
                             f"got {self.prediction_type!r}")
        smallest_head = min(self.block_out_channels) // self.attention_head_dim
        if self.rotary_dim % 2 or not 0 < self.rotary_dim <= smallest_head:
            raise ValueError(f"rotary_dim must be even and at most the smallest head dim ({smallest_head})")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SeineConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known - {"_comment"})
        if unknown:
            raise ValueError(f"unknown fields {unknown}")
        return cls(**{k: v for k, v in data.items() if k in known})

    @classmethod
    def from_json(cls, path: str | Path) -> SeineConfig:
        """Read a config file; any problem becomes a one-line :class:`MvgError` naming the file."""
        try:
            return cls.from_dict(json.loads(Path(path).read_text()))
        except (OSError, ValueError, TypeError) as err:
            raise MvgError(f"SEINE config {path} is not usable ({err}). "
                           f"Fix the file or use a built-in config: {', '.join(BUILTIN_CONFIGS)}.") from err

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    def to_json(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")


def load_builtin_config(name: str) -> SeineConfig:
    """``full`` is the published SEINE model; ``tiny`` has the same structure at toy widths, for tests."""
    if name not in BUILTIN_CONFIGS:
        raise MvgError(f"unknown SEINE config {name!r}. Use one of: {', '.join(BUILTIN_CONFIGS)}.")
    text = (resources.files("mvg_rt.models") / "configs" / f"seine_{name}.json").read_text()
    return SeineConfig.from_dict(json.loads(text))


# --------------------------------------------------------------------------- layout helpers


# Reshapes below spell out every size taken from ``.shape`` (no -1, no unflatten) so
# both ONNX exporters keep batch, frames, height and width symbolic.


def fold_frames(x: Tensor) -> Tensor:
    """(B, C, F, H, W) -> (B*F, C, H, W): spatial layers treat every frame as an image."""
    b, c, f, h, w = x.shape
    return x.transpose(1, 2).reshape(b * f, c, h, w)


def unfold_frames(x: Tensor, frames: int) -> Tensor:
    """(B*F, C, H, W) -> (B, C, F, H, W), the inverse of :func:`fold_frames`."""
    bf, c, h, w = x.shape
    return x.reshape(bf // frames, frames, c, h, w).transpose(1, 2)


class FrameConv2d(nn.Conv2d):
    """A 2D conv applied to each frame of a (B, C, F, H, W) video (SEINE's "inflated" conv)."""

    def forward(self, x: Tensor) -> Tensor:
        return unfold_frames(super().forward(fold_frames(x)), x.shape[2])


# --------------------------------------------------------------------------- time embedding


def timestep_features(timesteps: Tensor, dim: int) -> Tensor:
    """SD's sinusoidal timestep features, cosines first (flip_sin_to_cos=True, shift 0)."""
    half = dim // 2
    exponent = -math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=timesteps.device) / half
    angles = timesteps.float()[:, None] * torch.exp(exponent)[None, :]
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)


class TimestepMLP(nn.Module):
    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.linear_1 = nn.Linear(in_dim, out_dim)
        self.linear_2 = nn.Linear(out_dim, out_dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear_2(F.silu(self.linear_1(x)))


# --------------------------------------------------------------------------- conv blocks


class ResnetBlock(nn.Module):
    """SD's ResNet block on video: per-frame convs, GroupNorm statistics over all frames."""

    def __init__(self, in_ch: int, out_ch: int, temb_ch: int, groups: int, eps: float) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, in_ch, eps=eps)
        self.conv1 = FrameConv2d(in_ch, out_ch, kernel_size=3, padding=1)
        self.time_emb_proj = nn.Linear(temb_ch, out_ch)
        self.norm2 = nn.GroupNorm(groups, out_ch, eps=eps)
        self.conv2 = FrameConv2d(out_ch, out_ch, kernel_size=3, padding=1)
        self.conv_shortcut = FrameConv2d(in_ch, out_ch, kernel_size=1) if in_ch != out_ch else None

    def forward(self, x: Tensor, temb: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.time_emb_proj(F.silu(temb))[:, :, None, None, None]
        h = self.conv2(F.silu(self.norm2(h)))
        skip = x if self.conv_shortcut is None else self.conv_shortcut(x)
        return skip + h


class Downsample(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = FrameConv2d(channels, channels, kernel_size=3, stride=2, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """Nearest upsampling to the size of the matching skip tensor, then a 3x3 conv, per frame.

    Resizing to the skip's size (rather than by a fixed 2x) keeps latent sizes that are not
    multiples of 8 working, and equals the 2x upsample whenever they are.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, kernel_size=3, padding=1)

    def forward(self, x: Tensor, size: tuple[int, int]) -> Tensor:
        images = fold_frames(x)
        return unfold_frames(self.conv(F.interpolate(images, size=size, mode="nearest")), x.shape[2])


# --------------------------------------------------------------------------- attention


def split_heads(x: Tensor, heads: int) -> Tensor:
    """(N, L, heads*d) -> (N, heads, L, d)."""
    n, length, dim = x.shape
    return x.reshape(n, length, heads, dim // heads).transpose(1, 2)


def merge_heads(x: Tensor) -> Tensor:
    """(N, heads, L, d) -> (N, L, heads*d)."""
    n, heads, length, d = x.shape
    return x.transpose(1, 2).reshape(n, length, heads * d)


def attend(q: Tensor, k: Tensor, v: Tensor, scale: float, bias: Tensor | None = None) -> Tensor:
    """softmax(q k^T * scale + bias) v through ``F.scaled_dot_product_attention``.

    Why SDPA: on CUDA it picks a fused kernel (flash attention without ``bias``, the
    memory-efficient kernel with it) that never materialises the (L, L) score matrix
    (4096 x 4096 per frame and head for SEINE's spatial attention at 512 px) and
    accumulates the softmax in FP32 even for FP16 inputs; on CPU it uses a fused
    flash-style kernel as well. The TorchScript ONNX exporter lowers it to
    MatMul/Softmax (scale applied as ``Mul(sqrt(scale))`` on q and k), the pattern
    ONNX Runtime and TensorRT fuse. ``bias`` is an additive float mask broadcast over
    the batch: (heads, Lq, Lk) for the temporal relative-position bias.
    FP32 output equals the explicit ``(q * scale) @ k^T -> softmax -> @ v``: whole
    model 2.3e-6 max abs at max|ref| 1.0 (reduced SEINE, 16x16 latents, 8 frames;
    tests/test_seine_model.py keeps that reference).

    FP16: every SDPA backend (flash, memory-efficient and the math fallback) keeps the
    scores and the softmax in FP32 and rounds only the output, so the PyTorch FP16 path
    needs no casts of its own here; the explicit form rounded the (L, L) scores to FP16
    before the softmax (its error against SDPA's: ``benchmarks/results/cpu-2core/seine_attention_fp16.md``).
    The norms need nothing either: PyTorch's LayerNorm and GroupNorm kernels accumulate FP16
    inputs' statistics in FP32 (CPU and CUDA), and the timestep sinusoid is computed in FP32
    before the cast (:func:`timestep_features`).
    """
    return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=scale)


class OutProjection(nn.ModuleList):
    """``to_out`` as the checkpoint names it: index 0 is the Linear (index 1 was a Dropout)."""

    def __init__(self, inner_dim: int, out_dim: int) -> None:
        super().__init__([nn.Linear(inner_dim, out_dim)])

    def forward(self, x: Tensor) -> Tensor:
        return self[0](x)


class SpatialAttention(nn.Module):
    """Self-attention over the pixels of a frame (``attn1``) or cross-attention to text (``attn2``)."""

    def __init__(self, dim: int, heads: int, context_dim: int | None = None) -> None:
        super().__init__()
        self.heads = heads
        self.scale = (dim // heads) ** -0.5
        kv_dim = context_dim or dim
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_k = nn.Linear(kv_dim, dim, bias=False)
        self.to_v = nn.Linear(kv_dim, dim, bias=False)
        self.to_out = OutProjection(dim, dim)

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        context = x if context is None else context
        q = split_heads(self.to_q(x), self.heads)
        k = split_heads(self.to_k(context), self.heads)
        v = split_heads(self.to_v(context), self.heads)
        return self.to_out(merge_heads(attend(q, k, v, self.scale)))


def rotary_inv_freq(rot_dim: int, device: torch.device | None = None) -> Tensor:
    """The rotary frequencies theta^(-2i/rot_dim), i < rot_dim/2 (what checkpoints store as ``rotary_emb.freqs``)."""
    exponents = torch.arange(0, rot_dim, 2, dtype=torch.float32, device=device) / rot_dim
    return 1.0 / (ROTARY_THETA ** exponents)


def rotary_freqs_problem(stored: Tensor, rot_dim: int) -> str | None:
    """Why a checkpoint's ``rotary_emb.freqs`` differs from the frequencies this model computes, or None."""
    expected = rotary_inv_freq(rot_dim)
    if stored.shape != expected.shape:
        return f"shape {list(stored.shape)}, expected {list(expected.shape)} (rotary_dim {rot_dim})"
    if stored.is_meta:
        return None
    if not torch.allclose(stored.float(), expected.to(stored.dtype).float(), rtol=1e-5, atol=0.0):
        return f"values differ from theta {ROTARY_THETA:g} ** (-2i/{rot_dim})"
    return None


def rotate_pairs(x: Tensor) -> Tensor:
    """(x0, x1, x2, x3, ...) -> (-x1, x0, -x3, x2, ...): a 90 degree turn of each interleaved pair."""
    pairs = x.reshape(*x.shape[:-1], x.shape[-1] // 2, 2)
    return torch.stack([-pairs[..., 1], pairs[..., 0]], dim=-1).reshape(x.shape)


def apply_rotary(x: Tensor, rot_dim: int, head_dim: int) -> Tensor:
    """Rotate the first ``rot_dim`` of the ``head_dim`` channels of (..., F, head_dim) by frame_index * freq, per pair.

    ``head_dim`` is passed (not read from ``x``) so the branch below is decided by the config alone.
    """
    positions = torch.arange(x.shape[-2], dtype=torch.float32, device=x.device)
    angles = positions[:, None] * rotary_inv_freq(rot_dim, x.device)[None, :]
    angles = torch.stack([angles, angles], dim=-1).reshape(angles.shape[0], rot_dim)  # one frequency per pair
    cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
    if rot_dim == head_dim:
        return x * cos + rotate_pairs(x) * sin
    head, tail = x[..., :rot_dim], x[..., rot_dim:]
    return torch.cat([head * cos + rotate_pairs(head) * sin, tail], dim=-1)


def relative_position_bucket(offset: Tensor, num_buckets: int, max_distance: int) -> Tensor:
    """T5's bucketing of key-minus-query offsets: one half of the buckets per direction,
    exact buckets for small distances, log-spaced ones up to ``max_distance``."""
    per_side = num_buckets // 2
    exact = per_side // 2
    distance = -offset  # query - key: positive when the key lies in the past
    side = (distance < 0).long() * per_side
    distance = distance.abs()
    # Clamped before the log so no -inf appears; the clamped entries take the exact branch.
    log_ratio = torch.log(distance.clamp(min=exact).float() / exact) / math.log(max_distance / exact)
    far = (exact + torch.floor(log_ratio * (per_side - exact)).long()).clamp(max=per_side - 1)
    return side + torch.where(distance < exact, distance, far)


class RelativePositionBias(nn.Module):
    def __init__(self, heads: int, num_buckets: int, max_distance: int) -> None:
        super().__init__()
        self.num_buckets = num_buckets
        self.max_distance = max_distance
        self.relative_attention_bias = nn.Embedding(num_buckets, heads)

    def forward(self, frames: int, device: torch.device) -> Tensor:
        """The (heads, F, F) bias added to temporal attention scores; F may be symbolic."""
        pos = torch.arange(frames, device=device)
        buckets = relative_position_bucket(pos[None, :] - pos[:, None], self.num_buckets, self.max_distance)
        return self.relative_attention_bias(buckets).permute(2, 0, 1)


class TemporalAttention(nn.Module):
    """Self-attention across the frames at each pixel, with rotary positions and relative-position bias."""

    def __init__(self, dim: int, heads: int, config: SeineConfig) -> None:
        super().__init__()
        self.heads = heads
        self.head_dim = dim // heads
        self.scale = self.head_dim ** -0.5
        self.rotary_dim = config.rotary_dim
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_k = nn.Linear(dim, dim, bias=False)
        self.to_v = nn.Linear(dim, dim, bias=False)
        self.to_out = OutProjection(dim, dim)
        # As in SEINE: a new temporal layer starts with a zero output weight (its bias keeps
        # nn.Linear's init), so inflating a 2D UNet starts close to the image model.
        nn.init.zeros_(self.to_out[0].weight)
        self.time_rel_pos_bias = RelativePositionBias(heads, config.rel_pos_num_buckets, config.rel_pos_max_distance)

    def forward(self, x: Tensor) -> Tensor:
        """x: (N, F, C) with N = batch * pixels."""
        q = apply_rotary(split_heads(self.to_q(x), self.heads), self.rotary_dim, self.head_dim)
        k = apply_rotary(split_heads(self.to_k(x), self.heads), self.rotary_dim, self.head_dim)
        v = split_heads(self.to_v(x), self.heads)
        bias = self.time_rel_pos_bias(x.shape[1], x.device).to(q.dtype)
        return self.to_out(merge_heads(attend(q, k, v, self.scale, bias)))

    def _load_from_state_dict(self, state_dict: dict[str, Tensor], prefix: str, local_metadata: dict[str, Any],
                              strict: bool, missing_keys: list[str], unexpected_keys: list[str],
                              error_msgs: list[str]) -> None:
        """Accept checkpoints with or without ``rotary_emb.freqs`` (that depends on the rotary library
        version that saved them): the key is checked against the computed frequencies, then dropped."""
        stored = state_dict.pop(prefix + ROTARY_FREQS_KEY, None)
        problem = None if stored is None else rotary_freqs_problem(stored, self.rotary_dim)
        if problem:
            error_msgs.append(f"{prefix}{ROTARY_FREQS_KEY}: {problem}")
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)


class GEGLU(nn.Module):
    def __init__(self, dim: int, inner_dim: int) -> None:
        super().__init__()
        self.proj = nn.Linear(dim, inner_dim * 2)

    def forward(self, x: Tensor) -> Tensor:
        value, gate = self.proj(x).chunk(2, dim=-1)
        return value * F.gelu(gate)


class FeedForward(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        # Index 1 held a Dropout in the original; the Identity keeps the output Linear at ``net.2``.
        self.net = nn.Sequential(GEGLU(dim, dim * 4), nn.Identity(), nn.Linear(dim * 4, dim))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class TransformerBlock(nn.Module):
    """Spatial self-attn, text cross-attn, temporal self-attn, GEGLU feed-forward; pre-norm residuals."""

    def __init__(self, dim: int, heads: int, config: SeineConfig) -> None:
        super().__init__()
        self.attn1 = SpatialAttention(dim, heads)
        self.norm1 = nn.LayerNorm(dim)
        self.attn2 = SpatialAttention(dim, heads, context_dim=config.cross_attention_dim)
        self.norm2 = nn.LayerNorm(dim)
        self.attn_temp = TemporalAttention(dim, heads, config)
        self.norm_temp = nn.LayerNorm(dim)
        self.ff = FeedForward(dim)
        self.norm3 = nn.LayerNorm(dim)

    def forward(self, x: Tensor, context: Tensor, frames: int) -> Tensor:
        """x: (B*F, P, C) tokens of P pixels per frame; context: (B, T, D) text states."""
        bf, pixels, c = x.shape
        b = bf // frames
        x = x + self.attn1(self.norm1(x))
        # Every frame of a video attends to the same text, so the frames' queries are
        # stacked along the sequence axis: (B, F*P, C) instead of repeating the text F times.
        video = x.reshape(b, frames * pixels, c)
        x = x + self.attn2(self.norm2(video), context).reshape(bf, pixels, c)
        per_pixel = x.reshape(b, frames, pixels, c).transpose(1, 2).reshape(b * pixels, frames, c)
        per_pixel = per_pixel + self.attn_temp(self.norm_temp(per_pixel))
        x = per_pixel.reshape(b, pixels, frames, c).transpose(1, 2).reshape(bf, pixels, c)
        return x + self.ff(self.norm3(x))


class SpatioTemporalTransformer(nn.Module):
    """SD's Transformer2DModel around one :class:`TransformerBlock`; its GroupNorm is per frame."""

    def __init__(self, channels: int, config: SeineConfig) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(config.norm_num_groups, channels, eps=1e-6)
        self.proj_in = nn.Conv2d(channels, channels, kernel_size=1)
        self.transformer_blocks = nn.ModuleList([TransformerBlock(channels, config.attention_head_dim, config)])
        self.proj_out = nn.Conv2d(channels, channels, kernel_size=1)

    def forward(self, x: Tensor, context: Tensor) -> Tensor:
        frames = x.shape[2]
        images = fold_frames(x)
        tokens = self.proj_in(self.norm(images)).flatten(2).transpose(1, 2)  # (B*F, H*W, C)
        for block in self.transformer_blocks:
            tokens = block(tokens, context, frames)
        h = self.proj_out(tokens.transpose(1, 2).reshape(images.shape))
        return unfold_frames(h + images, frames)


# --------------------------------------------------------------------------- UNet levels


class DownBlock(nn.Module):
    """One encoder level; ``attentions`` is empty for a plain DownBlock3D (no state-dict keys then)."""

    def __init__(self, in_ch: int, out_ch: int, temb_ch: int, cross_attention: bool, downsample: bool,
                 config: SeineConfig) -> None:
        super().__init__()
        groups, eps, layers = config.norm_num_groups, config.norm_eps, config.layers_per_block
        self.resnets = nn.ModuleList(
            ResnetBlock(in_ch if i == 0 else out_ch, out_ch, temb_ch, groups, eps) for i in range(layers))
        self.attentions = nn.ModuleList(
            SpatioTemporalTransformer(out_ch, config) for _ in range(layers if cross_attention else 0))
        self.downsamplers = nn.ModuleList([Downsample(out_ch)] if downsample else [])

    def forward(self, x: Tensor, temb: Tensor, context: Tensor) -> tuple[Tensor, list[Tensor]]:
        skips = []
        for i, resnet in enumerate(self.resnets):
            x = resnet(x, temb)
            if self.attentions:
                x = self.attentions[i](x, context)
            skips.append(x)
        for down in self.downsamplers:
            x = down(x)
            skips.append(x)
        return x, skips


class MidBlock(nn.Module):
    def __init__(self, channels: int, temb_ch: int, config: SeineConfig) -> None:
        super().__init__()
        groups, eps = config.norm_num_groups, config.norm_eps
        self.attentions = nn.ModuleList([SpatioTemporalTransformer(channels, config)])
        self.resnets = nn.ModuleList(ResnetBlock(channels, channels, temb_ch, groups, eps) for _ in range(2))

    def forward(self, x: Tensor, temb: Tensor, context: Tensor) -> Tensor:
        x = self.resnets[0](x, temb)
        return self.resnets[1](self.attentions[0](x, context), temb)


class UpBlock(nn.Module):
    """One decoder level: each ResNet takes the previous output concatenated with one skip tensor."""

    def __init__(self, skip_chs: list[int], prev_ch: int, out_ch: int, temb_ch: int, cross_attention: bool,
                 upsample: bool, config: SeineConfig) -> None:
        super().__init__()
        groups, eps = config.norm_num_groups, config.norm_eps
        in_chs = [prev_ch] + [out_ch] * (len(skip_chs) - 1)
        self.resnets = nn.ModuleList(
            ResnetBlock(c + s, out_ch, temb_ch, groups, eps) for c, s in zip(in_chs, skip_chs, strict=True))
        self.attentions = nn.ModuleList(
            SpatioTemporalTransformer(out_ch, config) for _ in range(len(skip_chs) if cross_attention else 0))
        self.upsamplers = nn.ModuleList([Upsample(out_ch)] if upsample else [])

    def forward(self, x: Tensor, skips: list[Tensor], temb: Tensor, context: Tensor,
                upsample_size: tuple[int, int] | None) -> Tensor:
        """Consumes ``len(self.resnets)`` tensors from the end of ``skips``."""
        for i, resnet in enumerate(self.resnets):
            x = resnet(torch.cat([x, skips.pop()], dim=1), temb)
            if self.attentions:
                x = self.attentions[i](x, context)
        for up in self.upsamplers:
            x = up(x, upsample_size)
        return x


class SeineUNet3D(nn.Module):
    """SEINE's denoiser: (B, 9, F, h, w) latents+mask+masked latents -> (B, 4, F, h, w) predicted noise
    (or v, as ``config.prediction_type`` says)."""

    def __init__(self, config: SeineConfig) -> None:
        super().__init__()
        self.config = config
        chs = config.block_out_channels
        temb_ch = chs[0] * 4
        self.conv_in = FrameConv2d(config.in_channels, chs[0], kernel_size=3, padding=1)
        self.time_embedding = TimestepMLP(chs[0], temb_ch)

        self.down_blocks = nn.ModuleList()
        skip_chs = [chs[0]]  # channels of every skip tensor, in the order the encoder produces them
        for level, out_ch in enumerate(chs):
            last = level == len(chs) - 1
            in_ch = chs[max(level - 1, 0)]
            cross = config.down_block_types[level] == CROSS_DOWN
            self.down_blocks.append(DownBlock(in_ch, out_ch, temb_ch, cross, not last, config))
            skip_chs += [out_ch] * (config.layers_per_block + (0 if last else 1))

        self.mid_block = MidBlock(chs[-1], temb_ch, config)

        self.up_blocks = nn.ModuleList()
        prev_ch = chs[-1]
        for level, out_ch in enumerate(reversed(chs)):
            level_skips = [skip_chs.pop() for _ in range(config.layers_per_block + 1)]
            cross = config.up_block_types[level] == CROSS_UP
            upsample = level < len(chs) - 1
            self.up_blocks.append(UpBlock(level_skips, prev_ch, out_ch, temb_ch, cross, upsample, config))
            prev_ch = out_ch

        self.conv_norm_out = nn.GroupNorm(config.norm_num_groups, chs[0], eps=config.norm_eps)
        self.conv_out = FrameConv2d(chs[0], config.out_channels, kernel_size=3, padding=1)

    def optional_state_keys(self) -> list[str]:
        """Keys a checkpoint may hold or not (``<attn_temp>.rotary_emb.freqs``); loading accepts both."""
        return [f"{name}.{ROTARY_FREQS_KEY}" for name, module in self.named_modules()
                if isinstance(module, TemporalAttention)]

    def forward(self, sample: Tensor, timestep: Tensor, encoder_hidden_states: Tensor) -> Tensor:
        """sample (B, in_channels, F, h, w); timestep (B,) or (1,); encoder_hidden_states (B, T, D)."""
        temb_in = timestep_features(timestep.reshape(-1).expand(sample.shape[0]), self.config.block_out_channels[0])
        temb = self.time_embedding(temb_in.to(self.conv_in.weight.dtype))
        context = encoder_hidden_states

        x = self.conv_in(sample)
        skips = [x]
        for block in self.down_blocks:
            x, block_skips = block(x, temb, context)
            skips += block_skips

        x = self.mid_block(x, temb, context)

        for block in self.up_blocks:
            x = block(x, skips, temb, context, self._upsample_size(block, skips))

        return self.conv_out(F.silu(self.conv_norm_out(x)))

    @staticmethod
    def _upsample_size(block: UpBlock, skips: list[Tensor]) -> tuple[int, int] | None:
        """Spatial size of the next level's skip tensors: the size this level must upsample to."""
        remaining = len(skips) - len(block.resnets)
        return tuple(skips[remaining - 1].shape[-2:]) if block.upsamplers else None
