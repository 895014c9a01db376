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

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from mvg_rt.errors import MvgError
from mvg_rt.limits import check

DICOM_SUFFIXES = {".dcm", ".dicom"}
MAX_PIXELS = Image.MAX_IMAGE_PIXELS or 89_478_485  # Pillow's decompression-bomb threshold (warning level)
MIN_IMAGE_SIDE = 16
MAX_RESOLUTION_FACTOR = 2  # --resolution at most this many times the model's training size (check_resolution)
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
    if not np.isfinite(values).all():
        raise MvgError("the image holds non-finite pixel values (NaN or infinity, e.g. from a DICOM rescale or "
                       "window of NaN): fix or re-export the file")
    low, high = float(values.min()), float(values.max())
    if high <= low:
        return np.zeros(values.shape, np.uint8)
    return np.round((values - low) / (high - low) * 255.0).astype(np.uint8)


def _gray_or_rgb_to_rgb(array: np.ndarray) -> np.ndarray:
    if array.ndim == 2:
        return np.repeat(array[:, :, None], 3, axis=2)
    return array[:, :, :3]


def _too_large(path: Path, width: int, height: int) -> MvgError:
    return MvgError(f"{path.name} is {width}x{height} pixels ({width * height / 1e6:.0f} Mpx), over the "
                    f"{MAX_PIXELS / 1e6:.0f} Mpx safety limit for images (a decompression-bomb guard): downscale it; "
                    "the model works at 512 px")


def open_raster(path: Path) -> Image.Image:
    """A PNG/JPEG decoded as Pillow reads it (any mode, alpha and 16 bits kept), behind the size guard.

    Shared by images (flattened to 8-bit RGB below) and ROI masks (which read alpha and 16-bit depth).
    """
    try:
        with warnings.catch_warnings():
            # Pillow's decompression-bomb warning becomes the one-line refusal below; its other warnings
            # (palette transparency, odd chunks) are about files it reads anyway.
            warnings.simplefilter("ignore")
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                if image.width * image.height > MAX_PIXELS:
                    raise _too_large(path, image.width, image.height)
                image.load()
                return image
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise MvgError(f"{path.name} is over the {MAX_PIXELS / 1e6:.0f} Mpx safety limit for images (a "
                       "decompression-bomb guard): downscale it; the model works at 512 px") from err
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as err:
        reason = " ".join(str(err).split())[:160] or type(err).__name__
        raise MvgError(f"cannot read image {path.name}: {reason}; give a PNG, JPEG or DICOM file") from err


def _read_raster(path: Path) -> LoadedImage:
    image = open_raster(path)
    fmt = (image.format or path.suffix.lstrip(".")).lower()
    if image.mode in _WIDE_MODES:
        return LoadedImage(_gray_or_rgb_to_rgb(_to_uint8(np.asarray(image))), fmt, 16)
    if image.mode not in ("L", "RGB"):  # palette, alpha, CMYK, 1-bit
        image = image.convert("RGBA" if image.mode == "P" else "RGB").convert("RGB")
    return LoadedImage(_gray_or_rgb_to_rgb(np.asarray(image)), fmt, 8)


def _dicom_reason(err: BaseException) -> str:
    """pydicom's message on one line: a missing decoder's message lists the plugins on later lines."""
    lines = [" ".join(line.split()) for line in str(err).splitlines() if line.strip()]
    if not lines:
        return type(err).__name__
    head, rest = lines[0], "; ".join(lines[1:])
    return (f"{head} {rest}" if head.endswith(":") else "; ".join(lines))[:300]


def _read_dicom(path: Path) -> LoadedImage:
    try:
        import pydicom
        from pydicom.pixels import apply_modality_lut, apply_voi_lut
    except ImportError as err:  # pragma: no cover - pydicom is a dependency
        raise MvgError("reading DICOM needs pydicom: pip install pydicom") from err
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom warns about every non-conformant header
            dataset = pydicom.dcmread(path)
            rows, columns = int(dataset.get("Rows", 0) or 0), int(dataset.get("Columns", 0) or 0)
            if rows * columns > MAX_PIXELS:
                raise _too_large(path, columns, rows)
            pixels = dataset.pixel_array
            if pixels.ndim == 3 and dataset.get("SamplesPerPixel", 1) == 1:
                raise MvgError(f"DICOM {path.name} holds {pixels.shape[0]} frames: export the one frame to simulate")
            values = apply_voi_lut(apply_modality_lut(pixels, dataset), dataset)
    except MvgError:
        raise
    except Exception as err:  # noqa: BLE001 - pydicom raises many types for bad or compressed files
        raise MvgError(
            f"cannot read DICOM {path.name}: {_dicom_reason(err)}; check the file, or for compressed transfer "
            "syntaxes install a decoder (pip install pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg)"
        ) from err
    if values.ndim not in (2, 3) or values.size == 0:
        raise MvgError(f"DICOM {path.name} holds no 2D image (pixel array of shape {values.shape})")
    eight_bit = _to_uint8(values)
    if dataset.get("PhotometricInterpretation", "") == "MONOCHROME1":
        eight_bit = 255 - eight_bit
    return LoadedImage(_gray_or_rgb_to_rgb(eight_bit), "dicom", int(dataset.get("BitsStored", 16) or 16))


def is_dicom(path: Path) -> bool:
    if path.suffix.lower() in DICOM_SUFFIXES:
        return True
    with open(path, "rb") as handle:
        handle.seek(128)
        return handle.read(4) == b"DICM"


def read_image(path: str | Path, role: str = "input image", min_side: int = 1) -> LoadedImage:
    """Read a PNG/JPEG/DICOM file as (H, W, 3) uint8; ``role`` names it in errors ("--mask file").

    Images with a side below ``min_side`` are refused (simulate asks for :data:`MIN_IMAGE_SIDE`: a 1x1
    or 8x8 picture holds no anatomy, and upscaled to the model resolution it is a flat colour).
    """
    path = Path(path)
    if not path.is_file():
        raise MvgError(f"{role} {path} not found: check the path")
    loaded = _read_dicom(path) if is_dicom(path) else _read_raster(path)
    height, width = loaded.pixels.shape[:2]
    if min(height, width) < min_side:
        raise MvgError(f"{role} {path.name} is only {width}x{height} pixels: give an image at least {min_side} "
                       f"pixels on each side (a smaller one holds no anatomy to edit)")
    return loaded


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


def check_resolution(resolution: int, scale: int = 8, native: int | None = None) -> int:
    """``--resolution`` within :data:`mvg_rt.limits.LIMITS`, a multiple of the model's VAE factor and, given the
    model's ``native`` (training) size, at most :data:`MAX_RESOLUTION_FACTOR` times it.

    The cap is what keeps a run stoppable: self-attention at the full latent size grows with the 4th power
    of the side, and one call is never interrupted (SIGTERM waits for it); far from its training size a
    diffusion model also repeats its anatomy, so those pictures would not mean anything either. UNet call
    times by resolution: ``benchmarks/results/cpu-2core/resolution_cap.md``.
    """
    check("--resolution", resolution)
    if resolution % scale:
        raise MvgError(f"--resolution must be a multiple of {scale} for this model (got {resolution}), e.g. 512")
    if native is not None and resolution > MAX_RESOLUTION_FACTOR * native:
        raise MvgError(f"--resolution {resolution} is far above what this model can run in reasonable time (its "
                       f"attention grows with the 4th power of the side): the model was trained at {native} px; "
                       f"pass --resolution <= {MAX_RESOLUTION_FACTOR * native}")
    return resolution


def save_png(pixels: np.ndarray, path: str | Path) -> None:
    """Save without any metadata chunk (no identifiers, no timestamps)."""
    Image.fromarray(pixels).save(path, format="PNG")
