"""The PyTorch reference backend: the component modules run eagerly.

FP32 on CPU is the reference every other backend is checked against; FP16 on a
CUDA device is the GPU baseline the TensorRT path has to beat.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from mvg_rt.components import ComponentSpec
from mvg_rt.runtime.backends.base import Backend


class TorchBackend(Backend):
    name = "torch"

    def __init__(
        self,
        modules: Mapping[str, nn.Module],
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__(torch.device(device))
        self.dtype = dtype
        self.modules = {name: m.to(device=self.device, dtype=dtype).eval() for name, m in modules.items()}

    @property
    def components(self) -> frozenset[str]:
        return frozenset(self.modules)

    def describe(self) -> dict[str, object]:
        return super().describe() | {"dtype": str(self.dtype).removeprefix("torch.")}

    @torch.inference_mode()
    def infer(self, component: ComponentSpec, feeds: Mapping[str, Tensor]) -> dict[str, Tensor]:
        inputs = [self._cast_in(feeds[name]) for name in component.input_names]
        output = self.modules[component.name](*inputs)
        return {component.output_names[0]: output.float()}

    def _cast_in(self, tensor: Tensor) -> Tensor:
        tensor = tensor.to(self.device)
        return tensor.to(self.dtype) if tensor.is_floating_point() else tensor
