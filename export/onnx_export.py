"""Export one component module (``mvg_rt.models.component_modules``) to one ONNX file.

Names and dynamic axes come from the component contract (``mvg_rt.components``), so
every graph has exactly the inputs/outputs the runtime feeds.

Exporter: ``torch.onnx.export(..., dynamo=False)`` (the TorchScript tracer) by
default. On torch 2.13 it exports the diffusers UNet/VAE, the CLIP text model and
SEINE with the contract's named dynamic axes, matches PyTorch to ~1e-6, and is
several times faster than the dynamo exporter (``benchmarks/results/cpu-2core/onnx_exporters.md``).
The dynamo exporter also works (``exporter="dynamo"``), but needs explicit minimum sizes for
SEINE's spatial axes and writes derived output axes (``8*latent_height``), which are renamed here.
It is kept as the path forward because the TorchScript exporter is deprecated.

One tracer pitfall: ``Tensor.unflatten`` records its sizes as constants under the
TorchScript tracer (an early SEINE module froze its frame count that way); the SEINE
module now reshapes with sizes read from ``.shape``, and ``mvg-rt check`` runs every
component at a second shape / frame count, so a frozen axis cannot go unnoticed.

Graphs above 2 GB (the full SD UNet in FP32 is 3.4 GB) keep their weights in one
external data file next to the graph (``<name>.onnx.data``).
"""

from __future__ import annotations

import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import onnx
import torch
from torch import Tensor, nn

from mvg_rt.components import ComponentSpec
from mvg_rt.errors import MvgError
from mvg_rt.limits import LIMITS

EXPORTERS = ("torchscript", "dynamo")
DEFAULT_OPSET = 18
MIN_OPSET = int(LIMITS["--opset"].low)  # 17: LayerNormalization is a single op from opset 17
PROTOBUF_LIMIT = 2**31 - 1
EXTERNAL_THRESHOLD = 1_800_000_000  # leave room for the graph itself below protobuf's 2 GB


@dataclass(frozen=True)
class TraceDims:
    """Sizes used to trace; distinct values so no axis is mistaken for another."""

    batch: int = 2
    latent: int = 8  # latent height; width is latent + step so the two never coincide
    latent_step: int = 2
    frames: int = 4
    scale: int = 8  # pixels per latent cell

    def of(self) -> dict[str, int]:
        lh, lw = self.latent, self.latent + self.latent_step
        return {"batch": self.batch, "latent_height": lh, "latent_width": lw, "height": lh * self.scale,
                "width": lw * self.scale, "frames": self.frames}


def example_inputs(spec: ComponentSpec, dims: dict[str, int], hidden: int, vocab: int,
                   seed: int = 0) -> tuple[Tensor, ...]:
    """Deterministic inputs of the component's shapes (``hidden`` fills the text width)."""
    generator = torch.Generator().manual_seed(seed)
    tensors = []
    for t in spec.inputs:
        shape = [hidden if a == "hidden" else dims[a] if isinstance(a, str) else a for a in t.axes]
        if t.dtype == torch.int64:
            tensors.append(torch.randint(0, vocab, shape, generator=generator, dtype=torch.int64))
        elif t.name == "timestep":
            tensors.append(torch.linspace(999, 1, shape[0]))
        else:
            tensors.append(torch.randn(shape, generator=generator))
    return tuple(tensors)


def export_component(module: nn.Module, spec: ComponentSpec, example: tuple[Tensor, ...], path: Path,
                     opset: int = DEFAULT_OPSET, exporter: str = "torchscript", hidden: int | None = None) -> Path:
    """Trace ``module`` to ``path``: named I/O, dynamic axes, constant folding, shape inference.

    Weights go to ``path.name + '.data'`` when the graph would exceed protobuf's 2 GB.
    """
    if exporter not in EXPORTERS:
        raise MvgError(f"--exporter must be one of {', '.join(EXPORTERS)} (got {exporter!r})")
    if opset < MIN_OPSET:
        raise MvgError(f"--opset {opset} is too old: use {MIN_OPSET} or newer (default {DEFAULT_OPSET})")
    path.parent.mkdir(parents=True, exist_ok=True)
    dynamic_axes = {t.name: t.dynamic_axes for t in spec.inputs + spec.outputs}
    scratch = Path(tempfile.mkdtemp(prefix=f".{spec.name}-trace-", dir=path.parent))
    try:
        raw = scratch / "raw.onnx"  # a >2 GB trace writes its tensors as separate files here
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer and deprecation chatter; the parity check is the judge
            common = dict(input_names=list(spec.input_names), output_names=list(spec.output_names),
                          opset_version=opset, dynamic_axes=dynamic_axes)
            if exporter == "torchscript":
                torch.onnx.export(module, example, str(raw), dynamo=False, do_constant_folding=True, **common)
            else:
                torch.onnx.export(module, example, str(raw), dynamo=True, optimize=True, verbose=False,
                                  external_data=True, **common)
        model = onnx.load(str(raw), load_external_data=True)
        name_axes(model, spec, hidden)
        save_onnx(model, path)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    infer_shapes(path)
    return path


def name_axes(model: onnx.ModelProto, spec: ComponentSpec, hidden: int | None = None) -> None:
    """Write the contract's shapes on graph inputs/outputs: axis names for dynamic dims, ints for fixed ones.

    The exporters' own output shapes are inferred and may carry generated names
    (``LayerNormalization..._dim_1``) or derived ones (``8*latent_height``).
    """
    by_name = {t.name: t for t in spec.inputs + spec.outputs}
    for value in list(model.graph.input) + list(model.graph.output):
        tensor = by_name.get(value.name)
        if tensor is None:
            continue
        shape = value.type.tensor_type.shape
        while len(shape.dim) < len(tensor.axes):
            shape.dim.add()
        for dim, axis in zip(shape.dim, tensor.axes):
            size = hidden if axis == "hidden" else axis
            if isinstance(size, int):
                dim.ClearField("dim_param")
                dim.dim_value = size
            elif size is not None:
                dim.ClearField("dim_value")
                dim.dim_param = size


def weights_bytes(model: onnx.ModelProto) -> int:
    """Bytes of initializer data (the bulk of a graph), without serializing it."""
    total = 0
    for tensor in model.graph.initializer:
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            total += next((int(e.value) for e in tensor.external_data if e.key == "length"), 0)
        elif tensor.raw_data:
            total += len(tensor.raw_data)
        else:
            total += tensor.ByteSize()
    return total


def external_data_name(path: Path) -> str:
    return path.name + ".data"


def save_onnx(model: onnx.ModelProto, path: Path) -> str | None:
    """Save, with the weights in one external file when the graph would pass 2 GB; returns that file's name."""
    stale = path.with_name(external_data_name(path))
    if stale.exists():
        stale.unlink()
    if weights_bytes(model) < EXTERNAL_THRESHOLD:
        onnx.save_model(model, str(path))
        return None
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=external_data_name(path), size_threshold=1024)
    return external_data_name(path)


def infer_shapes(path: Path) -> None:
    """ONNX shape inference in place.

    The path-based variant (needed for graphs with external data) writes in native code that reports no
    failed write: on a full disk it leaves a truncated graph and returns. So a self-contained graph is
    inferred in memory and saved by Python (a full disk is then the OSError it is), and a graph with
    external data is read back after inference.
    """
    if external_data_of(path) is None:
        onnx.save_model(onnx.shape_inference.infer_shapes(onnx.load(str(path))), str(path))
        return
    onnx.shape_inference.infer_shapes_path(str(path), str(path))
    try:
        onnx.load(str(path), load_external_data=False)
    except Exception as err:  # noqa: BLE001 - protobuf's DecodeError and onnx's own: the file is not whole
        raise MvgError(f"ONNX shape inference could not write {path.name} whole (is the disk full?): free space "
                       "or choose another --out, then export again; nothing partial was kept") from err


def external_data_of(path: Path) -> str | None:
    """Name of the external data file a saved graph refers to (None if self-contained)."""
    model = onnx.load(str(path), load_external_data=False)
    for tensor in model.graph.initializer:
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            return next(e.value for e in tensor.external_data if e.key == "location")
    return None


def onnx_dtype_name(elem_type: int) -> str:
    return onnx.helper.tensor_dtype_to_np_dtype(elem_type).name


def graph_io(path: Path) -> tuple[list[dict], list[dict]]:
    """Inputs and outputs of a saved graph as {name, dtype, shape} with axis names for dynamic dims."""
    model = onnx.load(str(path), load_external_data=False)

    def decl(value: onnx.ValueInfoProto) -> dict:
        t = value.type.tensor_type
        shape = [d.dim_param if d.dim_param else int(d.dim_value) for d in t.shape.dim]
        return {"name": value.name, "dtype": onnx_dtype_name(t.elem_type), "shape": shape}

    return [decl(v) for v in model.graph.input], [decl(v) for v in model.graph.output]


def opset_of(path: Path) -> int:
    model = onnx.load(str(path), load_external_data=False)
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
