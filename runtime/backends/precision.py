"""The TF32 policy: ``--precision fp32`` on CUDA means IEEE FP32 unless the user asks for TF32.

PyTorch runs FP32 convolutions on Ampere and newer GPUs as TF32 by default
(``torch.backends.cudnn.allow_tf32`` is True; matmuls default to FP32). TF32 keeps
10 mantissa bits, so an "FP32" run silently computes with ~1e-3 relative rounding per
product, enough to fail ``mvg-rt check``'s FP32 tolerance (1e-4; the H200 figures:
`benchmarks/results/gpu-notes.md`). So TF32 is off unless ``--tf32`` asks for it, and
the policy that ran goes into ``run.json``.

The flags are process-wide and settable without a GPU (they only take effect in CUDA
kernels), so the policy is applied once when a runtime opens.
"""

from __future__ import annotations

import torch


def apply_tf32_policy(tf32: bool = False) -> dict[str, object]:
    """Set PyTorch's TF32 switches for CUDA matmuls and cuDNN convolutions; return what to record.

    ``tf32=False`` (the default) makes FP32 mean FP32; ``tf32=True`` trades ~1e-3 relative
    precision for tensor-core speed in FP32 runs. FP16 runs are not affected.
    """
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    return {
        "tf32": tf32,
        "cuda_matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
        "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
    }
