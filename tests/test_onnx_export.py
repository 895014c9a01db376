"""``mvg-rt export``: every component to ONNX (FP32 and FP16), the manifest, FP16 policy, slim, large graphs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from mvg_rt.components import COMPONENTS
from mvg_rt.errors import MvgError
from mvg_rt.artifacts.manifest import FORMAT_VERSION, Manifest
from mvg_rt.models.provenance import check_source

ALL = ("text_encoder", "vae_encoder", "vae_decoder", "unet", "seine")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def manifest(tiny_engines: Path) -> Manifest:
    return Manifest.read(tiny_engines)


@pytest.fixture(scope="module")
def reference_modules(tiny_models, tiny_seine_checkpoint, manifest):
    from mvg_rt.export.export_job import load_seine
    from mvg_rt.models.component_modules import component_modules
    from mvg_rt.models.seine_unet import SeineConfig

    seine = load_seine(tiny_seine_checkpoint, SeineConfig.from_dict(manifest.model.seine_config))
    return component_modules(tiny_models, seine)


def test_manifest_describes_every_artifact(tiny_engines: Path, tiny_model_dir: Path, manifest: Manifest):
    data = json.loads((tiny_engines / "manifest.json").read_text())
    assert data["format_version"] == FORMAT_VERSION
    assert {(a.component, a.precision) for a in manifest.artifacts} == {(c, p) for c in ALL for p in ("fp32", "fp16")}
    assert manifest.model.text_hidden == 32 and manifest.model.resolution == 64
    assert manifest.model.vae_scaling_factor == pytest.approx(0.18215) and manifest.model.latent_channels == 4
    assert manifest.source.model_dir_sha256 and manifest.source.seine_sha256 and manifest.versions["onnxruntime"]
    check_source(manifest, model_dir=tiny_model_dir)  # the same folder: accepted
    for artifact in manifest.artifacts:
        spec = COMPONENTS[artifact.component]
        assert artifact.kind == "onnx" and artifact.opset == 18 and artifact.external_data is None
        assert manifest.verify(artifact).is_file()
        assert [d.name for d in artifact.inputs] == list(spec.input_names)
        assert [d.name for d in artifact.outputs] == list(spec.output_names)
        for decl, tensor in zip(artifact.inputs + artifact.outputs, spec.inputs + spec.outputs):
            expected = [32 if a == "hidden" else a for a in tensor.axes]
            assert decl.shape == expected, (artifact.component, decl.name)
            assert decl.dtype == ("int64" if tensor.dtype == torch.int64 else "float32")  # FP16 keeps float32 I/O
    assert manifest.find("unet", "onnx", "fp16").file == "unet/model_fp16.onnx"
    assert manifest.find("unet", "trt", "fp16") is None
    assert (tiny_engines / "tokenizer").is_dir() and (tiny_engines / "scheduler" / "scheduler_config.json").is_file()
    assert not [p for p in tiny_engines.parent.iterdir() if p.name.startswith(".")]  # no staging folder left


def test_fp16_graphs_are_valid_with_fp16_weights_and_fp32_islands(tiny_engines: Path, manifest: Manifest):
    for name in ALL:
        path = tiny_engines / manifest.find(name, "onnx", "fp16").file
        onnx.checker.check_model(str(path), full_check=True)
        model = onnx.load(str(path))
        weights = {t.name: t for t in model.graph.initializer}
        big = [t for t in weights.values() if np.prod(t.dims) >= 64]  # weight tensors, not shape constants
        assert big and sum(t.data_type == onnx.TensorProto.FLOAT16 for t in big) / len(big) > 0.8, name
        types = {v.name: v.type.tensor_type.elem_type for v in list(model.graph.value_info) + list(model.graph.input)}
        for node in model.graph.node:
            if node.op_type in ("InstanceNormalization", "LayerNormalization"):
                assert types.get(node.input[0]) == onnx.TensorProto.FLOAT, (name, node.name)
    # The timestep sinusoid is computed in FP32 end to end: Sin/Cos read the Mul directly, no FP16 round trip.
    unet = onnx.load(str(tiny_engines / "unet" / "model_fp16.onnx"))
    producers = {o: n for n in unet.graph.node for o in n.output}
    for node in unet.graph.node:
        if node.op_type in ("Sin", "Cos"):
            assert producers[node.input[0]].op_type == "Mul", node.name


def _fp16_cases(name: str, generator: torch.Generator) -> tuple[torch.Tensor, ...]:
    randn = lambda *s: torch.randn(s, generator=generator)  # noqa: E731
    return {
        "text_encoder": lambda: (torch.randint(0, 400, (1, 77), generator=generator),),
        "vae_encoder": lambda: (randn(1, 3, 32, 32).clamp(-1, 1),),
        "vae_decoder": lambda: (randn(1, 4, 4, 4),),
        "unet": lambda: (randn(2, 4, 8, 8), torch.tensor([999.0, 1.0]), randn(2, 77, 32)),
        "seine": lambda: (randn(1, 9, 3, 4, 4), torch.tensor([999.0]), randn(1, 77, 32)),
    }[name]()


def test_fp16_numerics_op_by_op_and_on_onnxruntime_cpu(tiny_engines: Path, manifest: Manifest, reference_modules):
    """FP16 graphs against the PyTorch FP32 modules, two ways on a CPU:

    onnx.reference evaluates op by op in FP16 (every tensor rounded to FP16, products accumulated in
    FP32, as GPU kernels do): the honest FP16 numerics. ONNX Runtime's CPU EP also runs these graphs
    (it computes the FP16 ops it has no FP16 kernel for in FP32, so its errors are smaller).
    Tolerance: max abs <= 2e-2 * max(1, max|ref|) and cosine >= 0.9999.
    """
    import onnxruntime as ort
    from onnx.reference import ReferenceEvaluator

    generator = torch.Generator().manual_seed(3)
    for name in ALL:
        path = tiny_engines / manifest.find(name, "onnx", "fp16").file
        inputs = _fp16_cases(name, generator)
        with torch.no_grad():
            reference = reference_modules[name](*inputs).numpy()
        feeds = {n: x.numpy() for n, x in zip(COMPONENTS[name].input_names, inputs)}
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        for engine, output in (("onnx.reference", ReferenceEvaluator(str(path)).run(None, feeds)[0]),
                               ("onnxruntime", session.run(None, feeds)[0])):
            assert output.dtype == np.float32
            err = float(np.abs(output - reference).max())
            cosine = float((output * reference).sum() / np.sqrt((output**2).sum() * (reference**2).sum()))
            assert err <= 2e-2 * max(1.0, float(np.abs(reference).max())), (name, engine, err)
            assert cosine >= 0.9999, (name, engine, cosine)


def test_slim_shrinks_the_graph_and_keeps_its_outputs(tiny_engines: Path, tmp_path: Path):
    import onnxruntime as ort

    from mvg_rt.export.slim import slim_onnx

    path = tmp_path / "model.onnx"
    shutil.copy(tiny_engines / "vae_decoder" / "model.onnx", path)
    feeds = {"latents": np.random.default_rng(0).standard_normal((1, 4, 6, 10), dtype=np.float32)}
    before = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    stats = slim_onnx(path)
    after = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    assert stats["nodes_after"] < 0.7 * stats["nodes_before"]
    np.testing.assert_allclose(after, before, atol=1e-5)


def test_large_graphs_keep_weights_in_one_external_file(tiny_model_dir: Path, tmp_path: Path, monkeypatch):
    """Above the protobuf limit the weights go to <file>.data; the manifest hashes both files."""
    import onnxruntime as ort

    from mvg_rt.export import onnx_export
    from mvg_rt.export.export_job import ExportRequest, export_engines

    monkeypatch.setattr(onnx_export, "EXTERNAL_THRESHOLD", 0)  # treat the tiny text encoder as "large"
    manifest = export_engines(ExportRequest(model_dir=tiny_model_dir, out=tmp_path / "eng", slim=False,
                                            components=("text_encoder",)))
    artifact = manifest.require("text_encoder")
    assert artifact.external_data == "text_encoder/model.onnx.data" and artifact.external_data_sha256
    assert (tmp_path / "eng" / artifact.external_data).stat().st_size > (tmp_path / "eng" / artifact.file).stat().st_size
    session = ort.InferenceSession(str(tmp_path / "eng" / artifact.file), providers=["CPUExecutionProvider"])
    assert session.run(None, {"input_ids": np.zeros((1, 77), np.int64)})[0].shape == (1, 77, 32)
    # A changed external weights file is caught like a changed graph.
    with open(tmp_path / "eng" / artifact.external_data, "r+b") as handle:
        handle.write(b"\0\0\0\0")
    with pytest.raises(MvgError, match="model.onnx.data changed since export"):
        Manifest.read(tmp_path / "eng").verify(artifact)


def test_failed_export_leaves_nothing_behind(tiny_model_dir: Path, tmp_path: Path, monkeypatch):
    from mvg_rt.export import export_job

    def broken(*args, **kwargs):
        raise MvgError("simulated export failure")

    monkeypatch.setattr(export_job, "export_component", broken)
    with pytest.raises(MvgError, match="simulated"):
        export_job.export_engines(export_job.ExportRequest(model_dir=tiny_model_dir, out=tmp_path / "eng"))
    assert list(tmp_path.iterdir()) == []


def test_export_cli_bad_input_is_one_line(tmp_path: Path, tiny_model_dir: Path, capsys):
    from mvg_rt.cli import main

    cases = [
        (["export", "--model-dir", str(tmp_path / "nope"), "--out", str(tmp_path / "e")], "does not exist"),
        (["export", "--model-dir", str(tiny_model_dir), "--out", str(tmp_path / "e"), "--opset", "12"], "too old"),
        (["export", "--model-dir", str(tiny_model_dir), "--out", str(tmp_path / "e"), "--seine",
          str(tmp_path / "missing.pt")], "does not exist"),
    ]
    for args, message in cases:
        with pytest.raises(SystemExit) as exit_:
            main(args)
        err = capsys.readouterr().err
        assert exit_.value.code == 2 and message in err and "Traceback" not in err, (args, err)
        assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "e").exists()


@pytest.mark.slow
def test_dynamo_exporter_gives_the_same_contract(tiny_models, tmp_path: Path):
    """The alternative exporter (torch.onnx.export dynamo=True): same names, named axes, same numbers."""
    import onnxruntime as ort

    from mvg_rt.export.onnx_export import example_inputs, export_component, graph_io
    from mvg_rt.models.component_modules import component_modules

    spec = COMPONENTS["vae_decoder"]
    module = component_modules(tiny_models)["vae_decoder"]
    dims = {"batch": 2, "latent_height": 8, "latent_width": 10}
    path = export_component(module, spec, example_inputs(spec, dims, 32, 100), tmp_path / "m.onnx", exporter="dynamo",
                            hidden=32)
    inputs, outputs = graph_io(path)
    assert inputs[0]["shape"] == ["batch", 4, "latent_height", "latent_width"]
    assert outputs[0]["shape"] == ["batch", 3, "height", "width"]  # not 8*latent_height
    latents = torch.randn(1, 4, 6, 12)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        expected = module(latents).numpy()
    np.testing.assert_allclose(session.run(None, {"latents": latents.numpy()})[0], expected, atol=1e-4)


def test_seine_checkpoint_defaults_to_the_model_folder(tiny_model_dir: Path, tmp_path: Path):
    from mvg_rt.export.export_job import ExportRequest, seine_checkpoint

    folder_default = tiny_model_dir / "seine" / "seine.safetensors"
    assert seine_checkpoint(ExportRequest(model_dir=tiny_model_dir, out=tmp_path / "e")) == folder_default
    assert seine_checkpoint(ExportRequest(model_dir=tiny_model_dir, out=tmp_path / "e", with_seine=False)) is None
    assert seine_checkpoint(ExportRequest(model_dir=tiny_model_dir, out=tmp_path / "e", components=("unet",))) is None
    with pytest.raises(MvgError, match="contradict"):
        ExportRequest(model_dir=tiny_model_dir, out=tmp_path / "e", seine=folder_default, with_seine=False)
