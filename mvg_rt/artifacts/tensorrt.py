"""TensorRT engines in the manifest: their entries, and whether an engine may be loaded here.

A serialized engine runs only with the TensorRT version that built it and on the GPU
(architecture) it was built for, and it is only as current as the ONNX graph it came
from. Each ``kind="trt"`` artifact therefore records in ``details``:

* ``tensorrt_version`` (its major decides the typing rules, see export/tensorrt_build.py), ``gpu``
  (device name), ``compute_capability`` ("8.9"); ``strongly_typed``;
* ``onnx_file`` / ``onnx_sha256``: the graph it was built from;
* ``profiles``: per input ``{min, opt, max}`` shapes; ``settings``: what ``mvg-rt build``
  was given (to print the exact rebuild command); ``builder``: builder options;
* ``device_memory_bytes``: the activation memory TensorRT reports for the engine
  (``device_memory_size_v2``), used for the per-stage memory table.

:func:`check_engine` refuses, with one line that names the rebuild command, an engine
built by another TensorRT (another major first, with its own message: a weakly typed engine
from TensorRT 10 also needs the FP16 graph before TensorRT 11 can rebuild it), for another GPU, or from an ONNX graph that changed since.
Everything here is pure except :func:`current_environment`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mvg_rt.errors import MvgError
from mvg_rt.artifacts.hashing import HashCache
from mvg_rt.artifacts.manifest import Artifact, AxisRange, Manifest, TensorDecl
from mvg_rt.artifacts.profiles import ShapeRange, axis_limits, profile_to_json

INSTALL_HINT = ("pip install 'mvg-rt[trt]' (tensorrt-cu12, CUDA 12) or 'mvg-rt[trt-cu13]' (tensorrt-cu13, CUDA 13) "
                "on x86_64; JetPack 6.1+'s python3-libnvinfer (TensorRT 10) on Jetson")
INSTALL_TENSORRT = f"install TensorRT 10 or 11 for Python: {INSTALL_HINT}"


@dataclass(frozen=True)
class TrtEnvironment:
    """The TensorRT + GPU an engine is built for or loaded on."""

    tensorrt_version: str
    gpu: str
    compute_capability: str  # "major.minor"

    @property
    def major(self) -> int:
        return major_of(self.tensorrt_version)

    def describe(self) -> str:
        return f"TensorRT {self.tensorrt_version} on {self.gpu} (compute capability {self.compute_capability})"


def major_of(version: str | None) -> int:
    """The major of a TensorRT version string ("10.3.0" -> 10; unreadable -> 0)."""
    head = str(version or "").split(".", 1)[0]
    return int(head) if head.isdigit() else 0


def import_tensorrt() -> Any:
    """``import tensorrt``, or a one-line error that says how to install it."""
    try:
        import tensorrt
    except ImportError as err:
        raise MvgError(f"the trt backend needs TensorRT, which is not installed: {INSTALL_TENSORRT}") from err
    return tensorrt


def current_environment(device_index: int = 0) -> TrtEnvironment:
    """TensorRT's version and the CUDA device's name and compute capability (needs both)."""
    import torch

    trt = import_tensorrt()
    if not torch.cuda.is_available():
        raise MvgError("TensorRT engines need an NVIDIA GPU and none is visible to PyTorch (CUDA)")
    major, minor = torch.cuda.get_device_capability(device_index)
    return TrtEnvironment(str(trt.__version__), torch.cuda.get_device_name(device_index), f"{major}.{minor}")


def plan_path(component: str, precision: str) -> str:
    """Where the engine of a component lives, relative to the engines folder."""
    return f"{component}/engine_{precision}.plan"


def rebuild_command(root: Path | str | None, artifact: Artifact | None = None, precision: str | None = None) -> str:
    """The ``mvg-rt build`` command that rebuilds ``artifact`` with the settings it was built with."""
    precision = precision or (artifact.precision if artifact else "fp16")
    parts = ["mvg-rt build --engines", str(root or "DIR"), "--precision", precision]
    settings = (artifact.details.get("settings") if artifact else None) or {}
    for resolution in settings.get("resolutions", []):
        parts += ["--resolution", resolution]
    for frames in settings.get("frames", []):
        parts += ["--frames", str(frames)]
    for axis in settings.get("axes", []):
        parts += ["--axis", axis]
    if settings.get("cfg_batch") == "static":
        parts.append("--static-batch")
    if settings.get("decode_batch") not in (None, 4):
        parts += ["--decode-batch", str(settings["decode_batch"])]
    return " ".join(parts)


def trt_artifact(root: Path, component: str, precision: str, plan: Path, onnx: Artifact,
                 profile: Mapping[str, ShapeRange], environment: TrtEnvironment, details: Mapping[str, Any],
                 hashes: HashCache) -> Artifact:
    """The manifest entry of an engine written to ``plan`` from the ``onnx`` artifact."""
    rel = plan.relative_to(root).as_posix()
    axes = dict(onnx.axes)
    for decl in onnx.inputs:
        for axis, (low, high) in axis_limits(decl.shape, profile[decl.name]).items():
            multiple = axes[axis].multiple_of if axis in axes else None
            axes[axis] = AxisRange(min=low, max=high, multiple_of=multiple)
    return Artifact(
        component=component, kind="trt", precision=precision, file=rel, sha256=hashes.sha256(plan, rel),
        size=plan.stat().st_size,
        inputs=[TensorDecl(d.name, d.dtype, list(d.shape)) for d in onnx.inputs],
        outputs=[TensorDecl(d.name, d.dtype, list(d.shape)) for d in onnx.outputs],
        opset=onnx.opset, axes=axes,
        details={"tensorrt_version": environment.tensorrt_version, "gpu": environment.gpu,
                 "compute_capability": environment.compute_capability, "onnx_file": onnx.file,
                 "onnx_sha256": onnx.sha256, "profiles": profile_to_json(profile), **details},
    )


def check_engine(manifest: Manifest, artifact: Artifact, environment: TrtEnvironment,
                 verify_onnx: bool = True) -> None:
    """Refuse (one line, with the rebuild command) an engine that is stale or not for this machine."""
    d = artifact.details
    root = manifest.root
    fix = f"rebuild it: {rebuild_command(root, artifact)}"
    what = f"engines folder {root}: the {artifact.precision} {artifact.component} engine"
    built_major = major_of(d.get("tensorrt_version"))
    if built_major != environment.major:
        weak = d.get("strongly_typed") is False and environment.major >= 11 and artifact.precision != "fp32"
        first = ("re-export with mvg-rt export --fp16 (TensorRT 11 builds only strongly typed networks; this engine "
                 "was weakly typed), then " if weak else "")
        raise MvgError(f"{what} was built with TensorRT {d.get('tensorrt_version')} (major {built_major}), this is "
                       f"TensorRT {environment.tensorrt_version} (major {environment.major}); engines never load "
                       f"across TensorRT majors: {first}{fix}")
    if d.get("tensorrt_version") != environment.tensorrt_version:
        raise MvgError(f"{what} was built with TensorRT {d.get('tensorrt_version')}, this is TensorRT "
                       f"{environment.tensorrt_version} (engines only load in the version that built them); {fix}")
    if d.get("compute_capability") != environment.compute_capability or d.get("gpu") != environment.gpu:
        raise MvgError(f"{what} was built for {d.get('gpu')} (compute capability {d.get('compute_capability')}), "
                       f"this GPU is {environment.gpu} ({environment.compute_capability}); {fix}")
    onnx = next((a for a in manifest.artifacts if a.kind == "onnx" and a.file == d.get("onnx_file")), None)
    if onnx is None:
        raise MvgError(f"{what} was built from {d.get('onnx_file')}, which the manifest no longer lists; re-export "
                       f"the ONNX graphs (mvg-rt export --help), then {fix}")
    if onnx.sha256 != d.get("onnx_sha256"):
        raise MvgError(f"{what} was built from a different {onnx.file} (the ONNX graph was re-exported since); {fix}")
    if verify_onnx and root is not None and (Path(root) / onnx.file).is_file():
        cache = HashCache(Path(root))
        changed = cache.sha256(Path(root) / onnx.file, onnx.file) != onnx.sha256
        cache.save()
        if changed:
            raise MvgError(f"{what} was built from {onnx.file}, which changed on disk since (sha256 differs); "
                           f"re-export it (mvg-rt export --help), then {fix}")


# ------------------------------------------------------------------ memory per stage

#: Which engines each stage of a simulation holds at once in low-memory mode (see tensorrt_backend).
STAGES = {
    "PIE: prompt": ("text_encoder",),
    "PIE: rounds": ("vae_encoder", "unet", "vae_decoder"),
    "transitions: prompt": ("text_encoder",),
    "transitions: clips": ("vae_encoder", "seine", "vae_decoder"),
}


@dataclass(frozen=True)
class StageMemory:
    stage: str
    components: tuple[str, ...]
    weights_bytes: int  # estimated: size of the serialized engines (weights dominate a plan)
    activation_bytes: int  # reported by TensorRT at build time for the largest profile shapes
    io_bytes: int  # computed: input/output buffers at the profiles' max shapes

    @property
    def total_bytes(self) -> int:
        return self.weights_bytes + self.activation_bytes + self.io_bytes


_BYTES = {"float32": 4, "float16": 2, "int64": 8, "int32": 4}


def io_bytes(artifact: Artifact, scale: int = 8) -> int:
    """Bytes of the engine's input and output buffers at the max profile shapes (float32/int64 I/O)."""
    profiles = artifact.details.get("profiles") or {}
    total, dims = 0, {}
    for decl in artifact.inputs:
        high = (profiles.get(decl.name) or {}).get("max")
        if high is None:
            continue
        dims.update({d: v for d, v in zip(decl.shape, high) if isinstance(d, str)})
        total += _numel(high) * _BYTES.get(decl.dtype, 4)
    for decl in artifact.outputs:
        shape = []
        for d in decl.shape:
            if isinstance(d, int):
                shape.append(d)
            elif d in dims:
                shape.append(dims[d])
            elif d in ("height", "width") and f"latent_{d}" in dims:
                shape.append(dims[f"latent_{d}"] * scale)
            elif d.startswith("latent_") and d.removeprefix("latent_") in dims:
                shape.append(dims[d.removeprefix("latent_")] // scale)
            else:
                shape.append(1)
        total += _numel(shape) * _BYTES.get(decl.dtype, 4)
    return total


def _numel(shape: Iterable[int]) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n


def stage_memory(artifacts: Mapping[str, Artifact], scale: int = 8) -> list[StageMemory]:
    """Memory each low-memory stage holds, from the engines' manifest entries (see :class:`StageMemory`)."""
    rows = []
    for stage, components in STAGES.items():
        present = tuple(c for c in components if c in artifacts)
        if not present:
            continue
        rows.append(StageMemory(
            stage, present,
            weights_bytes=sum(artifacts[c].size for c in present),
            activation_bytes=sum(int(artifacts[c].details.get("device_memory_bytes") or 0) for c in present),
            io_bytes=sum(io_bytes(artifacts[c], scale) for c in present)))
    return rows


def format_stage_memory(rows: Iterable[StageMemory]) -> str:
    lines = ["stage                  engines                              weights*  activations  I/O    total*"]
    mib = lambda n: f"{n / 2**20:7.0f} MiB"  # noqa: E731
    for r in rows:
        lines.append(f"{r.stage:22s} {'+'.join(r.components):36s} {mib(r.weights_bytes)} {mib(r.activation_bytes)} "
                     f"{mib(r.io_bytes)} {mib(r.total_bytes)}")
    lines.append("* weights estimated from the plan sizes; activations as reported by TensorRT for the max profile "
                 "shapes; CUDA context and PyTorch's allocator come on top")
    return "\n".join(lines)
