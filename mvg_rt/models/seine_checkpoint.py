"""Reading, checking, creating and writing SEINE denoiser checkpoints.

The official ``seine.pt`` is a pickle with the weights under ``'ema'``. It is read
with ``weights_only=True`` so a checkpoint can never run code. Whether it holds
``<...>.attn_temp.rotary_emb.freqs`` tensors depends on the rotary-embedding-torch
version that saved it; :class:`SeineUNet3D` computes those frequencies, so they
are optional here and, when present, must equal what the model computes.
"""

from __future__ import annotations

import json
import pickle
import pickletools
import re
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor

from mvg_rt.errors import MvgError
from mvg_rt.models.seine_unet import SeineConfig, SeineUNet3D, load_builtin_config

if TYPE_CHECKING:
    from collections.abc import Mapping

    from diffusers import UNet2DConditionModel

TORCH_SUFFIXES = (".pt", ".pth", ".ckpt")
SAFETENSORS_SUFFIX = ".safetensors"
WEIGHT_KEYS = ("ema", "state_dict", "model")  # where training scripts nest the weights, most preferred first
CONV_IN = "conv_in.weight"
FIT_HINT = "Pass the official seine.pt or a checkpoint written by mvg-rt, with the matching SEINE config."
LISTED = 3  # how many key names a mismatch message shows per kind


def load_seine_state_dict(path: str | Path) -> dict[str, Tensor]:
    """The tensors of a ``.pt/.pth/.ckpt`` (weights under 'ema', 'state_dict' or 'model', or at the top)
    or ``.safetensors`` checkpoint; every problem is a one-line :class:`MvgError`."""
    path = Path(path)
    if not path.is_file():
        raise MvgError(f"SEINE checkpoint {path} does not exist. Pass the path of seine.pt (Vchitect/SEINE).")
    suffix = path.suffix.lower()
    if suffix == SAFETENSORS_SUFFIX:
        return _read_safetensors(path)
    if suffix in TORCH_SUFFIXES:
        return _weights_in(_read_pickle(path), path)
    raise MvgError(f"SEINE checkpoint {path} has an unknown type {suffix!r}. "
                   f"Pass a {', '.join(TORCH_SUFFIXES)} or {SAFETENSORS_SUFFIX} file.")


def load_seine_model(path: str | Path, config: SeineConfig | None = None,
                     dtype: torch.dtype = torch.float32) -> SeineUNet3D:
    """A :class:`SeineUNet3D` (eval mode, on CPU) holding the checkpoint's weights, loaded strictly.

    The model is built on the meta device and takes the loaded tensors directly, so a full-size
    model costs one copy of the weights and no random initialisation.
    """
    config = config or stored_config(path) or load_builtin_config("full")
    state = load_seine_state_dict(path)
    with torch.device("meta"):
        model = SeineUNet3D(config)
    problem = _mismatch(state, model.state_dict(), optional=frozenset(model.optional_state_keys()))
    if problem:
        raise MvgError(f"{path} does not fit the SEINE architecture: {problem}. {FIT_HINT}")
    try:
        model.load_state_dict({k: v.to(dtype) for k, v in state.items()}, strict=True, assign=True)
    except RuntimeError as err:  # what remains: rotary frequencies that are not SEINE's
        detail = str(err).strip().splitlines()[-1].strip()
        raise MvgError(f"{path} does not fit the SEINE architecture: {detail}. {FIT_HINT}") from err
    return model.eval()


def stored_config(path: str | Path) -> SeineConfig | None:
    """The SEINE config mvg-rt writes into a ``.safetensors`` checkpoint's metadata, if any.

    The official ``seine.pt`` carries no config (it is the full SD 1.4 layout), so
    ``None`` means "use the full config".
    """
    path = Path(path)
    if path.suffix.lower() != SAFETENSORS_SUFFIX or not path.is_file():
        return None
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            text = (handle.metadata() or {}).get("seine_config")
    except (SafetensorError, OSError) as err:
        raise _corrupt(path, _one_line(err)) from err
    if not text:
        return None
    try:
        return SeineConfig.from_dict(json.loads(text))
    except (ValueError, TypeError, RecursionError) as err:  # damaged metadata: JSON, nesting or fields
        raise _corrupt(path, f"its stored SEINE config: {_one_line(err)}") from err


def seine_from_unet2d(unet2d: UNet2DConditionModel, config: SeineConfig) -> SeineUNet3D:
    """SEINE's initialisation from an SD 1.x ``UNet2DConditionModel``.

    Every 2D weight is copied by name (inflated convs apply the 2D kernels per frame);
    ``conv_in`` grows from 4 to ``config.in_channels`` inputs with the extra (mask and
    masked-video) channels zero; temporal layers (``attn_temp``, ``norm_temp``) keep their
    fresh init, whose zero output weight follows SEINE.
    """
    _check_unet2d_config(unet2d.config, config)
    model = SeineUNet3D(config)
    fresh = model.state_dict()
    source = unet2d.state_dict()
    image_part = {k: v for k, v in fresh.items() if not is_temporal(k)} | {CONV_IN: fresh[CONV_IN][:, :4]}
    problem = _mismatch(source, image_part)
    if problem:
        raise MvgError(f"the 2D UNet does not fit SEINE config {config.block_out_channels}: {problem}. "
                       "Pass an SD 1.x UNet with the config's widths.")
    merged = {k: fresh[k] if is_temporal(k) else source[k] for k in fresh}
    merged[CONV_IN] = widen_conv_in(source[CONV_IN], config.in_channels)
    model.load_state_dict(merged, strict=True)
    return model.eval()


def save_seine_checkpoint(model: SeineUNet3D, path: str | Path) -> Path:
    """Write the weights as ``.safetensors`` (config in the metadata) or, for tools that expect
    the official layout, as a ``.pt/.pth/.ckpt`` pickle of ``{'ema': state_dict}``."""
    path = Path(path)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    suffix = path.suffix.lower()
    if suffix == SAFETENSORS_SUFFIX:
        metadata = {"format": "pt", "producer": "mvg-rt", "seine_config": json.dumps(model.config.to_dict())}
        save_file(state, str(path), metadata=metadata)
    elif suffix in TORCH_SUFFIXES:
        torch.save({"ema": state}, path)
    else:
        raise MvgError(f"cannot write a SEINE checkpoint as {path}. "
                       f"Name it *{SAFETENSORS_SUFFIX} or *{TORCH_SUFFIXES[0]}.")
    return path


def is_temporal(key: str) -> bool:
    """Keys of the layers SEINE adds to SD's UNet (``attn_temp.*``, ``norm_temp.*``)."""
    return "_temp." in key


def widen_conv_in(weight: Tensor, in_channels: int) -> Tensor:
    """(out, 4, k, k) -> (out, in_channels, k, k): the first 4 inputs keep the 2D weights, the rest are zero."""
    wide = weight.new_zeros(weight.shape[0], in_channels, *weight.shape[2:])
    wide[:, : weight.shape[1]] = weight
    return wide


# --------------------------------------------------------------------------- helpers


def _check_unet2d_config(cfg: Mapping[str, Any], config: SeineConfig) -> None:
    """Settings that change the computation without changing any weight shape must match too."""
    heads = cfg.get("num_attention_heads") or cfg.get("attention_head_dim")
    expected = {
        "heads": (heads, config.attention_head_dim),
        "in_channels": (cfg.get("in_channels"), 4),
        "norm_num_groups": (cfg.get("norm_num_groups"), config.norm_num_groups),
        "norm_eps": (cfg.get("norm_eps"), config.norm_eps),
    }
    sd_defaults = {"flip_sin_to_cos": True, "freq_shift": 0, "act_fn": "silu", "mid_block_scale_factor": 1,
                   "resnet_time_scale_shift": "default", "time_embedding_type": "positional",
                   "only_cross_attention": False, "center_input_sample": False}
    expected |= {k: (cfg.get(k, v), v) for k, v in sd_defaults.items()}
    wrong = [f"{k}={got!r} (needs {want!r})" for k, (got, want) in expected.items() if got != want]
    if wrong:
        raise MvgError(f"the 2D UNet cannot seed SEINE config {config.block_out_channels}: {', '.join(wrong)}. "
                       "Pass an SD 1.x UNet with the config's layout.")


def _one_line(err: BaseException) -> str:
    """The first sentence of an exception's message (torch's are long and multi-line)."""
    text = str(err).strip().split("\n")[0].split(". ")[0].strip()
    return text[:200] or type(err).__name__


def _read_pickle(path: Path) -> object:
    """``torch.load(weights_only=True)``: a pickle that would run code or build objects is refused, never run."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's pickle-protocol notes are not the user's business
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        refused = re.search(r"GLOBAL (\S+)", str(err))
        if refused is None and not _builds_objects(path):
            raise _corrupt(path, "not a valid PyTorch pickle") from err
        what = f"a Python object ({refused.group(1).rstrip('.,')})" if refused else "pickle instructions that build Python objects"
        raise MvgError(
            f"SEINE checkpoint {path} was refused as unsafe: it holds {what} that a safe load refuses "
            f"(torch.load(weights_only=True) never runs code). If you trust the file, re-save only its weights, e.g. "
            f"torch.save({{'ema': torch.load(p, weights_only=False)['ema']}}, 'seine_weights.pt'), "
            f"or convert it to {SAFETENSORS_SUFFIX}.") from err
    except Exception as err:  # a damaged zip/pickle raises many types; all mean the same to the user
        raise _corrupt(path, _one_line(err)) from err


def _builds_objects(path: Path) -> bool:
    """Whether a raw pickle stream parses whole and imports or calls something (read, never executed)."""
    try:
        opcodes = {op.name for op, _, _ in pickletools.genops(path.read_bytes())}
    except Exception:  # noqa: BLE001 - not a pickle stream at all: corrupt, not unsafe
        return False
    return bool(opcodes & {"GLOBAL", "STACK_GLOBAL", "REDUCE", "INST", "OBJ", "NEWOBJ", "NEWOBJ_EX"})


def _corrupt(path: Path, detail: str) -> MvgError:
    return MvgError(f"SEINE checkpoint {path} cannot be read ({detail}); it is corrupt or truncated. "
                    "Download, copy or write the checkpoint again.")


def _read_safetensors(path: Path) -> dict[str, Tensor]:
    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as err:
        raise _corrupt(path, f"as safetensors: {_one_line(err)}") from err


def _weights_in(obj: object, path: Path) -> dict[str, Tensor]:
    """The state dict inside a loaded training checkpoint."""
    if isinstance(obj, dict):
        nested = next((obj[k] for k in WEIGHT_KEYS if isinstance(obj.get(k), dict)), obj)
        odd = next((k for k, v in nested.items() if not isinstance(v, Tensor)), None)
        if odd is None and nested:
            return dict(nested)
        what = f"entry {odd!r} is a {type(nested[odd]).__name__}" if odd is not None else "it is empty"
    else:
        what = f"it holds a {type(obj).__name__}"
    raise MvgError(f"SEINE checkpoint {path} is not a state dict ({what}). "
                   f"Pass a checkpoint whose weights sit under one of {WEIGHT_KEYS} or at the top level.")


def _mismatch(got: dict[str, Tensor], want: dict[str, Tensor], optional: frozenset[str] = frozenset()) -> str:
    """'' when ``got`` has exactly ``want``'s keys (plus any ``optional`` ones) and shapes,
    else a short description of the differences."""
    missing = [k for k in want if k not in got]
    unexpected = [k for k in got if k not in want and k not in optional]
    reshaped = [f"{k} {list(got[k].shape)} vs {list(want[k].shape)}"
                for k in want if k in got and got[k].shape != want[k].shape]
    parts = [f"{len(items)} {label} ({_first(items)})" for label, items in
             (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", reshaped)) if items]
    return ", ".join(parts)


def _first(items: list[str]) -> str:
    shown = ", ".join(items[:LISTED])
    return shown + (", ..." if len(items) > LISTED else "")
