"""TensorRT entries in the manifest and the checks that refuse stale or foreign engines.

The ``.plan`` files here are placeholder bytes: every check under test reads the
manifest and file hashes, never the engine's content (deserializing one needs a GPU;
that is in test_gpu.py).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from mvg_rt.errors import MvgError
from mvg_rt.artifacts.hashing import HashCache
from mvg_rt.artifacts.manifest import Manifest
from mvg_rt.artifacts.profiles import ProfileSettings, profiles_for
from mvg_rt.export.tensorrt_build import BuildSettings
from mvg_rt.artifacts.tensorrt import (TrtEnvironment, check_engine, format_stage_memory, io_bytes, plan_path,
                                         rebuild_command, stage_memory, trt_artifact)

HERE = TrtEnvironment("10.3.0", "NVIDIA RTX 4090", "8.9")
SETTINGS = BuildSettings(profile=ProfileSettings(resolutions=((64, 64), (32, 96)), frames=(16, 5)))


def _with_engines(tiny_engines: Path, tmp_path: Path, components=("unet", "vae_decoder", "text_encoder",
                                                                   "vae_encoder", "seine")) -> Path:
    root = tmp_path / "engines"
    shutil.copytree(tiny_engines, root)
    manifest = Manifest.read(root)
    inputs = {c: [(d.name, d.shape) for d in manifest.require(c, "onnx", "fp16").inputs] for c in components}
    profiles = profiles_for(SETTINGS.profile, inputs, manifest.model.vae_scale_factor)
    hashes = HashCache(root)
    for component in components:
        plan = root / plan_path(component, "fp16")
        plan.write_bytes(f"placeholder engine of {component}".encode() * 100)
        details = {"device_memory_bytes": 3 << 20, "settings": SETTINGS.recorded()}
        manifest.add(trt_artifact(root, component, "fp16", plan, manifest.require(component, "onnx", "fp16"),
                                  profiles[component], HERE, details, hashes))
    hashes.save()
    manifest.write(root)
    return root


def test_trt_entries_round_trip_with_what_an_engine_needs(tiny_engines: Path, tmp_path: Path):
    root = _with_engines(tiny_engines, tmp_path)
    manifest = Manifest.read(root)
    unet = manifest.require("unet", "trt", "fp16")
    onnx = manifest.require("unet", "onnx", "fp16")
    assert unet.file == "unet/engine_fp16.plan" and unet.kind == "trt"
    d = unet.details
    assert (d["tensorrt_version"], d["gpu"], d["compute_capability"]) == ("10.3.0", "NVIDIA RTX 4090", "8.9")
    assert d["onnx_sha256"] == onnx.sha256 and d["onnx_file"] == onnx.file
    assert d["profiles"]["sample"] == {"min": [1, 4, 4, 8], "opt": [2, 4, 8, 8], "max": [2, 4, 8, 12]}
    assert unet.axes["latent_width"].min == 8 and unet.axes["latent_width"].max == 12
    assert unet.axes["latent_width"].multiple_of == 2  # kept from the ONNX graph's constraints
    assert [t.name for t in unet.inputs] == ["sample", "timestep", "encoder_hidden_states"]
    check_engine(manifest, unet, HERE)  # same TensorRT, same GPU, same ONNX: accepted
    assert manifest.verify(unet) == root / "unet" / "engine_fp16.plan"


@pytest.mark.parametrize("environment, message", [
    (TrtEnvironment("10.5.0", "NVIDIA RTX 4090", "8.9"),
     "was built with TensorRT 10.3.0, this is TensorRT 10.5.0"),
    (TrtEnvironment("11.4.0.106", "NVIDIA RTX 4090", "8.9"),
     ("was built with TensorRT 10.3.0 (major 10), this is TensorRT 11.4.0.106 (major 11); engines never load across "
     "TensorRT majors: rebuild it")),
    (TrtEnvironment("10.3.0", "NVIDIA A100-SXM4-80GB", "8.0"),
     "was built for NVIDIA RTX 4090 (compute capability 8.9), this GPU is NVIDIA A100-SXM4-80GB (8.0)"),
    (TrtEnvironment("10.3.0", "NVIDIA RTX 4080", "8.9"),  # same architecture, other GPU: still refused
     "was built for NVIDIA RTX 4090 (compute capability 8.9), this GPU is NVIDIA RTX 4080 (8.9)"),
])
def test_foreign_engines_are_refused_with_the_rebuild_command(tiny_engines, tmp_path, environment, message):
    root = _with_engines(tiny_engines, tmp_path, ("unet",))
    manifest = Manifest.read(root)
    with pytest.raises(MvgError) as err:
        check_engine(manifest, manifest.require("unet", "trt", "fp16"), environment)
    text = str(err.value)
    assert message in text and "\n" not in text
    assert text.endswith(f"rebuild it: mvg-rt build --engines {root} --precision fp16 --resolution 64x64 "
                         "--resolution 32x96 --frames 16 --frames 5")


def test_engine_from_a_changed_onnx_is_refused(tiny_engines: Path, tmp_path: Path):
    root = _with_engines(tiny_engines, tmp_path, ("unet",))
    # 1. re-exported since the build: the manifest's ONNX hash is not the one the engine records
    data = json.loads((root / "manifest.json").read_text())
    original = json.dumps(data)
    for a in data["artifacts"]:
        if a["component"] == "unet" and a["kind"] == "onnx" and a["precision"] == "fp16":
            a["sha256"] = "0" * 64
    (root / "manifest.json").write_text(json.dumps(data))
    manifest = Manifest.read(root)
    with pytest.raises(MvgError, match=r"was built from a different unet/model_fp16.onnx \(the ONNX graph was "
                                       r"re-exported since\); rebuild it: mvg-rt build"):
        check_engine(manifest, manifest.require("unet", "trt", "fp16"), HERE)
    # 2. the ONNX file edited on disk after the build
    (root / "manifest.json").write_text(original)
    with open(root / "unet" / "model_fp16.onnx", "ab") as handle:
        handle.write(b"\0")
    manifest = Manifest.read(root)
    with pytest.raises(MvgError, match=r"which changed on disk since \(sha256 differs\)"):
        check_engine(manifest, manifest.require("unet", "trt", "fp16"), HERE)
    # 3. the ONNX entry gone from the manifest
    data = json.loads(original)
    data["artifacts"] = [a for a in data["artifacts"] if not (a["kind"] == "onnx" and a["component"] == "unet")]
    (root / "manifest.json").write_text(json.dumps(data))
    manifest = Manifest.read(root)
    with pytest.raises(MvgError, match="which the manifest no longer lists"):
        check_engine(manifest, manifest.require("unet", "trt", "fp16"), HERE)


def test_missing_or_edited_plan_files_say_rebuild(tiny_engines: Path, tmp_path: Path):
    root = _with_engines(tiny_engines, tmp_path, ("unet",))
    manifest = Manifest.read(root)
    unet = manifest.require("unet", "trt", "fp16")
    with open(root / unet.file, "ab") as handle:
        handle.write(b"\0")
    with pytest.raises(MvgError, match=r"unet file unet/engine_fp16.plan changed since export .*; rebuild it "
                                       r"\(mvg-rt build --engines DIR"):
        manifest.verify(unet)
    (root / unet.file).unlink()
    with pytest.raises(MvgError, match="is missing; rebuild it"):
        manifest.verify(unet)
    with pytest.raises(MvgError, match="has no fp32 trt artifact for unet .*: rebuild it"):
        manifest.require("unet", "trt", "fp32")


def test_memory_per_stage_from_the_manifest(tiny_engines: Path, tmp_path: Path):
    root = _with_engines(tiny_engines, tmp_path)
    manifest = Manifest.read(root)
    engines = {a.component: a for a in manifest.artifacts if a.kind == "trt"}
    # unet I/O at the max profile: sample (2,4,8,12) + timestep (2,) + text (2,77,32) in, noise (2,4,8,12) out
    assert io_bytes(engines["unet"]) == 4 * (2 * 4 * 8 * 12 * 2 + 2 + 2 * 77 * 32)
    rows = {r.stage: r for r in stage_memory(engines)}
    assert rows["PIE: rounds"].components == ("vae_encoder", "unet", "vae_decoder")
    assert rows["transitions: clips"].components == ("vae_encoder", "seine", "vae_decoder")
    assert rows["PIE: rounds"].activation_bytes == 3 * (3 << 20)
    assert rows["PIE: prompt"].weights_bytes == engines["text_encoder"].size
    table = format_stage_memory(rows.values())
    assert "estimated" in table and "transitions: clips" in table


def test_rebuild_command_without_an_artifact():
    assert rebuild_command("engines/sd14", precision="fp32") == "mvg-rt build --engines engines/sd14 --precision fp32"


def test_weakly_typed_engine_on_tensorrt_11_asks_for_the_fp16_graph_first(tiny_engines: Path, tmp_path: Path):
    """A TensorRT 10 engine built with the FP16 flag cannot be rebuilt as is by TensorRT 11 (no weak typing)."""
    root = _with_engines(tiny_engines, tmp_path, ("unet",))
    manifest = Manifest.read(root)
    engine = manifest.require("unet", "trt", "fp16")
    engine.details |= {"strongly_typed": False, "onnx_precision": "fp32"}
    with pytest.raises(MvgError) as err:
        check_engine(manifest, engine, TrtEnvironment("11.0.0", "NVIDIA RTX 4090", "8.9"), verify_onnx=False)
    text = str(err.value)
    assert "(major 10), this is TensorRT 11.0.0 (major 11)" in text and "\n" not in text
    assert "re-export with mvg-rt export --fp16 (TensorRT 11 builds only strongly typed networks" in text
    assert text.endswith("rebuild it: mvg-rt build --engines " + str(root) + " --precision fp16 --resolution 64x64 "
                         "--resolution 32x96 --frames 16 --frames 5")
    # the other way round (an 11 engine on a Jetson's TensorRT 10) is refused the same way, without the FP16 step
    engine.details |= {"tensorrt_version": "11.4.0", "strongly_typed": True}
    with pytest.raises(MvgError, match=r"\(major 11\), this is TensorRT 10.3.0 \(major 10\); engines never load "
                                       r"across TensorRT majors: rebuild it"):
        check_engine(manifest, engine, HERE, verify_onnx=False)


def test_int8_runs_fall_back_per_kind(tiny_engines: Path, tmp_path: Path):
    """--precision int8 finds the INT8 artifact where there is one, else fp32 graphs (ort) / fp16 engines (trt)."""
    root = _with_engines(tiny_engines, tmp_path, ("unet", "vae_decoder"))
    manifest = Manifest.read(root)
    assert manifest.find("vae_decoder", "onnx", "int8").precision == "fp32"
    assert manifest.find("vae_decoder", "trt", "int8").precision == "fp16"
    assert manifest.find("vae_decoder", "onnx", "int8", exact=True) is None
    assert manifest.find("vae_encoder", "trt", "int8") is None  # no engine at all: nothing to fall back to
    assert manifest.find("unet", "onnx", "fp16").precision == "fp16"  # other precisions never fall back
