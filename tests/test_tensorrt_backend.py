"""The TensorRT backend's pure parts (profile checks, low-memory staging, buffers) and its CPU-side errors.

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
from mvg_rt.runtime.backends.tensorrt_backend import DeviceBuffers, engine_metadata, engines_to_release, rebuild_flags

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


def test_buffers_are_reused_until_a_shape_grows():
    buffers = DeviceBuffers(torch.device("cpu"))
    a, grown = buffers.view("sample", (2, 4, 8, 8), torch.float32)
    assert grown and a.shape == (2, 4, 8, 8)
    b, grown = buffers.view("sample", (1, 4, 8, 8), torch.float32)  # smaller: a view of the same memory
    assert not grown and b.data_ptr() == a.data_ptr()
    c, grown = buffers.view("sample", (2, 4, 16, 16), torch.float32)
    assert grown and c.data_ptr() != a.data_ptr() and buffers.reallocations == 2
    _, grown = buffers.view("sample", (2, 4, 16, 16), torch.float16)  # an engine with other I/O types
    assert grown


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
