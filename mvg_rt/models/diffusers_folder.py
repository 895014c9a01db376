"""Loading a local diffusers-format Stable Diffusion folder, never a hub.

The folder layout is diffusers' own (``tokenizer/``, ``text_encoder/``, ``vae/``,
``unet/``, ``scheduler/``), so a user can point mvg-rt at the folder they already
have for SD 1.4 or a domain fine-tune. Every part is checked before anything heavy
is loaded, so a missing part is reported by name in one line instead of a
stack trace from deep inside ``from_pretrained``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mvg_rt.errors import MvgError, first_line
from mvg_rt.io.jsonio import read_json
from mvg_rt.models.agreement import ModelWidths, check_widths, folder_widths

# Each part: the files that must exist (any one of each tuple).
_REQUIRED: dict[str, tuple[tuple[str, ...], ...]] = {
    "tokenizer": (("vocab.json", "tokenizer.json"), ("merges.txt", "tokenizer.json")),
    "text_encoder": (("config.json",), ("model.safetensors", "pytorch_model.bin")),
    "vae": (("config.json",), ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")),
    "unet": (("config.json",), ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")),
    "scheduler": (("scheduler_config.json",),),
}
PIE_PARTS = ("tokenizer", "text_encoder", "vae", "unet", "scheduler")
_FIX = "point --model-dir at a diffusers-format Stable Diffusion folder (or run `mvg-rt make-tiny-model DIR`)"


@dataclass
class DiffusersModels:
    """The PyTorch models of one SD 1.x pipeline, plus what is needed to describe them."""

    tokenizer: Any
    text_encoder: Any
    vae: Any
    unet: Any
    scheduler_config: dict[str, Any]
    sources: dict[str, str] = field(default_factory=dict)  # part -> folder it came from
    widths: ModelWidths | None = None  # as the configs declare them (None: built in memory, not read)

    @property
    def vae_scaling_factor(self) -> float:
        return float(self.vae.config.scaling_factor)

    @property
    def vae_scale_factor(self) -> int:
        """Pixels per latent cell (8 for SD 1.x)."""
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def latent_channels(self) -> int:
        return int(self.vae.config.latent_channels)


def check_part(folder: Path, part: str, label: str | None = None) -> Path:
    """Return ``folder`` if it holds a complete ``part``, else raise a one-line MvgError."""
    label = label or f"{folder.parent}/{part}/"
    if not folder.is_dir():
        raise MvgError(f"model folder has no {part}/ ({label} not found): {_FIX}")
    for alternatives in _REQUIRED[part]:
        if not any((folder / name).is_file() for name in alternatives):
            raise MvgError(f"{label} is incomplete: missing {' or '.join(alternatives)}; {_FIX}")
    return folder


def check_model_folder(model_dir: str | Path, parts: tuple[str, ...] = PIE_PARTS) -> Path:
    root = Path(model_dir)
    if not root.is_dir():
        raise MvgError(f"model folder {root} does not exist: {_FIX}")
    for part in parts:
        check_part(root / part, part)
    return root


def resolve_unet_dir(unet_dir: str | Path) -> Path:
    """A fine-tuned UNet may be given as the UNet folder itself or as a pipeline folder."""
    path = Path(unet_dir)
    if (path / "unet").is_dir():
        path = path / "unet"
    return check_part(path, "unet", label=f"--unet {unet_dir}")


def _load(part: str, loader: Any, folder: Path) -> Any:
    try:
        return loader.from_pretrained(str(folder), local_files_only=True)
    except Exception as err:  # noqa: BLE001 - any failure here is a bad folder, reported in one line
        raise MvgError(
            f"could not load {part} from {folder}: {first_line(err)}; re-copy or re-export that folder"
        ) from err


def load_diffusers_folder(model_dir: str | Path, unet_dir: str | Path | None = None) -> DiffusersModels:
    """Load tokenizer, text encoder, VAE, UNet (optionally a fine-tuned one) and the scheduler config.

    The parts' configs are read and checked against each other first (:mod:`mvg_rt.models.agreement`),
    so a folder assembled from two models is refused before any weights are loaded.
    """
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    root = check_model_folder(model_dir)
    unet_folder = resolve_unet_dir(unet_dir) if unet_dir is not None else root / "unet"
    widths = folder_widths(read_part_config(root / "text_encoder"), read_part_config(root / "vae"),
                           read_part_config(unet_folder),
                           unet_label="--unet config.json" if unet_dir is not None else "unet/config.json")
    check_widths(widths)
    scheduler_config = read_scheduler_config(root / "scheduler")
    return DiffusersModels(
        tokenizer=_load("tokenizer", CLIPTokenizer, root / "tokenizer"),
        text_encoder=_load("text_encoder", CLIPTextModel, root / "text_encoder").eval(),
        vae=_load("vae", AutoencoderKL, root / "vae").eval(),
        unet=_load("unet", UNet2DConditionModel, unet_folder).eval(),
        scheduler_config=scheduler_config,
        sources={p: str((root / p).resolve()) for p in PIE_PARTS} | {"unet": str(unet_folder.resolve())},
        widths=widths,
    )


def read_part_config(folder: Path) -> dict[str, Any]:
    """A part's config.json (a damaged one is refused here, before diffusers or transformers parse it)."""
    return read_json(folder / "config.json", f"{folder.name} config", "re-copy the model folder from its source")


def read_scheduler_config(folder: Path) -> dict[str, Any]:
    """The scheduler config as a JSON object (its values are checked where the runtime opens the model)."""
    return read_json(folder / "scheduler_config.json", "scheduler config",
                     "re-copy scheduler/scheduler_config.json from the model's source")
