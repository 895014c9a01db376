"""Per-component parity: each exported component against the PyTorch FP32 module.

Inputs are deterministic (seeded) and realistic where it matters: token ids come
from the model's tokenizer (a prompt and the empty CFG prompt), text states are the
reference text encoder's output, latents have the VAE's scale, timesteps span the
schedule (999 .. 1 across the batch). Each component runs at two shapes: the
model's default resolution and a second, non-square one; SEINE at two frame counts.

The metrics come from polygraphy's comparator (``SimpleCompareFunc`` for max
abs/rel differences, ``CosineSimilarityCompareFunc``); the pass/fail rule is
:mod:`mvg_rt.check.tolerances`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from mvg_rt.check.tolerances import COMPONENT
from mvg_rt.components import COMPONENTS
from mvg_rt.runtime.backends.base import Backend
from mvg_rt.runtime.pipelines.text import tokenize

PROMPT = "severe cardiomegaly with enlarged cardiac silhouette"
SEINE_FRAMES = (16, 5)
REFERENCE, CANDIDATE = "torch-fp32", "candidate"


@dataclass
class ComponentResult:
    component: str
    case: str
    max_abs: float
    max_rel: float
    cosine: float
    reference_max: float
    limit_abs: float
    limit_cosine: float
    passed: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def second_resolution(resolution: int, multiple: int) -> tuple[int, int]:
    """A non-square (height, width) pair different from the default: one step smaller, one larger."""
    step = 8 * multiple
    return max(step, resolution - 2 * step), resolution + 2 * step


def _latent_multiple(artifact: Any) -> int:
    axis = artifact.axes.get("latent_height") if artifact is not None else None
    return int(axis.multiple_of) if axis is not None and axis.multiple_of else 1


def component_cases(name: str, manifest: Any, tokenizer: Any, reference: Backend,
                    artifact: Any) -> list[tuple[str, dict[str, Tensor]]]:
    """(label, feeds) pairs for one component."""
    model = manifest.model
    scale = model.vae_scale_factor
    unet = manifest.find("unet", "onnx", artifact.precision) or artifact
    sizes = [(model.resolution, model.resolution), second_resolution(model.resolution, _latent_multiple(unet))]
    generator = torch.Generator().manual_seed(1234)

    def randn(*shape: int) -> Tensor:
        return torch.randn(shape, generator=generator)

    if name == "text_encoder":
        ids = tokenize(tokenizer, ["", PROMPT])
        return [("2 prompts", {"input_ids": ids}), ("1 prompt", {"input_ids": ids[1:]})]
    texts = reference.encode_text(tokenize(tokenizer, ["", PROMPT]))
    cases = []
    for h, w in sizes:
        lh, lw = h // scale, w // scale
        if name == "vae_encoder":
            y = torch.linspace(-1, 1, h).view(h, 1)
            x = torch.linspace(-1, 1, w).view(1, w)
            image = torch.stack([torch.sin(3 * x + 2 * y), torch.cos(2 * x * y), x * y]) * 0.9
            cases.append((f"{h}x{w}", {"images": (image + 0.05 * randn(3, h, w)).clamp(-1, 1)[None]}))
        elif name == "vae_decoder":
            cases.append((f"{h}x{w}", {"latents": randn(1, model.latent_channels, lh, lw)}))
        elif name == "unet":
            cases.append((f"{h}x{w}", {"sample": randn(2, model.latent_channels, lh, lw),
                                       "timestep": torch.tensor([999.0, 1.0]), "encoder_hidden_states": texts}))
    if name == "seine":
        h = w = model.resolution
        for frames in SEINE_FRAMES:
            sample = randn(2, 9, frames, h // scale, w // scale)
            cases.append((f"{h}x{w} F={frames}", {"sample": sample, "timestep": torch.tensor([999.0, 1.0]),
                                                         "encoder_hidden_states": texts}))
    return cases


def compare_outputs(reference: Tensor, candidate: Tensor) -> tuple[float, float, float]:
    """(max abs, max rel, cosine) between two outputs, with polygraphy's comparator."""
    from polygraphy.comparator import Comparator, IterationResult, RunResults
    from polygraphy.comparator.compare import CosineSimilarityCompareFunc, SimpleCompareFunc
    from polygraphy.logger import G_LOGGER

    G_LOGGER.module_severity = G_LOGGER.CRITICAL
    G_LOGGER.colors = False  # else it prints advice to install 'colored'
    results = RunResults()
    for runner, output in ((REFERENCE, reference), (CANDIDATE, candidate)):
        array = np.ascontiguousarray(output.detach().cpu().numpy())
        results.append((runner, [IterationResult({"y": array}, runner_name=runner)]))
    pair = (REFERENCE, CANDIDATE)
    simple = Comparator.compare_accuracy(results, compare_func=SimpleCompareFunc(check_error_stat="max"))
    cosine = Comparator.compare_accuracy(results, compare_func=CosineSimilarityCompareFunc())
    stats = simple[0][pair][0]["y"]
    return float(stats.max_absdiff), float(stats.max_reldiff), float(cosine[0][pair][0]["y"].cosine_similarity)


def within_profile(engine: Any, feeds: dict[str, Tensor]) -> bool:
    """Whether every feed's shape lies in the TensorRT engine's optimisation profile."""
    profiles = engine.details.get("profiles") or {}
    for name, tensor in feeds.items():
        shape_range = profiles.get(name)
        if shape_range is None:
            continue
        low, high = shape_range["min"], shape_range["max"]
        if len(low) != tensor.dim() or any(not lo <= n <= hi for lo, n, hi in zip(low, tensor.shape, high)):
            return False
    return True


def check_component(name: str, manifest: Any, tokenizer: Any, reference: Backend, candidate: Backend,
                    precision: str, kind: str = "onnx") -> tuple[list[ComponentResult], list[str]]:
    """Results per case, and the labels of cases skipped as outside a TensorRT engine's profile."""
    spec = COMPONENTS[name]
    artifact = manifest.require(name, "onnx", precision)
    engine = manifest.require(name, "trt", precision) if kind == "trt" else None
    tolerance = COMPONENT[(engine or artifact).precision]  # int8 runs some components at fp32/fp16
    results, skipped = [], []
    for label, feeds in component_cases(name, manifest, tokenizer, reference, artifact):
        if engine is not None and not within_profile(engine, feeds):
            skipped.append(f"{name} {label}")
            continue
        ref = reference.infer(spec, feeds)[spec.output_names[0]].cpu().float()
        out = candidate.infer(spec, feeds)[spec.output_names[0]].cpu().float()
        if ref.shape != out.shape:
            max_abs = max_rel = float("inf")
            cosine = 0.0
        else:
            max_abs, max_rel, cosine = compare_outputs(ref, out)
        ref_max = float(ref.abs().max())
        limit = tolerance.max_abs * max(1.0, ref_max)
        passed = bool(np.isfinite(max_abs) and max_abs <= limit and cosine >= tolerance.cosine)
        results.append(ComponentResult(name, label, max_abs, max_rel, cosine, ref_max, limit, tolerance.cosine,
                                       passed))
    return results, skipped
