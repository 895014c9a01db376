"""CUDA-graph bookkeeping: which calls are captured, when to capture, replay, invalidate.

A graph replays the kernels of one call with the shapes and buffer addresses it was
captured with, so every captured call needs its own *static* input buffers (feeds are
copied into them) and keeps the output buffers the capture allocated. This module
decides what to do with each call; *how* a graph is captured is injected (both
capture functions live in :mod:`mvg_rt.runtime.graphs.capture`):

* :func:`torch_capture` (GPU): ``torch.cuda.CUDAGraph`` around the call, after one
  eager run on a side stream, as the PyTorch CUDA-graph notes prescribe. The TensorRT
  backend passes the same function: its call enqueues ``execute_async_v3`` on a stream
  that joins the capture.
* :class:`EagerCapture` (any device): "capture" records the call, "replay" re-runs it
  on the static buffers. It computes the same results as eager execution, so tests on
  a CPU exercise every bookkeeping decision with real computation.

Policy (:class:`GraphCache`): a call's key is (component, input names, shapes,
dtypes). A key is run eagerly ``warmup`` times (lazy initialisation, cuDNN/TensorRT
tactic state and allocator growth happen outside capture), then captured once and
replayed for every later call with that key. ``max_per_component`` bounds the
graphs kept per component (least recently used is dropped; TensorRT keeps 1, because
its execution context holds one set of input shapes). ``invalidate`` drops graphs
explicitly (the TensorRT backend calls it when a component gets new input shapes or
buffers, or its engine is released). Calls made while a graph is being captured run straight through, so a
backend call can be part of a larger captured step (see :mod:`mvg_rt.runtime.pipelines.steps.loop`).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from mvg_rt.components import ComponentSpec
from mvg_rt.runtime.backends.base import Backend
from mvg_rt.runtime.graphs.capture import Call, CaptureFn, Captured, cuda_capturing, torch_capture

DEFAULT_COMPONENTS = ("unet", "seine")  # the denoisers: thousands of calls; the rest run a few times per round


@dataclass(frozen=True)
class GraphKey:
    component: str
    inputs: tuple[tuple[str, tuple[int, ...], str], ...]  # (name, shape, dtype)

    @classmethod
    def of(cls, component: str, feeds: Mapping[str, Tensor]) -> GraphKey:
        return cls(component, tuple((name, tuple(t.shape), str(t.dtype).removeprefix("torch."))
                                    for name, t in sorted(feeds.items())))

    def describe(self) -> str:
        shapes = ", ".join(f"{n}{list(s)}" for n, s, _ in self.inputs)
        return f"{self.component}({shapes})"


@dataclass
class _Entry:
    inputs: dict[str, Tensor]
    graph: Captured


@dataclass
class GraphStats:
    eager: int = 0  # warm-up runs and calls of components that are not graphed
    captures: int = 0
    replays: int = 0
    passthrough: int = 0  # calls made while another graph was being captured
    invalidated: int = 0


class GraphCache:
    """Per-call CUDA-graph cache; see the module docstring for the policy."""

    def __init__(self, capture: CaptureFn, warmup: int = 1, max_per_component: int | None = None,
                 components: Collection[str] | None = DEFAULT_COMPONENTS,
                 is_capturing: Callable[[], bool] = lambda: False) -> None:
        if warmup < 0:
            raise ValueError("warmup must be >= 0")
        self.capture, self.warmup, self.max_per_component = capture, warmup, max_per_component
        self.components = None if components is None else frozenset(components)
        self.is_capturing = is_capturing
        self.entries: OrderedDict[GraphKey, _Entry] = OrderedDict()  # least recently used first
        self.seen: dict[GraphKey, int] = {}  # eager runs since the key was last (un)captured
        self.stats = GraphStats()
        self.last_replayed = False  # whether the last run() returned a graph's static outputs

    def graphed(self, component: str) -> bool:
        return self.components is None or component in self.components

    def captured(self, component: str | None = None) -> list[GraphKey]:
        """Keys with a live graph, least recently used first."""
        return [k for k in self.entries if component is None or k.component == component]

    def run(self, component: str, feeds: Mapping[str, Tensor], call: Call) -> dict[str, Tensor]:
        """Outputs of ``call(feeds)``: eager, or by replaying a graph.

        Replayed outputs are the graph's static buffers: valid until the next call of
        this key. Callers that keep them must copy.
        """
        self.last_replayed = False
        if self.is_capturing():
            self.stats.passthrough += 1
            return call(dict(feeds))
        if not self.graphed(component):
            self.stats.eager += 1
            return call(dict(feeds))
        key = GraphKey.of(component, feeds)
        entry = self.entries.get(key)
        if entry is None:
            runs = self.seen.get(key, 0)
            if runs < self.warmup:
                self.seen[key] = runs + 1
                self.stats.eager += 1
                return call(dict(feeds))
            entry = self._capture(key, feeds, call)
        else:
            self.entries.move_to_end(key)
            for name, tensor in feeds.items():
                entry.inputs[name].copy_(tensor)
        entry.graph.replay()
        self.stats.replays += 1
        self.last_replayed = True
        return entry.graph.outputs

    def _capture(self, key: GraphKey, feeds: Mapping[str, Tensor], call: Call) -> _Entry:
        if self.max_per_component is not None:
            mine = self.captured(key.component)
            for old in mine[: max(0, len(mine) - self.max_per_component + 1)]:
                self._drop(old)
        static = {name: tensor.clone() for name, tensor in feeds.items()}
        entry = _Entry(static, self.capture(call, static))
        self.entries[key] = entry
        self.seen.pop(key, None)
        self.stats.captures += 1
        return entry

    def _drop(self, key: GraphKey) -> None:
        del self.entries[key]
        self.seen.pop(key, None)  # a re-capture warms up again (shapes of the context changed meanwhile)
        self.stats.invalidated += 1

    def invalidate(self, component: str | None = None) -> int:
        """Drop the graphs of ``component`` (all if None); returns how many were dropped."""
        dropped = self.captured(component)
        for key in dropped:
            self._drop(key)
        if component is None:
            self.seen.clear()
        else:
            self.seen = {k: v for k, v in self.seen.items() if k.component != component}
        return len(dropped)

    def describe(self) -> dict[str, Any]:
        return {"warmup": self.warmup, "components": sorted(self.components) if self.components else "all",
                "captured": [k.describe() for k in self.entries], **self.stats.__dict__}


# ------------------------------------------------------------------ capture functions


class GraphedBackend(Backend):
    """Any backend's component calls through a :class:`GraphCache` (the PyTorch CUDA baseline uses it).

    Outputs are copied out of the static buffers, so callers may keep them (the PIE
    session keeps the original image's VAE moments for the whole run). It declares no
    input metadata of its own: the inner backend checks every call that reaches it, and
    a graph is only replayed for feed names, shapes and dtypes that reached it first.
    """

    def __init__(self, inner: Backend, cache: GraphCache | None = None,
                 step_capture: CaptureFn | None | str = "inner") -> None:
        """``step_capture``: how whole steps are captured ("inner": as ``inner`` captures them; the CPU tests
        pass :meth:`EagerCapture.capture` with an :class:`EagerCapture` cache)."""
        super().__init__(inner.device)
        self.inner = inner
        self.name = inner.name
        self.cache = cache or GraphCache(torch_capture, is_capturing=cuda_capturing)
        self._step_capture = inner.step_capture() if step_capture == "inner" else step_capture

    @property
    def components(self) -> frozenset[str]:
        return self.inner.components

    def graph_generation(self, component: str) -> int:
        return self.inner.graph_generation(component)

    def step_capture(self) -> CaptureFn | None:
        return self._step_capture

    def _infer(self, component: ComponentSpec, feeds: Mapping[str, Tensor]) -> dict[str, Tensor]:
        outputs = self.cache.run(component.name, feeds, lambda f: self.inner.infer(component, f))
        if not self.cache.last_replayed:  # eager (or inside a larger capture): already the inner backend's own
            return outputs
        return {name: tensor.clone() for name, tensor in outputs.items()}

    def describe(self) -> dict[str, object]:
        return self.inner.describe() | {"cuda_graphs": self.cache.describe()}

    def close(self) -> None:
        self.cache.invalidate()
        self.inner.close()
