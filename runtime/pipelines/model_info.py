"""What a pipeline needs to know about a model besides its networks."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class ModelInfo:
    """What the pipeline needs to know about the model besides its networks."""

    tokenizer: Any
    scheduler_config: dict[str, Any]
    vae_scaling_factor: float = 0.18215
    vae_scale_factor: int = 8
    latent_channels: int = 4
    seine_prediction_type: str = "epsilon"  # what the SEINE denoiser outputs (its config's prediction_type)
