"""Whether a model's components fit each other: checked from their configs, before weights load or work runs.

The networks of one model exchange tensors whose widths each component's config declares on its
own: the VAE's latent channels are the UNet's input and output channels; SEINE takes the noisy
latents, a frame mask and the masked latents (2 * latent + 1 channels) and predicts latent
noise; the text encoder's width is what every cross-attention reads. A folder assembled from two
models (a SEINE for another VAE, a text encoder of another width) otherwise loads and then fails
deep inside a convolution or matmul, after minutes of work (``expected 9 channels, got 17``,
``mat1 and mat2 shapes cannot be multiplied``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from mvg_rt.artifacts.manifest import REEXPORT, Manifest
from mvg_rt.components import TOKENS
from mvg_rt.errors import MvgError

UNET_FIX = "use a UNet trained with this model's VAE and text encoder (a fine-tune of the same SD 1.x model)"
TEXT_FIX = ("use the text encoder the UNet was trained with (the model folder's own text_encoder/), or a UNet "
            "fine-tuned from this model")
SEINE_FIX = ("pass the SEINE checkpoint made for this model (--seine, with --seine-config when it stores no "
             "config), or --no-transition")


@dataclass(frozen=True)
class Width:
    """One number a component declares about a tensor it shares with others, and where it says so."""

    source: str  # for the user: "unet/config.json in_channels"
    value: Any


@dataclass(frozen=True)
class ModelWidths:
    """The shared widths of one model; SEINE's are None when the model runs without transitions."""

    text_hidden: Width
    latent_channels: Width
    unet_in: Width
    unet_out: Width
    unet_cross: Width
    text_tokens: Width | None = None
    seine_in: Width | None = None
    seine_out: Width | None = None
    seine_cross: Width | None = None


def folder_widths(text: Mapping[str, Any], vae: Mapping[str, Any], unet: Mapping[str, Any],
                  unet_label: str = "unet/config.json") -> ModelWidths:
    """The widths a diffusers folder's config.json files declare (diffusers' defaults where one is left out)."""
    return ModelWidths(
        text_hidden=Width("text_encoder/config.json hidden_size", text.get("hidden_size", 512)),
        text_tokens=Width("text_encoder/config.json max_position_embeddings", text.get("max_position_embeddings", 77)),
        latent_channels=Width("vae/config.json latent_channels", vae.get("latent_channels", 4)),
        unet_in=Width(f"{unet_label} in_channels", unet.get("in_channels", 4)),
        unet_out=Width(f"{unet_label} out_channels", unet.get("out_channels", 4)),
        unet_cross=Width(f"{unet_label} cross_attention_dim", _one_width(unet.get("cross_attention_dim", 1280))),
    )


def _one_width(value: Any) -> Any:
    """diffusers allows one cross-attention width per block; SD 1.x has one for all."""
    if isinstance(value, (list, tuple)) and value and all(v == value[0] for v in value):
        return value[0]
    return value


def check_widths(widths: ModelWidths) -> None:
    """Refuse, in one line naming both components, their numbers and the fix, widths that do not fit."""
    latent = widths.latent_channels
    rules: list[tuple[Width | None, Width, Callable[[int], int], str, str]] = [
        (widths.unet_in, latent, _same, "", UNET_FIX),
        (widths.unet_out, latent, _same, "", UNET_FIX),
        (widths.unet_cross, widths.text_hidden, _same, "", TEXT_FIX),
        (widths.seine_in, latent, _seine_inputs,
         " (SEINE reads noisy latents, a frame mask and masked latents: 2 x latent + 1)", SEINE_FIX),
        (widths.seine_out, latent, _same, "", SEINE_FIX),
        (widths.seine_cross, widths.text_hidden, _same, "", SEINE_FIX),
    ]
    for width in (latent, widths.text_hidden, *(rule[0] for rule in rules)):
        if width is not None:
            _require_count(width)
    for got, basis, expected, why, fix in rules:
        if got is not None and got.value != expected(basis.value):
            raise MvgError(f"the model's components do not fit: {got.source} is {got.value} but {basis.source} is "
                           f"{basis.value}, so it must be {expected(basis.value)}{why}; {fix}")
    tokens = widths.text_tokens
    if tokens is None:
        return
    _require_count(tokens)
    if tokens.value < TOKENS:
        raise MvgError(f"the text encoder reads {tokens.value} tokens ({tokens.source}) but SD 1.x prompts are "
                       f"{TOKENS}: use a CLIP text encoder of an SD 1.x model")


def _same(count: int) -> int:
    return count


def _seine_inputs(latent_channels: int) -> int:
    return 2 * latent_channels + 1


def _require_count(width: Width) -> None:
    if isinstance(width.value, bool) or not isinstance(width.value, int) or width.value < 1:
        raise MvgError(f"{width.source} is {width.value!r}, not a positive integer: the config is damaged; re-copy "
                       "the model folder from its source")


def with_seine(widths: ModelWidths, config: Any, source: str = "the SEINE checkpoint's config") -> ModelWidths:
    """``widths`` plus SEINE's, from its config (a :class:`~mvg_rt.models.seine_unet.SeineConfig`)."""
    return replace(widths, seine_in=Width(f"{source} in_channels", config.in_channels),
                   seine_out=Width(f"{source} out_channels", config.out_channels),
                   seine_cross=Width(f"{source} cross_attention_dim", config.cross_attention_dim))


def manifest_widths(manifest: Manifest, kind: str, precision: str) -> ModelWidths:
    """The widths recorded for the artifacts a backend runs (call once the PIE artifacts are known to exist)."""

    def dim(component: str, tensor: str, axis: int) -> Width | None:
        artifact = manifest.find(component, kind, precision)
        if artifact is None:
            return None
        decl = next((d for d in [*artifact.inputs, *artifact.outputs] if d.name == tensor), None)
        shape = decl.shape if decl is not None else []
        return Width(f"{artifact.file} {tensor} dim {axis}", shape[axis] if axis < len(shape) else None)

    def required(component: str, tensor: str, axis: int) -> Width:
        width = dim(component, tensor, axis)
        if width is None:
            raise MvgError(f"engines folder has no {precision} {kind} artifact for {component}; {REEXPORT}")
        return width

    return ModelWidths(
        text_hidden=required("text_encoder", "text_embeddings", 2),
        latent_channels=Width("manifest.json model.latent_channels", manifest.model.latent_channels),
        unet_in=required("unet", "sample", 1),
        unet_out=required("unet", "noise_pred", 1),
        unet_cross=required("unet", "encoder_hidden_states", 2),
        seine_in=dim("seine", "sample", 1),
        seine_out=dim("seine", "noise_pred", 1),
        seine_cross=dim("seine", "encoder_hidden_states", 2),
    )
