"""Opening a backend: one :class:`RuntimeSpec` in, one :class:`Runtime` out.

This is the only place that knows every backend implementation and the only place
that decides how a backend runs (device, precision, per-component CUDA graphs, ONNX
Runtime settings, low-memory loading). Every job (simulate, check, bench, batch)
describes what it wants as a ``RuntimeSpec`` and calls :func:`open_runtime`;
pipelines only see the :class:`Backend` interface.

Sources: the PyTorch backend runs a diffusers-format model folder (``model_dir``,
optional fine-tuned ``unet_dir`` and SEINE checkpoint ``seine``); the ONNX Runtime
and TensorRT backends run a self-contained engines folder (``engines_dir``) written
by ``mvg-rt export`` / ``mvg-rt build``, and need no model folder.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import torch

from mvg_rt.components import PIE_COMPONENTS, PREDICTION_TYPES
from mvg_rt.artifacts.manifest import REEXPORT
from mvg_rt.errors import MvgError, first_line
from mvg_rt.io.jsonio import read_json
from mvg_rt.models.agreement import check_widths, manifest_widths
from mvg_rt.runtime.backends.base import Backend
from mvg_rt.runtime.backends.precision import apply_tf32_policy
from mvg_rt.runtime.pipelines.model_info import ModelInfo

BACKENDS = ("torch", "ort", "trt")
PRECISIONS = ("fp32", "fp16", "int8")  # int8: the Q/DQ UNet (ort, trt); see INT8_FALLBACK


@dataclass(frozen=True)
class RuntimeSpec:
    """What to run and how: the single description every job opens a backend from.

    ``cuda_graphs`` means both per-component graphs (the backend's own mechanism) and
    whole-denoising-step graphs (the pipelines' step loops, :attr:`Runtime.graphed_loops`).
    ``tf32`` lets CUDA run FP32 convolutions/matmuls as TF32 (off: ``fp32`` means FP32).
    ``low_memory`` (TensorRT only) loads the engines one pipeline stage at a time.
    ``ort`` holds :class:`OrtSettings` fields that differ from the defaults.
    """

    backend: str = "torch"
    device: str = "cpu"
    precision: str = "fp32"
    cuda_graphs: bool = False
    tf32: bool = False
    low_memory: bool = False
    channels_last: bool = False
    model_dir: Path | None = None
    unet_dir: Path | None = None
    seine: Path | None = None
    engines_dir: Path | None = None
    seine_config: dict[str, Any] | None = None  # for a checkpoint that does not store its architecture
    with_seine: bool = True
    ort: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("model_dir", "unet_dir", "seine", "engines_dir"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, Path):
                object.__setattr__(self, name, Path(value))

    @property
    def cuda(self) -> bool:
        return self.device.startswith("cuda")

    @property
    def label(self) -> str:
        """Short name for reports: ``torch``, ``ort``, ``trt+cudagraph fp16`` ..."""
        text = self.backend + ("+cudagraph" if self.cuda_graphs else "")
        if self.cuda:
            text += f" {self.precision}"
        if self.ort:
            text += " (" + ", ".join(f"{k}={v}" for k, v in sorted(self.ort.items())) + ")"
        return text

    @property
    def is_reference(self) -> bool:
        """PyTorch FP32 eager: what every other variant is compared against."""
        return self.backend == "torch" and self.precision == "fp32" and not self.cuda_graphs

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (run.json, bench reports); paths as strings."""
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(self).items()}

    def validate(self) -> None:
        """One-line errors for combinations that cannot run, before anything is loaded."""
        if self.backend not in BACKENDS:
            raise MvgError(f"--backend {self.backend} is not known: use one of {', '.join(BACKENDS)}")
        if self.precision not in PRECISIONS:
            raise MvgError(f"--precision {self.precision} is not known: use one of {', '.join(PRECISIONS)}")
        if not (self.device == "cpu" or self.cuda):
            raise MvgError(f"--device {self.device} is not supported: use cpu or cuda[:N]")
        if self.low_memory and self.backend != "trt":  # before the device: on any device it would mean nothing
            raise MvgError("--low-memory loads TensorRT engines one stage at a time; it applies to --backend trt: "
                           "drop it or use --backend trt")
        for flag, on in (("--cuda-graphs", self.cuda_graphs), ("--tf32", self.tf32),
                         ("--channels-last", self.channels_last)):
            if on and not self.cuda:
                raise MvgError(f"{flag} needs a CUDA device (got --device {self.device}): pass --device cuda or "
                               f"drop {flag}")
        if self.unet_dir is not None and self.model_dir is None:
            raise MvgError("--unet needs --model-dir (the SD folder that provides the text encoder, VAE and "
                           "scheduler)")
        if self.seine is not None and self.model_dir is None:
            raise MvgError("--seine needs --model-dir (SEINE uses that folder's text encoder and VAE)")
        if self.backend == "torch":
            if self.engines_dir is not None:
                raise MvgError("--engines is read by --backend ort/trt; add --backend ort, or drop --engines")
            if self.model_dir is None:
                raise MvgError("--backend torch needs --model-dir (a diffusers-format SD 1.x folder)")
            if self.precision == "int8":
                raise MvgError("--precision int8 runs the Q/DQ UNet of mvg-rt export --int8: add --backend ort "
                               "--engines DIR (or --backend trt)")
            if self.precision == "fp16" and not self.cuda:
                raise MvgError(f"--precision fp16 with --backend torch runs on a GPU: pass --device cuda (got "
                               f"--device {self.device}) or use --precision fp32")
        else:
            if self.engines_dir is None:
                raise MvgError(f"--backend {self.backend} needs --engines DIR (write one with mvg-rt export "
                               "--model-dir DIR --out engines/NAME)")
            if self.channels_last:
                raise MvgError("--channels-last applies to --backend torch; engines choose their own layout")
            if self.backend == "trt" and not self.cuda:
                raise MvgError(f"--backend trt runs TensorRT engines on an NVIDIA GPU: pass --device cuda (got "
                               f"--device {self.device}), or use --backend ort on this device")


PATH_KEYS = frozenset({"model_dir", "unet_dir", "seine", "engines_dir", "engines", "segmenter"})  # spec, backend, provenance


def without_paths(described: dict[str, Any]) -> dict[str, Any]:
    """A description (``Runtime.describe``, ``Runtime.provenance``) without its folder and file paths, nested
    ``spec`` included: what run.json records unless the user asked for paths."""
    return {key: without_paths(value) if isinstance(value, dict) else value for key, value in described.items()
            if key not in PATH_KEYS}


@dataclass
class Runtime:
    """A backend ready to run, plus what describes the model it runs. Close it (or use ``with``)."""

    backend: Backend
    model: ModelInfo
    provenance: dict[str, Any]
    spec: RuntimeSpec = field(default_factory=RuntimeSpec)
    notice: str | None = None  # shown to the user and stored in run.json
    precision_policy: dict[str, Any] = field(default_factory=dict)  # TF32 switches as opened (run.json)

    @property
    def default_resolution(self) -> int:
        return int(self.provenance.get("resolution", 512))

    @property
    def graphed_loops(self) -> bool:
        """Whether the pipelines run whole denoising steps as static-buffer loops (CUDA-graph replays)."""
        return self.spec.cuda_graphs

    def describe(self, record_paths: bool = False) -> dict[str, Any]:
        """What ran, for run.json and reports; the model and engines folders' paths only with ``record_paths``
        (a folder's name may identify a site or a cohort; ``provenance`` identifies the model by its hashes)."""
        described = {**self.backend.describe(), "spec": self.spec.to_dict(), "precision_policy": self.precision_policy}
        return described if record_paths else without_paths(described)

    def close(self) -> None:
        self.backend.close()

    def __enter__(self) -> Runtime:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()


def open_runtime(spec: RuntimeSpec) -> Runtime:
    """The one way to open a backend; errors the user can fix are one-line :class:`MvgError`."""
    spec.validate()
    policy = apply_tf32_policy(spec.tf32)  # process-wide, so set by the one place that opens backends
    opener = {"torch": _open_torch, "ort": _open_ort, "trt": _open_trt}[spec.backend]
    runtime = opener(spec)
    runtime.precision_policy = policy
    return runtime


def _require_device(spec: RuntimeSpec) -> None:
    """The device exists (checked after a backend's own prerequisites, whose errors say more)."""
    if spec.cuda and not torch.cuda.is_available():
        raise MvgError(f"--device {spec.device}: no CUDA device is visible to PyTorch; use --device cpu")
    if spec.cuda_graphs:
        from mvg_rt.runtime.graphs.capture import require_cuda_graphs

        require_cuda_graphs(spec.device)


# ------------------------------------------------------------------ PyTorch


def _open_torch(spec: RuntimeSpec) -> Runtime:
    """The PyTorch reference over a diffusers-format folder (SEINE from ``spec.seine`` or ``seine/``)."""
    from mvg_rt.artifacts.hashing import fingerprint
    from mvg_rt.models.builders import SEINE_FILE
    from mvg_rt.models.component_modules import component_modules
    from mvg_rt.models.diffusers_folder import load_diffusers_folder
    from mvg_rt.models.agreement import with_seine
    from mvg_rt.runtime.scheduler_config import check_scheduler_config
    from mvg_rt.models.provenance import MODEL_DIR_PARTS
    from mvg_rt.models.seine_checkpoint import load_seine_model, stored_config
    from mvg_rt.models.seine_unet import SeineConfig
    from mvg_rt.runtime.backends.torch_backend import TorchBackend

    assert spec.model_dir is not None  # validate() guarantees it
    _require_device(spec)
    model_dir = spec.model_dir
    models = load_diffusers_folder(model_dir, spec.unet_dir)  # its parts' widths are checked against each other
    check_scheduler_config(models.scheduler_config, model_dir / "scheduler" / "scheduler_config.json")
    seine_path = spec.seine
    if seine_path is None and (model_dir / "seine" / SEINE_FILE).is_file():
        seine_path = model_dir / "seine" / SEINE_FILE
    seine_module = None
    if spec.with_seine and seine_path is not None:
        config = SeineConfig.from_dict(spec.seine_config) if spec.seine_config else stored_config(seine_path)
        assert models.widths is not None  # read from the folder's configs
        if config is not None:  # known without reading the weights: checked before they load
            check_widths(with_seine(models.widths, config))
        seine_module = load_seine_model(seine_path, config)
        if config is None:  # a .pt stores no config: its weights say which architecture it is
            check_widths(with_seine(models.widths, seine_module.config))
    dtype = torch.float16 if spec.precision == "fp16" else torch.float32
    backend: Backend = TorchBackend(component_modules(models, seine_module), torch.device(spec.device), dtype,
                                    channels_last=spec.channels_last)
    if spec.cuda_graphs:
        from mvg_rt.runtime.graphs.component_graphs import GraphedBackend

        backend = GraphedBackend(backend)
    info = ModelInfo(models.tokenizer, models.scheduler_config, models.vae_scaling_factor,
                     models.vae_scale_factor, models.latent_channels,
                     seine_module.config.prediction_type if seine_module is not None else "epsilon")
    provenance = {
        "model_dir_sha256": fingerprint([model_dir / p for p in MODEL_DIR_PARTS]),
        "unet_sha256": fingerprint([models.sources["unet"]]) if spec.unet_dir else None,
        "seine_sha256": fingerprint([seine_path]) if seine_module is not None and seine_path else None,
        "resolution": int(models.unet.config.sample_size) * models.vae_scale_factor,
    }
    return Runtime(backend, info, provenance, spec)


@dataclass
class SegmenterRuntime:
    """A segmenter ready to run (box -> mask), and what identifies it. Close it (or use ``with``)."""

    backend: Backend
    image_size: int  # the encoder's square input side (SamConfig.vision_config.image_size; 1024 for MedSAM)
    provenance: dict[str, Any]  # segmenter_sha256 (the folder's fingerprint) and its path (dropped unless asked)

    def close(self) -> None:
        self.backend.close()

    def __enter__(self) -> SegmenterRuntime:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()


def open_segmenter(folder: Path, device: str = "cpu", option: str = "--segment") -> SegmenterRuntime:
    """The segmenter of a SamModel folder (or of a model folder's ``segmenter/``) on the PyTorch backend."""
    from mvg_rt.artifacts.hashing import fingerprint
    from mvg_rt.models.component_modules import segmenter_modules
    from mvg_rt.models.segmenter_folder import load_segmenter
    from mvg_rt.runtime.backends.torch_backend import TorchBackend

    spec = RuntimeSpec(device=device)
    if not (spec.device == "cpu" or spec.cuda):
        raise MvgError(f"--device {device} is not supported: use cpu or cuda[:N]")
    _require_device(spec)
    sam, root = load_segmenter(folder, option)
    backend = TorchBackend(segmenter_modules(sam), torch.device(device))
    return SegmenterRuntime(backend, int(sam.config.vision_config.image_size),
                            {"segmenter_sha256": fingerprint([root]), "segmenter": str(root)})


# ------------------------------------------------------------------ engines folders


def engines_model_info(manifest: Any) -> ModelInfo:
    """Tokenizer, scheduler config and latent geometry from a self-contained engines folder."""
    from transformers import CLIPTokenizer

    from mvg_rt.runtime.scheduler_config import check_scheduler_config

    root = Path(manifest.root)
    scheduler_path = root / manifest.model.scheduler_config
    scheduler_config = check_scheduler_config(read_json(scheduler_path, "scheduler config", REEXPORT), scheduler_path)
    try:
        tokenizer = CLIPTokenizer.from_pretrained(str(root / manifest.model.tokenizer), local_files_only=True)
    except Exception as err:  # noqa: BLE001 - missing or damaged files: one line, with the fix
        first = first_line(err)
        raise MvgError(f"engines folder {root}: cannot read its tokenizer ({first}); {REEXPORT}") from err
    m = manifest.model
    prediction_type = (m.seine_config or {}).get("prediction_type", "epsilon")  # older manifests: SEINE's epsilon
    if prediction_type not in PREDICTION_TYPES:
        raise MvgError(f"engines folder {root}: its manifest says the SEINE predicts {prediction_type!r}, which is "
                       f"none of {', '.join(PREDICTION_TYPES)}; {REEXPORT}")
    return ModelInfo(tokenizer, scheduler_config, m.vae_scaling_factor, m.vae_scale_factor, m.latent_channels,
                     prediction_type)


def _engines_runtime(spec: RuntimeSpec, manifest: Any, backend: Backend, kind: str) -> Runtime:
    source = manifest.source
    provenance = {
        "engines": str(spec.engines_dir),
        "model_dir_sha256": source.model_dir_sha256,
        "unet_sha256": source.unet_sha256,
        "seine_sha256": source.seine_sha256,
        "resolution": manifest.model.resolution,
        "artifacts": {a.component: a.sha256 for a in manifest.artifacts
                      if a.kind == kind and a.precision == spec.precision},
    }
    return Runtime(backend, engines_model_info(manifest), provenance, spec)


def _check_engine_sources(spec: RuntimeSpec, manifest: Any) -> None:
    """A --model-dir/--unet given with an engines folder must be the one it was exported from."""
    if spec.model_dir is not None or spec.unet_dir is not None:
        from mvg_rt.models.provenance import check_source

        check_source(manifest, spec.model_dir, spec.unet_dir)


def _open_ort(spec: RuntimeSpec) -> Runtime:
    """ONNX Runtime over an engines folder written by ``mvg-rt export``."""
    from mvg_rt.artifacts.manifest import Manifest
    from mvg_rt.runtime.backends.onnxruntime_backend import OrtBackend, OrtSettings

    _require_device(spec)
    manifest = Manifest.read(spec.engines_dir)
    for component in PIE_COMPONENTS:  # fail before any work, naming what is missing
        manifest.require(component, "onnx", spec.precision)
    check_widths(manifest_widths(manifest, "onnx", spec.precision))
    _check_engine_sources(spec, manifest)
    settings = OrtSettings(**(spec.ort | ({"cuda_graph": True} if spec.cuda_graphs else {})))
    backend = OrtBackend(spec.engines_dir, spec.precision, spec.device, settings, manifest)
    return _engines_runtime(spec, manifest, backend, "onnx")


def _open_trt(spec: RuntimeSpec) -> Runtime:
    """TensorRT engines built by ``mvg-rt build`` (needs an NVIDIA GPU and TensorRT)."""
    from mvg_rt.artifacts.manifest import Manifest
    from mvg_rt.artifacts.tensorrt import import_tensorrt, rebuild_command

    import_tensorrt()  # first: without it nothing below can work, and the error says how to install it
    _require_device(spec)
    manifest = Manifest.read(spec.engines_dir)
    missing = [c for c in PIE_COMPONENTS if manifest.find(c, "trt", spec.precision) is None]
    if missing:
        raise MvgError(f"engines folder {spec.engines_dir} has no {spec.precision} TensorRT engine for "
                       f"{', '.join(missing)}: build them with "
                       f"{rebuild_command(spec.engines_dir, precision=spec.precision)}")
    check_widths(manifest_widths(manifest, "trt", spec.precision))
    _check_engine_sources(spec, manifest)
    from mvg_rt.runtime.backends.tensorrt_backend import TrtBackend

    backend = TrtBackend(spec.engines_dir, spec.precision, spec.device, manifest, cuda_graphs=spec.cuda_graphs,
                         low_memory=spec.low_memory)
    return _engines_runtime(spec, manifest, backend, "trt")
