"""The demo segmenter: a SAM-architecture model trained on phantoms to outline the heart inside a box.

It has MedSAM's architecture (``SamModel``: ViT image encoder, prompt encoder, two-way mask
decoder) at toy size (``configs/demo_segmenter.json``: a 4-layer, 64-wide ViT on 128 x 128
inputs with 8 px patches, so 16 x 16 embeddings and 64 x 64 mask logits; about 0.3 M weights),
so ``--segment`` runs on it exactly as on MedSAM. Its inputs go through the pipeline's own
MedSAM preprocessing (:func:`~mvg_rt.runtime.pipelines.segmentation.segmenter_input`) at the
config's image size instead of 1024: bicubic to 128 x 128, min-max to [0, 1], the box scaled
to that frame. Training images are phantoms rendered at 128, 192 and 256 px (the demo case is
256 px), each with its true heart mask (``Phantom.masks["heart"]``, the same mask the CTR is
read from) and a box: the heart's bounding box with every side moved by up to
``segmenter_box_jitter`` of the image, as a person draws it. Loss: binary cross-entropy plus
soft Dice on the logits upsampled to 128, and SAM's IoU head regressed on the IoU its own mask
reaches. It is scored by Dice against the true heart on held-out phantoms (another seed
stream), at the phantom's own size, through the same pipeline ``simulate --segment`` runs.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from mvg_rt.demo.checkpoints import GeneratorState, StageCheckpoints
from mvg_rt.demo.training import DemoTrainingConfig, cosine_lr, every
from mvg_rt.demo.phantom import DiseaseState, PatientAnatomy, render_phantom
from mvg_rt.runtime.pipelines.segmentation import box_in_frame, segment_boxes, segmenter_input

Log = Callable[[str], None]
RENDER_SIZES = (128, 192, 256)
HELD_OUT_SEED_OFFSET = 1000  # the held-out phantoms' stream: never trained on
HELD_OUT_SIZE = 256  # the demo case's size


def demo_segmenter(config: dict[str, Any]) -> Any:
    """A random-init ``SamModel`` of the given (``SamConfig`` keyword) configuration."""
    from transformers import SamConfig, SamModel

    return SamModel(SamConfig(**config))


def heart_box(heart: np.ndarray) -> list[float]:
    """The tight bounding box x0, y0, x1, y1 (pixel edges) of a boolean mask."""
    ys, xs = np.nonzero(heart)
    return [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)]


def jittered(box: list[float], size: int, jitter: float, rng: np.random.Generator) -> list[float]:
    """``box`` with every side moved by up to ``jitter * size`` pixels, kept inside the image and non-empty."""
    moved = [v + rng.uniform(-jitter, jitter) * size for v in box]
    x0, y0 = max(0.0, min(moved[0], box[0] + 1)), max(0.0, min(moved[1], box[1] + 1))
    x1, y1 = min(float(size), max(moved[2], box[2] - 1)), min(float(size), max(moved[3], box[3] - 1))
    return [x0, y0, x1, y1]


def phantom_hearts(count: int, seed: int, sizes: tuple[int, ...]) -> list[tuple[np.ndarray, np.ndarray]]:
    """``count`` (image, true heart mask) phantoms; phantom i depends only on (seed, i)."""
    samples = []
    for index in range(count):
        rng = np.random.default_rng([seed, index])
        anatomy, disease = PatientAnatomy.sample(rng), DiseaseState.sample(rng)
        phantom = render_phantom(anatomy, disease, sizes[int(rng.integers(len(sizes)))])
        samples.append((phantom.image, phantom.masks["heart"]))
    return samples


def training_tensors(samples: list[tuple[np.ndarray, np.ndarray]], image_size: int, jitter: float,
                     seed: int) -> tuple[Tensor, Tensor, Tensor]:
    """(N, 1, S, S) float16 preprocessed grey planes, (N, 1, S, S) float16 heart targets, (N, 4) boxes in the
    S frame, each box drawn once (a fixed jitter per phantom; 2,000 phantoms give the variety)."""
    rng = np.random.default_rng(seed)
    planes, targets, boxes = [], [], []
    for image, heart in samples:
        planes.append(segmenter_input(image, image_size)[:, :1].half())  # its three channels are one grey
        target = torch.from_numpy(heart.astype(np.float32))[None, None]
        targets.append(F.interpolate(target, size=(image_size, image_size), mode="area").half())
        box = jittered(heart_box(heart), image.shape[0], jitter, rng)
        boxes.append(box_in_frame(box, image.shape, image_size).view(4))
    return torch.cat(planes), torch.cat(targets), torch.stack(boxes)


def _loss(model: Any, planes: Tensor, targets: Tensor, boxes: Tensor) -> Tensor:
    """BCE + soft Dice of the mask at the input size, plus the IoU head's error on the mask's own IoU."""
    embeddings = model.vision_encoder(planes.float().expand(-1, 3, -1, -1)).last_hidden_state
    out = model(image_embeddings=embeddings, input_boxes=boxes[:, None], multimask_output=False)
    logits = F.interpolate(out.pred_masks[:, 0], size=targets.shape[-2:], mode="bilinear", align_corners=False)
    target = targets.float()
    probability = torch.sigmoid(logits)
    dice = 1 - (2 * (probability * target).sum((1, 2, 3)) + 1) / (probability.sum((1, 2, 3)) + target.sum((1, 2, 3)) + 1)
    with torch.no_grad():
        hard, truth = probability > 0.5, target > 0.5
        iou = (hard & truth).sum((1, 2, 3)) / ((hard | truth).sum((1, 2, 3)).clamp(min=1))
    return (F.binary_cross_entropy_with_logits(logits, target) + dice.mean()
            + F.mse_loss(out.iou_scores[:, 0, 0], iou.float()))


def dice(mask: np.ndarray, truth: np.ndarray) -> float:
    """Dice overlap of two boolean masks (1: identical)."""
    total = int(mask.sum()) + int(truth.sum())
    return 2.0 * int((mask & truth).sum()) / total if total else 1.0


def held_out_dice(model: Any, count: int, seed: int, jitter: float) -> dict[str, float]:
    """Dice of the segmenter against the true heart on ``count`` held-out 256 px phantoms, through the pipeline."""
    from mvg_rt.models.component_modules import segmenter_modules
    from mvg_rt.runtime.backends.torch_backend import TorchBackend

    backend = TorchBackend(segmenter_modules(model.eval()), retain_cpu_memory=False)
    rng = np.random.default_rng(seed + HELD_OUT_SEED_OFFSET + 1)
    scores = []
    for image, heart in phantom_hearts(count, seed + HELD_OUT_SEED_OFFSET, (HELD_OUT_SIZE,)):
        box = jittered(heart_box(heart), image.shape[0], jitter, rng)
        result = segment_boxes(backend, int(model.config.vision_config.image_size), image, [box])[0]
        scores.append(dice(result.mask > 0, heart))
    return {"dice_mean": round(float(np.mean(scores)), 4), "dice_min": round(float(np.min(scores)), 4),
            "held_out_phantoms": count, "size": HELD_OUT_SIZE}


def train_segmenter(config: DemoTrainingConfig, checkpoints: StageCheckpoints, log: Log) -> tuple[Any, dict[str, float]]:
    """Train (or load the finished) demo segmenter; returns it and its held-out Dice."""
    done = checkpoints.finished("segmenter")
    model_config = config.segmenter_config
    if done is not None:
        model = demo_segmenter(model_config)
        model.load_state_dict(done["segmenter"])
        return model.eval(), done["metrics"]
    clock = time.perf_counter()
    samples = phantom_hearts(config.segmenter_images, config.seed + 7, RENDER_SIZES)
    image_size = int(model_config["vision_config"]["image_size"])
    planes, targets, boxes = training_tensors(samples, image_size, config.segmenter_box_jitter, config.seed + 8)
    log(f"segmenter: {len(samples)} phantoms with their hearts ({time.perf_counter() - clock:.0f}s)")
    torch.manual_seed(config.seed + 9)
    model = demo_segmenter(model_config)
    budget = config.segmenter
    optimizer = torch.optim.AdamW(model.parameters(), lr=budget.lr, weight_decay=1e-4)
    schedule = cosine_lr(optimizer, budget.steps)
    generator = torch.Generator().manual_seed(config.seed + 10)
    started = time.perf_counter()
    state = {"segmenter": model, "optimizer": optimizer, "schedule": schedule, "generator": GeneratorState(generator)}
    model.train()
    for step in checkpoints.steps("segmenter", budget.steps, state):
        index = torch.randint(len(planes), (budget.batch,), generator=generator)
        loss = _loss(model, planes[index], targets[index], boxes[index])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        if every(step, budget.steps):
            log(f"segmenter step {step + 1}/{budget.steps} loss {loss.item():.4f} "
                f"({time.perf_counter() - started:.0f}s)")
    metrics = held_out_dice(model, config.segmenter_held_out, config.seed, config.segmenter_box_jitter)
    log(f"segmenter: Dice against the true heart on {metrics['held_out_phantoms']} held-out phantoms "
        f"{metrics['dice_mean']:.3f} (min {metrics['dice_min']:.3f})")
    checkpoints.finish("segmenter", {"segmenter": model.state_dict(), "metrics": metrics})
    return model.eval(), metrics
