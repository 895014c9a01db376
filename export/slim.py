"""Optional graph clean-up of an exported ONNX file with onnxslim.

onnxslim folds constants, removes dead/identity nodes, deduplicates shape
sub-graphs and fuses simple patterns; the tracer leaves many Shape/Gather/Concat
chains behind for dynamic axes. :func:`slim_onnx` rewrites the file in place and
returns node counts so the effect is recorded in the manifest.

Off by default (``mvg-rt export --slim`` turns it on): ONNX Runtime's own "all" graph
optimisations do the same clean-up at load time, so the outputs and the latency stay as they
were. Only FP32 graphs are slimmed (before the FP16 conversion: slimming an FP16 graph moved its
outputs), and graphs whose weights pass protobuf's 2 GB limit are skipped (onnxslim serialises
the whole graph). Measured: ``benchmarks/results/cpu-2core/onnxslim.md``.
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
