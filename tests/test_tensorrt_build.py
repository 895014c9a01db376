"""``mvg-rt build`` without TensorRT: profiles from settings, what polygraphy receives, one-line errors."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from mvg_rt.components import COMPONENTS
from mvg_rt.errors import MvgError
from mvg_rt.artifacts.manifest import Manifest
from mvg_rt.artifacts.profiles import AxisOverride, ProfileSettings, parse_resolution, profiles_for
from mvg_rt.export.tensorrt_build import (BuildSettings, NetworkTyping, builder_options, choose_onnx,
                                          network_typing, plan_profiles, polygraphy_loaders)

HIDDEN = 768


def _sd14_inputs(components=tuple(COMPONENTS)):
    """Declared inputs as SD 1.4's export writes them (text width fixed at 768)."""
    return {c: [(t.name, [HIDDEN if a == "hidden" else a for a in t.axes]) for t in COMPONENTS[c].inputs]
            for c in components}


def test_default_profiles_follow_what_the_pipelines_call():
    settings = ProfileSettings(resolutions=((512, 512),), frames=(16,))
    p = profiles_for(settings, _sd14_inputs(), vae_scale_factor=8)
    assert p["text_encoder"]["input_ids"] == ((1, 77), (2, 77), (2, 77))
    assert p["unet"]["sample"] == ((1, 4, 64, 64), (2, 4, 64, 64), (2, 4, 64, 64))
    assert p["unet"]["timestep"] == ((1,), (2,), (2,))
    assert p["unet"]["encoder_hidden_states"] == ((1, 77, 768), (2, 77, 768), (2, 77, 768))
    assert p["seine"]["sample"] == ((1, 9, 16, 64, 64), (2, 9, 16, 64, 64), (2, 9, 16, 64, 64))
    # transitions encode [start, end, blank] at once and decode 4 frames per call
    assert p["vae_encoder"]["images"] == ((1, 3, 512, 512), (1, 3, 512, 512), (3, 3, 512, 512))
    assert p["vae_decoder"]["latents"] == ((1, 4, 64, 64), (1, 4, 64, 64), (4, 4, 64, 64))


def test_pie_only_builds_never_go_above_batch_one_in_the_vae():
    p = profiles_for(ProfileSettings(resolutions=((512, 512),)), _sd14_inputs(("vae_encoder", "vae_decoder", "unet")))
    assert p["vae_encoder"]["images"][2][0] == 1 and p["vae_decoder"]["latents"][2][0] == 1


def test_several_resolutions_and_frames_span_one_profile_fastest_at_the_first():
    settings = ProfileSettings(resolutions=((512, 512), (448, 576), (768, 768)), frames=(16, 8, 24),
                               cfg_batch="static", decode_batch=2)
    p = profiles_for(settings, _sd14_inputs())
    assert p["seine"]["sample"] == ((2, 9, 8, 56, 64), (2, 9, 16, 64, 64), (2, 9, 24, 96, 96))
    assert p["unet"]["timestep"] == ((2,), (2,), (2,))  # static CFG batch
    assert p["vae_encoder"]["images"] == ((1, 3, 448, 512), (1, 3, 512, 512), (3, 3, 768, 768))
    assert p["vae_decoder"]["latents"][2] == (2, 4, 96, 96)


def test_axis_overrides():
    settings = ProfileSettings(resolutions=((512, 512),), overrides=(
        AxisOverride.parse("unet.batch=2"), AxisOverride.parse("frames=8:16:32"),
        AxisOverride.parse("latent_height=32:64:96")))
    p = profiles_for(settings, _sd14_inputs())
    assert p["unet"]["sample"] == ((2, 4, 32, 64), (2, 4, 64, 64), (2, 4, 96, 64))
    assert p["seine"]["sample"][0][:3] == (1, 9, 8) and p["seine"]["sample"][2][2] == 32
    assert p["vae_decoder"]["latents"][0][2] == 32  # no component named: every component with the axis


@pytest.mark.parametrize("spec, message", [
    ("batch", "write [component.]axis=min:opt:max"),
    ("unet.batch=a:b:c", "sizes must be integers"),
    ("unet.batch=1:2", "give one size or min:opt:max"),
    ("unet.batch=2:1:2", "need 1 <= min <= opt <= max"),
])
def test_bad_axis_specs_are_one_line_errors(spec, message):
    with pytest.raises(MvgError, match=re.escape(message)):
        AxisOverride.parse(spec)


def test_settings_errors():
    with pytest.raises(MvgError, match="no such axis"):
        profiles_for(ProfileSettings(resolutions=((512, 512),), overrides=(AxisOverride.parse("unet.frames=4"),)),
                     _sd14_inputs())
    with pytest.raises(MvgError, match="seine is not being built"):
        profiles_for(ProfileSettings(resolutions=((512, 512),), overrides=(AxisOverride.parse("seine.frames=4"),)),
                     _sd14_inputs(("unet",)))
    with pytest.raises(MvgError, match="latent_height 63 is not a multiple of 8; use resolutions that are multiples "
                                       "of 64 pixels"):
        profiles_for(ProfileSettings(resolutions=((504, 512),)), _sd14_inputs(("unet",)),
                     multiples={"unet": {"latent_height": 8, "latent_width": 8}})
    with pytest.raises(MvgError, match="--frames must be at least 3"):
        ProfileSettings(resolutions=((512, 512),), frames=(2,))
    assert parse_resolution("448x576") == (448, 576) and parse_resolution("512") == (512, 512)
    with pytest.raises(MvgError, match="HEIGHTxWIDTH"):
        parse_resolution("512x")


def test_options_turn_into_build_settings():
    from mvg_rt.commands.build import settings_from_options

    s = settings_from_options({"resolutions": ("512", "448x576"), "frames": (16, 8), "axes": ("unet.batch=2",),
                               "static_batch": True, "precision": "fp16", "workspace_mb": 2048,
                               "builder_level": 4, "components": ("unet",), "timing_cache": "/tmp/t.cache"}, 64)
    assert s.profile.resolutions == ((512, 512), (448, 576)) and s.profile.frames == (16, 8)
    assert s.profile.cfg_batch == "static" and s.workspace_bytes == 2048 << 20 and s.builder_level == 4
    assert s.recorded() == {"resolutions": ["512x512", "448x576"], "frames": [16, 8], "axes": ["unet.batch=2:2:2"],
                            "cfg_batch": "static", "decode_batch": 4, "low_memory": False}
    low = settings_from_options({"low_memory": True}, 64)
    assert low.profile.resolutions == ((64, 64),) and low.profile.decode_batch == 1
    assert low.workspace_bytes == 1024 << 20


def _onnx(manifest: Manifest, component: str, precision: str):
    return manifest.require(component, "onnx", precision)


STRONG = NetworkTyping(strongly_typed=True)


@pytest.mark.parametrize("major, onnx_precision, precision, typing", [
    # TensorRT 10 (Jetson): strongly typed from an FP16 graph, weak typing with flags where the graph is FP32/Q/DQ
    (10, "fp16", "fp16", STRONG),
    (10, "fp32", "fp16", NetworkTyping(strongly_typed=False, fp16_flag=True)),
    (10, "fp32", "fp32", NetworkTyping(strongly_typed=False)),
    (10, "int8", "int8", NetworkTyping(strongly_typed=False, fp16_flag=True, int8_flag=True)),
    # TensorRT 11: strongly typed only, no precision flag exists
    (11, "fp16", "fp16", STRONG),
    (11, "fp32", "fp32", STRONG),
    (11, "int8", "int8", STRONG),
    (12, "fp16", "fp16", STRONG),  # a later major keeps 11's rules
])
def test_network_typing_per_tensorrt_major(major, onnx_precision, precision, typing):
    assert network_typing(major, onnx_precision, precision) == typing


@pytest.mark.parametrize("major, onnx_precision, precision, message", [
    (11, "fp32", "fp16", ("TensorRT 11 builds only strongly typed networks, so an FP16 engine needs the FP16 ONNX "
                         "graph: re-export with mvg-rt export --fp16, then rebuild")),
    (10, "fp16", "int8", "INT8 engines are built from the Q/DQ graph of mvg-rt export --int8"),
    (11, "fp32", "int8", "INT8 engines are built from the Q/DQ graph of mvg-rt export --int8"),
    (11, "int8", "fp16", "a fp16 engine cannot be built from an INT8 (Q/DQ) graph: use --precision int8"),
    (8, "fp16", "fp16", "TensorRT 8 is not supported: install TensorRT 10 or 11"),
])
def test_impossible_typings_are_one_line_errors(major, onnx_precision, precision, message):
    with pytest.raises(MvgError) as err:
        network_typing(major, onnx_precision, precision)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_builder_options_by_typing(tiny_engines: Path, tmp_path: Path):
    manifest = Manifest.read(tiny_engines)
    cache = tmp_path / "timing.cache"
    assert choose_onnx(manifest, "unet", "fp16").precision == "fp16"
    options = builder_options(BuildSettings(precision="fp16", builder_level=5), STRONG, cache)
    # strongly typed: the graph decides precisions, no precision flag; TF32 off; the timing cache is read and grown
    assert options == {"fp16": False, "int8": False, "tf32": False, "builder_optimization_level": 5,
                       "load_timing_cache": str(cache)}
    assert choose_onnx(manifest, "unet", "fp32").precision == "fp32"
    low = builder_options(BuildSettings(precision="fp32", low_memory=True), network_typing(10, "fp32", "fp32"), cache)
    assert low["memory_pool_limits"] == {"workspace": 1024 << 20} and low["max_aux_streams"] == 0
    assert not low["fp16"] and not low["int8"]
    only_fp32 = Manifest.read(tiny_engines)
    only_fp32.artifacts = [a for a in only_fp32.artifacts if a.precision == "fp32"]
    weak = choose_onnx(only_fp32, "unet", "fp16")  # no FP16 graph: the FP32 graph, which only TensorRT 10 can use
    assert weak.precision == "fp32"
    assert builder_options(BuildSettings(), network_typing(10, weak.precision, "fp16"), cache)["fp16"] is True
    int8 = builder_options(BuildSettings(precision="int8"), network_typing(10, "int8", "int8"), cache)
    assert int8["int8"] and int8["fp16"]
    with pytest.raises(MvgError, match=r"has no ONNX graph of unet to build a int8 engine from; export it first "
                                       r"\(mvg-rt export --int8 --help\)"):
        choose_onnx(manifest, "unet", "int8")


def test_polygraphy_receives_the_profiles_and_options(tiny_engines: Path, tmp_path: Path):
    """The real polygraphy loader chain, constructed (calling it would build: that needs TensorRT)."""
    from polygraphy.backend.trt import CreateConfig, EngineFromNetwork, NetworkFromOnnxPath, SaveEngine

    manifest = Manifest.read(tiny_engines)
    settings = BuildSettings(profile=ProfileSettings(resolutions=((64, 64), (32, 96)), frames=(16, 5)),
                             builder_level=2)
    sources, profiles = plan_profiles(manifest, settings)
    assert list(sources) == list(COMPONENTS)  # the tiny folder has all five
    assert profiles["unet"]["encoder_hidden_states"] == ((1, 77, 32), (2, 77, 32), (2, 77, 32))
    assert profiles["unet"]["sample"] == ((1, 4, 4, 8), (2, 4, 8, 8), (2, 4, 8, 12))
    assert profiles["seine"]["sample"] == ((1, 9, 5, 4, 8), (2, 9, 16, 8, 8), (2, 9, 16, 8, 12))
    cache, plan = tmp_path / "timing.cache", tmp_path / "unet.plan"
    loader = polygraphy_loaders(tiny_engines / sources["unet"].file, plan, profiles["unet"],
                                builder_options(settings, STRONG, cache), True, cache)
    assert isinstance(loader, SaveEngine) and loader.path == str(plan)
    engine_loader = loader._engine
    assert isinstance(engine_loader, EngineFromNetwork) and engine_loader.timing_cache_path == str(cache)
    network = engine_loader._network
    assert isinstance(network, NetworkFromOnnxPath) and network.strongly_typed
    assert network.path == str(tiny_engines / "unet" / "model_fp16.onnx")
    assert sources["unet"].precision == "fp16"
    config = engine_loader._config
    assert isinstance(config, CreateConfig)
    assert config.builder_optimization_level == 2 and config.timing_cache_path == str(cache)
    assert not config.fp16 and not config.tf32
    (profile,) = config.profiles
    assert (tuple(profile["sample"].min), tuple(profile["sample"].opt), tuple(profile["sample"].max)) == \
        profiles["unet"]["sample"]
    assert set(profile.keys()) == {"sample", "timestep", "encoder_hidden_states"}


def test_build_without_tensorrt_is_one_line_with_the_install_command(tiny_engines: Path, run_cli):
    """Real: this machine has no TensorRT (no fake module is installed to get here)."""
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("tensorrt is installed here: the missing-TensorRT message cannot be observed")
    code, out, err = run_cli(["build", "--engines", str(tiny_engines), "--resolution", "64"])
    assert code == 2 and not out
    assert "needs TensorRT, which is not installed" in err and len(err.strip().splitlines()) == 1
    assert "install TensorRT 10 or 11 for Python: pip install 'mvg-rt[trt]' (tensorrt-cu12, CUDA 12)" in err
    # settings are checked before TensorRT: a bad resolution says so first
    code, _, err = run_cli(["build", "--engines", str(tiny_engines), "--resolution", "60"])
    assert code == 2 and "height 60 is not a multiple of 8" in err and len(err.strip().splitlines()) == 1


def test_build_refuses_components_without_onnx(tiny_engines: Path):
    manifest = Manifest.read(tiny_engines)
    manifest.artifacts = [a for a in manifest.artifacts if a.component != "seine"]
    with pytest.raises(MvgError, match="has no ONNX graph of seine; export it first"):
        plan_profiles(manifest, BuildSettings(components=("seine",),
                                              profile=ProfileSettings(resolutions=((64, 64),))))
    assert choose_onnx(manifest, "unet", "fp32").precision == "fp32"
    with pytest.raises(MvgError, match=r"has no INT8 \(Q/DQ\) ONNX graph of unet; export it first \(mvg-rt export "
                                       r"--int8 --help\)"):
        plan_profiles(manifest, BuildSettings(precision="int8", components=("unet",),
                                              profile=ProfileSettings(resolutions=((64, 64),))))
