"""The backends a bench row can run, and opening one.

A *variant* is a backend plus how it runs: device, precision, CUDA graphs, ONNX
Runtime settings. On a CPU the bench runs ``torch`` (FP32 eager, the reference) and
``ort`` (CPU EP). On a CUDA device the same command covers torch FP16 eager,
torch + CUDA graphs (:class:`GraphedBackend`), ORT CUDA EP (+ its own CUDA graphs)
and TensorRT (+ CUDA graphs); asking for a GPU variant without a GPU is a one-line
"needs CUDA" error, never a silent fallback.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from mvg_rt.bench.models import ModelSource, load_torch_module
from mvg_rt.errors import MvgError
from mvg_rt.runtime.backends.base import Backend

BACKENDS = ("torch", "ort", "trt")


@dataclass(frozen=True)
class Variant:
    backend: str  # torch | ort | trt
    device: str = "cpu"
    precision: str = "fp32"
    cuda_graphs: bool = False
    ort_settings: dict[str, Any] = field(default_factory=dict)  # OrtSettings fields that differ from the defaults

    @property
    def label(self) -> str:
        text = self.backend + ("+cudagraph" if self.cuda_graphs else "")
        if self.device.startswith("cuda"):
            text += f" {self.precision}"
        if self.ort_settings:
            text += " (" + ", ".join(f"{k}={v}" for k, v in sorted(self.ort_settings.items())) + ")"
        return text

    @property
    def is_reference(self) -> bool:
        """PyTorch FP32 eager: what every output difference is measured against."""
        return self.backend == "torch" and self.precision == "fp32" and not self.cuda_graphs

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"label": self.label}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Variant:
        return cls(**{k: v for k, v in data.items() if k != "label"})


def require_cuda(device: str, what: str) -> None:
    if not device.startswith("cuda"):
        raise MvgError(f"{what} needs CUDA: pass --device cuda on a machine with an NVIDIA GPU")
    if not torch.cuda.is_available():
        raise MvgError(f"{what} needs CUDA, and no CUDA device is visible to PyTorch on this machine; run the bench "
                       "on a GPU machine or drop it")


def variants_for(backends: tuple[str, ...], device: str, cuda_graphs: bool) -> list[Variant]:
    """The variants of the requested backends: on CUDA FP16 (+ CUDA-graph twins with --cuda-graphs)."""
    unknown = [b for b in backends if b not in BACKENDS]
    if unknown:
        raise MvgError(f"unknown --backend {', '.join(unknown)}: use {', '.join(BACKENDS)}")
    cuda = device.startswith("cuda")
    if cuda_graphs:
        require_cuda(device, "--cuda-graphs")
    if "trt" in backends:
        require_cuda(device, "--backend trt (TensorRT)")
    if cuda:
        require_cuda(device, f"--device {device}")
    out = []
    for backend in backends:
        precision = "fp16" if cuda else "fp32"
        out.append(Variant(backend, device, precision))
        if cuda_graphs:
            out.append(Variant(backend, device, precision, cuda_graphs=True))
    if cuda and "torch" in backends:  # the reference for output differences
        out.insert(0, Variant("torch", device, "fp32"))
    return out


def ort_settings(variant: Variant) -> Any:
    from mvg_rt.runtime.backends.onnxruntime_backend import OrtSettings

    return OrtSettings(**(variant.ort_settings | ({"cuda_graph": True} if variant.cuda_graphs else {})))


def open_backend(variant: Variant, source: ModelSource, components: tuple[str, ...],
                 engines: Path | None) -> Backend:
    """A backend running ``components`` (the torch backend loads only those modules)."""
    if variant.backend == "torch":
        from mvg_rt.runtime.backends.torch_backend import TorchBackend

        dtype = torch.float16 if variant.precision == "fp16" else torch.float32
        backend: Backend = TorchBackend({c: load_torch_module(source, c) for c in components}, variant.device, dtype)
        if variant.cuda_graphs:
            from mvg_rt.runtime.backends.cuda_graphs import GraphedBackend, require_cuda_graphs

            require_cuda_graphs(variant.device)
            backend = GraphedBackend(backend)
        return backend
    if engines is None:
        raise MvgError(f"--backend {variant.backend} needs exported engines")
    if variant.backend == "ort":
        from mvg_rt.runtime.backends.onnxruntime_backend import OrtBackend

        return OrtBackend(engines, variant.precision, variant.device, ort_settings(variant))
    if variant.backend == "trt":
        require_cuda(variant.device, "--backend trt (TensorRT)")
        from mvg_rt.artifacts.manifest import Manifest
        from mvg_rt.artifacts.tensorrt import import_tensorrt
        from mvg_rt.runtime.backends.tensorrt_backend import TrtBackend

        import_tensorrt()
        return TrtBackend(engines, variant.precision, variant.device, Manifest.read(engines),
                          cuda_graphs=variant.cuda_graphs)
    raise MvgError(f"unknown backend {variant.backend!r}")


def ensure_trt_engines(engines: Path, precision: str, resolution: int, frames: int, components: tuple[str, ...],
                       progress: Any = lambda _: None) -> None:
    """Build the TensorRT plans the bench needs (``mvg-rt build``'s path) unless the folder has them."""
    from mvg_rt.artifacts.manifest import Manifest
    from mvg_rt.artifacts.profiles import ProfileSettings
    from mvg_rt.export.tensorrt_build import BuildSettings, build_engines

    manifest = Manifest.read(engines)
    missing = tuple(c for c in components if manifest.find(c, "trt", precision) is None)
    if not missing:
        return
    settings = BuildSettings(precision=precision, components=missing,
                             profile=ProfileSettings(resolutions=((resolution, resolution),), frames=(frames,)))
    progress(f"building {precision} TensorRT engines for {', '.join(missing)} at {resolution}x{resolution}")
    build_engines(engines, settings, progress=progress)
