"""The one interface every backend implements.

Pipelines (PIE, transitions) call the typed methods below and nothing else, so a
backend is swapped without touching pipeline math. The primitive is
:meth:`Backend.infer` (the split follows polygraphy's runners: ``BaseRunner.infer``
checks the feeds against ``get_input_metadata`` and calls ``infer_impl``): run one
named component on named tensors. ``infer`` checks the feeds once per combination of
feed shapes against what the backend declares (:meth:`Backend.input_metadata`, the
message grammar in :mod:`mvg_rt.runtime.backends.declarations`), then calls the
subclass's :meth:`Backend._infer`. Tensors cross this boundary on ``backend.device``
in float32 (token ids in int64); a backend that computes in FP16 casts inside, so
scheduler arithmetic in the pipelines always stays FP32.

Capabilities with defaults (a backend with nothing special keeps them): what the
denoising loops ask (:meth:`Backend.graph_generation`, :meth:`Backend.step_capture`)
and what the benchmarks ask (:meth:`Backend.profile`, :meth:`Backend.timed_network`,
:meth:`Backend.stubbed_network`), so no caller tests a backend's name or reaches into
its modules or sessions.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass

import torch
from torch import Tensor

from mvg_rt.components import (SEGMENTER_DECODER, SEGMENTER_ENCODER, SEINE, TEXT_ENCODER, UNET, VAE_DECODER,
                               VAE_ENCODER, ComponentSpec)
from mvg_rt.errors import MvgError
from mvg_rt.runtime.backends.declarations import InputMetadata
from mvg_rt.runtime.graphs.capture import CaptureFn, torch_capture


@dataclass(frozen=True)
class OpTimes:
    """Where one call of a component spent its time, per operator (what :meth:`Backend.profile` returns)."""

    tool: str  # what measured, and what the seconds are (for the report)
    seconds: dict[str, float]
    calls: dict[str, int]


class Backend(ABC):
    """Runs the networks of one model on one device."""

    #: Short name used on the command line and in reports (torch, ort, trt).
    name: str = "abstract"

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._checked: dict[tuple, dict[str, int]] = {}  # (component, feed shapes) -> axis sizes, once checked

    @property
    @abstractmethod
    def components(self) -> frozenset[str]:
        """Names of the components this backend can run."""

    def infer(self, component: ComponentSpec, feeds: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Run ``component`` on ``feeds`` (keyed by input name); return outputs keyed by name.

        The feeds are checked against :meth:`input_metadata` first (one-line :class:`MvgError`)."""
        self.require(component)
        self.axis_sizes(component, feeds)
        return self._infer(component, feeds)

    @abstractmethod
    def _infer(self, component: ComponentSpec, feeds: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Run ``component`` on ``feeds`` that :meth:`infer` has checked."""

    def input_metadata(self, component: ComponentSpec) -> InputMetadata | None:
        """What ``component``'s inputs accept. Default None: nothing declared, the networks take what they
        take (the PyTorch modules; a wrapper whose inner backend checks)."""
        return None

    def axis_sizes(self, component: ComponentSpec, feeds: Mapping[str, Tensor]) -> dict[str, int]:
        """The sizes of ``component``'s named axes in ``feeds``, checked against :meth:`input_metadata`.

        Checked once per combination of feed shapes: a denoising loop feeds the same shapes
        thousands of times, and later calls with them cost one dictionary lookup.
        """
        key = (component.name, tuple((name, tuple(tensor.shape)) for name, tensor in feeds.items()))
        sizes = self._checked.get(key)
        if sizes is None:
            metadata = self.input_metadata(component)
            sizes = {} if metadata is None else metadata.check({n: tuple(t.shape) for n, t in feeds.items()})
            self._checked[key] = sizes
        return sizes

    def describe(self) -> dict[str, object]:
        """What ran (recorded in run.json and benchmark reports)."""
        return {"backend": self.name, "device": str(self.device)}

    def close(self) -> None:
        """Release device memory held by the backend (engines, sessions, graphs)."""

    # Capabilities the denoising loops ask for (defaults: a backend with nothing special) -------------

    def graph_generation(self, component: str) -> int:
        """A number that changes whenever graphs captured over ``component``'s calls hold stale state (a
        TensorRT engine reloaded, released, given new input shapes or a regrown activation buffer); a step
        loop captures again when it changes. Default: never."""
        return 0

    def step_capture(self) -> CaptureFn | None:
        """How to capture one whole denoising step, this backend's calls included, as one graph.

        None: it cannot be, and the step loops run the same static-buffer step eagerly.
        Default: a CUDA graph on a CUDA device (the step warms up with real steps first,
        so the capture itself runs nothing).
        """
        if self.device.type != "cuda":
            return None
        return lambda call, inputs: torch_capture(call, inputs, warm=False)

    # Capabilities the benchmarks ask for (default: refused in one line) ---------------------------------

    def profile(self, component: ComponentSpec, feeds: Mapping[str, Tensor]) -> OpTimes:
        """Time per operator of one call of ``component`` on ``feeds``, after a warm-up call."""
        raise MvgError(f"this {self.name} backend cannot profile its calls (TensorRT engines and CUDA-graph replays "
                       "are not profiled here): profile with --backend torch or ort, without --cuda-graphs")

    def timed_network(self, component: ComponentSpec, enter: Callable[[], None],
                      leave: Callable[[], None]) -> AbstractContextManager[str]:
        """A context in which ``enter()`` and ``leave()`` bracket each call of ``component``'s network proper
        (not this backend's own casts and checks, which count as overhead); it yields how it times them.

        The per-step overhead benchmark subtracts this time from each denoising step.
        """
        raise MvgError(f"this {self.name} backend cannot time its network calls apart from its own work (TensorRT "
                       "engines and CUDA-graph replays run no hooks): measure the overhead with --backend torch or "
                       "ort, without --cuda-graphs")

    def stubbed_network(self, component: ComponentSpec, output: Tensor) -> AbstractContextManager[None]:
        """A context in which ``component``'s network returns the constant ``output`` (everything around it,
        this backend's own work included, still runs): the loop's own time, with no network time at all."""
        raise MvgError(f"this {self.name} backend cannot stub out a network (only PyTorch modules are stubbed): "
                       "measure with --backend torch, without --cuda-graphs")

    def __enter__(self) -> Backend:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def require(self, component: ComponentSpec) -> None:
        if component.name not in self.components:
            raise MvgError(
                f"the {self.name} backend has no {component.name} component: "
                f"export/build it (mvg-rt export --help) or use a model folder that has it"
            )

    def _run(self, component: ComponentSpec, *tensors: Tensor) -> Tensor:
        feeds = dict(zip(component.input_names, tensors, strict=True))
        return self.infer(component, feeds)[component.output_names[0]]

    # Typed calls used by the pipelines -------------------------------------------------

    def encode_text(self, input_ids: Tensor) -> Tensor:
        """(B, 77) int64 token ids -> (B, 77, hidden) embeddings."""
        return self._run(TEXT_ENCODER, input_ids)

    def encode_images(self, images: Tensor) -> Tensor:
        """(B, 3, H, W) images in [-1, 1] -> (B, 2*C, H/8, W/8) posterior mean and logvar."""
        return self._run(VAE_ENCODER, images)

    def decode_latents(self, latents: Tensor) -> Tensor:
        """(B, C, H/8, W/8) unscaled latents -> (B, 3, H, W) images in about [-1, 1]."""
        return self._run(VAE_DECODER, latents)

    def predict_noise(self, sample: Tensor, timestep: Tensor, text_embeddings: Tensor) -> Tensor:
        """UNet epsilon prediction for a (B, 4, h, w) sample at per-item timesteps (B,)."""
        return self._run(UNET, sample, timestep, text_embeddings)

    def predict_video_noise(self, sample: Tensor, timestep: Tensor, text_embeddings: Tensor) -> Tensor:
        """SEINE epsilon prediction for a (B, 9, F, h, w) sample -> (B, 4, F, h, w)."""
        return self._run(SEINE, sample, timestep, text_embeddings)

    def embed_image_for_segmentation(self, pixel_values: Tensor) -> Tensor:
        """(B, 3, S, S) segmenter input in [0, 1] -> (B, width, e, e) image embeddings, once per image."""
        return self._run(SEGMENTER_ENCODER, pixel_values)

    def segment_boxes(self, image_embeddings: Tensor, boxes: Tensor) -> tuple[Tensor, Tensor]:
        """(B, width, e, e) embeddings and (B, 1, 4) boxes in the encoder's pixel frame -> (B, 1, m, m) mask
        logits and (B, 1) IoU scores (the decoder's own estimate of its mask's quality)."""
        feeds = dict(zip(SEGMENTER_DECODER.input_names, (image_embeddings, boxes), strict=True))
        outputs = self.infer(SEGMENTER_DECODER, feeds)
        return outputs["mask_logits"], outputs["iou_scores"]
