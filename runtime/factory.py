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


def _resolve_seine(model_dir: Path, seine: Any, with_seine: bool) -> Any:
    """A SEINE module from ``seine`` (module or checkpoint path) or the folder's ``seine/``; None if absent."""
    from mvg_rt.models.builders import SEINE_FILE
    from mvg_rt.models.seine_checkpoint import load_seine_model

    if not with_seine:
        return None
    if seine is None and (model_dir / "seine" / SEINE_FILE).is_file():
        seine = model_dir / "seine" / SEINE_FILE
    return load_seine_model(seine) if isinstance(seine, (str, Path)) else seine


def torch_runtime(model_dir: str | Path, unet_dir: str | Path | None = None, device: str = "cpu",
                  dtype: torch.dtype = torch.float32, seine: Any = None, with_seine: bool = True) -> Runtime:
    """The PyTorch reference over a diffusers-format folder.

    ``seine`` is a loaded SEINE module or a checkpoint path; by default the folder's
    ``seine/seine.safetensors`` is used when present. ``with_seine=False`` skips it
    (PIE only), which saves loading ~3.6 GB for the full-size denoiser.
    """
    from mvg_rt.models.builders import SEINE_FILE
    from mvg_rt.models.component_modules import component_modules
    from mvg_rt.artifacts.hashing import fingerprint
    from mvg_rt.models.diffusers_folder import load_diffusers_folder
    from mvg_rt.models.provenance import MODEL_DIR_PARTS
    from mvg_rt.runtime.backends.torch_backend import TorchBackend

    model_dir = Path(model_dir)
    models = load_diffusers_folder(model_dir, unet_dir)
    seine_path = seine if isinstance(seine, (str, Path)) else None
    seine_module = _resolve_seine(model_dir, seine, with_seine)
    if seine_module is not None and seine_path is None and (model_dir / "seine" / SEINE_FILE).is_file():
        seine_path = model_dir / "seine" / SEINE_FILE  # the file, as export's manifest fingerprints it
    backend = TorchBackend(component_modules(models, seine_module), _device(device), dtype)
    info = ModelInfo(models.tokenizer, models.scheduler_config, models.vae_scaling_factor,
                     models.vae_scale_factor, models.latent_channels)
    provenance = {
        "model_dir_sha256": fingerprint([model_dir / p for p in MODEL_DIR_PARTS]),
        "unet_sha256": fingerprint([models.sources["unet"]]) if unet_dir else None,
        "seine_sha256": fingerprint([seine_path]) if seine_path else None,
        "resolution": int(models.unet.config.sample_size) * models.vae_scale_factor,
    }
    return Runtime(backend, info, provenance)


def engines_model_info(manifest: Any) -> ModelInfo:
    """Tokenizer, scheduler config and latent geometry from a self-contained engines folder."""
    import json

    from transformers import CLIPTokenizer

    root = Path(manifest.root)
    try:
        tokenizer = CLIPTokenizer.from_pretrained(str(root / manifest.model.tokenizer), local_files_only=True)
        scheduler_config = json.loads((root / manifest.model.scheduler_config).read_text())
    except Exception as err:  # noqa: BLE001 - missing or damaged files: one line, with the fix
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        raise MvgError(f"engines folder {root}: cannot read its tokenizer/scheduler ({first}); re-export it "
                       "(mvg-rt export --help)") from err
    m = manifest.model
    return ModelInfo(tokenizer, scheduler_config, m.vae_scaling_factor, m.vae_scale_factor, m.latent_channels)


def ort_runtime(engines_dir: str | Path, precision: str = "fp32", device: str = "cpu",
                settings: Any = None) -> Runtime:
    """ONNX Runtime over an engines folder written by ``mvg-rt export`` (needs no model folder)."""
    from mvg_rt.components import PIE_COMPONENTS
    from mvg_rt.artifacts.manifest import Manifest
    from mvg_rt.runtime.backends.onnxruntime_backend import OrtBackend

    manifest = Manifest.read(engines_dir)
    for component in PIE_COMPONENTS:  # fail before any work, naming what is missing
        manifest.require(component, "onnx", precision)
    backend = OrtBackend(engines_dir, precision, device, settings, manifest)
    provenance = {
        "engines": str(Path(engines_dir)),
        "model_dir_sha256": manifest.source.model_dir_sha256,
        "unet_sha256": manifest.source.unet_sha256,
        "seine_sha256": manifest.source.seine_sha256,
        "resolution": manifest.model.resolution,
        "artifacts": {a.component: a.sha256 for a in manifest.artifacts if a.kind == "onnx" and a.precision == precision},
    }
    return Runtime(backend, engines_model_info(manifest), provenance)


def trt_runtime(engines_dir: str | Path, precision: str = "fp16", device: str = "cuda", cuda_graphs: bool = False,
                low_memory: bool = False) -> Runtime:
    """TensorRT engines built by ``mvg-rt build`` in an engines folder (needs an NVIDIA GPU and TensorRT 10)."""
    from mvg_rt.components import PIE_COMPONENTS
    from mvg_rt.artifacts.manifest import Manifest
    from mvg_rt.artifacts.tensorrt import import_tensorrt, rebuild_command

    import_tensorrt()  # first: without it nothing below can work, and the error says how to install it
    manifest = Manifest.read(engines_dir)
    missing = [c for c in PIE_COMPONENTS if manifest.find(c, "trt", precision) is None]
    if missing:
        raise MvgError(f"engines folder {engines_dir} has no {precision} TensorRT engine for {', '.join(missing)}: "
                       f"build them with {rebuild_command(engines_dir, precision=precision)}")
    from mvg_rt.runtime.backends.tensorrt_backend import TrtBackend

    backend = TrtBackend(engines_dir, precision, device, manifest, cuda_graphs=cuda_graphs, low_memory=low_memory)
    provenance = {
        "engines": str(Path(engines_dir)),
        "model_dir_sha256": manifest.source.model_dir_sha256,
        "unet_sha256": manifest.source.unet_sha256,
        "seine_sha256": manifest.source.seine_sha256,
        "resolution": manifest.model.resolution,
        "artifacts": {a.component: a.sha256 for a in manifest.artifacts
                      if a.kind == "trt" and a.precision == precision},
    }
    return Runtime(backend, engines_model_info(manifest), provenance)


# Backends that run an engines folder: name -> opener(engines_dir, precision=, device=, **options).
ENGINE_RUNTIMES: dict[str, Any] = {"ort": ort_runtime, "trt": trt_runtime}


def engines_runtime(backend: str, engines_dir: str | Path, precision: str = "fp32", device: str = "cpu",
                    **options: Any) -> Runtime:
    """Open ``engines_dir`` with the named engines backend (ort, trt); ``options`` go to its opener."""
    opener = ENGINE_RUNTIMES.get(backend)
    if opener is None:
        raise MvgError(f"--backend {backend} is not available in this build: use one of "
                       f"{', '.join(['torch', *ENGINE_RUNTIMES])}")
    return opener(engines_dir, precision=precision, device=device, **options)
