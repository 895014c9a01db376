"""The embedded default that ``mvg-rt simulate`` runs on a fresh machine with no weights.

The case is a bundled synthetic chest X-ray phantom, its heart ROI and the prompt
"severe cardiomegaly". The model is built locally (nothing is downloaded).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from mvg_rt.runtime.factory import Runtime, torch_runtime

ASSETS = resources.files("mvg_rt.demo") / "assets"


@dataclass(frozen=True)
class DemoCase:
    image: Path
    mask: Path
    prompt: str


DEMO_CASE = DemoCase(image=Path(str(ASSETS / "demo_cxr.png")), mask=Path(str(ASSETS / "demo_heart_roi.png")),
                     prompt="severe cardiomegaly")

TINY_NOTICE = ("embedded default: a tiny RANDOM-weight model of the SD 1.x architecture; its outputs show the "
               "pipeline at work and are NOT clinically meaningful")


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "mvg-rt"


def tiny_model_dir() -> Path:
    """A tiny random-init model folder, built once into the user cache."""
    from mvg_rt.io.output_dir import staged_output_dir
    from mvg_rt.models.builders import build_models, build_seine, write_model_folder

    folder = _cache_dir() / "tiny-random-v2"
    if not (folder / "model_index.json").is_file():
        folder.parent.mkdir(parents=True, exist_ok=True)
        with staged_output_dir(folder, overwrite=True) as staging:
            models = build_models("tiny", seed=0)
            write_model_folder(models, staging, seine=build_seine(models.unet, "tiny", seed=0))
    return folder


def demo_runtime(device: str = "cpu") -> Runtime:
    runtime = torch_runtime(tiny_model_dir(), device=device)
    runtime.notice = TINY_NOTICE
    return runtime
