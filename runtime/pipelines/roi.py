"""ROI arithmetic of MVG: the mask at latent size, Eq 6 and Eq 10 (the in-loop replacement is PIE's pre-step).

All functions are plain tensor math on whatever device the tensors live on.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def latent_mask(mask_gray: Tensor, scale: int, channels: int) -> Tensor:
    """(H, W) uint8 gray ROI mask at image size -> (1, channels, H/scale, W/scale) float in [0, 1].

    Matches the PIE reference: OpenCV ``INTER_LINEAR`` (half-pixel centres, no
    antialiasing) on uint8 with round-half-up back to uint8, then / 255; not
    binarised. The one gray plane is broadcast to every latent channel, so each
    channel is edited in the same ROI (the reference's R, G, B, R order is this for
    the gray masks it is used with; :mod:`mvg_rt.io.masks` makes every mask gray).
    """
    if mask_gray.ndim != 2:
        raise ValueError(f"latent_mask takes one (H, W) gray plane, got shape {tuple(mask_gray.shape)}")
    height, width = mask_gray.shape[0] // scale, mask_gray.shape[1] // scale
    plane = mask_gray[None, None].float()
    resized = F.interpolate(plane, size=(height, width), mode="bilinear", align_corners=False, antialias=False)
    quantised = torch.floor(resized + 0.5).clamp(0, 255) / 255.0
    return quantised.expand(-1, channels, -1, -1).contiguous()


def blend_with_original(latents: Tensor, original_latents: Tensor, mask: Tensor, beta1: float, beta2: float) -> Tensor:
    """Paper Eq 6: move ``beta1`` of the edit outside the ROI and ``beta2`` inside, from the original."""
    edit = latents - original_latents
    outside = edit * beta1 + original_latents
    inside = edit * beta2 + original_latents
    return outside * (1 - mask) + inside * mask


def composite_transition(frames: Tensor, start: Tensor, end: Tensor, mask: Tensor) -> Tensor:
    """Paper Eq 10 in pixel space: generated frames inside the ROI, the endpoints' mean outside.

    ``frames`` (F, H, W, 3), ``start``/``end`` (H, W, 3), ``mask`` (H, W) in [0, 1]; all float.
    """
    mean = (start + end) / 2
    weight = mask[None, :, :, None]
    return frames * weight + mean[None] * (1 - weight)
