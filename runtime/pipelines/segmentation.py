"""Box -> ROI mask with a SAM-architecture segmenter, preprocessed as MedSAM's own inference is.

MedSAM (bowang-lab/MedSAM, ``MedSAM_Inference.py``) does not use SAM's default processor
(longest side to 1024, ImageNet mean/std, zero padding). It:

1. makes the image 3-channel (a grey image repeated), resizes it to 1024 x 1024 (skimage
   ``transform.resize``, bicubic ``order=3``, ``anti_aliasing=True``, back to uint8): the aspect
   ratio is not kept, since it was trained on squashed images;
2. min-max normalises that to [0, 1]: ``(img - min) / clip(max - min, 1e-8)``, no mean/std;
3. scales the box to the 1024 frame: ``box / [W, H, W, H] * 1024``;
4. runs the image encoder once, the prompt encoder + mask decoder with ``multimask_output=False``;
5. takes ``sigmoid`` of the (256 x 256) low-res logits, upsamples them bilinearly
   (``align_corners=False``) straight to the image's (H, W), and thresholds at 0.5.

Here the resize is PIL's bicubic on the uint8 planes: PIL widens its bicubic kernel by the
scale factor when it shrinks an image, which is the anti-aliasing skimage adds, and it needs no
torchvision or scikit-image (``torch.nn.functional.interpolate``'s bicubic antialiasing is
the other choice; PIL keeps the uint8 round trip MedSAM has). PIL rounds to uint8 where
skimage's ``astype`` truncates: under one grey level before the min-max step. The side is the
segmenter's own input size (``SamConfig.vision_config.image_size``): 1024 for MedSAM, smaller
for the demo segmenter, with every step above the same. The encoder runs once per image and
the decoder once per box, so many boxes on one image cost one embedding.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from mvg_rt.errors import MvgError
from mvg_rt.runtime.backends.base import Backend

Box = Sequence[float]  # x0, y0, x1, y1 in the input image's pixels
THRESHOLD = 0.5


@dataclass(frozen=True)
class BoxSegmentation:
    """One box's mask at the image's size, and the decoder's own estimate of its IoU with the truth."""

    mask: np.ndarray  # (H, W) uint8, 0 or 255
    iou_score: float

    @property
    def area(self) -> int:
        """Pixels inside the mask."""
        return int(np.count_nonzero(self.mask))


def segmenter_input(pixels: np.ndarray, size: int) -> Tensor:
    """(H, W) or (H, W, 3) uint8 image -> (1, 3, size, size) float in [0, 1], as MedSAM preprocesses it."""
    rgb = np.repeat(pixels[..., None], 3, axis=-1) if pixels.ndim == 2 else pixels
    resized = np.asarray(Image.fromarray(np.ascontiguousarray(rgb, dtype=np.uint8), "RGB")
                         .resize((size, size), Image.Resampling.BICUBIC)).astype(np.float32)
    low, high = resized.min(), resized.max()
    scaled = (resized - low) / max(float(high - low), 1e-8)
    return torch.from_numpy(scaled).permute(2, 0, 1)[None].contiguous()


def check_box(box: Box, image_shape: tuple[int, ...], option: str = "--box") -> None:
    """The box lies inside the image and has an inside: a one-line error naming the image's size otherwise."""
    height, width = image_shape[:2]
    x0, y0, x1, y1 = box
    if not (0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height):
        text = ",".join(f"{v:g}" for v in box)
        raise MvgError(f"{option} {text} is not inside the {width}x{height} image: give x0,y0,x1,y1 with "
                       f"0 <= x0 < x1 <= {width} and 0 <= y0 < y1 <= {height}")


def box_in_frame(box: Box, image_shape: tuple[int, ...], size: int) -> Tensor:
    """(1, 1, 4) box in the segmenter's size x size input frame (each axis scaled as the image is)."""
    height, width = image_shape[:2]
    scale = torch.tensor([width, height, width, height], dtype=torch.float32)
    return (torch.tensor(list(box), dtype=torch.float32) / scale * size).view(1, 1, 4)


def masks_from_logits(logits: Tensor, image_shape: tuple[int, ...]) -> Tensor:
    """(B, 1, m, m) low-res logits -> (B, H, W) bool: sigmoid, bilinear to the image, > 0.5 (as MedSAM)."""
    probabilities = F.interpolate(torch.sigmoid(logits), size=tuple(image_shape[:2]), mode="bilinear",
                                  align_corners=False)
    return probabilities[:, 0] > THRESHOLD


def segment_boxes(backend: Backend, size: int, pixels: np.ndarray, boxes: Sequence[Box],
                  option: str = "--box") -> list[BoxSegmentation]:
    """Every box's mask on one image: the encoder once, the decoder per box."""
    for box in boxes:
        check_box(box, pixels.shape, option)
    embeddings = backend.embed_image_for_segmentation(segmenter_input(pixels, size).to(backend.device))
    results = []
    for box in boxes:
        logits, iou = backend.segment_boxes(embeddings, box_in_frame(box, pixels.shape, size).to(backend.device))
        mask = masks_from_logits(logits.cpu(), pixels.shape)[0].numpy()
        results.append(BoxSegmentation(mask.astype(np.uint8) * 255, float(iou.flatten()[0])))
    return results
