"""INT8 copies of exported FP32 denoiser graphs, by explicit quantization (Q/DQ).

ONNX Runtime's static quantizer (``onnxruntime.quantization.quantize_static``) inserts
QuantizeLinear/DequantizeLinear pairs around the inputs and weights of the Conv, MatMul
and Gemm nodes, with scales from a calibration run. The same Q/DQ graph is what every
backend runs: the ONNX Runtime CPU EP fuses the pairs into integer kernels, and TensorRT
10/11 build INT8 engines from it (explicit quantization; TensorRT 11 has no other INT8
path: its calibrator API and ``BuilderFlag.INT8`` are gone).

Choices, as TensorRT wants them: QDQ format, INT8 weights and activations, symmetric
(zero point 0: TensorRT only supports symmetric INT8), weights per output channel,
biases left in float (``QuantizeBias`` off: TensorRT's Q/DQ layers take INT8/FP8/INT4, not
the INT32 bias ONNX Runtime would write; TensorRT and the CPU EP fold the bias in anyway).
Only Conv/MatMul/Gemm are quantized: they carry the FLOPs; elementwise ops, Softmax and
the normalisations stay in the graph's precision.

Calibration feeds are the UNet inputs the real pipeline produces (recorded by
:mod:`mvg_rt.calibration` while PIE runs on calibration images and prompts): latents at
the img2img timesteps, with the CFG text pair, so the ranges are those seen at run time.
Ranges are min/max over all feeds (``CalibrationMethod.MinMax``). The calibrator holds
every feed's quantized-op inputs until the end (ONNX Runtime 1.32's
``CalibMaxIntermediateOutputs`` discards the batches it should merge, so it is not used):
memory grows with the number of feeds, about 1 GB per feed for the full SD 1.4 UNet at
256x256 with the CFG pair, so keep calibration sets modest.

Layers kept in FP32 (:data:`SENSITIVE`, default :data:`DEFAULT_KEEP`) were chosen by
measurement on the demo UNet and the full-size SD 1.4 UNet; ``benchmarks/int8.py``
re-measures every group and writes the table to ``benchmarks/results/``.

SEINE is not quantized: measured on the demo model (``benchmarks/int8.py``, part
``seine``), no FP32 keep set holds its clips near FP32's (a multistep sampler amplifies
the error of even a handful of INT8 layers), where FP16 does. Its node names follow the
UNet's, so the groups above select the same kinds of layer there.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from mvg_rt.errors import MvgError

QUANTIZED_OPS = ("Conv", "MatMul", "Gemm")

#: Node groups that may stay FP32, by node-name pattern (names as torch.onnx.export writes them).
SENSITIVE: dict[str, str] = {
    # the timestep MLP and every ResNet's time projection: t is spread over 0..999, one scale fits it badly
    "time_embedding": r"/time_embedding/|/time_emb_proj/",
    # the first and last convolutions: the input is the noisy latent, the output is the noise prediction itself
    "conv_in_out": r"/conv_in/|/conv_out/",
    # Q.K^T and softmax(.).V (spatial, cross and SEINE's temporal attention): both inputs are activations, the
    # scores span a wide range before the softmax
    "attention_scores": r"/attn(\d+|_temp)/MatMul(_\d+)?$",
    # the decoder's convolutions: their inputs concatenate the skip connections (encoder features of another
    # range) with the upsampled path, so one per-tensor scale fits neither; measured the most sensitive group
    "up_block_convs": r"/up_blocks\.\d+/.*/Conv$",
}
DEFAULT_KEEP = ("time_embedding", "conv_in_out", "up_block_convs")


def sensitive_nodes(model: onnx.ModelProto, groups: Iterable[str]) -> list[str]:
    """Names of the quantizable nodes in the given :data:`SENSITIVE` groups."""
    unknown = [g for g in groups if g not in SENSITIVE]
    if unknown:
        raise MvgError(f"unknown INT8 keep group(s) {', '.join(unknown)}: choose from {', '.join(SENSITIVE)}")
    patterns = [re.compile(SENSITIVE[g]) for g in groups]
    return [n.name for n in model.graph.node
            if n.op_type in QUANTIZED_OPS and any(p.search(n.name) for p in patterns)]


class FeedsReader:
    """An ``onnxruntime.quantization.CalibrationDataReader`` over recorded feeds (numpy, float32)."""

    def __init__(self, feeds: Iterable[Mapping[str, np.ndarray]], input_names: Iterable[str]) -> None:
        self.names = tuple(input_names)
        self._feeds: Iterator[Mapping[str, np.ndarray]] = iter(feeds)
        self.count = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        feed = next(self._feeds, None)
        if feed is None:
            return None
        self.count += 1
        return {name: np.ascontiguousarray(feed[name], dtype=np.float32) for name in self.names}

    def __iter__(self) -> FeedsReader:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        feed = self.get_next()
        if feed is None:
            raise StopIteration
        return feed


def quantize_int8(src: Path, dst: Path, feeds: Iterable[Mapping[str, np.ndarray]],
                  keep: Iterable[str] = DEFAULT_KEEP) -> dict[str, Any]:
    """Write the Q/DQ copy of the FP32 graph ``src`` to ``dst``; returns what to record in the manifest."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    from mvg_rt.export.onnx_export import external_data_of, infer_shapes

    keep = tuple(keep)
    graph = onnx.load(str(src), load_external_data=False)
    excluded = sensitive_nodes(graph, keep)
    inputs = [i.name for i in graph.graph.input]
    large = external_data_of(src) is not None
    del graph
    reader = FeedsReader(feeds, inputs)
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # the quantizer logs advice (pre-processing) through the root logger
    try:
        quantize_static(
            str(src), str(dst), reader, quant_format=QuantFormat.QDQ, op_types_to_quantize=list(QUANTIZED_OPS),
            per_channel=True, activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
            nodes_to_exclude=excluded, use_external_data_format=large, calibrate_method=CalibrationMethod.MinMax,
            extra_options={"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False},
        )
    except ValueError as err:
        if reader.count == 0:
            raise MvgError("INT8 calibration got no inputs: pass --calibration DIR with images, or leave it out "
                           "to calibrate on the demo phantoms") from err
        raise
    finally:
        root.setLevel(level)
    if reader.count == 0:
        raise MvgError("INT8 calibration got no inputs: pass --calibration DIR with images, or leave it out to "
                       "calibrate on the demo phantoms")
    infer_shapes(dst)
    quantized = onnx.load(str(dst), load_external_data=False)
    counts = {op: sum(1 for n in quantized.graph.node if n.op_type == op)
              for op in ("QuantizeLinear", "DequantizeLinear")}
    return {"quantizer": "onnxruntime.quantization.quantize_static", "format": "QDQ",
            "weights": "int8 symmetric per-channel", "activations": "int8 symmetric per-tensor",
            "calibration_method": "minmax", "calibration_feeds": reader.count, "quantized_ops": list(QUANTIZED_OPS),
            "fp32_groups": list(keep), "fp32_nodes": excluded, "qdq_nodes": counts}
