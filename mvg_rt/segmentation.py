"""The segmentation job: a box on an image -> the organ's mask, with a SAM-architecture segmenter (MedSAM).

The paper makes its ROI this way: MedSAM segments the organ inside a box, then a person edits
the mask. ``mvg-rt segment`` writes that mask as a PNG to review and edit (then ``simulate
--mask``); ``simulate --roi-box ... --segment DIR`` uses it directly (:func:`segment_roi`). The
math lives in :mod:`mvg_rt.runtime.pipelines.segmentation`; this module owns the inputs, the
output file and the record of which segmenter made the mask.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from PIL import Image

from mvg_rt.errors import MvgError
from mvg_rt.io.files import check_output_file, write_bytes_atomic
from mvg_rt.io.images import MIN_IMAGE_SIDE, LoadedImage, read_image
from mvg_rt.io.masks import RoiRequest, SegmentedBox, parse_box
from mvg_rt.runtime.factory import open_segmenter, without_paths
from mvg_rt.runtime.pipelines.segmentation import segment_boxes


def segment_box(folder: str | Path, image: LoadedImage, box: str, device: str = "cpu",
                option: str = "--segment", box_option: str = "--roi-box") -> SegmentedBox:
    """One box's mask on ``image`` at its own size, and what run.json records about it."""
    numbers = parse_box(box, box_option)
    with open_segmenter(Path(folder), device, option) as segmenter:
        result = segment_boxes(segmenter.backend, segmenter.image_size, image.pixels, [numbers], box_option)[0]
        provenance = segmenter.provenance
    if result.area == 0:
        raise MvgError(f"the segmenter found nothing inside {box_option} {box} (an empty mask): draw the box "
                       "tightly around the organ, or give the ROI as --mask or --roi-box without --segment")
    record = {**provenance, "box": numbers, "iou_score": round(result.iou_score, 4), "area": result.area}
    return SegmentedBox(result.mask, record)


def segment_roi(roi: RoiRequest, image: LoadedImage, device: str = "cpu") -> RoiRequest:
    """``roi`` with its box segmented when it asks for a segmenter (``--segment``); otherwise as it is."""
    if not roi.segment:
        return roi
    assert roi.box is not None  # RoiRequest refuses --segment without --roi-box
    return replace(roi, segmented=segment_box(roi.segment, image, roi.box, device))


@dataclass(frozen=True)
class SegmentRequest:
    """One ``mvg-rt segment``: a segmenter folder, an image, a box, where the mask goes."""

    segmenter: Path
    image: Path
    box: str
    out: Path
    device: str = "cpu"
    record_paths: bool = False
    option: str = "--segmenter"


def run_segment(request: SegmentRequest) -> dict[str, Any]:
    """Segment the box, write the mask PNG (0/255 grey, the image's size, no metadata); returns its record."""
    out = check_output_file(request.out, "--out")  # before any work
    if out.resolve() == request.image.resolve():
        raise MvgError(f"--out {out} is the input image: choose another file for the mask")
    image = read_image(request.image, min_side=MIN_IMAGE_SIDE)
    segmented = segment_box(request.segmenter, image, request.box, request.device, request.option, "--box")
    buffer = io.BytesIO()
    Image.fromarray(segmented.pixels).save(buffer, format="PNG")
    write_bytes_atomic(out, buffer.getvalue())
    record = segmented.record | {"size": list(segmented.pixels.shape)}
    return record if request.record_paths else without_paths(record)
