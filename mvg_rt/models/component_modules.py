"""PyTorch modules with exactly the inputs/outputs of each component in :mod:`mvg_rt.components`.

The PyTorch backend runs these modules and the ONNX exporter exports these same
modules, so the reference and the exported graphs cannot drift apart.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn


class TextEncoderModule(nn.Module):
    """CLIP text model -> last_hidden_state (what SD 1.x conditions on)."""

    def __init__(self, text_encoder: nn.Module) -> None:
        super().__init__()
        self.text_encoder = text_encoder

    def forward(self, input_ids: Tensor) -> Tensor:
        return self.text_encoder(input_ids=input_ids).last_hidden_state


class VaeEncoderModule(nn.Module):
    """VAE encoder -> posterior moments (mean, logvar); sampling stays in the pipeline."""

    def __init__(self, vae: nn.Module) -> None:
        super().__init__()
        self.vae = vae

    def forward(self, images: Tensor) -> Tensor:
        return self.vae.encode(images).latent_dist.parameters


class VaeDecoderModule(nn.Module):
    """VAE decoder: unscaled latents -> images in [-1, 1] (unclamped, as diffusers)."""

    def __init__(self, vae: nn.Module) -> None:
        super().__init__()
        self.vae = vae

    def forward(self, latents: Tensor) -> Tensor:
        return self.vae.decode(latents).sample


class UNetModule(nn.Module):
    """UNet2DConditionModel with positional inputs and a plain tensor output."""

    def __init__(self, unet: nn.Module) -> None:
        super().__init__()
        self.unet = unet

    def forward(self, sample: Tensor, timestep: Tensor, encoder_hidden_states: Tensor) -> Tensor:
        return self.unet(sample, timestep, encoder_hidden_states=encoder_hidden_states, return_dict=False)[0]


class SeineModule(nn.Module):
    """The SEINE 3D denoiser with the component's input names."""

    def __init__(self, seine: nn.Module) -> None:
        super().__init__()
        self.seine = seine

    def forward(self, sample: Tensor, timestep: Tensor, encoder_hidden_states: Tensor) -> Tensor:
        return self.seine(sample, timestep, encoder_hidden_states)


class SegmenterEncoderModule(nn.Module):
    """SamModel's ViT image encoder: (B, 3, S, S) pixels -> (B, width, e, e) image embeddings."""

    def __init__(self, sam: nn.Module) -> None:
        super().__init__()
        self.sam = sam

    def forward(self, pixel_values: Tensor) -> Tensor:
        return self.sam.get_image_embeddings(pixel_values)


class SegmenterDecoderModule(nn.Module):
    """SamModel's prompt encoder + mask decoder on one box per embedding: the single best mask
    (``multimask_output=False``, as MedSAM is trained and run) as low-res logits and its IoU score."""

    def __init__(self, sam: nn.Module) -> None:
        super().__init__()
        self.sam = sam

    def forward(self, image_embeddings: Tensor, input_boxes: Tensor) -> tuple[Tensor, Tensor]:
        out = self.sam(image_embeddings=image_embeddings, input_boxes=input_boxes, multimask_output=False)
        return out.pred_masks[:, 0], out.iou_scores[:, 0]  # (B, 1, m, m), (B, 1): the one box's mask


def segmenter_modules(sam: nn.Module) -> dict[str, nn.Module]:
    """The two segmenter components over one loaded ``SamModel`` (they share its weights)."""
    return {"segmenter_encoder": SegmenterEncoderModule(sam).eval(),
            "segmenter_decoder": SegmenterDecoderModule(sam).eval()}


def component_modules(models: Any, seine: nn.Module | None = None) -> dict[str, nn.Module]:
    """One module per component name, from loaded :class:`DiffusersModels` and an optional SEINE."""
    modules: dict[str, nn.Module] = {
        "text_encoder": TextEncoderModule(models.text_encoder),
        "vae_encoder": VaeEncoderModule(models.vae),
        "vae_decoder": VaeDecoderModule(models.vae),
        "unet": UNetModule(models.unet),
    }
    if seine is not None:
        modules["seine"] = SeineModule(seine)
    return {name: module.eval() for name, module in modules.items()}
