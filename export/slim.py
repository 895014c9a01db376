"""Optional graph clean-up of an exported ONNX file with onnxslim.

onnxslim folds constants, removes dead/identity nodes, deduplicates shape
sub-graphs and fuses simple patterns; the tracer leaves many Shape/Gather/Concat
chains behind for dynamic axes. :func:`slim_onnx` rewrites the file in place and
returns node counts so the effect is recorded in the manifest.

Measured, and why it is off by default (``mvg-rt export --slim`` turns it on):

* tiny models: node counts drop 45-57% (UNet 1256 -> 580, SEINE 4563 -> 2032),
  outputs unchanged (<= 1e-5), export time +14 s for SEINE;
* full-size SD UNet (FP16 graph, 1.7 GB): 4948 -> 2223 nodes in 122 s; ONNX
  Runtime CPU latency 5.67 s vs 5.76 s (within run-to-run noise): ONNX Runtime's
  own "all" graph optimisations do the same clean-up at load time. Slimming an FP16
  graph also moved its outputs by 1.7e-3, so only FP32 graphs are slimmed (before
  the FP16 conversion);
* graphs whose weights pass protobuf's 2 GB limit (the full SD UNet in FP32) are
  skipped: onnxslim serialises the whole graph and fails ("Failed to serialize
  proto", after 42 s at 11 GB peak memory).
"""

from __future__ import annotations

import logging
from pathlib import Path

import onnx


def node_count(model: onnx.ModelProto) -> int:
    return len(model.graph.node)


def slim_onnx(path: Path) -> dict[str, int | str]:
    """Slim ``path`` in place; returns {"nodes_before", "nodes_after"} (and "skipped": why, if it was)."""
    import onnxslim

    from mvg_rt.export.onnx_export import EXTERNAL_THRESHOLD, infer_shapes, save_onnx, weights_bytes

    header = onnx.load(str(path), load_external_data=False)
    if weights_bytes(header) >= EXTERNAL_THRESHOLD:
        count = node_count(header)
        return {"nodes_before": count, "nodes_after": count, "skipped": "graph over 2 GB"}
    model = onnx.load(str(path), load_external_data=True)
    before = node_count(model)
    logging.getLogger("onnxslim").setLevel(logging.ERROR)
    slimmed = onnxslim.slim(model)
    if slimmed is None:  # onnxslim returns None when it had nothing to write
        return {"nodes_before": before, "nodes_after": before}
    save_onnx(slimmed, path)
    infer_shapes(path)
    return {"nodes_before": before, "nodes_after": node_count(slimmed)}
