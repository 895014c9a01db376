"""INT8 by explicit quantization: export of the tiny UNet, checked by ``mvg-rt check``, run end to end on ORT CPU."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from PIL import Image

from mvg_rt.errors import MvgError
from mvg_rt.export.int8 import DEFAULT_KEEP, SENSITIVE, sensitive_nodes


@pytest.fixture(scope="module")
def int8_engines(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    """The tiny model's PIE networks with the INT8 UNet, through the CLI (calibrated on 1 demo phantom)."""
    from click.testing import CliRunner

    from mvg_rt.cli import cli

    out = tmp_path_factory.mktemp("int8") / "tiny"
    result = CliRunner().invoke(cli, ["export", "--model-dir", str(tiny_model_dir), "--out", str(out), "--no-seine",
                                      "--int8", "--calibration-count", "1"])
    assert result.exit_code == 0, result.output
    return out


def test_int8_artifact_is_a_qdq_graph_with_its_calibration_recorded(int8_engines: Path):
    manifest = json.loads((int8_engines / "manifest.json").read_text())
    (int8,) = [a for a in manifest["artifacts"] if a["precision"] == "int8"]
    assert int8["component"] == "unet" and int8["file"] == "unet/model_int8.onnx"
    d = int8["details"]
    assert d["format"] == "QDQ" and d["fp32_groups"] == list(DEFAULT_KEEP)
    assert d["calibration_feeds"] >= 10  # one PIE round's UNet calls
    assert d["calibration"]["images"].startswith("demo phantoms")
    fp32 = next(a for a in manifest["artifacts"] if a["component"] == "unet" and a["precision"] == "fp32")
    assert d["from_sha256"] == fp32["sha256"]
    graph = onnx.load(str(int8_engines / int8["file"]))
    ops = {n.op_type for n in graph.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    zero_points = [t for t in graph.graph.initializer if t.name.endswith("_zero_point")]
    assert zero_points and all(not onnx.numpy_helper.to_array(t).any() for t in zero_points)  # symmetric
    assert all(t.data_type == onnx.TensorProto.INT8 for t in zero_points)
    kept = set(d["fp32_nodes"])
    assert "/unet/conv_in/Conv" in kept and "/unet/time_embedding/linear_1/Gemm" in kept
    consumers = {i for n in graph.graph.node if n.name in kept for i in n.input}
    assert not any(name.endswith("_DequantizeLinear_Output") for name in consumers)  # kept nodes see float inputs


def test_sensitive_groups_match_the_exported_names(int8_engines: Path):
    graph = onnx.load(str(int8_engines / "unet" / "model.onnx"))
    assert set(sensitive_nodes(graph, ("conv_in_out",))) == {"/unet/conv_in/Conv", "/unet/conv_out/Conv"}
    scores = sensitive_nodes(graph, ("attention_scores",))
    assert scores and all(n.rsplit("/", 1)[1] in ("MatMul", "MatMul_1") for n in scores)
    assert all("/to_q/" not in n for n in scores)  # the projections (weights) are quantized
    assert len(sensitive_nodes(graph, tuple(SENSITIVE))) == len(set(sensitive_nodes(graph, tuple(SENSITIVE))))
    with pytest.raises(MvgError, match="unknown INT8 keep group"):
        sensitive_nodes(graph, ("softmax",))


def test_check_passes_at_int8_tolerances(int8_engines: Path, run_cli, tmp_path: Path):
    code, out, err = run_cli(["check", "--engines", str(int8_engines), "--precision", "int8", "--json",
                              str(tmp_path / "check.json")])
    assert code == 0, out + err
    report = json.loads((tmp_path / "check.json").read_text())
    assert {r["component"] for r in report["components"]} == {"unet"}  # the networks INT8 does not touch run fp32
    assert report["end_to_end"] and all(r["passed"] for r in report["end_to_end"])


def test_simulate_int8_on_ort_cpu(int8_engines: Path, run_cli, tmp_path: Path, image_64: np.ndarray):
    Image.fromarray(image_64).save(tmp_path / "xray.png")
    out = tmp_path / "run"
    code, _, err = run_cli(["simulate", "--backend", "ort", "--precision", "int8", "--engines", str(int8_engines),
                            "--image", str(tmp_path / "xray.png"), "--prompt", "severe cardiomegaly", "--no-transition",
                            "--rounds", "2", "--steps", "4", "--strength", "0.5", "--out", str(out)])
    assert code == 0, err
    assert len(list((out / "states").iterdir())) == 3
    backend = json.loads((out / "run.json").read_text())["backend"]
    assert backend["precision"] == "int8"
    assert backend["artifacts"] == {"text_encoder": "fp32", "vae_encoder": "fp32", "vae_decoder": "fp32",
                                    "unet": "int8"}


def test_int8_without_an_int8_graph_is_one_line(tiny_engines: Path, run_cli, tmp_path: Path, image_64: np.ndarray):
    Image.fromarray(image_64).save(tmp_path / "xray.png")
    base = ["--image", str(tmp_path / "xray.png"), "--prompt", "x", "--no-transition", "--rounds", "1", "--steps",
            "2", "--strength", "0.5"]
    code, _, err = run_cli(["simulate", "--backend", "ort", "--precision", "int8", "--engines", str(tiny_engines),
                            *base, "--out", str(tmp_path / "a")])
    assert code == 2 and "has no INT8 graph: re-export it with --int8" in err and len(err.strip().splitlines()) == 1
    code, _, err = run_cli(["simulate", "--precision", "int8", *base, "--out", str(tmp_path / "b")])
    assert code == 2 and "--precision int8 runs the Q/DQ UNet of mvg-rt export --int8" in err
    code, _, err = run_cli(["check", "--engines", str(tiny_engines), "--precision", "int8"])
    assert code == 2 and "has no int8 onnx artifacts: re-export it with --int8" in err


def test_export_int8_option_errors(tiny_model_dir: Path, run_cli, tmp_path: Path):
    (tmp_path / "empty").mkdir()
    code, _, err = run_cli(["export", "--model-dir", str(tiny_model_dir), "--out", str(tmp_path / "e"), "--no-seine",
                            "--int8", "--calibration", str(tmp_path / "empty")])
    assert code == 2 and "has no images" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "e").exists()


def test_modelopt_converter_without_modelopt_is_one_line(tiny_model_dir: Path, run_cli, tmp_path: Path):
    """Real: ModelOpt is not installed in this environment (its onnx extra pins older onnx/onnxruntime)."""
    try:
        import modelopt.onnx.autocast  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("nvidia-modelopt is installed here: the missing-ModelOpt message cannot be observed")
    code, _, err = run_cli(["export", "--model-dir", str(tiny_model_dir), "--out", str(tmp_path / "m"), "--no-seine",
                            "--fp16", "--fp16-converter", "modelopt"])
    assert code == 2 and "--fp16-converter modelopt needs NVIDIA ModelOpt, which is not installed" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "m").exists()


def test_fp16_artifacts_record_their_converter(tiny_engines: Path):
    manifest = json.loads((tiny_engines / "manifest.json").read_text())
    fp16 = [a for a in manifest["artifacts"] if a["precision"] == "fp16"]
    assert fp16 and all(a["details"]["fp16_converter"] == "ort-transformers" for a in fp16)
    unet = next(a for a in fp16 if a["component"] == "unet")
    assert unet["details"]["fp32_nodes"] > 0 and unet["details"]["fp16_nodes"] > unet["details"]["fp32_nodes"]
