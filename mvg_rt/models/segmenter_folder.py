"""Loading a segmenter: a local Hugging Face ``SamModel`` folder (``config.json`` + weights), never a hub.

MedSAM ships in exactly this form (``wanglab/medsam-vit-base``), and so does the demo
segmenter (``mvg_rt/demo/weights/segmenter/``). A model folder may carry its segmenter in
its own ``segmenter/`` subfolder, as it carries SEINE in ``seine/``; :func:`segmenter_folder`
picks that up, so ``--segment`` takes either folder. Everything is checked before the
weights load, so a wrong folder is one line naming what is missing, not a traceback from
``from_pretrained``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mvg_rt.errors import MvgError, first_line
from mvg_rt.io.jsonio import read_json

SEGMENTER_SUBFOLDER = "segmenter"
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
_FIX = "point it at a Hugging Face SamModel folder (config.json + model.safetensors, as wanglab/medsam-vit-base)"


def segmenter_folder(folder: str | Path, option: str = "--segment") -> Path:
    """The SamModel folder that ``folder`` names: itself, or its own ``segmenter/`` subfolder."""
    folder = Path(folder)
    if not folder.is_dir():
        raise MvgError(f"{option} {folder}: no such folder; {_FIX}")
    nested = folder / SEGMENTER_SUBFOLDER
    return nested if (nested / "config.json").is_file() else folder


def load_segmenter(folder: str | Path, option: str = "--segment") -> tuple[Any, Path]:
    """The ``SamModel`` (eval mode) of a segmenter folder, and the folder it was read from."""
    from transformers import SamConfig, SamModel

    root = segmenter_folder(folder, option)
    config_path = root / "config.json"
    if not config_path.is_file():
        raise MvgError(f"{option} {folder}: it holds no config.json; {_FIX}")
    config = read_json(config_path, "segmenter config", _FIX)
    if config.get("model_type") != "sam":
        raise MvgError(f"{option} {folder}: its config.json describes a {config.get('model_type')!r} model, not SAM "
                       f"(model_type 'sam'); {_FIX}")
    if not any((root / name).is_file() for name in WEIGHT_FILES):
        raise MvgError(f"{option} {folder}: it holds no weights ({' or '.join(WEIGHT_FILES)}); {_FIX}")
    try:
        model, info = SamModel.from_pretrained(str(root), config=SamConfig.from_pretrained(str(root)),
                                               local_files_only=True, output_loading_info=True)
    except Exception as err:  # noqa: BLE001 - damaged or mismatched weights: one line, with the fix
        raise MvgError(f"{option} {folder}: cannot load the segmenter ({first_line(err)}); {_FIX}") from err
    missing = sorted(set(info.get("missing_keys", ())) | set(info.get("mismatched_keys", ())))
    if missing:  # from_pretrained would run those weights at random
        raise MvgError(f"{option} {folder}: its weights lack {len(missing)} of the model's tensors (e.g. {missing[0]}): "
                       f"the weights are not this config's; {_FIX}")
    return model.eval(), root
