"""The models the bench runs: the user's folder, or the real architectures with random weights.

Latency does not depend on weight values, so without ``--model-dir`` the bench writes
``build_models(size)`` (SD 1.4's CLIP ViT-L/14 text encoder, VAE and UNet at full size
for ``sd14``) and ``build_seine(unet, ...)`` once into a cache folder keyed by size and
seed, and every backend and peer loads those same files: the same weights everywhere.
ONNX artifacts are exported on demand into ``<cache>/engines/``, keyed by the model
folder's fingerprint, and reused by later runs.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mvg_rt.errors import MvgError

Progress = Callable[[str], None]
CACHE_ENV = "MVG_RT_BENCH_CACHE"


def default_cache_dir() -> Path:
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "mvg-rt" / "bench"


@dataclass
class ModelSource:
    """A diffusers-format folder (+ optional SEINE checkpoint) and where it came from."""

    model_dir: Path
    seine: Path | None
    origin: str  # "random sd14, seed 0" or "user folder"
    size: str | None  # sd14 / tiny for random models; None for a user folder

    def describe(self) -> dict[str, Any]:
        return {"model_dir": str(self.model_dir), "seine": str(self.seine) if self.seine else None,
                "origin": self.origin}


def _seine_file(model_dir: Path) -> Path:
    from mvg_rt.models.builders import SEINE_FILE

    return model_dir / "seine" / SEINE_FILE


def random_model_folder(size: str, seed: int, cache: Path, with_seine: bool, progress: Progress) -> ModelSource:
    """``build_models(size, seed)`` (+ SEINE) written once under ``cache``; reused afterwards."""
    from mvg_rt.models.builders import build_models, build_seine, write_model_folder

    folder = cache / "models" / f"{size}-seed{seed}"
    if not (folder / "model_index.json").is_file():
        progress(f"writing random-weight {size} model folder to {folder} (once)")
        folder.parent.mkdir(parents=True, exist_ok=True)
        staging = folder.with_name(folder.name + ".partial")
        shutil.rmtree(staging, ignore_errors=True)
        models = build_models(size, seed=seed)
        seine = build_seine(models.unet, "tiny" if size == "tiny" else "full", seed=seed) if with_seine else None
        write_model_folder(models, staging, seine=seine)
        del models, seine
        shutil.rmtree(folder, ignore_errors=True)
        staging.rename(folder)
    if with_seine and not _seine_file(folder).is_file():
        progress(f"adding a random-weight {size} SEINE to {folder} (once)")
        from diffusers import UNet2DConditionModel

        from mvg_rt.models.seine_checkpoint import save_seine_checkpoint

        unet = UNet2DConditionModel.from_pretrained(str(folder / "unet"), local_files_only=True)
        seine = build_seine(unet, "tiny" if size == "tiny" else "full", seed=seed)
        (folder / "seine").mkdir(exist_ok=True)
        partial = folder / "seine" / "seine.partial.safetensors"
        save_seine_checkpoint(seine, partial)
        partial.rename(_seine_file(folder))
    seine_path = _seine_file(folder) if _seine_file(folder).is_file() else None
    return ModelSource(folder, seine_path, f"random-weight {size} architecture, seed {seed}", size)


def model_source(model_dir: str | Path | None, size: str, seed: int, cache: Path, with_seine: bool,
                 progress: Progress = lambda _: None) -> ModelSource:
    if model_dir is None:
        return random_model_folder(size, seed, cache, with_seine, progress)
    from mvg_rt.models.diffusers_folder import check_model_folder

    folder = check_model_folder(model_dir)
    seine = _seine_file(folder) if _seine_file(folder).is_file() else None
    if with_seine and seine is None:
        raise MvgError(f"--components seine / transitions need {folder}/seine/seine.safetensors; add a SEINE "
                       "checkpoint to the folder or leave seine out")
    return ModelSource(folder, seine, "user model folder", None)


# ------------------------------------------------------------------ PyTorch modules, one component at a time


def load_torch_module(source: ModelSource, component: str) -> nn.Module:
    """The component's PyTorch module (the one TorchBackend runs and the exporter exports), loading only its part."""
    from mvg_rt.models import component_modules as cm

    root = source.model_dir
    if component == "text_encoder":
        from transformers import CLIPTextModel

        return cm.TextEncoderModule(CLIPTextModel.from_pretrained(str(root / "text_encoder"),
                                                                  local_files_only=True)).eval()
    if component in ("vae_encoder", "vae_decoder"):
        from diffusers import AutoencoderKL

        vae = AutoencoderKL.from_pretrained(str(root / "vae"), local_files_only=True)
        wrapper = cm.VaeEncoderModule if component == "vae_encoder" else cm.VaeDecoderModule
        return wrapper(vae).eval()
    if component == "unet":
        from diffusers import UNet2DConditionModel

        return cm.UNetModule(UNet2DConditionModel.from_pretrained(str(root / "unet"), local_files_only=True)).eval()
    if component == "seine":
        from mvg_rt.models.seine_checkpoint import load_seine_model

        if source.seine is None:
            raise MvgError(f"{root} has no seine/seine.safetensors: leave seine out of --components")
        return cm.SeineModule(load_seine_model(source.seine)).eval()
    raise MvgError(f"unknown component {component!r}")


def text_hidden_size(source: ModelSource) -> int:
    import json

    return int(json.loads((source.model_dir / "text_encoder" / "config.json").read_text())["hidden_size"])


def vocab_size(source: ModelSource) -> int:
    import json

    return int(json.loads((source.model_dir / "text_encoder" / "config.json").read_text())["vocab_size"])


# ------------------------------------------------------------------ exported engines


def _manifest_has(folder: Path, components: tuple[str, ...], precision: str) -> bool:
    from mvg_rt.artifacts.manifest import Manifest

    try:
        manifest = Manifest.read(folder)
    except Exception:  # noqa: BLE001 - an unreadable cache entry is simply not reused
        return False
    return all(manifest.find(c, "onnx", precision) is not None for c in components)


def engines_for(source: ModelSource, components: tuple[str, ...], cache: Path, fp16: bool,
                progress: Progress = lambda _: None) -> Path:
    """An engines folder with ONNX artifacts of ``components`` for ``source``: cached, else exported now."""
    from mvg_rt.export.build import ExportRequest, export_engines
    from mvg_rt.models.provenance import model_dir_fingerprint

    precision = "fp16" if fp16 else "fp32"
    progress(f"fingerprinting {source.model_dir}")
    key = model_dir_fingerprint(source.model_dir)[:16]
    if "seine" in components and source.seine is not None:
        from mvg_rt.models.provenance import file_fingerprint

        key += "-" + file_fingerprint(source.seine)[:8]
    root = cache / "engines"
    wanted = tuple(sorted(components))
    if root.is_dir():
        for folder in sorted(root.glob(f"{key}*")):
            if folder.is_dir() and _manifest_has(folder, wanted, precision):
                progress(f"reusing exported engines {folder}")
                return folder
    import hashlib

    out = root / f"{key}-{hashlib.sha256(' '.join(wanted).encode()).hexdigest()[:6]}{'-fp16' if fp16 else ''}"
    root.mkdir(parents=True, exist_ok=True)
    progress(f"exporting {', '.join(wanted)} to ONNX in {out} (once; the full-size UNet takes minutes)")
    export_engines(ExportRequest(model_dir=source.model_dir, out=out, seine=source.seine if "seine" in wanted else None,
                                 with_seine="seine" in wanted, fp16=fp16, components=wanted, overwrite=True),
                   progress=progress)
    return out


def check_engines(engines: Path, components: tuple[str, ...], precision: str) -> Path:
    engines = Path(engines)
    if not _manifest_has(engines, components, precision):
        raise MvgError(f"--engines {engines} lacks {precision} ONNX artifacts for some of {', '.join(components)}: "
                       "re-export it (mvg-rt export --help) or drop --engines to export into the cache")
    return engines


def free_memory() -> None:
    import gc

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
