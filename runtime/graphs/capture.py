"""Capturing a call as a CUDA graph, and its CPU stand-in: the primitive both graph users share.

Two users capture: per-component graphs in a backend (:mod:`mvg_rt.runtime.graphs.component_graphs`)
and whole denoising steps in the pipelines (:mod:`mvg_rt.runtime.graphs.step_graph`).
Neither owns the other, so the primitive lives here, below both.

* :func:`torch_capture` (GPU): ``torch.cuda.CUDAGraph`` around the call, after one
  eager run on a side stream, as the PyTorch CUDA-graph notes prescribe.
* :class:`EagerCapture` (any device): "capture" records the call, "replay" re-runs it
  on the static buffers. It computes the same results as eager execution, so tests on
  a CPU exercise every capture decision with real computation.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import Tensor

from mvg_rt.errors import MvgError

Call = Callable[[dict[str, Tensor]], dict[str, Tensor]]


class Captured(Protocol):
    """A captured call: ``replay()`` recomputes ``outputs`` from the static inputs it was captured on."""

    @property
    def outputs(self) -> dict[str, Tensor]: ...

    def replay(self) -> None: ...


CaptureFn = Callable[[Call, dict[str, Tensor]], Captured]


@dataclass
class EagerCapture:
    """A capture that records the call and re-runs it on replay (same results as eager; any device)."""

    call: Call
    inputs: dict[str, Tensor]
    _outputs: dict[str, Tensor] = field(default_factory=dict)
    replays: int = 0

    @classmethod
    def capture(cls, call: Call, inputs: dict[str, Tensor]) -> EagerCapture:
        return cls(call, inputs)

    @property
    def outputs(self) -> dict[str, Tensor]:
        return self._outputs

    def replay(self) -> None:
        fresh = self.call(self.inputs)
        if not self._outputs:
            self._outputs = {name: tensor.clone() for name, tensor in fresh.items()}
        else:  # static outputs keep their identity across replays, as a real graph's do
            for name, tensor in fresh.items():
                self._outputs[name].copy_(tensor)
        self.replays += 1


class TorchGraph:
    """A ``torch.cuda.CUDAGraph`` and the output buffers its capture allocated."""

    def __init__(self, graph: Any, outputs: dict[str, Tensor]) -> None:
        self.graph, self._outputs = graph, outputs

    @property
    def outputs(self) -> dict[str, Tensor]:
        return self._outputs

    def replay(self) -> None:
        self.graph.replay()


def torch_capture(call: Call, inputs: dict[str, Tensor], pool: Any = None, warm: bool = True) -> TorchGraph:
    """Capture ``call(inputs)`` into a CUDA graph (GPU only; see the module docstring).

    ``warm``: first run the call once eagerly on a side stream (lazy initialisation and
    workspace growth must not happen under capture). Callers whose call has side
    effects (a whole denoising step) pass False and warm up with real steps instead.
    Capturing executes nothing: the outputs are filled by ``replay``.
    """
    if warm:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            call(inputs)
        torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, pool=pool):
        outputs = call(inputs)
    return TorchGraph(graph, outputs)


def cuda_capturing() -> bool:
    return torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()


def require_cuda_graphs(device: torch.device | str) -> None:
    """One-line error unless ``device`` is a CUDA device CUDA graphs can run on."""
    device = torch.device(device)
    if device.type != "cuda":
        raise MvgError(f"--cuda-graphs needs a CUDA device (got --device {device}); pass --device cuda or drop "
                       "--cuda-graphs")
    if not torch.cuda.is_available():
        raise MvgError("--cuda-graphs: no CUDA device is visible to PyTorch; drop --cuda-graphs or use a GPU machine")
