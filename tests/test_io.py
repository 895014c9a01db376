"""Reading images (PNG/JPEG/DICOM, 8/16-bit, grey/RGB) and building ROI masks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mvg_rt.errors import MvgError
from mvg_rt.io.images import read_image, resize_and_crop
from mvg_rt.io.masks import choose_mask


def _ramp(h: int, w: int) -> np.ndarray:
    return (np.add.outer(np.arange(h), np.arange(w)) * 255 // (h + w - 2)).astype(np.uint8)


@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA", "P", "LA"])
def test_8bit_png_modes_become_rgb(tmp_path: Path, mode: str):
    gray = _ramp(20, 30)
    Image.fromarray(gray).convert(mode).save(tmp_path / "x.png")
    loaded = read_image(tmp_path / "x.png")
    assert loaded.pixels.shape == (20, 30, 3) and loaded.pixels.dtype == np.uint8
    assert loaded.source_bits == 8
    if mode in ("L", "RGB", "RGBA", "LA"):
        assert np.array_equal(loaded.pixels[..., 0], gray)


def test_16bit_png_uses_its_full_range(tmp_path: Path):
    values = (np.arange(12 * 10).reshape(12, 10) * 30 + 1000).astype(np.uint16)  # a 12-bit-like range
    Image.fromarray(values).save(tmp_path / "x16.png")
    loaded = read_image(tmp_path / "x16.png")
    assert loaded.source_bits == 16
    assert loaded.pixels.min() == 0 and loaded.pixels.max() == 255
    assert np.all(np.diff(loaded.pixels[..., 0].ravel().astype(int)) >= 0)  # monotone mapping


def test_jpeg(tmp_path: Path):
    Image.fromarray(_ramp(16, 16)).save(tmp_path / "x.jpg", quality=95)
    loaded = read_image(tmp_path / "x.jpg")
    assert loaded.source_format == "jpeg" and loaded.pixels.shape == (16, 16, 3)


def _write_dicom(path: Path, pixels: np.ndarray, photometric: str = "MONOCHROME2") -> None:
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.PatientName = "Doe^Jane"
    ds.PatientID = "SECRET-123"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.RescaleSlope, ds.RescaleIntercept = 1, 0
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    ds.save_as(str(path), enforce_file_format=True)


def test_dicom_reads_pixels_only_and_honours_monochrome1(tmp_path: Path):
    values = np.tile(np.linspace(0, 4095, 24), (16, 1)).astype(np.uint16)
    _write_dicom(tmp_path / "a.dcm", values)
    _write_dicom(tmp_path / "b", values, "MONOCHROME1")  # no suffix: found by the DICM magic
    normal, inverted = read_image(tmp_path / "a.dcm"), read_image(tmp_path / "b")
    assert normal.source_format == "dicom" and normal.source_bits == 12
    assert normal.pixels[0, 0, 0] == 0 and normal.pixels[0, -1, 0] == 255
    assert np.array_equal(inverted.pixels, 255 - normal.pixels)
    assert not any(hasattr(normal, name) for name in ("PatientName", "patient", "header"))


def test_unreadable_inputs_are_one_line_errors(tmp_path: Path):
    (tmp_path / "junk.png").write_bytes(b"not an image")
    (tmp_path / "junk.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\1" * 20)
    for path, words in ((tmp_path / "missing.png", "not found"), (tmp_path / "junk.png", "cannot read image"),
                        (tmp_path / "junk.dcm", "cannot read DICOM")):
        with pytest.raises(MvgError, match=words) as info:
            read_image(path)
        assert "\n" not in str(info.value)


def test_resize_and_crop_keeps_the_centre():
    pixels = np.zeros((100, 200, 3), np.uint8)
    pixels[:, 50:150] = 255  # the central square
    out = resize_and_crop(pixels, 64)
    assert out.shape == (64, 64, 3)
    assert out[:, 1:-1].min() == 255  # only the centre survives (edge columns: antialiasing blur)
    assert out[:, 0].min() > 128


def test_box_and_ellipse_masks_are_in_input_coordinates():
    shape = (200, 100, 3)  # portrait input: width 100, height 200 -> crop keeps rows 50..150
    box = choose_mask(shape, 64, box="25,75,75,125")
    assert box.pixels.shape == (64, 64)
    assert box.pixels[32, 32] == 255 and box.pixels[2, 2] == 0
    assert 0.2 < box.coverage < 0.3  # 50x50 of the 100x100 kept square
    ellipse = choose_mask(shape, 64, ellipse="50,100,20,20", feather=8)
    assert ellipse.pixels[32, 32] == 255
    assert 0 < ellipse.pixels[32, 32 + 13] < 255  # feathered edge is soft


def test_mask_file_errors_and_binary_masks(tmp_path: Path):
    Image.fromarray(np.zeros((50, 50), np.uint8)).save(tmp_path / "empty.png")
    Image.fromarray(np.full((50, 80), 255, np.uint8)).save(tmp_path / "wide.png")
    labels = np.zeros((100, 100), np.uint8)
    labels[20:80, 20:80] = 1
    Image.fromarray(labels).save(tmp_path / "labels.png")
    with pytest.raises(MvgError, match="empty"):
        choose_mask((50, 50, 3), 64, mask_path=str(tmp_path / "empty.png"))
    with pytest.raises(MvgError, match="aspect ratio"):
        choose_mask((50, 50, 3), 64, mask_path=str(tmp_path / "wide.png"))
    with pytest.raises(MvgError, match="give one ROI"):
        choose_mask((50, 50, 3), 64, mask_path=str(tmp_path / "labels.png"), box="1,1,5,5")
    assert choose_mask((50, 50, 3), 64, mask_path=str(tmp_path / "labels.png")).pixels.max() == 255
    with pytest.raises(MvgError, match="--roi-box takes 4"):
        choose_mask((50, 50, 3), 64, box="1,2,3")


def test_missing_parent_folders_of_out_are_created(tmp_path):
    """`--out runs/p1` on a fresh clone works like `mkdir -p` (and still writes all-or-nothing)."""
    from mvg_rt.io.output_dir import staged_output_dir

    out = tmp_path / "runs" / "p1"
    with staged_output_dir(out, kind="run") as staging:
        (staging / "state.png").write_text("1")
    assert (out / "state.png").read_text() == "1"
    assert sorted(p.name for p in out.parent.iterdir()) == ["p1"]  # no staging folder left behind
