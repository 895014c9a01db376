"""Classifier-free guidance (Ho & Salimans 2022): the one place the combine is written.

    eps = eps_uncond + s * (eps_cond - eps_uncond)

Batch order differs by model and is the caller's business: PIE (diffusers' SD
img2img) batches [uncond, cond], SEINE batches [cond, uncond].
"""

from __future__ import annotations

from torch import Tensor


def guided(cond: Tensor, uncond: Tensor, scale: float | Tensor) -> Tensor:
    """The guided noise prediction for guidance scale ``scale``."""
    return uncond + scale * (cond - uncond)
