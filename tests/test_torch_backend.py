"""PyTorch backend options: the TF32 policy and channels_last for the 2D networks."""

from __future__ import annotations

import copy

import pytest
import torch

from mvg_rt.components import UNET, VAE_DECODER, VAE_ENCODER
from mvg_rt.models.component_modules import component_modules
from mvg_rt.runtime.backends.precision import apply_tf32_policy
from mvg_rt.runtime.backends.torch_backend import TorchBackend

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def restore_tf32_flags():
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


def test_tf32_is_off_unless_asked_and_the_policy_is_recorded(restore_tf32_flags):
    torch.backends.cudnn.allow_tf32 = True  # PyTorch's own default for convolutions
    recorded = apply_tf32_policy()
    assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
    assert recorded == {"tf32": False, "cuda_matmul_allow_tf32": False, "cudnn_allow_tf32": False,
                        "float32_matmul_precision": "highest"}
    recorded = apply_tf32_policy(tf32=True)
    assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
    assert recorded["tf32"] and recorded["float32_matmul_precision"] == "high"


def test_channels_last_gives_the_same_outputs(tiny_models):
    g = torch.Generator().manual_seed(0)
    text = torch.randn(2, 77, 32, generator=g)
    cases = [
        (UNET, {"sample": torch.randn(2, 4, 8, 12, generator=g), "timestep": torch.tensor([999.0, 1.0]),
                "encoder_hidden_states": text}),
        (VAE_ENCODER, {"images": torch.rand(1, 3, 64, 48, generator=g) * 2 - 1}),
        (VAE_DECODER, {"latents": torch.randn(1, 4, 8, 6, generator=g)}),
    ]
    plain = TorchBackend(component_modules(tiny_models))
    nhwc = TorchBackend(component_modules(copy.deepcopy(tiny_models)), channels_last=True)
    assert nhwc.describe()["channels_last"] is True
    conv = next(m for m in nhwc.modules["unet"].modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    for spec, feeds in cases:
        expected = plain.infer(spec, feeds)[spec.output_names[0]]
        got = nhwc.infer(spec, feeds)[spec.output_names[0]]
        assert got.is_contiguous()  # the contract's layout back
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_freed_cpu_memory_is_reused_without_page_faults():
    """After ``retain_freed_memory`` (what TorchBackend does on a CPU), a network's activations come back
    from the heap on the next call: no page faults, where glibc's defaults map 32 MiB blocks afresh
    every call (~33,000 faults per call of this net, measured). The median over several calls is what is
    asserted: the kernel itself now and then faults a settled block back in (NUMA balancing, page
    compaction), measured here as one call in ten or so with 8,192 faults (one 32 MiB block) even single-threaded."""
    import resource
    import statistics

    from mvg_rt.runtime.backends.cpu_memory import retain_freed_memory

    state = retain_freed_memory()
    if not state["retained"]:
        pytest.skip(f"not glibc: {state['reason']}")
    assert TorchBackend({}).describe()["cpu_memory"] == state
    net = torch.nn.Sequential(torch.nn.Conv2d(8, 32, 3, padding=1), torch.nn.SiLU(),
                              torch.nn.Conv2d(32, 8, 3, padding=1)).eval()
    x = torch.randn(1, 8, 512, 512)  # 32 MiB activations (8,192 pages)

    def faults_of_one_call() -> int:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        with torch.inference_mode():
            net(x)
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

    for _ in range(4):  # the heap settles into the call's allocation pattern
        faults_of_one_call()
    assert statistics.median(faults_of_one_call() for _ in range(9)) < 256
