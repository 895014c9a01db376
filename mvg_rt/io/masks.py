"""The ROI mask: from a PNG, a box or an ellipse, always at the model resolution.

Shapes are given in the INPUT image's pixel coordinates (what the user sees in
their viewer) and drawn at that size, then the mask goes through exactly the
resize-and-crop the image goes through, so mask and image stay aligned. The mask
is soft (0..255), as the PIE reference reads it: it is never binarised.

A mask is ONE gray channel, read the same way by every consumer (PIE's latent mask,
coverage, eval, the transition compositing, the run's mask.png). The reference reads
the mask as RGB and feeds latent channel c from RGB channel c % 3; for a gray mask that
is the same thing, for a coloured one it would edit some latent channels only, so a
mask file becomes gray by :func:`mask_gray`'s rule first.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFilter
from scipy.ndimage import distance_transform_edt

from mvg_rt.errors import MvgError
from mvg_rt.limits import LIMITS, check
from mvg_rt.io.images import is_dicom, open_raster, read_image, resize_and_crop

ASPECT_TOLERANCE = 0.02
MASK_ROLE = "--mask file"
_WIDE_INTEGER_MODES = {"I;16", "I;16B", "I;16L", "I;16N", "I"}  # PNG's 16-bit gray (Pillow reads some as "I")
_WIDE_INTEGER_RANGE = 65535.0  # PNG stores at most 16 bits per sample
_EMPTY_HINT = "paint the ROI white (or any colour) on black, or omit --mask to edit the whole image"


@dataclass(frozen=True)
class RoiMask:
    """The mask actually used: (R, R) uint8 gray at model resolution, and where it came from."""

    pixels: np.ndarray  # (R, R) uint8, the one channel every consumer reads
    source: str  # "full image", "mask file", "box x0,y0,x1,y1", "segmenter", ...
    record: dict[str, Any] = field(default_factory=dict)  # more of run.json's roi section (a segmentation's)

    @property
    def weight(self) -> np.ndarray:
        """(R, R) float64 in [0, 1]: the ROI as coverage, eval and the transition compositing weigh it.

        (PIE resizes :attr:`pixels` to latent size first, on uint8 as the reference does.)
        """
        return self.pixels.astype(np.float64) / 255.0

    @property
    def coverage(self) -> float:
        return float(self.weight.mean())


def _color_gray(color: np.ndarray) -> np.ndarray:
    """Max over the colour channels: a mask painted in any pure colour marks its ROI at full weight.

    (Luminance would weigh pure blue at 0.11 and green at 0.59: the ROI would depend on the paint.)
    """
    return color if color.ndim == 2 else color.max(axis=2)


def _wide_to_8bit_scale(values: np.ndarray) -> np.ndarray:
    """16-bit samples as 0..255 floats, by the 16-bit range (all-65535 is the full ROI).

    A 16-bit file that holds only 0..255 is an 8-bit mask saved wide (numpy's
    ``astype(np.uint16)`` on a 0/255 mask): read as 8-bit, not as a 1/257-strength ROI.
    """
    values = np.clip(values.astype(np.float64), 0, _WIDE_INTEGER_RANGE)
    return values if values.max() <= 255 else values * (255.0 / _WIDE_INTEGER_RANGE)


def mask_gray(image: Image.Image) -> np.ndarray:
    """Any decoded mask image -> (H, W) uint8 gray, the one rule every mask file goes through.

    * 16-bit (and Pillow's 32-bit "I" reading of 16-bit PNGs): scaled by the 16-bit range, so
      all-65535 is the full ROI (see :func:`_wide_to_8bit_scale`); 1-bit and palette by their colours.
    * colour: the max over R, G, B (see :func:`_color_gray`).
    * alpha: the mask is what it shows over black (colour x alpha / 255), so a transparent pixel
      is outside the ROI whatever colour it stores; when every colour value is 0 (an alpha-only
      mask: black paint on a transparent layer) the alpha alone is the mask. A uniform alpha
      draws no shape: an opaque black image is an empty mask, not a full one.
    * a 0/1-valued mask is a label image and is scaled to 0/255.
    An empty result is refused naming what was empty.
    """
    if image.mode == "F":
        raise MvgError(f"the {MASK_ROLE} holds floating-point pixels, whose range is not defined: "
                       "save it as an 8- or 16-bit PNG (ROI white on black)")
    alpha = None
    if image.mode in _WIDE_INTEGER_MODES:
        color = _wide_to_8bit_scale(np.asarray(image))
    else:
        if image.mode not in ("L", "LA", "RGB", "RGBA"):  # 1-bit, palette (maybe with transparency), CMYK, ...
            transparent = "transparency" in image.info or image.mode in ("P", "PA", "La", "RGBa")
            image = image.convert("RGBA" if transparent else "RGB")
        planes = np.asarray(image).astype(np.float64)
        if image.mode in ("LA", "RGBA"):
            planes, alpha = planes[..., :-1], planes[..., -1]
        color = _color_gray(planes)
    if alpha is not None and color.max() > 0:
        gray = color * alpha / 255.0
        if gray.max() == 0:
            raise MvgError(f"the {MASK_ROLE} is empty: its painted pixels are all fully transparent (alpha 0); "
                           f"{_EMPTY_HINT}")
    elif alpha is not None and alpha.min() < alpha.max():
        gray = alpha
    else:
        gray = color
    if gray.max() == 0:
        raise MvgError(f"the {MASK_ROLE} is empty (all pixels 0 in its gray, colour and alpha channels): "
                       f"{_EMPTY_HINT}")
    if gray.max() == 1:  # masks saved as 0/1 labels would otherwise read as all-but-zero
        gray = gray * 255.0
    return np.round(gray).astype(np.uint8)


def read_mask_gray(path: str | Path) -> np.ndarray:
    """A mask file as (H, W) uint8 gray; DICOM masks through the image reader's own window."""
    path = Path(path)
    if not path.is_file() or is_dicom(path):  # a missing file gets read_image's one-line refusal
        return _color_gray(read_image(path, role=MASK_ROLE, min_side=1).pixels)
    return mask_gray(open_raster(path))


def run_mask(image: Image.Image) -> RoiMask:
    """The ROI a run used, from its opened mask.png: written gray by simulate (older runs: that gray as RGB)."""
    return RoiMask(_color_gray(np.asarray(image.convert("RGB"))), "run mask.png")


def _parse_numbers(text: str, count: int, option: str, example: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        values = []
    if len(values) != count:
        raise MvgError(f"{option} takes {count} comma-separated numbers, e.g. {option} {example} (got {text!r})")
    return [check(option, value, LIMITS["--roi"]) for value in values]


def _finish(drawn: np.ndarray, image_shape: tuple[int, ...], resolution: int, source: str,
            record: dict[str, Any] | None = None) -> RoiMask:
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
    return RoiMask(pixels, source, record or {})


def _feathered(canvas: Image.Image, feather: float) -> np.ndarray:
    if feather > 0:
        canvas = canvas.filter(ImageFilter.GaussianBlur(radius=feather / 2))
    return np.asarray(canvas)


def mask_from_file(path: str, image_shape: tuple[int, ...], resolution: int, feather: float = 0) -> RoiMask:
    """A mask image (any size of the image's aspect ratio), made gray by :func:`mask_gray`."""
    return _finish(_feathered(Image.fromarray(read_mask_gray(path)), feather), image_shape, resolution,
                   "mask file")


def parse_box(box: str, option: str = "--roi-box") -> list[float]:
    """``x0,y0,x1,y1`` as numbers, checked (also used to validate worklists before anything runs)."""
    x0, y0, x1, y1 = _parse_numbers(box, 4, option, "100,120,400,380")
    if x1 <= x0 or y1 <= y0:
        raise MvgError(f"{option} {box}: x1 must exceed x0 and y1 must exceed y0")
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


@dataclass(frozen=True)
class SegmentedBox:
    """A box's segmentation at the input image's size, made by the job that ran the segmenter."""

    pixels: np.ndarray  # (H, W) uint8, 0 or 255
    record: dict[str, Any]  # run.json's roi entries: segmenter fingerprint (and path), box, iou_score, area


def grown(mask: np.ndarray, pixels: float) -> np.ndarray:
    """``mask`` (0/255) with every pixel within ``pixels`` (Euclidean) of it added: a disc dilation.

    A segmenter outlines the organ as it is; a disease that enlarges it (cardiomegaly) needs an ROI
    reaching where it will grow, the edit the paper's clinician makes to MedSAM's mask.
    """
    if pixels <= 0:
        return mask
    return np.where(distance_transform_edt(mask == 0) <= pixels, 255, 0).astype(np.uint8)


def mask_from_segmentation(segmented: SegmentedBox, image_shape: tuple[int, ...], resolution: int,
                           grow: float = 0, feather: float = 0) -> RoiMask:
    """A segmented box as the run's ROI: grown by ``grow`` px, feathered, then resized as the image is."""
    drawn = _feathered(Image.fromarray(grown(segmented.pixels, grow)), feather)
    return _finish(drawn, image_shape, resolution, "segmenter", {**segmented.record, "grow": grow})


def full_mask(resolution: int) -> RoiMask:
    """No ROI given: the whole image may change (M = 1 everywhere)."""
    return RoiMask(np.full((resolution, resolution), 255, np.uint8), "full image")


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
    """The ROI as the user gave it (at most one of file, box, ellipse); resolved once the resolution is known.

    With ``segment`` (a segmenter folder) the box is segmented, not drawn: the job that opens the
    segmenter fills in ``segmented`` (:class:`SegmentedBox`), and ``grow`` widens that mask.
    """

    mask_path: str | None = None
    box: str | None = None
    ellipse: str | None = None
    feather: float = 0.0
    segment: str | None = None
    grow: float = 0.0
    segmented: SegmentedBox | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        check("--segment-grow", self.grow)
        if self.segment and not self.box:
            raise MvgError("--segment segments the box of --roi-box: add --roi-box x0,y0,x1,y1 (the box around "
                           "the organ), or drop --segment")
        if self.grow and not self.segment:
            raise MvgError("--segment-grow widens a segmented ROI: add --segment DIR, or drop --segment-grow")

    @property
    def given(self) -> bool:
        return bool(self.mask_path or self.box or self.ellipse)

    def resolve(self, image_shape: tuple[int, ...], resolution: int) -> RoiMask:
        if self.segment:
            if self.segmented is None:
                raise ValueError("a --segment ROI is resolved after the job has segmented its box")
            given = [name for name, value in (("--mask", self.mask_path), ("--roi-ellipse", self.ellipse)) if value]
            if given:
                raise MvgError(f"give one ROI, not --roi-box and {' and '.join(given)}")
            check("--feather", self.feather)
            return mask_from_segmentation(self.segmented, image_shape, resolution, self.grow, self.feather)
        return choose_mask(image_shape, resolution, self.mask_path, self.box, self.ellipse, self.feather)
