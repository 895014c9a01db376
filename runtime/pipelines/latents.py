"""Latent-space helpers shared by PIE and the transition sampler.

Randomness is drawn from ONE CPU ``torch.Generator`` and moved to the device, so a
seed gives the same numbers on every backend and device; this is also what
diffusers' ``randn_tensor`` does with a CPU generator, which is why the PyTorch
reference reproduces diffusers and the PIE reference implementation exactly.
"""

from __future__ import annotations

import torch
from torch import Tensor


def cpu_randn(shape: torch.Size | tuple[int, ...], generator: torch.Generator, device: torch.device) -> Tensor:
    """Standard normal noise drawn on the CPU generator, then placed on ``device``."""
    return torch.randn(tuple(shape), generator=generator, dtype=torch.float32).to(device)


def posterior_sample(moments: Tensor, generator: torch.Generator) -> Tensor:
    """Sample the VAE posterior from its (mean, logvar) moments.

    Same arithmetic as diffusers' ``DiagonalGaussianDistribution.sample``: logvar is
    clamped to [-30, 20] and one normal draw of the mean's shape is consumed.
    """
    mean, logvar = moments.chunk(2, dim=1)
    std = torch.exp(0.5 * logvar.clamp(-30.0, 20.0))
    return mean + std * cpu_randn(mean.shape, generator, moments.device)


def images_to_model_range(images_uint8: Tensor) -> Tensor:
    """(B, H, W, 3) uint8 -> (B, 3, H, W) float32 in [-1, 1], as the SD pipelines preprocess."""
    return images_uint8.permute(0, 3, 1, 2).float().contiguous() / 255.0 * 2.0 - 1.0


def model_range_to_images(images: Tensor) -> Tensor:
    """(B, 3, H, W) decoder output -> (B, H, W, 3) uint8, rounding as diffusers' ``numpy_to_pil``."""
    unit = (images / 2 + 0.5).clamp(0, 1)
    return (unit.permute(0, 2, 3, 1) * 255).round().to(torch.uint8)
