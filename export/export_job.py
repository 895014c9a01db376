"""The ``mvg-rt export`` job: a model folder (+ fine-tuned UNet, + SEINE) -> a self-contained engines folder.

Layout of ``engines/NAME`` (written to a staging folder, renamed into place only
when complete)::

    manifest.json                  what is here (see mvg_rt.artifacts.manifest)
    tokenizer/                     copied from the model folder
    scheduler/scheduler_config.json
    text_encoder/model.onnx        one folder per component;
    unet/model.onnx (+ .data)      a >2 GB graph keeps its weights in model.onnx.data
    unet/model_fp16.onnx           with --fp16 (converter: --fp16-converter, recorded in the manifest)
    unet/model_int8.onnx           with --int8: the Q/DQ graph (see export/int8.py)
    ...

``mvg-rt build`` later adds the TensorRT engines to the same folder (:mod:`mvg_rt.export.tensorrt_build`).
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from mvg_rt.components import COMPONENTS
from mvg_rt.errors import MvgError
from mvg_rt.versions import package_versions
from mvg_rt.artifacts.hashing import HashCache
from mvg_rt.artifacts.manifest import Artifact, AxisRange, Manifest, ModelDecl, SourceDecl, TensorDecl
from mvg_rt.models.provenance import file_fingerprint, model_dir_fingerprint, unet_fingerprint
from mvg_rt.export.onnx_export import (
    DEFAULT_OPSET,
    EXPORTERS,
    MIN_OPSET,
    TraceDims,
    example_inputs,
    export_component,
    external_data_of,
    graph_io,
    opset_of,
)

Progress = Callable[[str], None]


@dataclass
class ExportRequest:
    model_dir: Path
    out: Path
    unet_dir: Path | None = None
    seine: Path | None = None
    seine_config: str | None = None  # built-in name or JSON file; None: the checkpoint's metadata, else "full"
    with_seine: bool = True  # without --seine, export <model-dir>/seine/seine.safetensors when the folder has one
    fp16: bool = False
    fp16_converter: str = "ort"  # see export/fp16.py: ort (onnxruntime.transformers) | modelopt (AutoCast)
    int8: bool = False
    #: UNet feeds recorded by mvg_rt.calibration (the job layer runs the pipeline; export never imports runtime)
    calibration_feeds: list[dict[str, Any]] | None = None
    calibration_source: dict[str, Any] = field(default_factory=dict)  # what the feeds came from, for the manifest
    int8_keep: tuple[str, ...] | None = None  # None: export.int8.DEFAULT_KEEP
    opset: int = DEFAULT_OPSET
    slim: bool = False  # measured: halves the node count, same outputs and ORT latency (see export/slim.py)
    exporter: str = "torchscript"
    overwrite: bool = False
    components: tuple[str, ...] = field(default=())  # empty: all available

    def __post_init__(self) -> None:
        if self.exporter not in EXPORTERS:
            raise MvgError(f"--exporter must be one of {', '.join(EXPORTERS)} (got {self.exporter!r})")
        if self.opset < MIN_OPSET:
            raise MvgError(f"--opset {self.opset} is too old: use {MIN_OPSET} or newer (default {DEFAULT_OPSET})")
        if self.seine_config is not None and not self.with_seine:
            raise MvgError("--seine-config describes the SEINE checkpoint to export: drop it or drop --no-seine")
        if self.seine is not None and not self.with_seine:
            raise MvgError("--seine and --no-seine contradict each other: pass one")
        from mvg_rt.export.fp16 import FP16_CONVERTERS, require_modelopt

        if self.fp16_converter not in FP16_CONVERTERS:
            raise MvgError(f"--fp16-converter must be one of {', '.join(FP16_CONVERTERS)} "
                           f"(got {self.fp16_converter!r})")
        if self.fp16_converter != "ort" and not self.fp16:
            raise MvgError(f"--fp16-converter {self.fp16_converter} converts the --fp16 graphs: add --fp16")
        if self.fp16_converter == "modelopt":
            require_modelopt()  # before any export work
        if self.int8 and not self.calibration_feeds:
            raise MvgError("--int8 needs calibration inputs: pass --calibration DIR (images), or leave it out to "
                           "calibrate on the demo phantoms")
        if self.int8 and self.components and "unet" not in self.components:
            raise MvgError("--int8 quantizes the UNet: add unet to the exported components or drop --int8")


def resolve_seine_config(checkpoint: Path, name_or_path: str | None) -> Any:
    """The SEINE architecture: explicit option, else the config an mvg-rt safetensors file carries, else full."""
    from mvg_rt.models.seine_unet import BUILTIN_CONFIGS, SeineConfig, load_builtin_config

    if name_or_path is not None:
        if name_or_path in BUILTIN_CONFIGS:
            return load_builtin_config(name_or_path)
        return SeineConfig.from_json(name_or_path)
    if checkpoint.suffix.lower() == ".safetensors" and checkpoint.is_file():
        from safetensors import safe_open

        try:
            with safe_open(str(checkpoint), framework="pt") as handle:
                stored = (handle.metadata() or {}).get("seine_config")
        except Exception:  # noqa: BLE001 - unreadable files are reported by the loader with a proper message
            stored = None
        if stored:
            return SeineConfig.from_dict(json.loads(stored))
    return load_builtin_config("full")


def export_inputs(model_dir: str | Path, unet_dir: str | Path | None = None, seine: str | Path | None = None,
                  seine_config: str | None = None) -> dict[str, str | Path | None]:
    """What an export reads, by the option that names it: its ``--out`` may be none of these nor hold one."""
    return {"the model folder (--model-dir)": model_dir, "the UNet folder (--unet)": unet_dir,
            "the SEINE checkpoint (--seine)": seine,
            "the SEINE config (--seine-config)": seine_config if seine_config and Path(seine_config).is_file()
            else None}


def seine_checkpoint(request: ExportRequest) -> Path | None:
    """The SEINE checkpoint to export: --seine, else the model folder's seine/ (unless --no-seine)."""
    from mvg_rt.models.builders import SEINE_FILE

    if not request.with_seine or (request.components and "seine" not in request.components):
        return None
    if request.seine is not None:
        return Path(request.seine)
    default = Path(request.model_dir) / "seine" / SEINE_FILE
    return default if default.is_file() else None


def load_seine(checkpoint: str | Path, config: Any) -> nn.Module:
    from mvg_rt.models.seine_checkpoint import load_seine_model

    return load_seine_model(checkpoint, config)


def _levels_multiple(block_out_channels: Any) -> int:
    """Latent sizes must divide by 2 per down-sampling level (the traced graph upsamples by exactly 2)."""
    return 2 ** (len(tuple(block_out_channels)) - 1)


def axis_ranges(component: str, vae_scale_factor: int, unet_multiple: int, seine_multiple: int) -> dict[str, AxisRange]:
    ranges = {"batch": AxisRange(min=1)}
    if component == "vae_encoder":
        ranges |= {a: AxisRange(min=vae_scale_factor, multiple_of=vae_scale_factor) for a in ("height", "width")}
    elif component == "vae_decoder":
        ranges |= {a: AxisRange(min=1) for a in ("latent_height", "latent_width")}
    elif component == "unet":
        ranges |= {a: AxisRange(min=unet_multiple, multiple_of=unet_multiple) for a in ("latent_height", "latent_width")}
    elif component == "seine":
        ranges |= {a: AxisRange(min=seine_multiple, multiple_of=seine_multiple)
                   for a in ("latent_height", "latent_width")}
        ranges["frames"] = AxisRange(min=1)
    return ranges


def _artifact(root: Path, component: str, precision: str, file: Path, axes: dict[str, AxisRange],
              details: dict[str, Any], hashes: HashCache) -> Artifact:
    """The manifest entry of a written file; its hashes also seed the folder's verified-hash cache."""
    inputs, outputs = graph_io(file)
    external = external_data_of(file)
    external_path = file.parent / external if external else None
    return Artifact(
        component=component, kind="onnx", precision=precision,
        file=file.relative_to(root).as_posix(), sha256=hashes.sha256(file, file.relative_to(root).as_posix()),
        size=file.stat().st_size + (external_path.stat().st_size if external_path else 0),
        inputs=[TensorDecl.from_dict(d) for d in inputs], outputs=[TensorDecl.from_dict(d) for d in outputs],
        opset=opset_of(file),
        external_data=external_path.relative_to(root).as_posix() if external_path else None,
        external_data_sha256=(hashes.sha256(external_path, external_path.relative_to(root).as_posix())
                              if external_path else None),
        axes=axes, details=details,
    )


def int8_artifact(root: Path, manifest: Manifest, feeds: list[dict[str, Any]], keep: tuple[str, ...] | None,
                  calibration_source: dict[str, Any], hashes: HashCache) -> Artifact:
    """Quantize the folder's FP32 UNet graph (export/int8.py) and add the INT8 artifact to ``manifest``."""
    from mvg_rt.export.int8 import DEFAULT_KEEP, quantize_int8

    fp32 = manifest.require("unet", "onnx", "fp32")
    path = root / fp32.file
    int8_path = path.with_name("model_int8.onnx")
    details = quantize_int8(path, int8_path, feeds, DEFAULT_KEEP if keep is None else keep)
    artifact = _artifact(root, "unet", "int8", int8_path, dict(fp32.axes), details | {
        "calibration": calibration_source, "from_sha256": fp32.sha256}, hashes)
    manifest.add(artifact)
    return artifact


def add_int8(engines_dir: Path, feeds: list[dict[str, Any]], keep: tuple[str, ...] | None = None,
             calibration_source: dict[str, Any] | None = None) -> Artifact:
    """Add the INT8 UNet to an existing engines folder (its FP32 graph is verified first)."""
    root = Path(engines_dir)
    manifest = Manifest.read(root)
    manifest.verify(manifest.require("unet", "onnx", "fp32"))
    hashes = HashCache(root)
    artifact = int8_artifact(root, manifest, feeds, keep, calibration_source or {}, hashes)
    manifest.validate()
    manifest.write(root)
    hashes.save()
    return artifact


def export_engines(request: ExportRequest, progress: Progress = lambda _: None) -> Manifest:
    """Export every component; returns the manifest of the (complete) engines folder."""
    from mvg_rt.io.output_dir import check_output_dir, staged_output_dir
    from mvg_rt.models.component_modules import component_modules
    from mvg_rt.models.diffusers_folder import load_diffusers_folder

    inputs = export_inputs(request.model_dir, request.unet_dir, request.seine, request.seine_config)
    check_output_dir(request.out, request.overwrite, inputs=inputs, kind="engines")
    models = load_diffusers_folder(request.model_dir, request.unet_dir)
    seine_path = seine_checkpoint(request)
    seine_config = seine = None
    if seine_path is not None:
        seine_config = resolve_seine_config(seine_path, request.seine_config)
        seine = load_seine(seine_path, seine_config)
    modules = component_modules(models, seine)
    wanted = request.components or tuple(modules)
    unknown = [c for c in wanted if c not in modules]
    if unknown:
        raise MvgError(f"cannot export {', '.join(unknown)}: available components are {', '.join(modules)}")

    text_hidden = int(models.text_encoder.config.hidden_size)
    model = ModelDecl(
        vae_scaling_factor=models.vae_scaling_factor, vae_scale_factor=models.vae_scale_factor,
        latent_channels=models.latent_channels,
        resolution=int(models.unet.config.sample_size) * models.vae_scale_factor, text_hidden=text_hidden,
        seine_config=seine_config.to_dict() if seine_config is not None else None,
    )
    source = SourceDecl(
        model_dir=str(Path(request.model_dir).resolve()), model_dir_sha256=model_dir_fingerprint(request.model_dir),
        unet_dir=str(Path(request.unet_dir).resolve()) if request.unet_dir else None,
        unet_sha256=unet_fingerprint(request.unet_dir) if request.unet_dir else None,
        seine=str(seine_path.resolve()) if seine_path else None,
        seine_sha256=file_fingerprint(seine_path) if seine_path else None,
    )
    manifest = Manifest(model=model, source=source, versions=package_versions(),
                        created=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    unet_multiple = _levels_multiple(models.unet.config.block_out_channels)
    seine_multiple = _levels_multiple(seine_config.block_out_channels) if seine_config is not None else 1
    latent = max(8, 2 * max(unet_multiple, seine_multiple))
    dims = TraceDims(latent=latent, latent_step=max(unet_multiple, seine_multiple),
                     scale=models.vae_scale_factor).of()
    vocab = int(models.text_encoder.config.vocab_size)

    with staged_output_dir(request.out, request.overwrite, kind="engines", inputs=inputs) as staging:
        hashes = HashCache(staging)  # renaming the folder keeps each file's stamp, so the cache stays valid
        shutil.copytree(Path(request.model_dir) / "tokenizer", staging / "tokenizer")
        (staging / "scheduler").mkdir()
        (staging / "scheduler" / "scheduler_config.json").write_text(json.dumps(models.scheduler_config, indent=2))
        for name in wanted:
            spec = COMPONENTS[name]
            started = time.perf_counter()
            path = staging / name / "model.onnx"
            example = example_inputs(spec, dims, text_hidden, vocab)
            export_component(modules[name], spec, example, path, request.opset, request.exporter, text_hidden)
            details: dict[str, Any] = {"exporter": request.exporter,
                                       "trace_shapes": {t.name: list(x.shape) for t, x in zip(spec.inputs, example)}}
            if request.slim:
                from mvg_rt.export.slim import slim_onnx

                details["slim"] = slim_onnx(path)
            details["export_seconds"] = round(time.perf_counter() - started, 2)
            axes = axis_ranges(name, models.vae_scale_factor, unet_multiple, seine_multiple)
            manifest.add(_artifact(staging, name, "fp32", path, axes, details, hashes))
            progress(f"{name}: fp32 {path.relative_to(staging)} ({details['export_seconds']} s)")
            fp32_sha = manifest.require(name, "onnx", "fp32").sha256
            if request.fp16:
                from mvg_rt.export.fp16 import write_fp16

                fp16_path = path.with_name("model_fp16.onnx")
                feeds = {t.name: x.numpy() for t, x in zip(spec.inputs, example)}
                fp16_details = write_fp16(request.fp16_converter, path, fp16_path, feeds)
                manifest.add(_artifact(staging, name, "fp16", fp16_path, axes,
                                       fp16_details | {"from_sha256": fp32_sha}, hashes))
                progress(f"{name}: fp16 {fp16_path.relative_to(staging)} ({fp16_details['fp16_converter']}, "
                         f"{fp16_details['fp32_nodes']} nodes kept in FP32)")
            if request.int8 and name == "unet":
                artifact = int8_artifact(staging, manifest, request.calibration_feeds or [], request.int8_keep,
                                         request.calibration_source, hashes)
                progress(f"{name}: int8 {artifact.file} (Q/DQ, calibrated on "
                         f"{artifact.details['calibration_feeds']} UNet inputs)")
        manifest.root = staging
        manifest.validate()
        manifest.write(staging)
        hashes.save()
    manifest.root = Path(request.out)
    return manifest

