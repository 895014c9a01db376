"""One ROI everywhere (issue 18, "wrong results without an error": masks).

Every mask file becomes ONE gray channel by one rule (mvg_rt.io.masks.mask_gray), read alike by
PIE's latent mask, run.json's coverage, eval and the transition compositing, and written as the
run's one-channel mask.png. On aa97e1f an RGB mask fed latent channel c from RGB channel c % 3
while coverage/eval/compositing read channel 0 (a green ROI: coverage 0.0, exit 0); a 16-bit
all-65535 mask and an alpha-only mask were refused as "empty"; a mask painted on a fully
transparent layer was read by its hidden colour.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mvg_rt.errors import MvgError
from mvg_rt.eval.progression import read_run
from mvg_rt.io.masks import choose_mask

FAST = ["--prompt", "p", "--rounds", "1", "--steps", "2", "--strength", "0.5", "--resolution", "32"]
CLIP = ["--frames", "3", "--transition-steps", "2"]
SIZE = 64


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_torch_thread):
    """Tiny models on a shared 2-core machine: one torch thread (see conftest.one_torch_thread)."""


def _box() -> np.ndarray:
    """(SIZE, SIZE) bool: the ROI every mask below paints, in its own way."""
    inside = np.zeros((SIZE, SIZE), bool)
    inside[16:48, 20:52] = True
    return inside


def _save(tmp_path: Path, name: str, pixels: np.ndarray) -> Path:
    """Pillow picks the mode: bool -> "1", (H, W, 2) -> "LA", uint16 -> "I;16", (H, W, 4) -> "RGBA"."""
    path = tmp_path / name
    Image.fromarray(pixels).save(path)
    return path


def _white(tmp_path: Path) -> Path:
    return _save(tmp_path, "white.png", np.where(_box(), 255, 0).astype(np.uint8))


def _green(tmp_path: Path) -> Path:
    rgb = np.zeros((SIZE, SIZE, 3), np.uint8)
    rgb[_box(), 1] = 255
    return _save(tmp_path, "green.png", rgb)


def _alpha_only(tmp_path: Path) -> Path:
    rgba = np.zeros((SIZE, SIZE, 4), np.uint8)  # black paint, the ROI in the alpha channel only
    rgba[_box(), 3] = 255
    return _save(tmp_path, "alpha.png", rgba)


def _roi(path: Path) -> np.ndarray:
    return choose_mask((SIZE, SIZE, 3), 32, mask_path=str(path)).pixels


# --- the one rule, on decoded files --------------------------------------------------------------------------


def test_a_green_mask_is_the_same_roi_as_the_white_gray_mask(tmp_path: Path):
    white = _roi(_white(tmp_path))
    assert white.shape == (32, 32) and white.dtype == np.uint8
    assert np.array_equal(_roi(_green(tmp_path)), white)
    soft = np.zeros((SIZE, SIZE, 3), np.uint8)
    soft[_box()] = (0, 0, 128)  # any pure colour at half strength is a half-weight ROI
    assert np.array_equal(_roi(_save(tmp_path, "blue.png", soft)), np.round(white / 255 * 128).astype(np.uint8))


def test_a_16_bit_mask_is_scaled_by_its_range(tmp_path: Path):
    full = _roi(_save(tmp_path, "full16.png", np.full((SIZE, SIZE), 65535, np.uint16)))
    assert (full == 255).all()
    half = _roi(_save(tmp_path, "half16.png", np.where(_box(), 32768, 0).astype(np.uint16)))
    assert half.max() == 128
    eight_bit_saved_wide = _save(tmp_path, "wide8.png", np.where(_box(), 255, 0).astype(np.uint16))
    assert np.array_equal(_roi(eight_bit_saved_wide), _roi(_white(tmp_path)))


def test_an_alpha_only_mask_is_read_by_its_alpha(tmp_path: Path):
    white = _roi(_white(tmp_path))
    assert np.array_equal(_roi(_alpha_only(tmp_path)), white)
    la = np.zeros((SIZE, SIZE, 2), np.uint8)
    la[_box(), 1] = 255
    assert np.array_equal(_roi(_save(tmp_path, "la.png", la)), white)


def test_colour_and_alpha_read_as_shown_over_black(tmp_path: Path):
    """Transparent pixels are outside the ROI whatever colour they store (here: white)."""
    rgba = np.full((SIZE, SIZE, 4), (255, 255, 255, 0), np.uint8)
    rgba[_box()] = (255, 0, 0, 255)  # an opaque red ROI on a transparent white layer
    assert np.array_equal(_roi(_save(tmp_path, "overlay.png", rgba)), _roi(_white(tmp_path)))
    rgba[_box(), 3] = 128  # a half-transparent ROI is a half-weight ROI
    assert _roi(_save(tmp_path, "half.png", rgba)).max() == 128


def test_palette_and_one_bit_masks(tmp_path: Path):
    white = _roi(_white(tmp_path))
    assert np.array_equal(_roi(_save(tmp_path, "bits.png", _box())), white)
    palette = Image.frombytes("P", (SIZE, SIZE), np.where(_box(), 1, 0).astype(np.uint8).tobytes())
    palette.putpalette([0, 0, 0, 0, 200, 0])  # index 1: green
    palette.save(tmp_path / "palette.png")
    assert np.array_equal(_roi(tmp_path / "palette.png"), np.round(white / 255 * 200).astype(np.uint8))


@pytest.mark.parametrize("pixels, why", [
    (np.zeros((SIZE, SIZE), np.uint8), "all pixels 0 in its gray, colour and alpha"),
    (np.zeros((SIZE, SIZE), np.uint16), "all pixels 0 in its gray, colour and alpha"),
    (np.full((SIZE, SIZE, 4), (0, 0, 0, 255), np.uint8), "all pixels 0 in its gray, colour and alpha"),
    (np.full((SIZE, SIZE, 4), (255, 255, 255, 0), np.uint8), "fully transparent"),
], ids=["gray", "16-bit", "opaque-black-rgba", "transparent-paint"])
def test_an_empty_mask_is_refused_naming_why(tmp_path: Path, pixels: np.ndarray, why: str):
    with pytest.raises(MvgError, match=why) as refused:
        _roi(_save(tmp_path, "empty.png", pixels))
    assert "\n" not in str(refused.value) and "paint the ROI" in str(refused.value)


# --- every consumer reads that one channel (through the CLI, on the tiny model) ---------------------------


def _simulate(run_cli, tiny_model_dir: Path, xray: Path, mask: Path, out: Path, *extra: str) -> dict:
    code, _, err = run_cli(["simulate", "--model-dir", str(tiny_model_dir), "--image", str(xray), "--mask",
                            str(mask), "--out", str(out), *FAST, *extra])
    assert code == 0, err
    return json.loads((out / "run.json").read_text())


def _pngs(folder: Path) -> list[np.ndarray]:
    return [np.asarray(Image.open(p)) for p in sorted(folder.glob("*.png"))]


def test_a_green_mask_runs_exactly_like_the_white_mask(tmp_path: Path, tiny_model_dir: Path, xray: Path, run_cli):
    white = _simulate(run_cli, tiny_model_dir, xray, _white(tmp_path), tmp_path / "white", *CLIP)
    green = _simulate(run_cli, tiny_model_dir, xray, _green(tmp_path), tmp_path / "green", *CLIP)
    assert green["roi"]["coverage"] == white["roi"]["coverage"] > 0
    assert green["eval"] == white["eval"] and green["rounds"][0]["change"] == white["rounds"][0]["change"]
    for folder in ("states", "frames"):  # PIE (latent mask) and the transition compositing
        ours, theirs = _pngs(tmp_path / "green" / folder), _pngs(tmp_path / "white" / folder)
        assert len(ours) == len(theirs) > 1 and all(np.array_equal(a, b) for a, b in zip(ours, theirs))
    mask = Image.open(tmp_path / "green" / "mask.png")
    assert mask.mode == "L"  # written as used: one gray channel
    assert np.array_equal(np.asarray(mask), np.asarray(Image.open(tmp_path / "white" / "mask.png")))
    roi = read_run(tmp_path / "green").roi  # eval's weight is the same channel
    assert round(float(roi.mean()), 4) == green["roi"]["coverage"]


def test_16_bit_and_alpha_only_masks_run(tmp_path: Path, tiny_model_dir: Path, xray: Path, run_cli):
    full = _save(tmp_path, "full16.png", np.full((SIZE, SIZE), 65535, np.uint16))
    assert _simulate(run_cli, tiny_model_dir, xray, full, tmp_path / "full", "--no-transition")["roi"]["coverage"] == 1.0
    alpha = _simulate(run_cli, tiny_model_dir, xray, _alpha_only(tmp_path), tmp_path / "alpha", "--no-transition")
    white = _simulate(run_cli, tiny_model_dir, xray, _white(tmp_path), tmp_path / "white", "--no-transition")
    assert alpha["roi"]["coverage"] == white["roi"]["coverage"] > 0
    assert all(np.array_equal(a, b) for a, b in zip(_pngs(tmp_path / "alpha" / "states"),
                                                    _pngs(tmp_path / "white" / "states")))


def test_an_empty_mask_is_one_line_exit_2(tmp_path: Path, tiny_model_dir: Path, xray: Path, run_cli):
    mask = _save(tmp_path, "painted_hidden.png", np.full((SIZE, SIZE, 4), (255, 255, 255, 0), np.uint8))
    code, _, err = run_cli(["simulate", "--model-dir", str(tiny_model_dir), "--image", str(xray), "--mask",
                            str(mask), "--out", str(tmp_path / "o"), *FAST, "--no-transition"])
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert "fully transparent" in err and "painted_hidden" not in err
    assert not (tmp_path / "o").exists()
