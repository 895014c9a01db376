"""The PyTorch reference backend: the component modules run eagerly.

FP32 on CPU is the reference every other backend is checked against; FP16 on a
CUDA device is the GPU baseline the TensorRT path has to beat.

``channels_last`` (off by default) stores the 2D convolutional components (UNet,
VAE encoder/decoder) and their image inputs in NHWC, the layout cuDNN's tensor-core
convolutions use natively, which saves the NCHW<->NHWC transposes around every conv
(H200: `benchmarks/results/gpu-notes.md`). The
result is the same computation (equal on CPU to float rounding, tests/test_torch_backend.py);
text encoder and SEINE (5D video tensors) are left as they are.

On a CPU the backend makes glibc keep freed memory (``retain_cpu_memory``, on by
default, see :mod:`mvg_rt.runtime.backends.cpu_memory`): without it every UNet call
page-faults its activations back in.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from mvg_rt.components import UNET, VAE_DECODER, VAE_ENCODER, ComponentSpec
from mvg_rt.runtime.backends.base import Backend, OpTimes
from mvg_rt.runtime.backends.cpu_memory import retain_freed_memory

CHANNELS_LAST_COMPONENTS = frozenset({UNET.name, VAE_ENCODER.name, VAE_DECODER.name})


@contextmanager
def forward_hooks(module: nn.Module, enter: Callable[[], None], leave: Callable[[], None]) -> Iterator[None]:
    """``enter()`` before and ``leave()`` after every call of ``module`` while the context is open."""

    def before(*_: Any) -> None:
        enter()

    def after(*_: Any) -> None:
        leave()

    hooks = [module.register_forward_pre_hook(before), module.register_forward_hook(after)]
    try:
        yield
    finally:
        for hook in hooks:
            hook.remove()


class TorchBackend(Backend):
    name = "torch"

    def __init__(
        self,
        modules: Mapping[str, nn.Module],
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        channels_last: bool = False,
        retain_cpu_memory: bool = True,
    ) -> None:
        super().__init__(torch.device(device))
        self.dtype = dtype
        self.channels_last = channels_last
        self.cpu_memory = retain_freed_memory() if retain_cpu_memory and self.device.type == "cpu" else None
        self.modules = {name: m.to(device=self.device, dtype=dtype).eval() for name, m in modules.items()}
        if channels_last:
            for name in CHANNELS_LAST_COMPONENTS & set(self.modules):
                self.modules[name].to(memory_format=torch.channels_last)

    @property
    def components(self) -> frozenset[str]:
        return frozenset(self.modules)

    def describe(self) -> dict[str, object]:
        return super().describe() | {"dtype": str(self.dtype).removeprefix("torch."),
                                     "channels_last": self.channels_last, "cpu_memory": self.cpu_memory}

    @torch.inference_mode()
    def _infer(self, component: ComponentSpec, feeds: Mapping[str, Tensor]) -> dict[str, Tensor]:
        nhwc = self.channels_last and component.name in CHANNELS_LAST_COMPONENTS
        inputs = [self._cast_in(feeds[name], nhwc) for name in component.input_names]
        output = self.modules[component.name](*inputs)
        outputs = output if isinstance(output, tuple) else (output,)  # the segmenter decoder returns two
        # Callers get the contract's layout back (pipelines slice and view outputs).
        return {name: tensor.float().contiguous() for name, tensor in zip(component.output_names, outputs, strict=True)}

    def _cast_in(self, tensor: Tensor, nhwc: bool = False) -> Tensor:
        tensor = tensor.to(self.device)
        if not tensor.is_floating_point():
            return tensor
        tensor = tensor.to(self.dtype)
        return tensor.to(memory_format=torch.channels_last) if nhwc and tensor.dim() == 4 else tensor

    # ------------------------------------------------------------------ benchmark capabilities

    def profile(self, component: ComponentSpec, feeds: Mapping[str, Tensor]) -> OpTimes:
        """torch.profiler over one call after a warm-up call: self CPU time by operator."""
        from torch.profiler import ProfilerActivity, profile

        self.infer(component, feeds)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            self.infer(component, feeds)
        events = prof.key_averages()
        return OpTimes("torch.profiler (self CPU time by operator)",
                       {e.key: e.self_cpu_time_total / 1e6 for e in events}, {e.key: e.count for e in events})

    @contextmanager
    def timed_network(self, component: ComponentSpec, enter: Callable[[], None],
                      leave: Callable[[], None]) -> Iterator[str]:
        """Forward hooks on the component's module (the casts around it count as overhead)."""
        self.require(component)
        with forward_hooks(self.modules[component.name], enter, leave):
            yield f"forward hooks on the {component.name} module"

    @contextmanager
    def stubbed_network(self, component: ComponentSpec, output: Tensor) -> Iterator[None]:
        """The component module's ``forward`` returns ``output`` (the casts around it still run)."""
        self.require(component)
        module = self.modules[component.name]
        fixed = output.to(self.device, self.dtype)
        module.forward = lambda *inputs: fixed
        try:
            yield
        finally:
            del module.forward
