"""Every check before the work (issue 18): fps, model folders whose parts do not fit, engines whose graphs are
another component's, malformed scheduler configs, JSON nested 100k levels, resolutions far above the model's.

Each case ended on aa97e1f in an internal error (exit 1), most after the rounds had run, or in a run that
could not be stopped; here each is one line, exit 2, before any work, and no output folder is left.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mvg_rt.errors import MvgError

FAST = ["--prompt", "p", "--rounds", "1", "--steps", "2", "--strength", "0.5", "--resolution", "32"]
NO_CLIP = [*FAST, "--no-transition"]
CLIP = [*FAST, "--frames", "3", "--transition-steps", "2"]
NESTED = "[" * 100_000 + "]" * 100_000


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_torch_thread):
    """Tiny models on a shared 2-core machine: one torch thread (see conftest.one_torch_thread)."""


@pytest.fixture
def simulate(tmp_path: Path, xray: Path, run_cli):
    """Run ``simulate`` into tmp/out; assert one line, exit 2, no output and no staging left; return the line."""

    def run(source: list[str], extra: list[str]) -> str:
        out = tmp_path / "out"
        code, _, err = run_cli(["simulate", *source, "--image", str(xray), *extra, "--out", str(out)])
        lines = [line for line in err.splitlines() if line.strip()]
        assert code == 2 and len(lines) == 1 and lines[0].startswith("mvg-rt: error: "), err
        assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
        return lines[0]

    return run


def _copy(folder: Path, tmp_path: Path, name: str) -> Path:
    return Path(shutil.copytree(folder, tmp_path / name))


# ------------------------------------------------------------------ 1. --fps


def test_fps_below_what_a_gif_can_hold_is_refused_before_the_work(tiny_model_dir: Path, simulate):
    line = simulate(["--model-dir", str(tiny_model_dir)], [*NO_CLIP, "--fps", "0.001"])
    assert "--fps must be a finite number in [0.002, 50]" in line and "65535 hundredths" in line


def test_fps_limits_are_what_both_writers_honour(tmp_path: Path):
    import av

    from mvg_rt.io.video import write_gif, write_mp4

    frames = [np.full((16, 16, 3), 60 * i, np.uint8) for i in range(3)]
    for fps, frame_ms in ((0.002, 500_000), (50, 20)):
        write_gif(frames, tmp_path / "a.gif", fps)
        assert Image.open(tmp_path / "a.gif").info["duration"] == frame_ms
        write_mp4(frames, tmp_path / "a.mp4", fps)
        with av.open(str(tmp_path / "a.mp4")) as container:
            times = [frame.time for frame in container.decode(video=0)]
        assert times == pytest.approx([i / fps for i in range(3)])
    with pytest.raises(MvgError, match=r"--fps must be"):  # a caller that skipped the option check
        write_gif(frames, tmp_path / "b.gif", 0.001)


# ------------------------------------------------------------------ 2. parts that do not fit


def test_a_text_encoder_of_another_width_is_refused_before_the_work(tiny_model_dir: Path, tmp_path: Path, simulate):
    from transformers import CLIPTextConfig, CLIPTextModel

    model = _copy(tiny_model_dir, tmp_path, "model")
    config = json.loads((model / "text_encoder" / "config.json").read_text())
    config |= {"hidden_size": 48, "intermediate_size": 96, "projection_dim": 48}
    shutil.rmtree(model / "text_encoder")
    CLIPTextModel(CLIPTextConfig(**config)).save_pretrained(str(model / "text_encoder"), safe_serialization=True)
    line = simulate(["--model-dir", str(model)], NO_CLIP)  # aa97e1f: mat1 and mat2 shapes cannot be multiplied
    assert ("unet/config.json cross_attention_dim is 32 but text_encoder/config.json hidden_size is 48" in line
            and "use the text encoder the UNet was trained with" in line)


def test_a_seine_for_other_latents_is_refused_before_the_work(tiny_model_dir: Path, tmp_path: Path, simulate):
    from dataclasses import replace

    from mvg_rt.models.seine_checkpoint import save_seine_checkpoint
    from mvg_rt.models.seine_unet import SeineUNet3D, load_builtin_config

    model = _copy(tiny_model_dir, tmp_path, "model")
    wide = SeineUNet3D(replace(load_builtin_config("tiny"), in_channels=17))
    save_seine_checkpoint(wide, model / "seine" / "seine.safetensors")
    line = simulate(["--model-dir", str(model)], CLIP)  # aa97e1f: expected 9 channels, got 17, after the rounds
    assert ("the SEINE checkpoint's config in_channels is 17 but vae/config.json latent_channels is 4, so it must "
            "be 9" in line and "--no-transition" in line)


def test_width_rules():
    from mvg_rt.models.agreement import check_widths, folder_widths, with_seine
    from mvg_rt.models.seine_unet import load_builtin_config

    text, vae, unet = {"hidden_size": 32}, {"latent_channels": 4}, {"in_channels": 4, "out_channels": 4,
                                                                    "cross_attention_dim": [32, 32]}
    check_widths(with_seine(folder_widths(text, vae, unet), load_builtin_config("tiny")))
    for bad, words in (({"out_channels": 8}, "unet/config.json out_channels is 8"),
                       ({"in_channels": "4"}, "in_channels is '4', not a positive integer")):
        with pytest.raises(MvgError, match=words):
            check_widths(folder_widths(text, vae, unet | bad))
    with pytest.raises(MvgError, match="reads 16 tokens"):
        check_widths(folder_widths(text | {"max_position_embeddings": 16}, vae, unet))


# ------------------------------------------------------------------ 3. a graph filed as another component


def _swap_graph(tiny_engines: Path, tmp_path: Path, source: str, target: str) -> Path:
    engines = _copy(tiny_engines, tmp_path, "engines")
    shutil.copy(engines / source / "model.onnx", engines / target / "model.onnx")
    manifest = json.loads((engines / "manifest.json").read_text())
    data = (engines / target / "model.onnx").read_bytes()
    for artifact in manifest["artifacts"]:
        if artifact["file"] == f"{target}/model.onnx":
            artifact |= {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
    (engines / "manifest.json").write_text(json.dumps(manifest))
    return engines


def test_an_onnx_swapped_for_another_components_is_refused_at_open(tiny_engines: Path, tmp_path: Path, simulate):
    engines = _swap_graph(tiny_engines, tmp_path, "vae_decoder", "unet")
    line = simulate(["--backend", "ort", "--engines", str(engines)], NO_CLIP)  # aa97e1f: KeyError: 'latents'
    assert "unet/model.onnx (filed as unet) is not a unet graph: its inputs are latents" in line
    assert "re-export it" in line


def test_onnx_signature_is_what_onnx_reads(tiny_engines: Path, tmp_path: Path):
    import onnx

    from mvg_rt.artifacts.graph_contract import read_onnx_signature

    external = tmp_path / "external.onnx"  # a >2 GB graph keeps its weights beside it: same signature
    onnx.save(onnx.load(str(tiny_engines / "unet" / "model.onnx")), str(external), save_as_external_data=True,
              size_threshold=0)
    for path in [*(tiny_engines / c / "model.onnx" for c in ("text_encoder", "unet", "seine")), external]:
        graph = onnx.load(str(path), load_external_data=False).graph
        signature = read_onnx_signature(path)
        assert [t.name for t in signature.inputs] == [v.name for v in graph.input]
        assert [t.shape for t in signature.outputs] == [
            tuple(d.dim_value if d.HasField("dim_value") else d.dim_param for d in v.type.tensor_type.shape.dim)
            for v in graph.output]
    (tmp_path / "junk.onnx").write_bytes(b"\xff" * 64)
    with pytest.raises(MvgError, match="junk.onnx is not a readable ONNX graph"):
        read_onnx_signature(tmp_path / "junk.onnx")


def test_a_tensorrt_engine_of_another_component_is_refused(tiny_engines: Path):
    """The pure part of the TensorRT check (TensorRT is not installed here): the engine's tensor names."""
    import torch

    from mvg_rt.artifacts.graph_contract import check_signature
    from mvg_rt.artifacts.manifest import Manifest
    from mvg_rt.components import UNET
    from mvg_rt.runtime.backends.tensorrt_backend import engine_signature

    unet = Manifest.read(tiny_engines).find("unet")
    shapes = {"sample": (-1, 4, -1, -1), "timestep": (-1,), "encoder_hidden_states": (-1, 77, 32),
              "noise_pred": (-1, 4, -1, -1)}
    dtypes = dict.fromkeys(shapes, torch.float32)
    check_signature(UNET, unet, engine_signature(["sample", "timestep", "encoder_hidden_states"], ["noise_pred"],
                                                 dtypes, shapes))
    with pytest.raises(MvgError, match="encoder_hidden_states dim 2 is 768 in the graph but 32 in manifest.json"):
        check_signature(UNET, unet, engine_signature(["sample", "timestep", "encoder_hidden_states"], ["noise_pred"],
                                                     dtypes, shapes | {"encoder_hidden_states": (-1, 77, 768)}))
    with pytest.raises(MvgError, match="is not a unet graph: its inputs are latents"):
        check_signature(UNET, unet, engine_signature(["latents"], ["images"], {"latents": torch.float32,
                        "images": torch.float32}, {"latents": (-1, 4, -1, -1), "images": (-1, 3, -1, -1)}))


# ------------------------------------------------------------------ 4. scheduler_config.json

BAD_SCHEDULERS = [
    ("[1, 2]", "holds a JSON list, not an object"),
    ('{"_class_name": "FooScheduler"}', "names _class_name 'FooScheduler', which is not a diffusers scheduler"),
    ('{"_class_name": "PNDMScheduler", "num_train_timesteps": "abc"}', "holds values PNDMScheduler cannot use"),
    ('{"_class_name": "PNDMScheduler", "beta_schedule": "bogus"}', "bogus is not implemented"),
    ('{"_class_name": "PNDMScheduler", "beta_start": -5}', "noise levels outside (0, 1]"),
    ("{not json", "is not valid JSON"),
]


@pytest.mark.parametrize(("text", "words"), BAD_SCHEDULERS, ids=[w for _, w in BAD_SCHEDULERS])
def test_a_malformed_scheduler_config_is_one_line(tiny_model_dir: Path, tmp_path: Path, simulate, text, words):
    model = _copy(tiny_model_dir, tmp_path, "model")
    (model / "scheduler" / "scheduler_config.json").write_text(text)
    line = simulate(["--model-dir", str(model)], NO_CLIP)
    assert words in line and "scheduler_config.json" in line and "re-copy" in line


def test_engines_scheduler_config_is_checked_too(tiny_engines: Path, tmp_path: Path, simulate):
    engines = _copy(tiny_engines, tmp_path, "engines")
    (engines / "scheduler" / "scheduler_config.json").write_text('{"beta_schedule": "bogus"}')
    assert "bogus is not implemented" in simulate(["--backend", "ort", "--engines", str(engines)], NO_CLIP)


# ------------------------------------------------------------------ 5. JSON nested 100k levels


def test_a_manifest_nested_100k_levels_is_one_line(tiny_engines: Path, tmp_path: Path, simulate):
    engines = _copy(tiny_engines, tmp_path, "engines")
    (engines / "manifest.json").write_text(NESTED)  # aa97e1f: RecursionError
    assert "engines manifest" in (line := simulate(["--backend", "ort", "--engines", str(engines)], NO_CLIP))
    assert "nested too deeply" in line and "re-export it" in line


def test_a_model_config_nested_100k_levels_is_one_line(tiny_model_dir: Path, tmp_path: Path, simulate):
    model = _copy(tiny_model_dir, tmp_path, "model")
    (model / "unet" / "config.json").write_text(NESTED)
    assert "unet config" in (line := simulate(["--model-dir", str(model)], NO_CLIP)) and "nested too deeply" in line


def test_read_json_turns_every_failure_into_one_line(tmp_path: Path):
    from mvg_rt.io.jsonio import read_json

    path = tmp_path / "x.json"
    for content, words in ((b"\xff\xfe", "is not UTF-8"), (b'{"a": ' + b"1" * 5000 + b"}", "cannot be read"),
                           (b"3", "holds a JSON int, not an object"), (NESTED.encode(), "nested too deeply")):
        path.write_bytes(content)
        with pytest.raises(MvgError, match=words) as err:
            read_json(path, "thing", "fix it")
        assert str(err.value).endswith("; fix it") and "\n" not in str(err.value)
    with pytest.raises(MvgError, match="cannot be read"):
        read_json(tmp_path / "missing.json", "thing", "fix it")


# ------------------------------------------------------------------ 6. resolutions far above the model's


def test_a_resolution_far_above_the_models_is_refused_before_the_work(tiny_model_dir: Path, simulate):
    """aa97e1f: --resolution 4096 on the tiny model sat 13 min in one attention call, deaf to SIGTERM."""
    line = simulate(["--model-dir", str(tiny_model_dir)], [*NO_CLIP, "--resolution", "4096"])
    assert "the model was trained at 64 px; pass --resolution <= 128" in line


def test_the_resolution_cap_boundary():
    from mvg_rt.io.images import check_resolution

    assert check_resolution(128, 8, native=64) == 128
    with pytest.raises(MvgError, match=r"pass --resolution <= 128"):
        check_resolution(136, 8, native=64)
    assert check_resolution(1024, 8, native=512) == 1024
