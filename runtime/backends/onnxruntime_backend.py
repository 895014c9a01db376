"""ONNX Runtime backend over an engines folder's ONNX artifacts (FP32, FP16, or INT8).

INT8 runs the UNet's Q/DQ graph (``mvg-rt export --int8``; the CPU EP fuses the Q/DQ
pairs into integer kernels) and the other components' FP32 graphs
(``INT8_FALLBACK`` in the manifest).

* CPU: feeds go in as numpy arrays (zero-copy views of CPU tensors).
* CUDA: I/O binding on device memory. Inputs are bound to the torch CUDA tensors'
  ``data_ptr()``, outputs to torch tensors allocated here, and ORT runs on torch's
  current stream (``user_compute_stream``), so nothing is copied through the host and
  no extra synchronisation is needed. ``cuda_graph=True`` turns on ORT's CUDA graphs
  (``enable_cuda_graph``): each (component, input shapes) gets static input/output
  buffers and its own ``gpu_graph_id``; a call copies the feeds into the static
  inputs and replays. ORT can only capture a graph when every node runs on the CUDA
  EP; dynamic-axis graphs keep small shape computations on the CPU, in which case
  the session is created without CUDA graphs and :meth:`describe` says so.

Every feed is checked (by :meth:`Backend.infer`, once per combination of feed shapes)
against the shapes the manifest declares for the artifact (fixed dims such as 4 latent
channels, 77 tokens or the text width must match; named axes must agree across inputs
and satisfy the manifest's ranges), so a wrong shape is a one-line :class:`MvgError`
instead of an ORT stack trace.

Session settings (:class:`OrtSettings`) default to what measured fastest on a
2-core CPU (``benchmarks/results/cpu-2core/ort_settings.md``).
"""

from __future__ import annotations

import json
import tempfile
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from mvg_rt.components import COMPONENTS, ComponentSpec
from mvg_rt.errors import MvgError, first_line
from mvg_rt.artifacts.graph_contract import check_signature, read_onnx_signature
from mvg_rt.artifacts.manifest import Artifact, Manifest
from mvg_rt.runtime.backends.base import Backend, OpTimes
from mvg_rt.runtime.backends.declarations import InputMetadata, output_shape

OPT_LEVELS = ("disable", "basic", "extended", "all")
FUSION_MODEL_TYPES = {"text_encoder": "clip", "vae_encoder": "vae", "vae_decoder": "vae", "unet": "unet"}
_TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16, "int64": torch.int64, "int32": torch.int32}


@dataclass(frozen=True)
class OrtSettings:
    """ONNX Runtime session settings (how the defaults were chosen: benchmarks/results/cpu-2core/ort_settings.md)."""

    intra_op_threads: int = 0  # 0: ONNX Runtime's default, one thread per physical core
    spin: bool = True  # let idle intra-op threads busy-wait (fast when the cores are ours, costly when shared)
    graph_optimization: str = "all"  # disable | basic | extended | all
    transformer_fusions: bool = False  # onnxruntime.transformers optimizer (model_type unet/vae/clip) at load
    cuda_graph: bool = False  # CUDA only: capture and replay (see module docstring)

    def __post_init__(self) -> None:
        if self.graph_optimization not in OPT_LEVELS:
            raise MvgError(f"graph optimisation must be one of {', '.join(OPT_LEVELS)} "
                           f"(got {self.graph_optimization!r})")
        if self.intra_op_threads < 0:
            raise MvgError(f"intra-op threads must be >= 0 (got {self.intra_op_threads})")


DEFAULT_SETTINGS = OrtSettings()
"""The measured-fastest settings on a 2-core CPU: benchmarks/results/cpu-2core/ort_settings.md."""


def _parse_device(device: str | torch.device) -> torch.device:
    device = torch.device(device)
    if device.type not in ("cpu", "cuda"):
        raise MvgError(f"--device {device}: the ort backend runs on cpu or cuda[:N]")
    return device


@dataclass
class _GraphSlot:
    """Static buffers of one captured CUDA graph."""

    graph_id: int
    inputs: dict[str, Tensor]
    outputs: dict[str, Tensor]
    binding: Any


@dataclass
class _Session:
    session: Any
    input_dtypes: dict[str, torch.dtype]
    cuda_graph: bool = False
    slots: dict[tuple, _GraphSlot] = field(default_factory=dict)
    clock: tuple[Callable[[], None], Callable[[], None]] | None = None  # (enter, leave) around runs: the bench's

    def execute(self, run: Callable[..., Any], *args: Any) -> Any:
        """``run(*args)`` (one of the session's run methods), between the clock's ``enter()`` and ``leave()``."""
        if self.clock is None:
            return run(*args)
        enter, leave = self.clock
        enter()
        try:
            return run(*args)
        finally:
            leave()


class OrtBackend(Backend):
    name = "ort"

    def __init__(self, engines_dir: str | Path, precision: str = "fp32", device: str | torch.device = "cpu",
                 settings: OrtSettings | None = None, manifest: Manifest | None = None) -> None:
        super().__init__(_parse_device(device))
        import onnxruntime as ort

        self.ort = ort
        self.manifest = manifest or Manifest.read(engines_dir)
        self.precision = precision
        self.settings = settings or DEFAULT_SETTINGS
        self.artifacts = {name: a for name in COMPONENTS
                          if (a := self.manifest.find(name, "onnx", precision)) is not None}
        if not self.artifacts:
            have = sorted({a.precision for a in self.manifest.artifacts if a.kind == "onnx"})
            raise MvgError(f"engines folder {self.manifest.root} has no {precision} ONNX artifacts"
                           f"{' (it has ' + ', '.join(have) + ')' if have else ''}: re-export it"
                           f"{' with --fp16' if precision == 'fp16' else ''} or pass --precision "
                           f"{have[0] if have else 'fp32'}")
        if precision == "int8" and not any(a.precision == "int8" for a in self.artifacts.values()):
            raise MvgError(f"engines folder {self.manifest.root} has no INT8 graph: re-export it with --int8 "
                           "(mvg-rt export --help) or pass --precision fp32")
        self.paths = {name: self.manifest.verify(a) for name, a in self.artifacts.items()}  # fail before any work
        for name, artifact in self.artifacts.items():  # a graph filed under the wrong component, too
            check_signature(COMPONENTS[name], artifact, read_onnx_signature(self.paths[name]))
        if self.device.type == "cuda" and "CUDAExecutionProvider" not in ort.get_available_providers():
            raise MvgError(f"--device {self.device}: this onnxruntime has no CUDA execution provider; "
                           "install onnxruntime-gpu (pip install 'mvg-rt[gpu]') or use --device cpu")
        self.metadata = {name: InputMetadata.declared(a) for name, a in self.artifacts.items()}
        self.sessions: dict[str, _Session] = {}
        self.notes: list[str] = []

    # ------------------------------------------------------------------ Backend

    @property
    def components(self) -> frozenset[str]:
        return frozenset(self.artifacts)

    def describe(self) -> dict[str, object]:
        return super().describe() | {
            "precision": self.precision,
            **({"artifacts": {n: a.precision for n, a in self.artifacts.items()}} if self.precision == "int8" else {}),
            "engines": str(self.manifest.root),
            "onnxruntime": self.ort.__version__,
            "providers": self._providers_names(),
            "settings": asdict(self.settings),
            **({"notes": self.notes} if self.notes else {}),
        }

    def close(self) -> None:
        self.sessions.clear()

    def step_capture(self) -> None:
        """None: ONNX Runtime launches its kernels itself and captures its own per-component graphs
        (``cuda_graph``), so a whole step around its calls runs eagerly over the static buffers."""
        return None

    def input_metadata(self, component: ComponentSpec) -> InputMetadata:
        """The manifest's declared shapes and axis ranges for the component's graph."""
        return self.metadata[component.name]

    def _infer(self, component: ComponentSpec, feeds: Mapping[str, Tensor]) -> dict[str, Tensor]:
        artifact = self.artifacts[component.name]
        state = self._session(component.name)
        if self.device.type == "cpu":
            return self._run_cpu(state, artifact, feeds)
        return self._run_cuda(state, artifact, feeds, self.axis_sizes(component, feeds))

    # ------------------------------------------------------------------ benchmark capabilities

    def profile(self, component: ComponentSpec, feeds: Mapping[str, Tensor]) -> OpTimes:
        """ONNX Runtime's profiler on a second session of the same graph and settings: kernel time by op type
        in the second of two runs."""
        self.require(component)
        self.axis_sizes(component, feeds)
        with tempfile.TemporaryDirectory() as tmp:
            options = self.session_options()
            options.enable_profiling, options.profile_file_prefix = True, str(Path(tmp) / "ort")
            session = self.ort.InferenceSession(str(self.paths[component.name]), options,
                                                providers=self._providers(False))
            arrays = _arrays({i.name: _ort_type_to_torch(i.type) for i in session.get_inputs()}, feeds)
            for _ in range(2):
                session.run(None, arrays)
            trace = json.loads(Path(session.end_profiling()).read_text())
        return OpTimes("onnxruntime profiler (kernel time by op type)", *_last_run_kernel_times(trace))

    @contextmanager
    def timed_network(self, component: ComponentSpec, enter: Callable[[], None],
                      leave: Callable[[], None]) -> Iterator[str]:
        """The component session's runs (feed conversion and output copies count as overhead)."""
        self.require(component)
        state = self._session(component.name)
        state.clock = (enter, leave)
        try:
            yield f"time inside the {component.name} session's run()"
        finally:
            state.clock = None

    # ------------------------------------------------------------------ sessions

    def _providers_names(self) -> list[str]:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"] if self.device.type == "cuda" else [
            "CPUExecutionProvider"]

    def session_options(self) -> Any:
        ort = self.ort
        options = ort.SessionOptions()
        options.log_severity_level = 3  # errors only: ORT's warnings about unused initializers are noise here
        levels = {"disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
                  "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
                  "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
                  "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}
        options.graph_optimization_level = levels[self.settings.graph_optimization]
        if self.settings.intra_op_threads:
            options.intra_op_num_threads = self.settings.intra_op_threads
        if not self.settings.spin:
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        return options

    def _providers(self, cuda_graph: bool) -> list[Any]:
        if self.device.type == "cpu":
            return ["CPUExecutionProvider"]
        cuda: dict[str, str] = {"device_id": str(self.device.index or 0),
                                "enable_cuda_graph": "1" if cuda_graph else "0"}
        if torch.cuda.is_available():
            cuda["user_compute_stream"] = str(torch.cuda.current_stream(self.device).cuda_stream)
        return [("CUDAExecutionProvider", cuda), "CPUExecutionProvider"]

    def _model_source(self, name: str) -> str | bytes:
        path = self.paths[name]
        if not self.settings.transformer_fusions or name not in FUSION_MODEL_TYPES:
            return str(path)
        return self._fused(name, path)

    def _fused(self, name: str, path: Path) -> str | bytes:
        """The graph after onnxruntime.transformers' fusions for its model type (kept in memory)."""
        from onnxruntime.transformers.fusion_options import FusionOptions
        from onnxruntime.transformers.optimizer import optimize_model

        artifact = self.artifacts[name]
        if artifact.external_data:  # >2 GB: cannot be held as one protobuf; ORT's own fusions still apply
            self.notes.append(f"{name}: transformer fusions skipped (graph over 2 GB)")
            return str(path)
        model_type = FUSION_MODEL_TYPES[name]
        options = FusionOptions(model_type)
        if self.device.type == "cpu":  # these fusions emit contrib ops that only the CUDA EP implements
            for flag in ("enable_nhwc_conv", "enable_group_norm", "enable_skip_group_norm", "enable_bias_splitgelu",
                         "enable_packed_qkv", "enable_packed_kv", "enable_bias_add"):
                setattr(options, flag, False)
        try:
            optimized = optimize_model(str(path), model_type=model_type, opt_level=0, optimization_options=options,
                                       use_gpu=self.device.type == "cuda", only_onnxruntime=False)
        except Exception as err:  # noqa: BLE001 - its pattern matchers assume graphs shaped like its own exports
            self.notes.append(f"{name}: transformer fusions failed ({type(err).__name__}: {first_line(err)}); "
                              "running the graph unfused")
            return str(path)
        return optimized.model.SerializeToString()

    def _session(self, name: str) -> _Session:
        state = self.sessions.get(name)
        if state is not None:
            return state
        source = self._model_source(name)
        want_graph = self.settings.cuda_graph and self.device.type == "cuda"
        try:
            session = self.ort.InferenceSession(source, self.session_options(),
                                                providers=self._providers(want_graph))
        except Exception as err:  # noqa: BLE001 - ORT raises its own exception types
            if not want_graph:
                raise MvgError(f"onnxruntime cannot load {self.paths[name]} ({first_line(err)}); "
                               f"re-export it (mvg-rt export --help)") from err
            # Capture needs every node on the CUDA EP; dynamic-axis graphs keep shape math on the CPU.
            self.notes.append(f"{name}: CUDA graph refused by onnxruntime ({first_line(err)}); running without")
            session = self.ort.InferenceSession(source, self.session_options(), providers=self._providers(False))
            want_graph = False
        dtypes = {i.name: _ort_type_to_torch(i.type) for i in session.get_inputs()}
        state = _Session(session, dtypes, cuda_graph=want_graph)
        self.sessions[name] = state
        return state

    # ------------------------------------------------------------------ running

    def _run_cpu(self, state: _Session, artifact: Artifact, feeds: Mapping[str, Tensor]) -> dict[str, Tensor]:
        outputs = state.execute(state.session.run, [d.name for d in artifact.outputs],
                                _arrays(state.input_dtypes, feeds))
        return {d.name: torch.from_numpy(np.ascontiguousarray(o)).float() for d, o in zip(artifact.outputs, outputs)}

    def _run_cuda(self, state: _Session, artifact: Artifact, feeds: Mapping[str, Tensor],
                  dims: dict[str, int]) -> dict[str, Tensor]:
        scale = self.manifest.model.vae_scale_factor
        inputs = {name: feeds[name].to(self.device, dtype).contiguous() for name, dtype in state.input_dtypes.items()}
        if state.cuda_graph:
            return self._run_cuda_graph(state, artifact, inputs, dims, scale)
        outputs = {d.name: torch.empty(output_shape(d, dims, scale), device=self.device,
                                       dtype=_TORCH_DTYPES[d.dtype]) for d in artifact.outputs}
        state.execute(state.session.run_with_iobinding, self._bind(state, inputs, outputs))
        return {name: t.float() for name, t in outputs.items()}

    def _bind(self, state: _Session, inputs: dict[str, Tensor], outputs: dict[str, Tensor]) -> Any:
        binding = state.session.io_binding()
        index = self.device.index or 0
        for name, tensor in inputs.items():
            binding.bind_input(name, "cuda", index, _numpy_dtype(tensor.dtype), list(tensor.shape), tensor.data_ptr())
        for name, tensor in outputs.items():
            binding.bind_output(name, "cuda", index, _numpy_dtype(tensor.dtype), list(tensor.shape),
                                tensor.data_ptr())
        return binding

    def _run_cuda_graph(self, state: _Session, artifact: Artifact, inputs: dict[str, Tensor], dims: dict[str, int],
                        scale: int) -> dict[str, Tensor]:
        key = tuple((name, tuple(t.shape)) for name, t in inputs.items())
        slot = state.slots.get(key)
        if slot is None:
            static_in = {name: t.clone() for name, t in inputs.items()}
            static_out = {d.name: torch.empty(output_shape(d, dims, scale), device=self.device,
                                              dtype=_TORCH_DTYPES[d.dtype]) for d in artifact.outputs}
            slot = _GraphSlot(len(state.slots) + 1, static_in, static_out, self._bind(state, static_in, static_out))
            state.slots[key] = slot
        else:
            for name, tensor in inputs.items():
                slot.inputs[name].copy_(tensor)
        options = self.ort.RunOptions()
        options.add_run_config_entry("gpu_graph_id", str(slot.graph_id))
        state.execute(state.session.run_with_iobinding, slot.binding, options)  # first run per id captures
        return {name: t.float().clone() for name, t in slot.outputs.items()}


def _last_run_kernel_times(trace: list[dict[str, Any]]) -> tuple[dict[str, float], dict[str, int]]:
    """Seconds and kernel calls per op type in the last ``model_run`` of an ONNX Runtime profile trace."""
    last_run = max((e["ts"] for e in trace if e.get("name") == "model_run"), default=0)
    seconds: dict[str, float] = defaultdict(float)
    calls: dict[str, int] = defaultdict(int)
    for e in trace:
        if e.get("cat") == "Node" and str(e.get("name", "")).endswith("_kernel_time") and e.get("ts", 0) >= last_run:
            seconds[e["args"].get("op_name", "?")] += e.get("dur", 0) / 1e6
            calls[e["args"].get("op_name", "?")] += 1
    return dict(seconds), dict(calls)


def _arrays(dtypes: Mapping[str, torch.dtype], feeds: Mapping[str, Tensor]) -> dict[str, np.ndarray]:
    """The session's inputs as numpy arrays of its input types (zero-copy views of contiguous CPU tensors)."""
    return {name: feeds[name].detach().to("cpu", dtype).contiguous().numpy() for name, dtype in dtypes.items()}


def _ort_type_to_torch(ort_type: str) -> torch.dtype:
    name = ort_type.removeprefix("tensor(").removesuffix(")")
    return {"float": torch.float32, "float16": torch.float16, "int64": torch.int64, "int32": torch.int32}[name]


def _numpy_dtype(dtype: torch.dtype) -> type:
    return {torch.float32: np.float32, torch.float16: np.float16, torch.int64: np.int64, torch.int32: np.int32}[dtype]

