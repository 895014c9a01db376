"""The TensorRT backend's pure parts (profile checks, low-memory staging, buffer sizing, the engine lifecycle's
order, graph generations) and its CPU-side errors.

Running engines needs an NVIDIA GPU and TensorRT 10: see test_gpu.py.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mvg_rt.artifacts.manifest import Artifact, AxisRange, TensorDecl
from mvg_rt.errors import MvgError
from mvg_rt.runtime.backends.declarations import profile_violation
from mvg_rt.runtime.backends.tensorrt_backend import (EnginePool, engine_metadata, engines_to_release,
                                                      lifecycle_step, max_io_shapes, rebuild_flags, view)

UNET_SAMPLE = ("batch", 4, "latent_height", "latent_width")
UNET_PROFILE = ((1, 4, 64, 64), (2, 4, 64, 64), (2, 4, 64, 64))
SEINE_SAMPLE = ("batch", 9, "frames", "latent_height", "latent_width")
SEINE_PROFILE = ((2, 9, 16, 64, 64), (2, 9, 16, 64, 64), (2, 9, 16, 64, 64))


def _tensorrt_missing() -> bool:
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return True
    return False


def _engine(component: str, inputs: dict, outputs: dict | None = None) -> Artifact:
    """A TensorRT engine's manifest entry (as mvg-rt build writes it) with these declared shapes."""
    return Artifact(component, "trt", "fp16", f"{component}.plan", "", 0,
                    [TensorDecl(n, "float32", list(s)) for n, s in inputs.items()],
                    [TensorDecl(n, "float32", list(s)) for n, s in (outputs or {}).items()])


def _sample_check(component: str, decl, shape, profile, root: str | None = None) -> None:
    """Check one ``sample`` feed against an engine with that declaration and profile."""
    engine_metadata(_engine(component, {"sample": decl}), {"sample": profile}, 8, root).check({"sample": shape})


def test_shapes_inside_the_profile_pass():
    for shape in ((1, 4, 64, 64), (2, 4, 64, 64)):
        _sample_check("unet", UNET_SAMPLE, shape, UNET_PROFILE)
    assert profile_violation(UNET_SAMPLE, (2, 4, 64, 64), UNET_PROFILE) is None


def test_a_larger_resolution_names_component_input_shape_range_and_the_build_command():
    with pytest.raises(MvgError) as err:
        _sample_check("unet", UNET_SAMPLE, (2, 4, 96, 96), UNET_PROFILE, root="engines/sd14")
    text = str(err.value)
    assert text == ("unet: input sample has shape (2, 4, 96, 96), outside the engine's profile (1, 4, 64, 64) .. "
                    "(2, 4, 64, 64) (latent_height 96 > 64); rebuild the engines for it: mvg-rt build --engines "
                    "engines/sd14 --precision fp16 --resolution 768x768")


@pytest.mark.parametrize("decl, shape, profile, why, flags", [
    (SEINE_SAMPLE, (2, 9, 24, 64, 64), SEINE_PROFILE, "frames 24 > 16", ["--frames", "24"]),
    (SEINE_SAMPLE, (1, 9, 16, 64, 64), SEINE_PROFILE, "batch 1 < 2", ["--axis", "seine.batch=1:2:2"]),
    (("batch", 3, "height", "width"), (3, 3, 448, 576), ((1, 3, 512, 512), (1, 3, 512, 512), (3, 3, 512, 512)),
     "height 448 < 512", ["--resolution", "448x576"]),
    (UNET_SAMPLE, (2, 5, 64, 64), UNET_PROFILE, "dim 1 is 5 where the graph has a fixed 4", []),
    (UNET_SAMPLE, (2, 4, 64), UNET_PROFILE, "3 dims instead of 4", []),
])
def test_profile_violations_and_the_flags_that_fix_them(decl, shape, profile, why, flags):
    assert profile_violation(decl, shape, profile) == why
    component = "seine" if decl is SEINE_SAMPLE else "x"
    if len(shape) == len(profile[0]):
        assert rebuild_flags(component, decl, shape, profile, 8) == flags
    with pytest.raises(MvgError, match="outside the engine's profile") as err:
        _sample_check(component, decl, shape, profile)
    assert ("rebuild the engines" in str(err.value)) == bool(flags)


def test_inside_the_profile_the_declarations_still_apply():
    """Named axes agree across inputs and the manifest's multiples hold, though each input is inside its profile;
    a missing input is named with the engine's inputs (one grammar with the ONNX Runtime backend's)."""
    unet = _engine("unet", {"sample": UNET_SAMPLE, "timestep": ("batch",)})
    unet.axes["latent_height"] = AxisRange(8, 64, multiple_of=8)
    metadata = engine_metadata(unet, {"sample": ((1, 4, 8, 8), (2, 4, 64, 64), (2, 4, 64, 64)),
                                      "timestep": ((1,), (2,), (2,))})
    assert metadata.check({"sample": (2, 4, 64, 32), "timestep": (2,)}) == {
        "batch": 2, "latent_height": 64, "latent_width": 32}
    with pytest.raises(MvgError) as err:
        metadata.check({"sample": (2, 4, 64, 64), "timestep": (1,)})
    assert str(err.value) == ("unet: input timestep has shape (1), allowed (batch) (batch is 1 here but 2 in "
                              "another input); feed the shape the engines were exported for")
    with pytest.raises(MvgError, match=r"latent_height must be >= 8 and <= 64 and a multiple of 8"):
        metadata.check({"sample": (2, 4, 60, 64), "timestep": (2,)})
    with pytest.raises(MvgError) as err:
        metadata.check({"sample": (2, 4, 64, 64)})
    assert str(err.value) == "unet: input timestep was not fed (inputs: sample, timestep)"


def test_buffers_hold_the_profile_maxima_inputs_and_derived_outputs():
    unet = _engine("unet", {"sample": UNET_SAMPLE, "timestep": ("batch",),
                            "encoder_hidden_states": ("batch", 77, 768)},
                   {"noise_pred": UNET_SAMPLE})
    profiles = {"sample": UNET_PROFILE, "timestep": ((1,), (2,), (2,)),
                "encoder_hidden_states": ((1, 77, 768), (2, 77, 768), (2, 77, 768))}
    assert max_io_shapes(unet, profiles) == {"sample": (2, 4, 64, 64), "timestep": (2,),
                                             "encoder_hidden_states": (2, 77, 768), "noise_pred": (2, 4, 64, 64)}
    decoder = _engine("vae_decoder", {"latents": UNET_SAMPLE}, {"images": ("batch", 3, "height", "width")})
    latents = ((1, 4, 32, 32), (1, 4, 64, 64), (4, 4, 64, 96))
    assert max_io_shapes(decoder, {"latents": latents}, 8) == {"latents": (4, 4, 64, 96), "images": (4, 3, 512, 768)}
    encoder = _engine("vae_encoder", {"images": ("batch", 3, "height", "width")},
                      {"latent_moments": ("batch", 8, "latent_height", "latent_width")})
    images = ((1, 3, 256, 256), (1, 3, 512, 512), (3, 3, 512, 512))
    assert max_io_shapes(encoder, {"images": images}, 8)["latent_moments"] == (3, 8, 64, 64)


def test_every_shape_that_fits_is_a_view_at_the_buffers_fixed_address():
    buffer = torch.empty(2 * 4 * 8 * 8)
    a = view(buffer, (2, 4, 8, 8), "sample")
    b = view(buffer, (1, 4, 8, 6), "sample")
    assert a.shape == (2, 4, 8, 8) and b.shape == (1, 4, 8, 6) and b.is_contiguous()
    assert a.data_ptr() == b.data_ptr() == buffer.data_ptr()
    b.fill_(1.0)
    assert float(buffer[:b.numel()].sum()) == b.numel()  # writes land at the start of the buffer
    with pytest.raises(MvgError, match=r"noise_pred has shape \(2, 4, 8, 10\), more than its buffer"):
        view(buffer, (2, 4, 8, 10), "noise_pred")


def test_the_engine_lifecycle_runs_in_one_order():
    stage = "deserialized"  # what load leaves
    for step, after in (("activate", "activated"), ("allocate", "allocated"), ("infer", "allocated"),
                        ("infer", "allocated"), ("release", "released")):
        stage = lifecycle_step(stage, step)
        assert stage == after
    for stage, step in (("deserialized", "allocate"), ("deserialized", "infer"), ("activated", "infer"),
                        ("allocated", "activate"), ("released", "infer"), ("released", "activate")):
        with pytest.raises(RuntimeError, match=f"{step} while {stage}"):
            lifecycle_step(stage, step)
    assert lifecycle_step("activated", "release") == "released"


def test_one_activation_buffer_grows_only_for_a_larger_engine_and_stales_the_resident_ones():
    pool = EnginePool(["text_encoder", "vae_encoder", "unet", "vae_decoder", "seine"])
    # all resident (not low-memory): loaded together, sized once to the largest
    assert pool.admit({"text_encoder": 10, "unet": 300, "vae_decoder": 200}, resident=[])
    assert pool.activation_bytes == 300
    assert pool.generations == {"text_encoder": 1, "vae_encoder": 0, "unet": 1, "vae_decoder": 1, "seine": 0}
    # a smaller engine arrives: the buffer stays, only the newcomer's graphs are new
    assert not pool.admit({"vae_encoder": 50}, resident=["unet", "vae_decoder"])
    assert pool.generations["vae_encoder"] == 1 and pool.generations["unet"] == 1
    # a larger one: the buffer moves, so every resident engine's graphs are stale
    assert pool.admit({"seine": 900}, resident=["vae_encoder", "vae_decoder"])
    assert pool.activation_bytes == 900
    assert pool.generations == {"text_encoder": 1, "vae_encoder": 2, "unet": 1, "vae_decoder": 2, "seine": 1}
    pool.stale("seine")  # new input shapes in its context (or its release)
    assert pool.generations["seine"] == 2 and pool.generations["vae_decoder"] == 2


def test_low_memory_stages():
    """PIE: text encoder alone, then VAE + UNet; transitions: text encoder alone, then VAE + SEINE."""
    loaded: set[str] = set()
    timeline = []
    calls = ["text_encoder", "vae_encoder", "vae_encoder", "unet", "vae_decoder",  # PIE setup, round 1
             "vae_encoder", "unet", "vae_decoder",  # round 2
             "text_encoder", "vae_encoder", "seine", "vae_decoder"]  # transitions
    for component in calls:
        loaded -= engines_to_release(loaded, component, low_memory=True)
        loaded.add(component)
        timeline.append(sorted(loaded))
    assert timeline[0] == ["text_encoder"]
    assert timeline[4] == ["unet", "vae_decoder", "vae_encoder"]
    assert timeline[8] == ["text_encoder", "vae_decoder", "vae_encoder"]  # unet released for the prompt
    assert timeline[-1] == ["seine", "vae_decoder", "vae_encoder"]
    assert all(not {"unet", "seine"} <= set(t) for t in timeline)  # the denoisers never share memory
    assert engines_to_release({"unet", "text_encoder"}, "seine", low_memory=False) == set()


@pytest.mark.skipif(not _tensorrt_missing(), reason="tensorrt is installed: its absence cannot be observed")
def test_trt_without_tensorrt_is_one_line_with_the_install_command(tiny_engines: Path):
    from mvg_rt.runtime.factory import RuntimeSpec, open_runtime

    with pytest.raises(MvgError) as err:
        open_runtime(RuntimeSpec(backend="trt", engines_dir=tiny_engines, precision="fp16", device="cuda"))  # the same opener mvg-rt check uses
    text = str(err.value)
    assert "needs TensorRT, which is not installed" in text and "tensorrt-cu12" in text
    assert "python3-libnvinfer" in text and "\n" not in text


@pytest.mark.skipif(not _tensorrt_missing(), reason="tensorrt is installed: its absence cannot be observed")
def test_simulate_backend_trt_without_tensorrt_exits_2(tiny_engines: Path, tmp_path: Path, image_64, run_cli):
    Image.fromarray(np.asarray(image_64)).save(tmp_path / "x.png")
    code, _, err = run_cli(["simulate", "--backend", "trt", "--engines", str(tiny_engines), "--image",
                            str(tmp_path / "x.png"), "--prompt", "p", "--device", "cuda", "--precision", "fp16",
                            "--out", str(tmp_path / "run")])
    assert code == 2 and "needs TensorRT" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
