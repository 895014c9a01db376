"""Image similarity metrics: PSNR and SSIM (Wang et al. 2004).

Both take images as (H, W) or (H, W, C) arrays/tensors (uint8 or float) and a
``data_range`` (255 for uint8, the default). SSIM follows the paper's reference
implementation: an 11x11 Gaussian window with sigma 1.5, K1 = 0.01, K2 = 0.03,
statistics over 'valid' windows only (no padding), averaged over the map and the
channels.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

WINDOW = 11
SIGMA = 1.5
K1, K2 = 0.01, 0.03


def _as_float(image: np.ndarray | Tensor) -> Tensor:
    if isinstance(image, Tensor):
        return image.detach().to("cpu", torch.float64)
    return torch.from_numpy(np.array(image, dtype=np.float64))  # a copy: inputs may be read-only


def _pair(a: np.ndarray | Tensor, b: np.ndarray | Tensor) -> tuple[Tensor, Tensor]:
    x, y = _as_float(a), _as_float(b)
    if x.shape != y.shape:
        raise ValueError(f"images differ in shape: {tuple(x.shape)} vs {tuple(y.shape)}")
    return x, y


def psnr(a: np.ndarray | Tensor, b: np.ndarray | Tensor, data_range: float = 255.0) -> float:
    """Peak signal-to-noise ratio in dB; ``inf`` for identical images."""
    x, y = _pair(a, b)
    mse = float(((x - y) ** 2).mean())
    return math.inf if mse == 0 else 10.0 * math.log10(data_range**2 / mse)


def gaussian_window(size: int = WINDOW, sigma: float = SIGMA) -> Tensor:
    """Normalised 1-D Gaussian weights."""
    offsets = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    weights = torch.exp(-(offsets**2) / (2 * sigma**2))
    return weights / weights.sum()


def ssim(a: np.ndarray | Tensor, b: np.ndarray | Tensor, data_range: float = 255.0,
         weight: np.ndarray | Tensor | None = None) -> float:
    """Mean structural similarity; images must be at least 11x11.

    ``weight`` (H, W) in [0, 1] averages the SSIM map with the weight at each
    window's centre (e.g. 1 - ROI mask: "SSIM outside the ROI"); NaN when no window centre has weight.
    """
    values = ssim_map(a, b, data_range)
    if weight is None:
        return float(values.mean())
    offset = (WINDOW - 1) // 2
    w = _as_float(weight)[offset : offset + values.shape[0], offset : offset + values.shape[1]]
    if float(w.sum()) == 0:
        return math.nan  # no window centre has weight (e.g. an ROI that leaves only the border outside it)
    return float((values * w).sum() / w.sum())


def ssim_map(a: np.ndarray | Tensor, b: np.ndarray | Tensor, data_range: float = 255.0) -> Tensor:
    """Per-window SSIM, averaged over channels: (H - 10, W - 10), windows fully inside the image."""
    x, y = _pair(a, b)
    if x.dim() == 2:
        x, y = x[..., None], y[..., None]
    if x.shape[0] < WINDOW or x.shape[1] < WINDOW:
        raise ValueError(f"SSIM needs images of at least {WINDOW}x{WINDOW} (got {tuple(x.shape[:2])})")
    x, y = x.permute(2, 0, 1)[:, None], y.permute(2, 0, 1)[:, None]  # (C, 1, H, W): channels as batch
    g = gaussian_window()

    def blur(t: Tensor) -> Tensor:  # separable 'valid' Gaussian filter
        return F.conv2d(F.conv2d(t, g.view(1, 1, 1, -1)), g.view(1, 1, -1, 1))

    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x**2
    var_y = blur(y * y) - mu_y**2
    cov = blur(x * y) - mu_x * mu_y
    c1, c2 = (K1 * data_range) ** 2, (K2 * data_range) ** 2
    values = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return values.mean(dim=(0, 1))
