"""Writing the progression as H.264 MP4 (PyAV / FFmpeg) and as an animated GIF."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from mvg_rt.limits import check


def write_mp4(frames: Sequence[np.ndarray], path: str | Path, fps: float) -> None:
    """(H, W, 3) uint8 frames -> H.264 yuv420p MP4, playable everywhere (H, W must be even)."""
    import av
    from fractions import Fraction

    height, width = frames[0].shape[:2]
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1000))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"crf": "18", "preset": "medium"}  # near-lossless: these are medical images
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def count_video_frames(path: str | Path) -> int:
    """Decode the file and count its frames (what a player will show)."""
    import av

    with av.open(str(path)) as container:
        return sum(1 for _ in container.decode(video=0))


def write_gif(frames: Sequence[np.ndarray], path: str | Path, fps: float) -> None:
    """An animated GIF at ``fps`` (within ``--fps``'s range: frame times are 2..65535 hundredths of a second)."""
    check("--fps", fps)  # a caller that skipped the option check must not fail inside Pillow after the work
    images = [Image.fromarray(f) for f in frames]
    duration_ms = round(1000 / fps)
    images[0].save(path, save_all=True, append_images=images[1:], duration=duration_ms, loop=0)
