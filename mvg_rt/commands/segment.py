"""``mvg-rt segment``: a box on an image -> the organ's mask PNG, and one line saying what it holds."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from mvg_rt.errors import MvgError
from mvg_rt.io.files import check_output_file, write_text_atomic
from mvg_rt.segmentation import SegmentRequest, run_segment


def default_segmenter() -> Path:
    """The demo segmenter that ships with the demo weights."""
    from mvg_rt.demo.default import DEMO_SEGMENTER

    if not DEMO_SEGMENTER.is_dir():
        raise MvgError("no --segmenter given and the demo segmenter is not installed: pass --segmenter DIR "
                       "(a SamModel folder such as MedSAM's)")
    return DEMO_SEGMENTER


def run(segmenter: str | None, image: Path, box: str, out: Path, device: str, json_path: Path | None,
        record_paths: bool) -> None:
    if json_path is not None:
        check_output_file(json_path, "--json")  # before any work
    request = SegmentRequest(Path(segmenter) if segmenter else default_segmenter(), image, box, out, device,
                             record_paths)
    record: dict[str, Any] = run_segment(request)
    height, width = record["size"]
    if json_path is not None:
        write_text_atomic(json_path, json.dumps(record, indent=2))
    click.echo(f"wrote {out}: {record['area']} px inside the mask ({100 * record['area'] / (height * width):.1f}% "
               f"of the {width}x{height} image), IoU score {record['iou_score']:.3f} (the segmenter's own "
               "estimate); review and edit it, then pass it as simulate --mask")
