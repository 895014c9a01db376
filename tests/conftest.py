"""Shared fixtures: tiny random-init models of the real architectures, built once per session."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from mvg_rt.models.builders import build_models, write_model_folder

    return write_model_folder(build_models("tiny", seed=0), tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="session")
def tiny_models(tiny_model_dir: Path):
    from mvg_rt.models.diffusers_folder import load_diffusers_folder

    return load_diffusers_folder(tiny_model_dir)


@pytest.fixture(scope="session")
def tiny_runtime(tiny_model_dir: Path):
    from mvg_rt.runtime.factory import torch_runtime

    return torch_runtime(tiny_model_dir)


@pytest.fixture
def image_64() -> np.ndarray:
    """A smooth 64x64 RGB test image (smooth so VAE round trips are meaningful)."""
    y, x = np.mgrid[0:64, 0:64] / 63.0
    gray = 0.5 + 0.35 * np.sin(3 * x) * np.cos(2 * y)
    return (np.stack([gray, gray * 0.9, gray * 0.8], axis=2) * 255).round().astype(np.uint8)
