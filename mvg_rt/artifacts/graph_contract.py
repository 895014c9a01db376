"""Whether an engines folder's graph really is the component it is filed as: names, ranks, dtypes, fixed dims.

The hashes in the manifest only say that a file is the one recorded; a graph swapped for another
component's (and the hash updated) passes them and fails at its first call, minutes into a run
(``KeyError: 'latents'``). Each graph's inputs and outputs are therefore compared, when the folder is
opened, with the component's contract (:mod:`mvg_rt.components`: names, ranks, integer or float) and
with the shapes the manifest declares (fixed dims such as channels or the text width).

An ONNX graph's signature is read from the protobuf wire format without parsing its weights: a multi-GB
graph costs a few thousand small reads, not a copy of the weights in memory (``onnx.load`` without external
data still parses every initializer). TensorRT engines give the same facts through their tensor API
(:func:`check_signature` is shared).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from mvg_rt.artifacts.manifest import REEXPORT, Artifact, TensorDecl
from mvg_rt.components import ComponentSpec
from mvg_rt.errors import MvgError

# ONNX TensorProto.DataType codes -> the names the manifest uses
ONNX_DTYPES = {1: "float32", 10: "float16", 16: "bfloat16", 11: "float64", 7: "int64", 6: "int32", 9: "bool"}
INTEGER_DTYPES = frozenset({"int64", "int32"})
_MODEL_GRAPH, _GRAPH_INPUT, _GRAPH_OUTPUT = 7, 11, 12  # field numbers in onnx.proto (ModelProto, GraphProto)


@dataclass(frozen=True)
class GraphTensor:
    """One input or output as a graph declares it; ``shape`` entries are ints, axis names or None (unknown)."""

    name: str
    dtype: str
    shape: tuple[int | str | None, ...]


@dataclass(frozen=True)
class Signature:
    inputs: tuple[GraphTensor, ...]
    outputs: tuple[GraphTensor, ...]


def check_signature(component: ComponentSpec, artifact: Artifact, signature: Signature, fix: str = REEXPORT) -> None:
    """Refuse in one line a graph whose inputs/outputs are not ``component``'s (names, ranks, kinds, fixed dims)."""
    where = f"{artifact.file} (filed as {component.name})"
    for role, specs, tensors, decls in (("inputs", component.inputs, signature.inputs, artifact.inputs),
                                        ("outputs", component.outputs, signature.outputs, artifact.outputs)):
        names = sorted(t.name for t in tensors)
        if names != sorted(s.name for s in specs):
            raise MvgError(f"{where} is not a {component.name} graph: its {role} are {', '.join(names) or 'none'}, "
                           f"a {component.name} has {', '.join(s.name for s in specs)}; the file was replaced by "
                           f"another component's: {fix}")
        by_name = {t.name: t for t in tensors}
        declared = {d.name: d for d in decls}
        for spec in specs:
            tensor = by_name[spec.name]
            problem = _tensor_problem(tensor, len(spec.axes), not spec.dtype.is_floating_point,
                                      declared.get(spec.name))
            if problem:
                raise MvgError(f"{where}: {spec.name} {problem}; the graph does not match its component: {fix}")


def _tensor_problem(tensor: GraphTensor, rank: int, integer: bool, decl: TensorDecl | None) -> str:
    if len(tensor.shape) != rank:
        return f"has {len(tensor.shape)} dims where the contract has {rank}"
    if (tensor.dtype in INTEGER_DTYPES) != integer:
        return f"is {tensor.dtype} where the contract has {'an integer' if integer else 'a float'} tensor"
    if decl is not None and len(decl.shape) == rank:
        for axis, (got, want) in enumerate(zip(tensor.shape, decl.shape)):
            if isinstance(got, int) and isinstance(want, int) and got != want:
                return f"dim {axis} is {got} in the graph but {want} in manifest.json"
    return ""


# ------------------------------------------------------------------ ONNX protobuf, read field by field


def read_onnx_signature(path: str | Path) -> Signature:
    """The graph inputs and outputs of an ONNX file (initializers listed as inputs by old exporters are dropped)."""
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            graph = next((span for field, span in _fields(handle, 0, path.stat().st_size) if field == _MODEL_GRAPH),
                         None)
            if graph is None:
                raise ValueError("no graph")
            inputs, outputs, initializers = [], [], set()
            for field, (start, end) in _fields(handle, *graph):
                if field in (_GRAPH_INPUT, _GRAPH_OUTPUT):
                    handle.seek(start)
                    (inputs if field == _GRAPH_INPUT else outputs).append(_value_info(handle.read(end - start)))
                elif field == 5:  # initializer: only its name (field 8) matters here
                    initializers.add(_initializer_name(handle, start, end))
    except (OSError, ValueError, IndexError) as err:
        raise MvgError(f"{path.name} is not a readable ONNX graph ({err}); {REEXPORT}") from err
    return Signature(tuple(t for t in inputs if t.name not in initializers), tuple(outputs))


def _varint(handle: BinaryIO) -> int:
    result = shift = 0
    while True:
        byte = handle.read(1)
        if not byte:
            raise ValueError("truncated")
        result |= (byte[0] & 0x7F) << shift
        if byte[0] < 0x80:
            return result
        shift += 7
        if shift > 63:
            raise ValueError("bad varint")


def _fields(handle: BinaryIO, start: int, end: int) -> Iterator[tuple[int, tuple[int, int]]]:
    """(field number, (start, end)) of every length-delimited field of the message in [start, end)."""
    position = start
    while position < end:
        handle.seek(position)
        key = _varint(handle)
        field, wire = key >> 3, key & 7
        if wire == 0:
            _varint(handle)
            position = handle.tell()
        elif wire in (1, 5):
            position = handle.tell() + (8 if wire == 1 else 4)
        elif wire == 2:
            length = _varint(handle)
            body = handle.tell()
            position = body + length
            if position > end:
                raise ValueError("truncated")
            yield field, (body, position)
        else:
            raise ValueError(f"wire type {wire}")


def _initializer_name(handle: BinaryIO, start: int, end: int) -> str:
    for field, (body, stop) in _fields(handle, start, end):
        if field == 8:
            handle.seek(body)
            return handle.read(stop - body).decode("utf-8", "replace")
    return ""


def _value_info(data: bytes) -> GraphTensor:
    from onnx import ValueInfoProto

    info = ValueInfoProto.FromString(data)
    tensor = info.type.tensor_type
    shape = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tensor.shape.dim)
    return GraphTensor(info.name, ONNX_DTYPES.get(tensor.elem_type, f"onnx type {tensor.elem_type}"), shape)
