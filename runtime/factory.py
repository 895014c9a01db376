"""Opening a backend: from a model folder (PyTorch) or a folder of exported artifacts.

This is the only place that knows every backend implementation; pipelines see the
:class:`Backend` interface and the CLI sees :func:`open_runtime`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mvg_rt.errors import MvgError
from mvg_rt.runtime.backends.base import Backend
from mvg_rt.runtime.pipelines.pie import ModelInfo

BACKENDS = ("torch", "ort", "trt")


@dataclass
class Runtime:
    """A backend ready to run, plus what describes the model it runs."""

    backend: Backend
    model: ModelInfo
    provenance: dict[str, Any]
    notice: str | None = None  # shown to the user and stored in run.json

    @property
    def default_resolution(self) -> int:
        return int(self.provenance.get("resolution", 512))


def _device(name: str) -> torch.device:
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise MvgError(f"--device {name}: no CUDA device is visible to PyTorch; use --device cpu")
    return torch.device(name)


def torch_runtime(model_dir: str | Path, unet_dir: str | Path | None = None, device: str = "cpu",
                  dtype: torch.dtype = torch.float32, seine: Any = None) -> Runtime:
    """The PyTorch reference over a diffusers-format folder."""
    from mvg_rt.models.component_modules import component_modules
    from mvg_rt.models.diffusers_folder import fingerprint, load_diffusers_folder
    from mvg_rt.runtime.backends.torch_backend import TorchBackend

    models = load_diffusers_folder(model_dir, unet_dir)
    backend = TorchBackend(component_modules(models, seine), _device(device), dtype)
    info = ModelInfo(models.tokenizer, models.scheduler_config, models.vae_scaling_factor,
                     models.vae_scale_factor, models.latent_channels)
    provenance = {
        "model_dir_sha256": fingerprint([Path(model_dir) / p for p in ("text_encoder", "vae", "unet", "scheduler", "tokenizer")]),
        "unet_sha256": fingerprint([models.sources["unet"]]) if unet_dir else None,
        "resolution": int(models.unet.config.sample_size) * models.vae_scale_factor,
    }
    return Runtime(backend, info, provenance)
