"""The five networks MVG runs, as named components with named tensors.

This is the contract between ``export/`` (which writes one ONNX file / engine per
component) and ``runtime/`` (whose backends run them). Every backend receives and
returns the same names, so the pipelines never know which backend they talk to.

Axis names are symbolic: ``batch``, ``height``/``width`` (pixels), ``latent_height``/
``latent_width`` (pixels / 8), ``frames`` vary at run time; ``hidden`` (the text width,
768 for SD 1.x) is fixed per model but differs between models. Integer axes are fixed
by the architecture.

The segmenter (MedSAM, a SAM ViT-B fine-tuned on medical images; the paper's ROI source) is two
components, so one image embedding serves every box drawn on that image: its encoder's
``segmenter_size`` (1024 for SAM), ``segmenter_width`` (256) and ``embedding_size`` (64) and its
decoder's ``mask_size`` (256) are fixed per model too. They live apart from :data:`COMPONENTS`
(the generation networks that SD model folders and engines folders hold) in
:data:`SEGMENTER_COMPONENTS`, so export, check and bench never ask an SD folder for a segmenter.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

Axis = str | int
MODEL_FIXED_AXES = frozenset({"hidden", "segmenter_size", "segmenter_width", "embedding_size", "mask_size"})


@dataclass(frozen=True)
class TensorSpec:
    """One named input or output of a component."""

    name: str
    dtype: torch.dtype
    axes: tuple[Axis, ...]

    @property
    def dynamic_axes(self) -> dict[int, str]:
        """Positions of the axes that vary at run time, as ONNX export wants them."""
        return {
            i: a for i, a in enumerate(self.axes) if isinstance(a, str) and a not in MODEL_FIXED_AXES
        }


@dataclass(frozen=True)
class ComponentSpec:
    """A network the pipelines call, with its named inputs and outputs."""

    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.inputs)

    @property
    def output_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.outputs)


TOKENS = 77  # CLIP ViT-L/14 context length used by SD 1.x

TEXT_ENCODER = ComponentSpec(
    "text_encoder",
    inputs=(TensorSpec("input_ids", torch.int64, ("batch", TOKENS)),),
    outputs=(TensorSpec("text_embeddings", torch.float32, ("batch", TOKENS, "hidden")),),
)
# The encoder returns the posterior's moments (mean, logvar); the pipeline samples
# from them with its own generator, so every backend consumes the RNG identically.
VAE_ENCODER = ComponentSpec(
    "vae_encoder",
    inputs=(TensorSpec("images", torch.float32, ("batch", 3, "height", "width")),),
    outputs=(TensorSpec("latent_moments", torch.float32, ("batch", 8, "latent_height", "latent_width")),),
)
VAE_DECODER = ComponentSpec(
    "vae_decoder",
    inputs=(TensorSpec("latents", torch.float32, ("batch", 4, "latent_height", "latent_width")),),
    outputs=(TensorSpec("images", torch.float32, ("batch", 3, "height", "width")),),
)
UNET = ComponentSpec(
    "unet",
    inputs=(
        TensorSpec("sample", torch.float32, ("batch", 4, "latent_height", "latent_width")),
        TensorSpec("timestep", torch.float32, ("batch",)),
        TensorSpec("encoder_hidden_states", torch.float32, ("batch", TOKENS, "hidden")),
    ),
    outputs=(TensorSpec("noise_pred", torch.float32, ("batch", 4, "latent_height", "latent_width")),),
)
SEINE = ComponentSpec(
    "seine",
    inputs=(
        TensorSpec("sample", torch.float32, ("batch", 9, "frames", "latent_height", "latent_width")),
        TensorSpec("timestep", torch.float32, ("batch",)),
        TensorSpec("encoder_hidden_states", torch.float32, ("batch", TOKENS, "hidden")),
    ),
    outputs=(TensorSpec("noise_pred", torch.float32, ("batch", 4, "frames", "latent_height", "latent_width")),),
)

COMPONENTS: dict[str, ComponentSpec] = {
    c.name: c for c in (TEXT_ENCODER, VAE_ENCODER, VAE_DECODER, UNET, SEINE)
}
_EMBEDDINGS = TensorSpec("image_embeddings", torch.float32, ("batch", "segmenter_width", "embedding_size", "embedding_size"))
SEGMENTER_ENCODER = ComponentSpec(
    "segmenter_encoder",
    inputs=(TensorSpec("pixel_values", torch.float32, ("batch", 3, "segmenter_size", "segmenter_size")),),
    outputs=(_EMBEDDINGS,),
)
# Boxes are x0, y0, x1, y1 in the encoder's input pixel frame (0..segmenter_size); one box per image embedding.
SEGMENTER_DECODER = ComponentSpec(
    "segmenter_decoder",
    inputs=(_EMBEDDINGS, TensorSpec("input_boxes", torch.float32, ("batch", 1, 4))),
    outputs=(TensorSpec("mask_logits", torch.float32, ("batch", 1, "mask_size", "mask_size")),
             TensorSpec("iou_scores", torch.float32, ("batch", 1))),
)
SEGMENTER_COMPONENTS: dict[str, ComponentSpec] = {c.name: c for c in (SEGMENTER_ENCODER, SEGMENTER_DECODER)}

PIE_COMPONENTS = ("text_encoder", "vae_encoder", "vae_decoder", "unet")
#: What a denoiser's ``noise_pred`` holds: the noise itself, or v = sqrt(abar) eps - sqrt(1 - abar) x0 (the demo SEINE).
PREDICTION_TYPES = ("epsilon", "v_prediction")
