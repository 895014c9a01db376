"""Shared fixtures: tiny random-init models of the real architectures, built once per session."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from mvg_rt.models.builders import build_models, build_seine, write_model_folder

    models = build_models("tiny", seed=0)
    return write_model_folder(models, tmp_path_factory.mktemp("tiny") / "model",
                              seine=build_seine(models.unet, "tiny", seed=0))


@pytest.fixture(scope="session")
def tiny_models(tiny_model_dir: Path):
    from mvg_rt.models.diffusers_folder import load_diffusers_folder

    return load_diffusers_folder(tiny_model_dir)


@pytest.fixture(scope="session")
def tiny_runtime(tiny_model_dir: Path):
    from mvg_rt.runtime.factory import RuntimeSpec, open_runtime

    return open_runtime(RuntimeSpec(model_dir=tiny_model_dir))


@pytest.fixture
def run_cli(capsys: pytest.CaptureFixture):
    """Run ``mvg-rt ARGS`` in-process; returns (exit code, stdout, stderr)."""
    from mvg_rt.cli import main

    def run(args: list[str]) -> tuple[int, str, str]:
        try:
            main(args)
            code = 0
        except SystemExit as exit_:
            code = int(exit_.code or 0)
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run


@pytest.fixture
def image_64() -> np.ndarray:
    """A smooth 64x64 RGB test image (smooth so VAE round trips are meaningful)."""
    y, x = np.mgrid[0:64, 0:64] / 63.0
    gray = 0.5 + 0.35 * np.sin(3 * x) * np.cos(2 * y)
    return (np.stack([gray, gray * 0.9, gray * 0.8], axis=2) * 255).round().astype(np.uint8)


@pytest.fixture
def xray(tmp_path: Path, image_64: np.ndarray) -> Path:
    """``image_64`` as an RGB PNG input file."""
    path = tmp_path / "xray.png"
    Image.fromarray(image_64).save(path)
    return path


@pytest.fixture(scope="session")
def tiny_seine_checkpoint(tiny_model_dir: Path) -> Path:
    """The tiny SEINE (seeded from the tiny UNet, temporal layers and extra inputs non-zero)."""
    return tiny_model_dir / "seine" / "seine.safetensors"


@pytest.fixture(scope="session")
def tiny_engines(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path, tiny_seine_checkpoint: Path) -> Path:
    """The tiny model + SEINE exported once (FP32 and FP16, no slim: slim is tested on its own). Read-only."""
    from mvg_rt.export.export_job import ExportRequest, export_engines

    out = tmp_path_factory.mktemp("engines") / "tiny"
    export_engines(ExportRequest(model_dir=tiny_model_dir, out=out, seine=tiny_seine_checkpoint, fp16=True,
                                 slim=False))
    return out


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models gain nothing from two torch threads, and on a shared 2-core machine torch's OpenMP
    barriers turn a briefly stolen core into 40x slower calls (measured 0.1 s vs 4-8 s for a tiny PIE run)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
