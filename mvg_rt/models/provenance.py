"""Where a model came from: fingerprints of model folders and checkpoints, and the check that an
engines folder was exported from the sources a user names.

The fingerprints cover the same parts for the PyTorch runtime's provenance (run.json) and
for an export's manifest, so the two can be compared.
"""

from __future__ import annotations

from pathlib import Path

from mvg_rt.artifacts.hashing import fingerprint
from mvg_rt.artifacts.manifest import REEXPORT, Manifest
from mvg_rt.errors import MvgError
from mvg_rt.models.diffusers_folder import check_model_folder, resolve_unet_dir

MODEL_DIR_PARTS = ("text_encoder", "vae", "unet", "scheduler", "tokenizer")


def model_dir_fingerprint(model_dir: str | Path) -> str:
    """The model folder's fingerprint, over the parts the PIE pipeline loads."""
    root = check_model_folder(model_dir)
    return fingerprint([root / part for part in MODEL_DIR_PARTS])


def unet_fingerprint(unet_dir: str | Path) -> str:
    return fingerprint([resolve_unet_dir(unet_dir)])


def file_fingerprint(path: str | Path) -> str:
    if not Path(path).is_file():
        raise MvgError(f"{path} does not exist: pass the checkpoint the engines were exported from")
    return fingerprint([Path(path)])


def check_source(manifest: Manifest, model_dir: str | Path | None = None, unet_dir: str | Path | None = None,
                 seine: str | Path | None = None) -> None:
    """Refuse a model folder / UNet / SEINE checkpoint other than the one ``manifest``'s artifacts came from."""
    where = f"engines folder {manifest.root}" if manifest.root is not None else "manifest"
    checks = [("--model-dir", model_dir, manifest.source.model_dir_sha256, model_dir_fingerprint),
              ("--unet", unet_dir, manifest.source.unet_sha256, unet_fingerprint),
              ("--seine", seine, manifest.source.seine_sha256, file_fingerprint)]
    for option, given, recorded, fingerprint_of in checks:
        if given is None:
            continue
        if recorded is None:
            raise MvgError(f"{option} {given} was given but {where} was not exported from one; "
                           f"drop {option} or {REEXPORT} with it")
        if fingerprint_of(given) != recorded:
            raise MvgError(f"{option} {given} is not the source {where} was exported from "
                           f"(fingerprint differs); pass the original or {REEXPORT} from this one")
