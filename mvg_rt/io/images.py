"""Reading clinical images into the model's square RGB uint8 input.

Accepted: PNG and JPEG (8- or 16-bit, grayscale, RGB, palette, with or without
alpha) and DICOM. Every image becomes (R, R, 3) uint8 at the model resolution R by
the PIE reference's transform: bilinear resize of the shorter side to R, then a
centred R x R crop. 16-bit PNGs and DICOM pixel data are mapped to 8 bits by their
own intensity range (DICOM: modality LUT, then its VOI window, MONOCHROME1
inverted), since the model was trained on 8-bit images.

No DICOM header field is ever copied anywhere: only pixels leave this module.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from mvg_rt.errors import MvgError
from mvg_rt.limits import check

DICOM_SUFFIXES = {".dcm", ".dicom"}
_WIDE_MODES = {"I;16", "I;16B", "I;16L", "I", "F"}  # 16-bit and wider PIL modes


@dataclass(frozen=True)
class LoadedImage:
    """An input image as 8-bit RGB at its own size, with how it was read (no identifiers)."""

    pixels: np.ndarray  # (H, W, 3) uint8
    source_format: str  # "png", "jpeg", "dicom", ...
    source_bits: int


def _to_uint8(values: np.ndarray) -> np.ndarray:
    """Min-max map any numeric array to 0..255 (the full range the data actually uses)."""
    values = values.astype(np.float64)
    low, high = float(values.min()), float(values.max())
    if high <= low:
        return np.zeros(values.shape, np.uint8)
    return np.round((values - low) / (high - low) * 255.0).astype(np.uint8)


def _gray_or_rgb_to_rgb(array: np.ndarray) -> np.ndarray:
    if array.ndim == 2:
        return np.repeat(array[:, :, None], 3, axis=2)
    return array[:, :, :3]


def _read_raster(path: Path) -> LoadedImage:
    try:
        with Image.open(path) as image:
            image.load()
            fmt = (image.format or path.suffix.lstrip(".")).lower()
            if image.mode in _WIDE_MODES:
                return LoadedImage(_gray_or_rgb_to_rgb(_to_uint8(np.asarray(image))), fmt, 16)
            if image.mode not in ("L", "RGB"):  # palette, alpha, CMYK, 1-bit
                image = image.convert("RGB")
            return LoadedImage(_gray_or_rgb_to_rgb(np.asarray(image)), fmt, 8)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise MvgError(f"cannot read image {path.name}: {err}; give a PNG, JPEG or DICOM file") from err


def _read_dicom(path: Path) -> LoadedImage:
    try:
        import pydicom
        from pydicom.pixels import apply_modality_lut, apply_voi_lut
    except ImportError as err:  # pragma: no cover - pydicom is a dependency
        raise MvgError("reading DICOM needs pydicom: pip install pydicom") from err
    try:
        dataset = pydicom.dcmread(path)
        pixels = dataset.pixel_array
    except Exception as err:  # noqa: BLE001 - pydicom raises many types for bad or compressed files
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise MvgError(
            f"cannot read DICOM {path.name}: {reason[:160]}; check the file, or for compressed transfer "
            "syntaxes install a decoder (pip install pylibjpeg pylibjpeg-libjpeg)"
        ) from err
    if pixels.ndim == 3 and dataset.get("SamplesPerPixel", 1) == 1:
        raise MvgError(f"DICOM {path.name} holds {pixels.shape[0]} frames: export the one frame to simulate")
    values = apply_voi_lut(apply_modality_lut(pixels, dataset), dataset)
    eight_bit = _to_uint8(values)
    if dataset.get("PhotometricInterpretation", "") == "MONOCHROME1":
        eight_bit = 255 - eight_bit
    return LoadedImage(_gray_or_rgb_to_rgb(eight_bit), "dicom", int(dataset.get("BitsStored", 16)))


def _is_dicom(path: Path) -> bool:
    if path.suffix.lower() in DICOM_SUFFIXES:
        return True
    with open(path, "rb") as handle:
        handle.seek(128)
        return handle.read(4) == b"DICM"


def read_image(path: str | Path) -> LoadedImage:
    """Read a PNG/JPEG/DICOM file as (H, W, 3) uint8."""
    path = Path(path)
    if not path.is_file():
        raise MvgError(f"input image {path} not found: check the path")
    return _read_dicom(path) if _is_dicom(path) else _read_raster(path)


def resize_and_crop(pixels: np.ndarray, resolution: int, resample: Image.Resampling = Image.Resampling.BILINEAR
                    ) -> np.ndarray:
    """Shorter side to ``resolution`` (bilinear), then a centred square crop, like the PIE reference.

    The reference uses torchvision's ``Resize(R)`` + ``CenterCrop(R)`` on PIL
    images; this is the same arithmetic without the torchvision dependency.
    """
    height, width = pixels.shape[:2]
    if height <= width:
        new_h, new_w = resolution, int(resolution * width / height)
    else:
        new_h, new_w = int(resolution * height / width), resolution
    resized = np.asarray(Image.fromarray(pixels).resize((new_w, new_h), resample))
    top = int(round((new_h - resolution) / 2.0))
    left = int(round((new_w - resolution) / 2.0))
    return resized[top : top + resolution, left : left + resolution].copy()  # writable, contiguous


def check_resolution(resolution: int, scale: int = 8) -> int:
    """``--resolution`` within :data:`mvg_rt.limits.LIMITS` and a multiple of the model's VAE factor."""
    check("--resolution", resolution)
    if resolution % scale:
        raise MvgError(f"--resolution must be a multiple of {scale} for this model (got {resolution}), e.g. 512")
    return resolution


def save_png(pixels: np.ndarray, path: str | Path) -> None:
    """Save without any metadata chunk (no identifiers, no timestamps)."""
    Image.fromarray(pixels).save(path, format="PNG")
