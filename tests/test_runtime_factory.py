"""``open_runtime``: the one way every job opens a backend, on each backend this machine has."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mvg_rt.components import SEINE, UNET
from mvg_rt.errors import MvgError
from mvg_rt.runtime.factory import RuntimeSpec, open_runtime, without_paths


def _unet_feeds() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return torch.randn(2, 4, 8, 8), torch.full((2,), 500.0), torch.randn(2, 77, 32)


def test_torch_and_ort_open_from_one_spec_type_and_agree(tiny_model_dir: Path, tiny_engines: Path):
    with open_runtime(RuntimeSpec(model_dir=tiny_model_dir)) as reference, \
            open_runtime(RuntimeSpec(backend="ort", engines_dir=tiny_engines)) as ort:
        assert reference.backend.name == "torch" and ort.backend.name == "ort"
        assert reference.spec.is_reference and not ort.spec.is_reference
        assert {UNET.name, SEINE.name} <= reference.backend.components <= ort.backend.components
        feeds = _unet_feeds()
        assert torch.allclose(reference.backend.predict_noise(*feeds), ort.backend.predict_noise(*feeds), atol=1e-4)
        assert ort.describe(record_paths=True)["spec"]["engines_dir"] == str(tiny_engines)
        assert str(tiny_engines) not in json.dumps(ort.describe())  # run.json's without --record-paths
        assert str(tiny_engines) not in json.dumps(without_paths(ort.provenance))
        assert without_paths(ort.provenance)["model_dir_sha256"] == ort.provenance["model_dir_sha256"]
        assert ort.provenance["model_dir_sha256"] == reference.provenance["model_dir_sha256"]  # same source
        assert not ort.graphed_loops
        policy = reference.describe()["precision_policy"]  # recorded in run.json: FP32 means FP32
        assert policy["tf32"] is False and policy["cudnn_allow_tf32"] is False


def test_runtime_closes_its_backend(tiny_engines: Path):
    with open_runtime(RuntimeSpec(backend="ort", engines_dir=tiny_engines)) as runtime:
        runtime.backend.predict_noise(*_unet_feeds())
        assert runtime.backend.sessions
    assert not runtime.backend.sessions  # sessions released on exit


def test_without_seine_the_torch_runtime_loads_no_seine(tiny_model_dir: Path):
    with open_runtime(RuntimeSpec(model_dir=tiny_model_dir, with_seine=False)) as runtime:
        assert SEINE.name not in runtime.backend.components
        with pytest.raises(MvgError, match="has no seine component"):
            runtime.backend.require(SEINE)


@pytest.mark.parametrize("spec, words", [
    (RuntimeSpec(backend="tpu"), "--backend tpu is not known"),
    (RuntimeSpec(device="tpu", model_dir=Path("m")), "--device tpu is not supported"),
    (RuntimeSpec(), "--backend torch needs --model-dir"),
    (RuntimeSpec(unet_dir=Path("u")), "--unet needs --model-dir"),
    (RuntimeSpec(backend="ort"), "--backend ort needs --engines"),
    (RuntimeSpec(model_dir=Path("m"), engines_dir=Path("e")), "--engines is read by --backend ort/trt"),
    (RuntimeSpec(model_dir=Path("m"), precision="fp16"), "runs on a GPU"),
    (RuntimeSpec(model_dir=Path("m"), cuda_graphs=True), "--cuda-graphs needs a CUDA device"),
    (RuntimeSpec(model_dir=Path("m"), tf32=True), "--tf32 needs a CUDA device"),
    (RuntimeSpec(backend="trt", engines_dir=Path("e")), "--backend trt runs TensorRT engines on an NVIDIA GPU"),
    (RuntimeSpec(backend="trt", engines_dir=Path("e"), low_memory=True),
     "--backend trt runs TensorRT engines on an NVIDIA GPU"),
    (RuntimeSpec(model_dir=Path("m"), low_memory=True), "--low-memory loads TensorRT engines one stage at a time; "
     "it applies to --backend trt: drop it or use --backend trt"),
    (RuntimeSpec(model_dir=Path("m"), device="cuda", precision="fp16", low_memory=True), "applies to --backend trt"),
    (RuntimeSpec(backend="ort", engines_dir=Path("e"), device="cuda", low_memory=True), "applies to --backend trt"),
])
def test_impossible_specs_are_refused_in_one_line_before_loading(spec: RuntimeSpec, words: str):
    with pytest.raises(MvgError, match=words) as err:
        open_runtime(spec)
    assert "\n" not in str(err.value)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_cuda_without_a_gpu_is_refused(tiny_model_dir: Path):
    with pytest.raises(MvgError, match="no CUDA device is visible"):
        open_runtime(RuntimeSpec(model_dir=tiny_model_dir, device="cuda"))


def test_spec_labels_and_json():
    spec = RuntimeSpec(backend="trt", device="cuda", precision="fp16", cuda_graphs=True, engines_dir="engines/x")
    assert spec.label == "trt+cudagraph fp16" and isinstance(spec.engines_dir, Path)
    assert RuntimeSpec(**{k: v for k, v in spec.to_dict().items()}) == spec  # JSON round trip


def test_an_engines_folder_whose_seine_predicts_an_unknown_type_is_refused_in_one_line(tiny_engines: Path,
                                                                                        tmp_path: Path, run_cli):
    """The transition tables are folded for the manifest's prediction_type: an unknown one is a damaged or
    foreign folder, refused before any work with the fix, not a ValueError from the sampler."""
    import shutil

    engines = tmp_path / "engines"
    shutil.copytree(tiny_engines, engines)
    manifest = json.loads((engines / "manifest.json").read_text())
    manifest["model"]["seine_config"] = (manifest["model"].get("seine_config") or {}) | {"prediction_type": "sample"}
    (engines / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(MvgError, match="predicts 'sample', which is none of epsilon, v_prediction; re-export"):
        open_runtime(RuntimeSpec(backend="ort", engines_dir=engines))
    code, _, err = run_cli(["simulate", "--backend", "ort", "--engines", str(engines), "--rounds", "1", "--steps", "2",
                            "--out", str(tmp_path / "run")])
    assert code == 2 and len(err.strip().splitlines()) == 1 and "re-export" in err, err
    assert not (tmp_path / "run").exists()
