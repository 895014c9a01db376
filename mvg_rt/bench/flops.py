"""FLOPs per call, counted once per component and shape with ``torch.utils.flop_counter.FlopCounterMode``.

The count runs the component's PyTorch module (same class and config as the one
benchmarked, from the model folder's configs) on the ``meta`` device: every op is
dispatched with its real shapes, so the counter sees the same convolutions and
matmuls, but nothing is computed and no weights are read. The count is the
counter's: 2 FLOPs per multiply-add of convolutions, matmuls and attention;
element-wise ops (norms, activations, softmax) are not counted. The same number
is used for every backend's row, so achieved FLOP/s compare like for like.
"""

from __future__ import annotations

import json
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from mvg_rt.bench.models import ModelSource


def meta_module(source: ModelSource, component: str) -> nn.Module:
    """The component's module built from the folder's configs on the meta device (no weights)."""
    from mvg_rt.models import component_modules as cm

    root = source.model_dir
    with torch.device("meta"):
        if component == "text_encoder":
            from transformers import CLIPTextConfig, CLIPTextModel

            config = json.loads((root / "text_encoder" / "config.json").read_text())
            return cm.TextEncoderModule(CLIPTextModel(CLIPTextConfig(**config))).eval()
        if component in ("vae_encoder", "vae_decoder"):
            from diffusers import AutoencoderKL

            vae = AutoencoderKL.from_config(AutoencoderKL.load_config(str(root / "vae")))
            return (cm.VaeEncoderModule if component == "vae_encoder" else cm.VaeDecoderModule)(vae).eval()
        if component == "unet":
            from diffusers import UNet2DConditionModel

            unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(str(root / "unet")))
            return cm.UNetModule(unet).eval()
        if component == "seine":
            from mvg_rt.models.seine_checkpoint import stored_config
            from mvg_rt.models.seine_unet import SeineUNet3D, load_builtin_config

            config = (stored_config(source.seine) if source.seine else None) or load_builtin_config("full")
            return cm.SeineModule(SeineUNet3D(config)).eval()
    raise ValueError(f"unknown component {component!r}")


def count_flops(module: nn.Module, inputs: list[Tensor]) -> dict[str, Any]:
    """Total FLOPs of one forward call, and the top operators by FLOPs."""
    meta_inputs = [t.to("meta") for t in inputs]
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        module(*meta_inputs)
    per_op = {str(op): int(n) for op, n in counter.get_flop_counts().get("Global", {}).items()}
    return {"flops": int(counter.get_total_flops()), "by_op": dict(sorted(per_op.items(), key=lambda kv: -kv[1]))}


def component_flops(source: ModelSource, component: str, inputs: list[Tensor]) -> dict[str, Any]:
    result = count_flops(meta_module(source, component), inputs)
    result["method"] = "torch.utils.flop_counter.FlopCounterMode on the meta device"
    return result
