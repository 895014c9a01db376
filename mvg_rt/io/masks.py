"""The ROI mask: from a PNG, a box or an ellipse, always at the model resolution.

Shapes are given in the INPUT image's pixel coordinates (what the user sees in
their viewer) and drawn at that size, then the mask goes through exactly the
resize-and-crop the image goes through, so mask and image stay aligned. The mask
is soft (0..255), as the PIE reference reads it: it is never binarised.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from mvg_rt.errors import MvgError
from mvg_rt.limits import LIMITS, check
from mvg_rt.io.images import read_image, resize_and_crop

ASPECT_TOLERANCE = 0.02


@dataclass(frozen=True)
class RoiMask:
    """The mask actually used: (R, R, 3) uint8 at model resolution, and where it came from."""

    pixels: np.ndarray
    source: str  # "full image", "mask file", "box x0,y0,x1,y1", ...

    @property
    def coverage(self) -> float:
        return float(self.pixels[..., 0].mean() / 255.0)


def _parse_numbers(text: str, count: int, option: str, example: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        values = []
    if len(values) != count:
        raise MvgError(f"{option} takes {count} comma-separated numbers, e.g. {option} {example} (got {text!r})")
    return [check(option, value, LIMITS["--roi"]) for value in values]


def _finish(drawn: np.ndarray, image_shape: tuple[int, ...], resolution: int, source: str) -> RoiMask:
    if drawn.shape[:2] != image_shape[:2]:
        image_ratio = image_shape[1] / image_shape[0]
        mask_ratio = drawn.shape[1] / drawn.shape[0]
        if abs(mask_ratio / image_ratio - 1) > ASPECT_TOLERANCE:
            raise MvgError(
                f"mask is {drawn.shape[1]}x{drawn.shape[0]} but the image is {image_shape[1]}x{image_shape[0]} "
                "(another aspect ratio): draw the mask on the same image"
            )
    pixels = resize_and_crop(drawn, resolution)
    if pixels.max() == 0:
        raise MvgError(f"the ROI ({source}) is empty at {resolution}x{resolution}: nothing would change; "
                       "draw a larger ROI, or omit the ROI options to edit the whole image")
    return RoiMask(pixels, source)


def _feathered(canvas: Image.Image, feather: float) -> np.ndarray:
    if feather > 0:
        canvas = canvas.filter(ImageFilter.GaussianBlur(radius=feather / 2))
    return np.repeat(np.asarray(canvas)[:, :, None], 3, axis=2)


def mask_from_file(path: str, image_shape: tuple[int, ...], resolution: int, feather: float = 0) -> RoiMask:
    """A mask image (any size of the image's aspect ratio). A 0/1-valued mask is scaled to 0/255."""
    loaded = read_image(path, role="--mask file", min_side=1).pixels
    if loaded.max() == 1:  # masks saved as 0/1 labels would otherwise read as all-but-zero
        loaded = loaded * 255
    if feather > 0:
        loaded = _feathered(Image.fromarray(loaded[:, :, 0]), feather)
    return _finish(loaded, image_shape, resolution, "mask file")


def parse_box(box: str) -> list[float]:
    """``x0,y0,x1,y1`` as numbers, checked (also used to validate worklists before anything runs)."""
    x0, y0, x1, y1 = _parse_numbers(box, 4, "--roi-box", "100,120,400,380")
    if x1 <= x0 or y1 <= y0:
        raise MvgError(f"--roi-box {box}: x1 must exceed x0 and y1 must exceed y0")
    return [x0, y0, x1, y1]


def parse_ellipse(ellipse: str) -> list[float]:
    """``cx,cy,rx,ry`` as numbers, checked (also used to validate worklists before anything runs)."""
    cx, cy, rx, ry = _parse_numbers(ellipse, 4, "--roi-ellipse", "256,280,120,90")
    if rx <= 0 or ry <= 0:
        raise MvgError(f"--roi-ellipse {ellipse}: the radii rx, ry must be positive")
    return [cx, cy, rx, ry]


def mask_from_box(box: str, image_shape: tuple[int, ...], resolution: int, feather: float = 0) -> RoiMask:
    x0, y0, x1, y1 = parse_box(box)
    canvas = Image.new("L", (image_shape[1], image_shape[0]), 0)
    ImageDraw.Draw(canvas).rectangle((x0, y0, x1 - 1, y1 - 1), fill=255)
    return _finish(_feathered(canvas, feather), image_shape, resolution, f"box {box}")


def mask_from_ellipse(ellipse: str, image_shape: tuple[int, ...], resolution: int, feather: float = 0) -> RoiMask:
    cx, cy, rx, ry = parse_ellipse(ellipse)
    canvas = Image.new("L", (image_shape[1], image_shape[0]), 0)
    ImageDraw.Draw(canvas).ellipse((cx - rx, cy - ry, cx + rx, cy + ry), fill=255)
    return _finish(_feathered(canvas, feather), image_shape, resolution, f"ellipse {ellipse}")


def full_mask(resolution: int) -> RoiMask:
    """No ROI given: the whole image may change (M = 1 everywhere)."""
    return RoiMask(np.full((resolution, resolution, 3), 255, np.uint8), "full image")


def choose_mask(image_shape: tuple[int, ...], resolution: int, mask_path: str | None = None,
                box: str | None = None, ellipse: str | None = None, feather: float = 0) -> RoiMask:
    """The one ROI the user asked for (at most one of file, box, ellipse)."""
    given = [name for name, value in (("--mask", mask_path), ("--roi-box", box), ("--roi-ellipse", ellipse)) if value]
    if len(given) > 1:
        raise MvgError(f"give one ROI, not {' and '.join(given)}")
    check("--feather", feather)
    if mask_path:
        return mask_from_file(mask_path, image_shape, resolution, feather)
    if box:
        return mask_from_box(box, image_shape, resolution, feather)
    if ellipse:
        return mask_from_ellipse(ellipse, image_shape, resolution, feather)
    return full_mask(resolution)


@dataclass(frozen=True)
class RoiRequest:
    """The ROI as the user gave it (at most one of file, box, ellipse); resolved once the resolution is known."""

    mask_path: str | None = None
    box: str | None = None
    ellipse: str | None = None
    feather: float = 0.0

    @property
    def given(self) -> bool:
        return bool(self.mask_path or self.box or self.ellipse)

    def resolve(self, image_shape: tuple[int, ...], resolution: int) -> RoiMask:
        return choose_mask(image_shape, resolution, self.mask_path, self.box, self.ellipse, self.feather)
