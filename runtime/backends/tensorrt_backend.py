"""TensorRT backend: the ``.plan`` engines ``mvg-rt build`` wrote, run with the TensorRT 10 Python API.

* Loading: every engine is checked against this machine before use (TensorRT version,
  GPU name and compute capability, ONNX source unchanged; :func:`check_engine`) and
  its file hash verified, then deserialized with ``trt.Runtime``; one execution
  context per engine (one optimization profile, index 0).
* A call: the requested shapes are checked (by :meth:`Backend.infer`, against
  :func:`engine_metadata`) against the engine's profile (``get_tensor_profile_shape``;
  outside it is a one-line error naming component, input, shape, range and the
  ``mvg-rt build`` command that covers it), then the manifest's declarations; set with
  ``set_input_shape`` when they changed, feeds copied (and cast: FP16 engines built
  from FP16 ONNX still take FP32 I/O, but whatever the engine declares is honoured)
  into preallocated device buffers that only grow, addresses bound with
  ``set_tensor_address``, then ``execute_async_v3`` on the backend's own CUDA stream,
  forked from and joined back into PyTorch's current stream with events (no host
  synchronisation). Outputs stay on the device and are returned as FP32 copies.
* ``cuda_graphs=True``: per-component CUDA graphs through :class:`GraphCache` (one
  graph per component: the context holds one set of shapes; new shapes, a buffer
  reallocation or an engine release invalidate it). Whole-step graphs (``graphed_loops``) capture the
  same call; ``graph_generation(component)`` tells them when to capture again.
* ``low_memory=True`` (Jetson-class): engines are loaded when first called and
  released by :func:`engines_to_release` (the text encoder once the VAE is needed, the
  UNet when SEINE is needed and vice versa), so each stage of a simulation holds only
  its own engines; the per-stage table is in docs/deploying-gpu.md.

Nothing here imports TensorRT at module level: the module (and its pure helpers) load
on machines without it.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from mvg_rt.components import COMPONENTS, ComponentSpec
from mvg_rt.errors import MvgError
from mvg_rt.artifacts.graph_contract import GraphTensor, Signature, check_signature
from mvg_rt.artifacts.manifest import REBUILD, Artifact, Manifest
from mvg_rt.artifacts.tensorrt import check_engine, current_environment, import_tensorrt, rebuild_command
from mvg_rt.runtime.backends.base import Backend
from mvg_rt.runtime.backends.declarations import InputDecl, InputMetadata, Shape, ShapeRange, fmt
from mvg_rt.runtime.graphs.component_graphs import GraphCache
from mvg_rt.runtime.graphs.capture import cuda_capturing, torch_capture

DENOISERS = ("unet", "seine")


# ------------------------------------------------------------------ pure helpers


def rebuild_flags(component: str, decl_shape: Sequence[int | str], shape: Sequence[int], profile: ShapeRange,
                  scale: int) -> list[str]:
    """``mvg-rt build`` options that widen the profile to take ``shape`` (none for a wrong rank or fixed dim)."""
    if len(shape) != len(profile[0]) or len(decl_shape) != len(shape):
        return []
    dims = {axis: int(size) for axis, size in zip(decl_shape, shape) if isinstance(axis, str)}
    low, _, high = profile
    index = {axis: i for i, axis in enumerate(decl_shape) if isinstance(axis, str)}
    outside = {a for a, i in index.items() if not low[i] <= shape[i] <= high[i]}
    flags: list[str] = []
    if outside & {"latent_height", "latent_width"}:
        flags += ["--resolution", f"{dims['latent_height'] * scale}x{dims['latent_width'] * scale}"]
    if outside & {"height", "width"}:
        flags += ["--resolution", f"{dims['height']}x{dims['width']}"]
    if "frames" in outside:
        flags += ["--frames", str(dims["frames"])]
    if "batch" in outside:
        i = index["batch"]
        b = dims["batch"]
        flags += ["--axis", f"{component}.batch={min(low[i], b)}:{high[i] if b > high[i] else low[i]}:"
                            f"{max(high[i], b)}"]
    return flags


def engine_metadata(artifact: Artifact, profiles: Mapping[str, ShapeRange], scale: int = 8,
                    root: Path | str | None = None) -> InputMetadata:
    """What an engine's inputs accept: its profile (outside it, the ``mvg-rt build`` command that widens it),
    then the manifest's declared shapes and axis ranges."""
    command = rebuild_command(root, artifact)

    def widen(decl: InputDecl, shape: Shape) -> str | None:
        assert decl.profile is not None  # only asked about a shape outside a profile
        flags = rebuild_flags(artifact.component, decl.shape, shape, decl.profile, scale)
        return f"rebuild the engines for it: {command} {' '.join(flags)}" if flags else None

    return InputMetadata.declared(artifact, profiles, widen)


def engines_to_release(loaded: Collection[str], requested: str, low_memory: bool) -> set[str]:
    """Engines to release before ``requested`` is loaded (low-memory mode only).

    Stages: a pipeline encodes its prompt once (text encoder alone), then loops over
    the VAE and one denoiser. So the text encoder goes as soon as anything else is
    needed, and the two denoisers never share memory.
    """
    if not low_memory or requested in loaded:
        return set()
    release = set()
    if requested != "text_encoder":
        release.add("text_encoder")
    if requested in DENOISERS or requested == "text_encoder":
        release |= set(DENOISERS) - {requested}
    return release & set(loaded)


def engine_signature(inputs: Sequence[str], outputs: Sequence[str], dtypes: Mapping[str, torch.dtype],
                     shapes: Mapping[str, Sequence[int]]) -> Signature:
    """An engine's I/O as :func:`~mvg_rt.artifacts.graph_contract.check_signature` compares it (-1: a dynamic dim)."""

    def tensor(name: str) -> GraphTensor:
        return GraphTensor(name, str(dtypes[name]).removeprefix("torch."),
                           tuple(None if int(d) < 0 else int(d) for d in shapes[name]))

    return Signature(tuple(tensor(n) for n in inputs), tuple(tensor(n) for n in outputs))


class DeviceBuffers:
    """Named buffers that are reused while a shape fits and reallocated only when it grows."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.storage: dict[str, Tensor] = {}
        self.reallocations = 0

    def view(self, name: str, shape: Sequence[int], dtype: torch.dtype) -> tuple[Tensor, bool]:
        """A (contiguous) tensor of ``shape`` over the named buffer; True if it was (re)allocated."""
        numel = 1
        for s in shape:
            numel *= int(s)
        current = self.storage.get(name)
        grown = current is None or current.dtype != dtype or current.numel() < numel
        if grown:
            self.storage[name] = current = torch.empty(max(numel, 1), dtype=dtype, device=self.device)
            self.reallocations += 1
        return current[:numel].view(tuple(int(s) for s in shape)), grown

    def clear(self) -> None:
        self.storage.clear()


# ------------------------------------------------------------------ engines (GPU)


def _torch_dtypes(trt: Any) -> dict[Any, torch.dtype]:
    table = {"FLOAT": torch.float32, "HALF": torch.float16, "BF16": torch.bfloat16, "INT32": torch.int32,
             "INT64": torch.int64, "INT8": torch.int8, "UINT8": torch.uint8, "BOOL": torch.bool}
    return {getattr(trt.DataType, k): v for k, v in table.items() if hasattr(trt.DataType, k)}


class _Engine:
    """One deserialized engine, its execution context and I/O buffers."""

    def __init__(self, trt: Any, runtime: Any, path: Path, device: torch.device) -> None:
        self.engine = runtime.deserialize_cuda_engine(path.read_bytes())
        if self.engine is None:
            raise MvgError(f"TensorRT could not deserialize {path} (built by another TensorRT version or for "
                           "another GPU?); rebuild it with mvg-rt build")
        self.context = self.engine.create_execution_context()
        dtypes = _torch_dtypes(trt)
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if n not in self.inputs]
        self.dtypes = {n: dtypes[self.engine.get_tensor_dtype(n)] for n in names}
        self.profiles: dict[str, ShapeRange] = {  # (min, opt, max) of the one profile
            n: tuple(tuple(int(d) for d in dims) for dims in self.engine.get_tensor_profile_shape(n, 0))
            for n in self.inputs}
        self.buffers = DeviceBuffers(device)
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.device_memory = int(getattr(self.engine, "device_memory_size_v2", None)
                                 or getattr(self.engine, "device_memory_size", 0) or 0)

    def close(self) -> None:
        """Drop the context before the engine it was created from, then the buffers."""
        self.context = None
        self.engine = None
        self.buffers.clear()

    def execute(self, feeds: Mapping[str, Tensor], stream: Any) -> tuple[dict[str, Tensor], bool]:
        """Run on ``stream`` (forked from and joined into the current stream).

        Returns the outputs (views of the engine's buffers) and whether the context's
        shapes or buffer addresses changed, which invalidates graphs captured before.
        """
        reallocated = False
        for name in self.inputs:
            shape = tuple(int(s) for s in feeds[name].shape)
            if self.shapes.get(name) != shape:
                if not self.context.set_input_shape(name, shape):
                    raise MvgError(f"TensorRT refused input {name} shape {fmt(shape)}")
                self.shapes[name] = shape
                reallocated = True
            buffer, grown = self.buffers.view(name, shape, self.dtypes[name])
            reallocated |= grown
            buffer.copy_(feeds[name])
            self.context.set_tensor_address(name, buffer.data_ptr())
        outputs = {}
        for name in self.outputs:
            buffer, grown = self.buffers.view(name, tuple(self.context.get_tensor_shape(name)), self.dtypes[name])
            reallocated |= grown
            self.context.set_tensor_address(name, buffer.data_ptr())
            outputs[name] = buffer
        current = torch.cuda.current_stream(self.buffers.device)
        stream.wait_stream(current)
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise MvgError("TensorRT execution failed (execute_async_v3 returned False); rerun with --debug")
        current.wait_stream(stream)
        return outputs, reallocated


class TrtBackend(Backend):
    name = "trt"

    def __init__(self, engines_dir: str | Path, precision: str = "fp16", device: str | torch.device = "cuda",
                 manifest: Manifest | None = None, cuda_graphs: bool = False, low_memory: bool = False) -> None:
        self.trt = import_tensorrt()  # one line with the install command when missing
        device = torch.device(device)
        if device.type != "cuda" or not torch.cuda.is_available():
            raise MvgError(f"--backend trt runs TensorRT engines on an NVIDIA GPU: pass --device cuda "
                           f"(got {device}{'' if torch.cuda.is_available() else '; no CUDA device is visible'})")
        super().__init__(device)
        self.manifest = manifest or Manifest.read(engines_dir)
        self.precision, self.low_memory = precision, low_memory
        self.environment = current_environment(device.index or 0)
        self.artifacts = {c: a for c in COMPONENTS if (a := self.manifest.find(c, "trt", precision)) is not None}
        if not self.artifacts or (precision == "int8" and all(a.precision != "int8" for a in self.artifacts.values())):
            raise MvgError(f"engines folder {self.manifest.root} has no {precision} TensorRT engines: build them with "
                           f"{rebuild_command(self.manifest.root, precision=precision)}")
        for artifact in self.artifacts.values():  # fail before any work
            check_engine(self.manifest, artifact, self.environment)
        self.paths = {c: self.manifest.verify(a) for c, a in self.artifacts.items()}
        self.runtime = self.trt.Runtime(self.trt.Logger(self.trt.Logger.WARNING))
        self.stream = torch.cuda.Stream(device)
        self.engines: dict[str, _Engine] = {}
        self.metadata: dict[str, InputMetadata] = {}  # per component, from its engine's profile (kept on release)
        self.generations: dict[str, int] = {c: 0 for c in self.artifacts}
        self.graphs = GraphCache(torch_capture, warmup=1, max_per_component=1,
                                 is_capturing=cuda_capturing) if cuda_graphs else None
        if not low_memory:
            for component in self.artifacts:
                self._engine(component)

    # ------------------------------------------------------------------ Backend

    @property
    def components(self) -> frozenset[str]:
        return frozenset(self.artifacts)

    def describe(self) -> dict[str, object]:
        return super().describe() | {
            "precision": self.precision, "engines": str(self.manifest.root),
            "tensorrt": self.environment.tensorrt_version, "gpu": self.environment.gpu,
            "compute_capability": self.environment.compute_capability, "low_memory": self.low_memory,
            "activation_memory_bytes": {c: e.device_memory for c, e in self.engines.items()},
            **({"cuda_graphs": self.graphs.describe()} if self.graphs else {}),
        }

    def close(self) -> None:
        for component in list(self.engines):
            self._release(component)

    def input_metadata(self, component: ComponentSpec) -> InputMetadata:
        """The engine's profile and the manifest's declarations (loads the engine the first time)."""
        if component.name not in self.metadata:
            self._engine(component.name)
        return self.metadata[component.name]

    def _infer(self, component: ComponentSpec, feeds: Mapping[str, Tensor]) -> dict[str, Tensor]:
        engine = self._engine(component.name)
        feeds = {name: feeds[name].to(self.device) for name in engine.inputs}
        if self.graphs is None:
            outputs, changed = engine.execute(feeds, self.stream)
            self._note_change(component.name, changed)
        else:
            outputs = self.graphs.run(component.name, feeds, lambda f: self._execute(component.name, engine, f))
        return {name: (t.to(torch.float32, copy=True) if t.dtype == torch.float32 else t.float())
                for name, t in outputs.items()}

    # ------------------------------------------------------------------ engines

    def _execute(self, component: str, engine: _Engine, feeds: Mapping[str, Tensor]) -> dict[str, Tensor]:
        outputs, changed = engine.execute(feeds, self.stream)
        self._note_change(component, changed)
        return outputs

    def graph_generation(self, component: str) -> int:
        """Changes whenever graphs captured over ``component`` must be captured again."""
        return self.generations.get(component, 0)

    def _note_change(self, component: str, changed: bool) -> None:
        """New input shapes or buffers: graphs hold the old ones (and TensorRT's per-shape state)."""
        if changed:
            self.generations[component] += 1
            if self.graphs is not None and not cuda_capturing():
                self.graphs.invalidate(component)

    def _engine(self, component: str) -> _Engine:
        engine = self.engines.get(component)
        if engine is not None:
            return engine
        for other in engines_to_release(self.engines, component, self.low_memory):
            self._release(other)
        engine = _Engine(self.trt, self.runtime, self.paths[component], self.device)
        shapes = {n: tuple(engine.engine.get_tensor_shape(n)) for n in [*engine.inputs, *engine.outputs]}
        check_signature(COMPONENTS[component], self.artifacts[component],
                        engine_signature(engine.inputs, engine.outputs, engine.dtypes, shapes), fix=REBUILD)
        if component not in self.metadata:
            self.metadata[component] = engine_metadata(self.artifacts[component], engine.profiles,
                                                       self.manifest.model.vae_scale_factor, self.manifest.root)
        self.engines[component] = engine
        self.generations[component] += 1
        return engine

    def _release(self, component: str) -> None:
        engine = self.engines.pop(component, None)
        if engine is None:
            return
        if self.graphs is not None:
            self.graphs.invalidate(component)
        torch.cuda.current_stream(self.device).synchronize()  # the engine's last run must finish first
        engine.close()
        torch.cuda.empty_cache()
        self.generations[component] += 1

