"""A side-effecting step run N times as replays of one captured graph (the step loops' graph).

The step reads and writes only static buffers (its own index included), so one
capture serves every step of every loop that reuses the buffers; the backend's
:meth:`~mvg_rt.runtime.backends.base.Backend.graph_generation` says when what the
graph holds went stale.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import Tensor

from mvg_rt.runtime.graphs.capture import CaptureFn, Captured


class LoopGraph:
    """Runs a side-effecting ``step`` N times: ``warmup`` eager steps, then one capture, then replays.

    The graph is kept across loops (rounds, clips) and captured again if the backend's
    ``graph_generation(component)`` changed (the TensorRT backend reallocated buffers,
    saw new shapes or reloaded the engine).
    """

    def __init__(self, step: Callable[[], None], capture: CaptureFn | None, warmup: int = 1,
                 generation: Callable[[], int] = lambda: 0) -> None:
        self.step, self.capture, self.warmup, self.generation = step, capture, warmup, generation
        self.graph: Captured | None = None
        self.captured_generation = -1
        self.eager_steps = 0  # since the last (re)capture decision
        self.captures = self.replays = 0

    def _call(self, _: dict[str, Tensor]) -> dict[str, Tensor]:
        self.step()
        return {}

    def run(self, steps: int, on_step: Callable[[int], None] | None = None) -> None:
        for i in range(steps):
            if self.capture is None:
                self.step()
            else:
                if self.graph is not None and self.captured_generation != self.generation():
                    self.graph, self.eager_steps = None, 0
                if self.graph is None and self.eager_steps < self.warmup:
                    self.step()
                    self.eager_steps += 1
                else:
                    if self.graph is None:
                        self.captured_generation = self.generation()  # what the graph's buffers belong to
                        self.graph = self.capture(self._call, {})
                        self.captures += 1
                    self.graph.replay()
                    self.replays += 1
            if on_step is not None:
                on_step(i)

    def describe(self) -> dict[str, Any]:
        return {"captured": self.graph is not None, "captures": self.captures, "replays": self.replays}
