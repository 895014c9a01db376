"""TensorRT backend: the ``.plan`` engines ``mvg-rt build`` wrote, run with the TensorRT 10 Python API.

Every engine goes through the same four steps, as in TensorRT's demo/Diffusion ``Engine``
(``load``, ``activate``, ``allocate_buffers``, ``infer``); :func:`lifecycle_step` holds the order:

1. **load** (:meth:`_Engine.load`): the engine file was checked against this machine when the
   backend opened (TensorRT version, GPU name and compute capability, ONNX source unchanged:
   :func:`check_engine`; file hash verified). It is deserialized
   (``trt.Runtime.deserialize_cuda_engine``), its I/O (names, dtypes, ranks, fixed dims) checked
   against the component contract, and its one optimisation profile
   (``get_tensor_profile_shape(name, 0)``) and activation size read (``device_memory_size_v2``,
   TensorRT >= 10.1; ``device_memory_size`` on 10.0).
2. **activate** (:meth:`_Engine.activate`): an execution context without device memory of its
   own (``create_execution_context(ExecutionContextAllocationStrategy.USER_MANAGED)``, TensorRT
   >= 10.0), pointed at the backend's one activation buffer (``set_device_memory(ptr, size)``,
   TensorRT >= 10.1; the ``device_memory`` property on 10.0). A backend's engines never run
   concurrently (one stream), so one buffer, as large as the largest engine's activation memory,
   serves them all instead of one per engine.
3. **allocate** (:meth:`_Engine.allocate`): one device buffer per input and output, sized for the
   profile's largest shapes (:func:`max_io_shapes`), whose address is given to the context once
   (``set_tensor_address``). The context is set to the largest input shapes there, so the output
   shapes TensorRT infers are checked to fit before any call.
4. **infer** (:meth:`_Engine.infer`): ``set_input_shape`` only for inputs whose shape changed;
   the feeds copied (and cast: FP16 engines built from FP16 ONNX still take FP32 I/O, but
   whatever the engine declares is honoured) into views at the start of the fixed buffers
   (:func:`view`); ``execute_async_v3`` on the backend's own CUDA stream, forked from and joined
   back into PyTorch's current stream with events (no host synchronisation). Outputs are views of
   the output buffers; the backend returns FP32 copies.

Feeds are checked before any of this, by :meth:`Backend.infer` against :func:`engine_metadata`:
the engine's profile (outside it is one line naming component, input, shape and range, with the
``mvg-rt build`` command that covers the shape), then the manifest's declarations.

CUDA graphs: buffers never move, so a graph captured over a call stays valid until the engine
is loaded again or released, the shared activation buffer is regrown (every engine's kernels
address it), or the context's input shapes change: a TensorRT context holds per-shape state
(the kernels and launch parameters ``set_input_shape`` set up), so a graph captured at other
shapes would replay the old shapes' work. ``graph_generation(component)`` changes exactly then
(:class:`EnginePool`), and whole-step graphs (:mod:`mvg_rt.runtime.pipelines.steps.loop`) capture again when it does.
``cuda_graphs=True`` adds per-component graphs through :class:`GraphCache`, one per component
(the context holds one set of shapes), dropped on the same events.

``low_memory=True`` (Jetson-class): engines are loaded when first called and released by
:func:`engines_to_release` (the text encoder once the VAE is needed, the UNet when SEINE is
needed and vice versa), so each stage holds only its own engines; the per-stage table is in
docs/deploying-gpu.md. The activation buffer is then as large as the largest engine loaded so
far, and regrown when a larger one arrives (every live context re-pointed, every loaded
engine's graphs stale): sizing it up front would mean deserializing every engine, or trusting
the manifest's build-time number, to read one integer, and it grows only a few times, at stage
changes, where engines are loaded anyway. Without ``low_memory`` all engines are loaded before
any is activated, so the buffer is sized once and never regrows.

Nothing here imports TensorRT at module level: the module (and its pure helpers, tested on a
CPU) load on machines without it.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
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
from mvg_rt.runtime.backends.declarations import (InputDecl, InputMetadata, Shape, ShapeRange, fmt,
                                                  output_shape)
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


def max_io_shapes(artifact: Artifact, profiles: Mapping[str, ShapeRange], scale: int = 8) -> dict[str, Shape]:
    """Every input's and output's shape at the profile's largest shapes: what its fixed buffer must hold.

    Inputs: the profile's max. Outputs: their declared shapes with the named axes at the inputs' max
    (pixels = latents * ``scale``), the same derivation ONNX Runtime sizes its outputs with.
    """
    sizes: dict[str, int] = {}
    for decl in artifact.inputs:
        for axis, size in zip(decl.shape, profiles[decl.name][2]):
            if isinstance(axis, str):
                sizes[axis] = max(int(size), sizes.get(axis, 0))
    shapes = {d.name: tuple(int(s) for s in profiles[d.name][2]) for d in artifact.inputs}
    return shapes | {d.name: tuple(output_shape(d, sizes, scale)) for d in artifact.outputs}


def numel(shape: Iterable[int]) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n


def view(buffer: Tensor, shape: Sequence[int], name: str) -> Tensor:
    """``shape`` over the start of the flat ``buffer``: the same address for every shape that fits."""
    shape = tuple(int(s) for s in shape)
    if numel(shape) > buffer.numel():
        raise MvgError(f"TensorRT tensor {name} has shape {fmt(shape)}, more than its buffer sized for the "
                       f"profile's largest shapes holds ({buffer.numel()} elements); {REBUILD}")
    return buffer[:numel(shape)].view(shape)


#: An engine's steps in order (:func:`lifecycle_step`); ``release`` may end any of them.
LIFECYCLE = {("deserialized", "activate"): "activated", ("activated", "allocate"): "allocated",
             ("allocated", "infer"): "allocated"}


def lifecycle_step(stage: str, step: str) -> str:
    """The stage an engine is in after ``step`` (load -> activate -> allocate -> infer, infer repeated;
    release from anywhere); a step out of that order is a bug in this module (RuntimeError)."""
    if step == "release":
        return "released"
    after = LIFECYCLE.get((stage, step))
    if after is None:
        raise RuntimeError(f"TensorRT engine: {step} while {stage} (the order is load, activate, allocate, infer)")
    return after


class EnginePool:
    """The shared activation buffer's size and the graph generations of a backend's engines (pure).

    The backend loads, activates and releases; this says how large the one activation buffer
    must be and bumps ``generations[component]`` whenever graphs captured over the
    component's calls went stale (module docstring): a load, a release, new input shapes,
    or a regrown activation buffer (every resident engine).
    """

    def __init__(self, components: Iterable[str]) -> None:
        self.activation_bytes = 0  # the shared buffer's size: the largest engine loaded so far
        self.generations = dict.fromkeys(components, 0)

    def admit(self, sizes: Mapping[str, int], resident: Iterable[str]) -> bool:
        """Engines just loaded (component -> activation bytes) next to the ``resident`` ones; True if the
        shared buffer must first grow to :attr:`activation_bytes`."""
        largest = max(sizes.values(), default=0)
        grow = largest > self.activation_bytes
        if grow:
            self.activation_bytes = largest
        self.stale(*sizes, *(resident if grow else ()))
        return grow

    def stale(self, *components: str) -> None:
        """Graphs captured over these components' calls hold stale state."""
        for component in set(components):
            self.generations[component] += 1


# ------------------------------------------------------------------ engines (GPU)


def _torch_dtypes(trt: Any) -> dict[Any, torch.dtype]:
    table = {"FLOAT": torch.float32, "HALF": torch.float16, "BF16": torch.bfloat16, "INT32": torch.int32,
             "INT64": torch.int64, "INT8": torch.int8, "UINT8": torch.uint8, "BOOL": torch.bool}
    return {getattr(trt.DataType, k): v for k, v in table.items() if hasattr(trt.DataType, k)}


def _activation_bytes(engine: Any) -> int:
    """Activation memory an execution context of ``engine`` needs, at its largest profile shapes."""
    for attribute in ("device_memory_size_v2", "device_memory_size"):  # TensorRT >= 10.1; 10.0
        if hasattr(engine, attribute):
            return int(getattr(engine, attribute))
    return 0


class _Engine:
    """One engine through its lifecycle: :meth:`load`, :meth:`activate`, :meth:`allocate`, :meth:`infer`."""

    def __init__(self, engine: Any, inputs: list[str], outputs: list[str], dtypes: dict[str, torch.dtype],
                 profiles: dict[str, ShapeRange]) -> None:
        self.engine, self.inputs, self.outputs, self.dtypes, self.profiles = engine, inputs, outputs, dtypes, profiles
        self.activation_bytes = _activation_bytes(engine)
        self.stage = "deserialized"
        self.context: Any = None
        self.buffers: dict[str, Tensor] = {}  # flat, one per I/O tensor, at fixed addresses
        self.shapes: dict[str, Shape] = {}  # the context's input shapes
        self.views: dict[str, Tensor] = {}  # every I/O tensor at the context's shapes

    @classmethod
    def load(cls, trt: Any, runtime: Any, path: Path, spec: ComponentSpec, artifact: Artifact) -> _Engine:
        """Deserialize the plan and check its I/O against the component contract."""
        engine = runtime.deserialize_cuda_engine(path.read_bytes())
        if engine is None:
            raise MvgError(f"TensorRT could not deserialize {path} (built by another TensorRT version or for "
                           "another GPU?); rebuild it with mvg-rt build")
        dtypes = _torch_dtypes(trt)
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if n not in inputs]
        io_dtypes = {n: dtypes[engine.get_tensor_dtype(n)] for n in names}
        shapes = {n: tuple(engine.get_tensor_shape(n)) for n in names}
        check_signature(spec, artifact, engine_signature(inputs, outputs, io_dtypes, shapes), fix=REBUILD)
        profiles: dict[str, ShapeRange] = {}
        for name in inputs:  # (min, opt, max) of the one profile
            low, opt, high = (tuple(int(d) for d in dims) for dims in engine.get_tensor_profile_shape(name, 0))
            profiles[name] = (low, opt, high)
        return cls(engine, inputs, outputs, io_dtypes, profiles)

    def activate(self, trt: Any, memory: Tensor) -> None:
        """An execution context without device memory of its own, pointed at the shared ``memory``."""
        self.stage = lifecycle_step(self.stage, "activate")
        self.context = self.engine.create_execution_context(trt.ExecutionContextAllocationStrategy.USER_MANAGED)
        if self.context is None:
            raise MvgError("TensorRT could not create an execution context (out of GPU memory?); close other GPU "
                           "programs or pass --low-memory")
        self.use_memory(memory)

    def use_memory(self, memory: Tensor) -> None:
        """Point the context at ``memory`` (at activation, and again when the shared buffer was regrown)."""
        if hasattr(self.context, "set_device_memory"):  # TensorRT >= 10.1
            self.context.set_device_memory(memory.data_ptr(), memory.numel())
        else:
            self.context.device_memory = memory.data_ptr()

    def allocate(self, capacity: Mapping[str, Shape], device: torch.device) -> None:
        """One buffer per I/O tensor holding ``capacity`` (:func:`max_io_shapes`), bound once; the context at the
        largest input shapes, where the outputs must fit."""
        self.stage = lifecycle_step(self.stage, "allocate")
        for name in [*self.inputs, *self.outputs]:
            self.buffers[name] = torch.empty(max(numel(capacity[name]), 1), dtype=self.dtypes[name], device=device)
            self.context.set_tensor_address(name, self.buffers[name].data_ptr())
        self._set_shapes({name: capacity[name] for name in self.inputs})

    def _set_shapes(self, shapes: Mapping[str, Shape]) -> bool:
        """Give the context the inputs' shapes that changed; True if any did."""
        changed = [name for name in self.inputs if self.shapes.get(name) != shapes[name]]
        for name in changed:
            if not self.context.set_input_shape(name, shapes[name]):
                raise MvgError(f"TensorRT refused input {name} shape {fmt(shapes[name])}")
            self.shapes[name] = shapes[name]
        if changed:
            self.views = {name: view(self.buffers[name], self.shapes[name], name) for name in self.inputs} | {
                name: view(self.buffers[name], tuple(self.context.get_tensor_shape(name)), name)
                for name in self.outputs}
        return bool(changed)

    def infer(self, feeds: Mapping[str, Tensor], stream: Any) -> tuple[dict[str, Tensor], bool]:
        """Run on ``stream`` (forked from and joined into the current stream).

        Returns the outputs (views of the fixed output buffers) and whether the context's
        input shapes changed, which makes graphs captured before stale.
        """
        self.stage = lifecycle_step(self.stage, "infer")
        reshaped = self._set_shapes({name: tuple(int(s) for s in feeds[name].shape) for name in self.inputs})
        for name in self.inputs:
            self.views[name].copy_(feeds[name])
        current = torch.cuda.current_stream(stream.device)
        stream.wait_stream(current)
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise MvgError("TensorRT execution failed (execute_async_v3 returned False); rerun with --debug")
        current.wait_stream(stream)
        return {name: self.views[name] for name in self.outputs}, reshaped

    def release(self) -> None:
        """Drop the context before the engine it was created from, then the buffers."""
        self.stage = lifecycle_step(self.stage, "release")
        self.context = None
        self.engine = None
        self.buffers, self.views, self.shapes = {}, {}, {}


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
        self.pool = EnginePool(self.artifacts)
        self.activation: Tensor | None = None  # the one activation buffer every context runs in
        self.graphs = GraphCache(torch_capture, warmup=1, max_per_component=1,
                                 is_capturing=cuda_capturing) if cuda_graphs else None
        if not low_memory:
            self._open(list(self.artifacts))

    # ------------------------------------------------------------------ Backend

    @property
    def components(self) -> frozenset[str]:
        return frozenset(self.artifacts)

    def describe(self) -> dict[str, object]:
        return super().describe() | {
            "precision": self.precision, "engines": str(self.manifest.root),
            "tensorrt": self.environment.tensorrt_version, "gpu": self.environment.gpu,
            "compute_capability": self.environment.compute_capability, "low_memory": self.low_memory,
            "activation_memory_bytes": {c: e.activation_bytes for c, e in self.engines.items()},
            "shared_activation_bytes": self.pool.activation_bytes,
            **({"cuda_graphs": self.graphs.describe()} if self.graphs else {}),
        }

    def close(self) -> None:
        for component in list(self.engines):
            self._release(component)
        self.activation = None
        torch.cuda.empty_cache()

    def graph_generation(self, component: str) -> int:
        """Changes whenever graphs captured over ``component`` must be captured again (module docstring)."""
        return self.pool.generations.get(component, 0)

    def input_metadata(self, component: ComponentSpec) -> InputMetadata:
        """The engine's profile and the manifest's declarations (loads the engine the first time)."""
        if component.name not in self.metadata:
            self._engine(component.name)
        return self.metadata[component.name]

    def _infer(self, component: ComponentSpec, feeds: Mapping[str, Tensor]) -> dict[str, Tensor]:
        engine = self._engine(component.name)
        feeds = {name: feeds[name].to(self.device) for name in engine.inputs}
        if self.graphs is None:
            outputs = self._execute(component.name, engine, feeds)
        else:
            outputs = self.graphs.run(component.name, feeds, lambda f: self._execute(component.name, engine, f))
        return {name: (t.to(torch.float32, copy=True) if t.dtype == torch.float32 else t.float())
                for name, t in outputs.items()}

    # ------------------------------------------------------------------ engines

    def _execute(self, component: str, engine: _Engine, feeds: Mapping[str, Tensor]) -> dict[str, Tensor]:
        outputs, reshaped = engine.infer(feeds, self.stream)
        if reshaped:  # the context's per-shape state changed under any graph captured before
            self.pool.stale(component)
            if self.graphs is not None and not cuda_capturing():
                self.graphs.invalidate(component)
        return outputs

    def _engine(self, component: str) -> _Engine:
        if component not in self.engines:
            self._open([component])
        return self.engines[component]

    def _open(self, components: Sequence[str]) -> None:
        """Release what low-memory mode lets go, load, size the shared activation buffer, activate, allocate."""
        for component in components:
            for other in engines_to_release(self.engines, component, self.low_memory):
                self._release(other)
        loaded = {c: _Engine.load(self.trt, self.runtime, self.paths[c], COMPONENTS[c], self.artifacts[c])
                  for c in components}
        grow = self.pool.admit({c: e.activation_bytes for c, e in loaded.items()}, self.engines)
        memory = self._grow_activation() if grow or self.activation is None else self.activation
        scale = self.manifest.model.vae_scale_factor
        for component, engine in loaded.items():
            artifact = self.artifacts[component]
            engine.activate(self.trt, memory)
            engine.allocate(max_io_shapes(artifact, engine.profiles, scale), self.device)
            if component not in self.metadata:
                self.metadata[component] = engine_metadata(artifact, engine.profiles, scale, self.manifest.root)
            self.engines[component] = engine

    def _grow_activation(self) -> Tensor:
        """The shared activation buffer at the pool's size, every resident context pointed at it."""
        if self.activation is not None:
            torch.cuda.current_stream(self.device).synchronize()  # no engine may still run in the old one
            self.activation = None
            torch.cuda.empty_cache()
        memory = self.activation = torch.empty(max(self.pool.activation_bytes, 1), dtype=torch.uint8,
                                               device=self.device)
        for engine in self.engines.values():
            engine.use_memory(memory)
        if self.graphs is not None:
            self.graphs.invalidate()
        return memory

    def _release(self, component: str) -> None:
        engine = self.engines.pop(component, None)
        if engine is None:
            return
        if self.graphs is not None:
            self.graphs.invalidate(component)
        torch.cuda.current_stream(self.device).synchronize()  # the engine's last run must finish first
        engine.release()
        torch.cuda.empty_cache()
        self.pool.stale(component)
