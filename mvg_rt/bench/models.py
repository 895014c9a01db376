"""The models the bench runs (without ``--model-dir``: the real architectures with random weights, since
latency does not depend on weight values, cached with their ONNX export), inputs at the pipelines' shapes,
and FLOPs per call (``FlopCounterMode`` over the module built on the meta device: real shapes, no weights)."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from mvg_rt.components import COMPONENTS, PIE_COMPONENTS
from mvg_rt.errors import MvgError

Progress = Callable[[str], None]
CACHE_ENV = "MVG_RT_BENCH_CACHE"
CALL_BATCH = {"text_encoder": 2, "vae_encoder": 1, "vae_decoder": 1, "unet": 2, "seine": 2}  # CFG pairs: 2


def default_cache_dir() -> Path:
    from mvg_rt.demo.default import cache_dir

    return Path(os.environ.get(CACHE_ENV) or cache_dir() / "bench")


@dataclass(frozen=True)
class ModelSource:
    """A diffusers-format folder (+ optional SEINE checkpoint) and where it came from."""

    model_dir: Path
    seine: Path | None
    origin: str

    def text_config(self) -> dict[str, Any]:
        return json.loads((self.model_dir / "text_encoder" / "config.json").read_text())


def model_source(model_dir: Path | None, size: str, seed: int, cache: Path, progress: Progress) -> ModelSource:
    """The user's folder, or ``build_models(size, seed)`` + SEINE written once under ``cache``."""
    from mvg_rt.models.builders import SEINE_FILE, build_models, build_seine, write_model_folder

    if model_dir is not None:
        from mvg_rt.models.diffusers_folder import check_model_folder

        folder = check_model_folder(model_dir)
        seine = folder / "seine" / SEINE_FILE
        return ModelSource(folder, seine if seine.is_file() else None, "user model folder")
    folder = cache / "models" / f"{size}-seed{seed}"
    if not (folder / "seine" / SEINE_FILE).is_file():
        progress(f"writing random-weight {size} model folder (+ SEINE) to {folder} (once)")
        staging = folder.with_name(folder.name + ".partial")
        shutil.rmtree(staging, ignore_errors=True)
        models = build_models(size, seed=seed)
        write_model_folder(models, staging, seine=build_seine(models.unet, "tiny" if size == "tiny" else "full",
                                                              seed=seed))
        shutil.rmtree(folder, ignore_errors=True)
        staging.rename(folder)
    return ModelSource(folder, folder / "seine" / SEINE_FILE, f"random-weight {size} architecture, seed {seed}")


def engines_for(source: ModelSource, with_seine: bool, cache: Path, fp16: bool, progress: Progress) -> Path:
    """An engines folder with the PIE components (+ SEINE) of ``source``: cached, else exported now."""
    from mvg_rt.artifacts.manifest import Manifest
    from mvg_rt.export.export_job import ExportRequest, export_engines
    from mvg_rt.models.provenance import file_fingerprint, model_dir_fingerprint

    if with_seine and source.seine is None:
        raise MvgError(f"{source.model_dir} has no seine/seine.safetensors: add a SEINE checkpoint to the folder, "
                       "or leave seine out of --components and pass --no-transitions")
    progress(f"fingerprinting {source.model_dir}")
    key = model_dir_fingerprint(source.model_dir)[:16]
    key += (f"-seine{file_fingerprint(source.seine)[:8]}" if with_seine else "") + ("-fp16" if fp16 else "")
    out = cache / "engines" / key
    wanted = PIE_COMPONENTS + (("seine",) if with_seine else ())
    if (out / "manifest.json").is_file():
        manifest = Manifest.read(out)
        if all(manifest.find(c, "onnx", "fp16" if fp16 else "fp32") for c in wanted):
            progress(f"reusing exported engines {out}")
            return out
    progress(f"exporting {', '.join(wanted)} to ONNX in {out} (once; the full-size UNet takes minutes)")
    export_engines(ExportRequest(model_dir=source.model_dir, out=out, seine=source.seine if with_seine else None,
                                 with_seine=with_seine, fp16=fp16, components=wanted, overwrite=True),
                   progress=progress)
    return out


def ensure_trt_engines(engines: Path, precision: str, resolution: int, frames: int, components: tuple[str, ...],
                       progress: Progress) -> None:
    """Build the TensorRT plans the bench needs (``mvg-rt build``'s path) unless the folder has them."""
    from mvg_rt.artifacts.manifest import Manifest
    from mvg_rt.artifacts.profiles import ProfileSettings
    from mvg_rt.export.tensorrt_build import BuildSettings, build_engines

    manifest = Manifest.read(engines)
    missing = tuple(c for c in components if manifest.find(c, "trt", precision) is None)
    if missing:
        progress(f"building {precision} TensorRT engines for {', '.join(missing)} at {resolution}x{resolution}")
        profile = ProfileSettings(resolutions=((resolution, resolution),), frames=(frames,))
        build_engines(engines, BuildSettings(precision=precision, components=missing, profile=profile),
                      progress=progress)


def component_inputs(source: ModelSource, component: str, resolution: int, frames: int) -> dict[str, Tensor]:
    """Seeded inputs from the component's spec (the exporter's ``example_inputs``) at the pipelines' shapes."""
    from mvg_rt.export.onnx_export import example_inputs

    text, r = source.text_config(), resolution // 8
    dims = {"batch": CALL_BATCH[component], "height": resolution, "width": resolution, "latent_height": r,
            "latent_width": r, "frames": frames}
    spec = COMPONENTS[component]
    return dict(zip(spec.input_names, example_inputs(spec, dims, text["hidden_size"], text["vocab_size"],
                                                     seed=1234)))


def meta_module(source: ModelSource, component: str) -> nn.Module:
    """The component's module built from the folder's configs on the meta device (no weights)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from mvg_rt.models import component_modules as cm
    from mvg_rt.models.seine_checkpoint import stored_config
    from mvg_rt.models.seine_unet import SeineUNet3D, load_builtin_config

    root = source.model_dir
    with torch.device("meta"):
        if component == "text_encoder":
            return cm.TextEncoderModule(CLIPTextModel(CLIPTextConfig(**source.text_config())))
        if component in ("vae_encoder", "vae_decoder"):
            vae = AutoencoderKL.from_config(AutoencoderKL.load_config(str(root / "vae")))
            return (cm.VaeEncoderModule if component == "vae_encoder" else cm.VaeDecoderModule)(vae)
        if component == "unet":
            return cm.UNetModule(UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(str(root / "unet"))))
        config = (stored_config(source.seine) if source.seine else None) or load_builtin_config("full")
        return cm.SeineModule(SeineUNet3D(config))


def count_flops(source: ModelSource, component: str, feeds: dict[str, Tensor]) -> dict[str, Any]:
    """FLOPs of one call, and the top operators by FLOPs."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        meta_module(source, component).eval()(*(t.to("meta") for t in feeds.values()))
    per_op = sorted(((str(op), int(n)) for op, n in counter.get_flop_counts().get("Global", {}).items()),
                    key=lambda kv: -kv[1])
    return {"flops": int(counter.get_total_flops()), "flops_top_ops": dict(per_op[:4])}
