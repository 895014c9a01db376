"""FP16 copies of exported FP32 graphs: onnxruntime.transformers' float16 converter (default) or ModelOpt AutoCast.

TensorRT 11 builds only strongly typed networks, so the FP16 graph written here is the
only way to an FP16 engine there (NVIDIA points to ModelOpt AutoCast for the
conversion). Both converters are offered (``mvg-rt export --fp16-converter ort|modelopt``)
and compared by ``benchmarks/fp16_converters.py`` (error per component against FP32 on
the ONNX Runtime CPU EP, and how many nodes each keeps in FP32; the table is in
``benchmarks/results/cpu-2core/fp16_converters.md``). The manifest records which one
wrote each FP16 artifact (``details.fp16_converter``).

``ort`` stays the default: on the CPU EP both converters keep every component well within
the FP16 tolerance and close to each other, while ModelOpt's ONNX extra pins older onnx and
onnxruntime-gpu than the project uses (a second environment) and its conversion needs several
times the UNet file in memory. The CPU EP computes most FP16 nodes in FP32 behind Casts, so
this comparison cannot show FP16 *arithmetic* overflow (the reason the normalisations are
blocked below); re-decide with real weights on a GPU. Measured:
``benchmarks/results/cpu-2core/fp16_policy.md``.

The rest of this docstring is about the default converter.

Weights and activations become float16; graph inputs and outputs stay float32
(``keep_io_types``), so every backend is fed the same tensors whatever the precision.

Kept in FP32, chosen by measurement on the UNet, the VAE and SEINE (the errors with and
without each block: ``benchmarks/results/cpu-2core/fp16_policy.md``; tests/test_onnx_export.py
keeps the check):

* the sinusoidal timestep embedding, found by :func:`timestep_embedding_nodes`
  (everything from the ``timestep`` input up to the first MatMul/Gemm of the time
  MLP, plus its frequency constants). ``t * freq`` rounded to FP16 is off by up to
  0.25 rad at t ~ 999 (FP16 spacing in [512, 1024) is 0.5); of the blocks, this one
  lowers the denoisers' FP16 error most.
* the normalisations (InstanceNormalization, which GroupNorm exports to,
  LayerNormalization, GroupNormalization): their mean/variance reductions overflow in
  FP16 once activations pass ~256 (x^2 > 65504), which real VAE decoders reach; TensorRT
  warns about FP16 LayerNorm for the same reason.

Softmax stays FP16: blocking it changed the errors by less than their spread and costs two
Casts per attention; ORT and TensorRT softmax kernels accumulate in FP32 internally.

The converter routes every tensor between two blocked nodes through FP16, which
would undo the blocks; :func:`collapse_fp16_round_trips` removes those round trips.
"""

from __future__ import annotations

import tempfile
from collections import deque
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from mvg_rt.errors import MvgError

KEEP_FP32_OPS = ("InstanceNormalization", "LayerNormalization", "GroupNormalization")
#: ``--fp16-converter`` value -> the name recorded in the manifest (``details.fp16_converter``).
FP16_CONVERTERS = {"ort": "ort-transformers", "modelopt": "modelopt-autocast"}
INSTALL_MODELOPT = ("pip install 'nvidia-modelopt[onnx]' (its onnx extra pins older onnx/onnxruntime: a separate "
                    "environment is safest), or use --fp16-converter ort")
TIMESTEP_INPUT = "timestep"
_LINEAR = ("MatMul", "Gemm")


def timestep_embedding_nodes(model: onnx.ModelProto, input_name: str = TIMESTEP_INPUT) -> list[str]:
    """Names of the nodes between the timestep input and the first MatMul/Gemm (the sinusoid)."""
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    if input_name not in {i.name for i in model.graph.input}:
        return []
    blocked: list[str] = []
    seen: set[int] = set()
    queue = deque([input_name])
    while queue:
        for node in consumers.get(queue.popleft(), []):
            if id(node) in seen or node.op_type in _LINEAR:
                continue
            seen.add(id(node))
            if not node.name:
                raise MvgError("the exported graph has unnamed nodes; re-export it with mvg-rt export")
            blocked.append(node.name)
            queue.extend(node.output)
    # The frequencies are Constant nodes; the converter would round them to FP16 (an error of
    # t * 2^-11 * freq at t ~ 1000) and cast them back, so they are kept FP32 too.
    producers = {out: node for node in model.graph.node for out in node.output}
    by_name = {node.name: node for node in model.graph.node}
    constants = {producers[i].name for n in blocked for i in by_name[n].input
                 if i in producers and producers[i].op_type == "Constant"}
    return blocked + sorted(constants - set(blocked))


def collapse_fp16_round_trips(model: onnx.ModelProto) -> int:
    """Make ``Cast(to=float) <- Cast(to=float16) <- x`` read ``x`` directly; returns how many.

    The converter keeps blocked nodes in FP32 but routes every tensor between two
    blocked nodes through FP16 (it casts each blocked output down, and back up for
    the next blocked node), which would undo the block: t * freq would still be
    rounded to FP16. A round trip through FP16 never adds information, so skipping
    it is always at least as accurate.
    """
    producers = {out: node for node in model.graph.node for out in node.output}
    collapsed = 0
    for node in model.graph.node:
        if node.op_type != "Cast" or _cast_to(node) != onnx.TensorProto.FLOAT:
            continue
        parent = producers.get(node.input[0])
        if parent is not None and parent.op_type == "Cast" and _cast_to(parent) == onnx.TensorProto.FLOAT16:
            node.input[0] = parent.input[0]
            collapsed += 1
    return collapsed


def _cast_to(node: onnx.NodeProto) -> int | None:
    return next((a.i for a in node.attribute if a.name == "to"), None)


def convert_to_fp16(src: Path, dst: Path, keep_fp32_ops: tuple[str, ...] = KEEP_FP32_OPS,
                    keep_timestep_fp32: bool = True) -> Path:
    """Write an FP16 copy of the FP32 graph ``src`` to ``dst`` (float32 inputs/outputs)."""
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16
    from onnxruntime.transformers.onnx_model import OnnxModel

    from mvg_rt.export.onnx_export import infer_shapes, save_onnx

    model = onnx.load(str(src), load_external_data=True)
    nodes = timestep_embedding_nodes(model) if keep_timestep_fp32 else []
    converted = convert_float_to_float16(
        model,
        keep_io_types=True,
        op_block_list=list(DEFAULT_OP_BLOCK_LIST) + list(keep_fp32_ops),
        node_block_list=nodes,
        disable_shape_infer=True,  # the graph was shape-inferred at export; >2 GB inputs cannot be re-inferred in memory
    )
    collapse_fp16_round_trips(converted)
    wrapper = OnnxModel(converted)
    wrapper.prune_graph()  # drops the Casts the collapse left unused
    wrapper.topological_sort()  # the converter appends its Cast nodes at the end
    save_onnx(wrapper.model, dst)
    infer_shapes(dst)
    cleaned = onnx.load(str(dst), load_external_data=False)  # external weights (if any) stay where they are
    if remove_identity_casts(cleaned):
        onnx.save_model(cleaned, str(dst))
    return dst


def remove_identity_casts(model: onnx.ModelProto) -> int:
    """Drop Casts whose input already has the target type (left by the collapse); returns how many.

    Needs the graph's value_info (run shape inference first).
    """
    graph = model.graph
    types = {v.name: v.type.tensor_type.elem_type for v in list(graph.value_info) + list(graph.input)}
    types |= {t.name: t.data_type for t in graph.initializer}
    outputs = {o.name for o in graph.output}
    rename: dict[str, str] = {}
    keep = []
    for node in graph.node:
        node.input[:] = [rename.get(i, i) for i in node.input]
        if (node.op_type == "Cast" and node.output[0] not in outputs
                and types.get(node.input[0]) == _cast_to(node)):
            rename[node.output[0]] = node.input[0]
            continue
        keep.append(node)
    if not rename:
        return 0
    for output in graph.output:  # graph outputs are never renamed (see the condition above)
        assert output.name not in rename
    del graph.node[:]
    graph.node.extend(keep)
    stale = set(rename)
    kept_info = [v for v in graph.value_info if v.name not in stale]
    del graph.value_info[:]
    graph.value_info.extend(kept_info)
    return len(rename)


def require_modelopt() -> Any:
    """ModelOpt AutoCast's ``convert_to_mixed_precision``, or a one-line error that says how to install it."""
    try:
        from modelopt.onnx.autocast import convert_to_mixed_precision
    except ImportError as err:
        raise MvgError(f"--fp16-converter modelopt needs NVIDIA ModelOpt, which is not installed: "
                       f"{INSTALL_MODELOPT}") from err
    return convert_to_mixed_precision


def convert_with_modelopt(src: Path, dst: Path, reference_feeds: Mapping[str, np.ndarray] | None = None) -> Path:
    """Write ModelOpt AutoCast's FP16 copy of ``src`` to ``dst`` (float32 inputs/outputs).

    AutoCast runs the FP32 graph once on ``reference_feeds`` (random inputs when None,
    which a graph with dynamic axes cannot size) and keeps in FP32 the nodes whose values
    leave FP16's comfortable range (its ``data_max`` rule, 512) or whose initializers
    would overflow.
    """
    convert_to_mixed_precision = require_modelopt()
    from mvg_rt.export.onnx_export import infer_shapes, save_onnx

    with tempfile.TemporaryDirectory() as scratch:
        calibration = None
        if reference_feeds is not None:
            calibration = str(Path(scratch) / "feeds.npz")
            np.savez(calibration, **{k: np.asarray(v) for k, v in reference_feeds.items()})
        model = convert_to_mixed_precision(onnx_path=str(src), low_precision_type="fp16", keep_io_types=True,
                                           calibration_data=calibration)
    save_onnx(model, dst)
    infer_shapes(dst)
    return dst


def precision_census(path: Path) -> dict[str, Any]:
    """How many nodes compute in FP32 and FP16: nodes with a float output, by that output's type.

    Casts and Constants are not counted (they move data, they do not compute). Needs the
    graph's value_info (shape inference ran at export).
    """
    model = onnx.load(str(path), load_external_data=False)
    graph = model.graph
    types = {v.name: v.type.tensor_type.elem_type for v in list(graph.value_info) + list(graph.output)}
    counts = {"fp32_nodes": 0, "fp16_nodes": 0}
    for node in graph.node:
        if node.op_type in ("Cast", "Constant"):
            continue
        kinds = {types.get(o) for o in node.output}
        if onnx.TensorProto.FLOAT in kinds:
            counts["fp32_nodes"] += 1
        elif onnx.TensorProto.FLOAT16 in kinds:
            counts["fp16_nodes"] += 1
    counts["casts"] = sum(1 for n in graph.node if n.op_type == "Cast")
    return counts


def write_fp16(converter: str, src: Path, dst: Path, reference_feeds: Mapping[str, np.ndarray] | None = None
               ) -> dict[str, Any]:
    """Convert with ``converter`` (a key of :data:`FP16_CONVERTERS`); returns the manifest ``details``."""
    if converter not in FP16_CONVERTERS:
        raise MvgError(f"--fp16-converter must be one of {', '.join(FP16_CONVERTERS)} (got {converter!r})")
    if converter == "modelopt":
        convert_with_modelopt(src, dst, reference_feeds)
        details: dict[str, Any] = {"low_precision_type": "fp16", "data_max": 512}
    else:
        convert_to_fp16(src, dst)
        details = {"fp32_ops": list(KEEP_FP32_OPS), "fp32_timestep_embedding": True}
    return {"fp16_converter": FP16_CONVERTERS[converter], "keep_io_types": True, **details,
            **precision_census(dst)}
