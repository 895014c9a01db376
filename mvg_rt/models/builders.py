"""Random-initialised models of the real SD 1.x architectures, and writing them as folders.

Tests need models that are fast; benchmarks need the real architectures at full
size. Latency does not depend on weight values, and no weights can be downloaded
here, so both come from the same builder: a named config (data, under
``configs/``) and a seed.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from mvg_rt.models.diffusers_folder import DiffusersModels

# CLIP-format BPE files (CLIP's byte alphabet, 310 merges) learned once from tokenizer/corpus.txt; the writer,
# mvg_rt/models/tokenizer.py:write_clip_tokenizer, had no caller left and was removed (it is in commit 38f02ab).
SHIPPED_TOKENIZER = resources.files("mvg_rt.models") / "tokenizer"
SIZES = ("tiny", "sd14")
SEINE_FILE = "seine.safetensors"


def builtin_config(name: str) -> dict[str, Any]:
    """A config shipped in ``mvg_rt/models/configs/<name>.json``."""
    return json.loads((resources.files("mvg_rt.models") / "configs" / f"{name}.json").read_text())


def build_models(size: str = "tiny", seed: int = 0) -> DiffusersModels:
    """SD 1.x text encoder, VAE and UNet of the given size with seeded random weights.

    ``tiny`` uses the tokenizer the project ships; ``sd14`` uses the same tokenizer
    files but the full CLIP ViT-L/14 text model (vocab 49408), which is only ever
    fed token ids, so the tokenizer's smaller vocabulary does not matter for timing.
    """
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    if size not in SIZES:
        raise ValueError(f"size must be one of {SIZES}, got {size!r}")
    tokenizer = CLIPTokenizer.from_pretrained(str(SHIPPED_TOKENIZER), local_files_only=True)
    text_config = builtin_config(f"{size}_text_encoder" if size == "tiny" else "sd14_text_encoder")
    if size == "tiny":
        text_config |= {
            "vocab_size": len(tokenizer),
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id,
        }
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(CLIPTextConfig(**text_config)).eval()
    vae = AutoencoderKL.from_config(builtin_config(f"{size}_vae")).eval()
    unet = UNet2DConditionModel.from_config(builtin_config(f"{size}_unet")).eval()
    return DiffusersModels(
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        vae=vae,
        unet=unet,
        scheduler_config=builtin_config("sd14_scheduler"),
        sources={"random_init": f"{size}, seed {seed}"},
    )


def build_seine(unet: Any, size: str = "tiny", seed: int = 0) -> Any:
    """A SEINE denoiser initialised from ``unet`` by SEINE's recipe.

    For the tiny random model the temporal layers and the extra input channels are
    also randomised (the recipe zeroes them), so that every path of the 3D model
    carries signal in tests and benchmarks.
    """
    from mvg_rt.models.seine_checkpoint import seine_from_unet2d
    from mvg_rt.models.seine_unet import load_builtin_config

    seine = seine_from_unet2d(unet, load_builtin_config("tiny" if size == "tiny" else "full"))
    return enliven_new_layers(seine, seed + 1)


def enliven_new_layers(seine: Any, seed: int) -> Any:
    """Add N(0, 0.1^2) noise to the layers SEINE's recipe starts at zero or identity (temporal
    attention, its norm, the extra ``conv_in`` input channels), in place, so random models
    exercise every path of the 3D network."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in seine.named_parameters():
            if "attn_temp" in name or "norm_temp" in name or name == "conv_in.weight":
                param.add_(0.1 * torch.randn(param.shape, generator=generator))
    return seine


def write_model_folder(models: DiffusersModels, out_dir: str | Path, seine: Any = None) -> Path:
    """Write a complete diffusers pipeline folder (loadable by diffusers and by mvg-rt).

    A SEINE denoiser, if given, goes to ``seine/seine.safetensors`` with its config in
    the file's metadata; mvg-rt picks it up from there for the transitions.
    """
    from mvg_rt.models.seine_checkpoint import save_seine_checkpoint

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if seine is not None:
        (out / "seine").mkdir(exist_ok=True)
        save_seine_checkpoint(seine, out / "seine" / SEINE_FILE)
    models.tokenizer.save_pretrained(str(out / "tokenizer"))
    models.text_encoder.save_pretrained(str(out / "text_encoder"), safe_serialization=True)
    models.vae.save_pretrained(str(out / "vae"), safe_serialization=True)
    models.unet.save_pretrained(str(out / "unet"), safe_serialization=True)
    (out / "scheduler").mkdir(exist_ok=True)
    (out / "scheduler" / "scheduler_config.json").write_text(json.dumps(models.scheduler_config, indent=2))
    model_index = {
        "_class_name": "StableDiffusionPipeline",
        "scheduler": ["diffusers", models.scheduler_config.get("_class_name", "PNDMScheduler")],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
        "safety_checker": [None, None],
        "feature_extractor": [None, None],
        "requires_safety_checker": False,
    }
    (out / "model_index.json").write_text(json.dumps(model_index, indent=2))
    return out
