"""``engines/NAME/manifest.json``: what an engines folder holds, where it came from, and checks.

One manifest describes one exported model. It lists *artifacts*: one file per
(component, kind, precision), e.g. the FP16 ONNX graph of the UNet, or (added by the
TensorRT builder) a serialized engine for one GPU. The common fields of an artifact
are typed; whatever a kind needs beyond them lives in ``details`` (ONNX: exporter,
slim; TensorRT: ``tensorrt_version``, ``gpu``, ``compute_capability``, ``profiles``,
``onnx_sha256`` of the graph it was built from), so a new kind never changes the
format version.

Tensor shapes are lists whose entries are ints (fixed by the architecture or the
model, e.g. 4 channels, 77 tokens, the text width) or axis names (vary at run time:
``batch``, ``height``, ``latent_height``, ``frames`` ...). ``axes`` optionally
constrains named axes (``min``/``max``/``multiple_of``; TensorRT profiles map to
min/max).

Integrity: every file has a sha256. Hashing a multi-GB file on every load takes
seconds, so verified hashes are cached in ``.verified.json`` next to the manifest,
keyed by the file's (size, mtime_ns, ctime_ns, inode): any rewrite of the file
changes its ctime, which user tools cannot set back, so a changed file is always
re-hashed. The cache is best effort (a read-only folder just re-hashes).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from mvg_rt.artifacts.hashing import HashCache
from mvg_rt.errors import MvgError
from mvg_rt.io.jsonio import read_json

MANIFEST_NAME = "manifest.json"
FORMAT = "mvg-rt-engines"
FORMAT_VERSION = 1
KINDS = ("onnx", "trt")
PRECISIONS = ("fp32", "fp16", "int8")
#: INT8 (explicit Q/DQ quantization) covers only the denoisers (UNet, SEINE); the other components run at this
#: precision instead: FP32 graphs under ONNX Runtime (its CPU EP computes FP16 no faster than FP32, behind Casts),
#: FP16 engines under TensorRT (build them with --precision fp16 before --precision int8).
INT8_FALLBACK = {"onnx": "fp32", "trt": "fp16"}
REEXPORT = "re-export it (mvg-rt export --help)"
REBUILD = "rebuild it (mvg-rt build --engines DIR; see mvg-rt build --help)"  # kind "trt"

Dim = int | str


@dataclass
class TensorDecl:
    """A named input/output of an artifact; ``shape`` entries are ints or axis names."""

    name: str
    dtype: str
    shape: list[Dim]

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TensorDecl:
        return cls(str(data["name"]), str(data["dtype"]), list(data["shape"]))

    def describe(self) -> str:
        return "(" + ", ".join(str(d) for d in self.shape) + ")"


@dataclass
class AxisRange:
    """Allowed values of a named axis (None: unbounded)."""

    min: int | None = None
    max: int | None = None
    multiple_of: int | None = None

    def allows(self, value: int) -> bool:
        return ((self.min is None or value >= self.min) and (self.max is None or value <= self.max)
                and (self.multiple_of is None or value % self.multiple_of == 0))

    def describe(self) -> str:
        parts = [f">= {self.min}" if self.min is not None else "", f"<= {self.max}" if self.max is not None else "",
                 f"a multiple of {self.multiple_of}" if self.multiple_of else ""]
        return " and ".join(p for p in parts if p) or "any size"


@dataclass
class Artifact:
    """One file of the engines folder that runs one component."""

    component: str
    kind: str  # "onnx" | "trt"
    precision: str  # "fp32" | "fp16" | "int8" (Q/DQ graph): the precision of the weights/compute; I/O stay float32
    file: str  # relative to the engines folder, POSIX separators
    sha256: str
    size: int
    inputs: list[TensorDecl]
    outputs: list[TensorDecl]
    opset: int | None = None
    external_data: str | None = None  # relative path of the weights file of a >2 GB ONNX graph
    external_data_sha256: str | None = None
    axes: dict[str, AxisRange] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)  # kind-specific (see module docstring)

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.component, self.kind, self.precision)

    def files(self) -> list[tuple[str, str]]:
        """(relative path, sha256) of every file the artifact consists of."""
        out = [(self.file, self.sha256)]
        if self.external_data:
            out.append((self.external_data, self.external_data_sha256 or ""))
        return out

    def input(self, name: str) -> TensorDecl:
        for decl in self.inputs:
            if decl.name == name:
                return decl
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["axes"] = {k: {a: b for a, b in asdict(v).items() if b is not None} for k, v in self.axes.items()}
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Artifact:
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        values["inputs"] = [TensorDecl.from_dict(t) for t in data["inputs"]]
        values["outputs"] = [TensorDecl.from_dict(t) for t in data["outputs"]]
        values["axes"] = {k: AxisRange(**v) for k, v in (data.get("axes") or {}).items()}
        details = dict(data.get("details") or {})
        details.update({k: v for k, v in data.items() if k not in known})  # keep fields a newer writer added
        values["details"] = details
        return cls(**values)


@dataclass
class ModelDecl:
    """What the pipelines need to know about the model besides its networks."""

    vae_scaling_factor: float
    vae_scale_factor: int
    latent_channels: int
    resolution: int  # default image size in pixels
    text_hidden: int  # text encoder width (768 for SD 1.x)
    tokenizer: str = "tokenizer"  # folder, relative to the engines folder
    scheduler_config: str = "scheduler/scheduler_config.json"
    seine_config: dict[str, Any] | None = None


@dataclass
class SourceDecl:
    """Where the weights came from: folders/files and their sha256 fingerprints."""

    model_dir: str | None = None
    model_dir_sha256: str | None = None
    unet_dir: str | None = None
    unet_sha256: str | None = None
    seine: str | None = None
    seine_sha256: str | None = None


@dataclass
class Manifest:
    model: ModelDecl
    source: SourceDecl
    versions: dict[str, str]
    artifacts: list[Artifact] = field(default_factory=list)
    created: str = ""
    format: str = FORMAT
    format_version: int = FORMAT_VERSION
    root: Path | None = field(default=None, compare=False)  # the folder it was read from

    # ---------------------------------------------------------------- queries

    def find(self, component: str, kind: str = "onnx", precision: str = "fp32", exact: bool = False
             ) -> Artifact | None:
        """The artifact that runs ``component`` at ``precision``.

        ``int8`` falls back to :data:`INT8_FALLBACK` for components without an INT8 artifact
        (everything but the quantized denoisers), unless ``exact``.
        """
        for artifact in self.artifacts:
            if artifact.key == (component, kind, precision):
                return artifact
        if precision == "int8" and not exact:
            return self.find(component, kind, INT8_FALLBACK[kind], exact=True)
        return None

    def require(self, component: str, kind: str = "onnx", precision: str = "fp32") -> Artifact:
        artifact = self.find(component, kind, precision)
        if artifact is None:
            have = sorted({a.precision for a in self.artifacts if a.component == component and a.kind == kind})
            hint = f" (it has {', '.join(have)})" if have else ""
            flag = {"fp16": " with --fp16", "int8": " with --int8"}.get(precision, "")
            fix = REBUILD if kind == "trt" else f"{REEXPORT}{flag}"
            raise MvgError(f"{self._where()} has no {precision} {kind} artifact for {component}{hint}: {fix}")
        return artifact

    def components(self, kind: str = "onnx", precision: str = "fp32") -> list[str]:
        return [a.component for a in self.artifacts if a.kind == kind and a.precision == precision]

    def add(self, artifact: Artifact) -> None:
        """Add or replace the artifact with the same (component, kind, precision)."""
        self.artifacts = [a for a in self.artifacts if a.key != artifact.key] + [artifact]

    # ---------------------------------------------------------------- files

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "format_version": self.format_version,
            "created": self.created,
            "model": asdict(self.model),
            "source": asdict(self.source),
            "versions": self.versions,
            "artifacts": [a.to_dict() for a in self.artifacts],
        }

    def write(self, folder: str | Path) -> Path:
        path = Path(folder) / MANIFEST_NAME
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        tmp.replace(path)
        return path

    @classmethod
    def read(cls, folder: str | Path) -> Manifest:
        """Parse ``folder/manifest.json``; any problem is a one-line MvgError."""
        folder = Path(folder)
        path = folder / MANIFEST_NAME
        if not folder.is_dir():
            raise MvgError(f"engines folder {folder} does not exist: export one with mvg-rt export --model-dir DIR "
                           f"--out {folder}")
        if not path.is_file():
            raise MvgError(f"{folder} has no {MANIFEST_NAME}: it is not an engines folder; {REEXPORT}")
        data = read_json(path, "engines manifest", REEXPORT)
        if data.get("format") != FORMAT:
            raise MvgError(f"{path} is not an mvg-rt engines manifest; {REEXPORT}")
        if data.get("format_version") != FORMAT_VERSION:
            raise MvgError(f"{path} has format version {data.get('format_version')!r}, this mvg-rt reads "
                           f"{FORMAT_VERSION}; {REEXPORT} with this version")
        try:
            manifest = cls(
                model=ModelDecl(**data["model"]),
                source=SourceDecl(**data["source"]),
                versions=dict(data.get("versions") or {}),
                artifacts=[Artifact.from_dict(a) for a in data["artifacts"]],
                created=str(data.get("created", "")),
                root=folder,
            )
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise MvgError(f"{path} is malformed ({type(err).__name__}: {err}); {REEXPORT}") from err
        manifest.validate()
        return manifest

    def validate(self) -> None:
        """Structural checks (no file access): kinds, precisions, unique keys, relative paths."""
        seen: set[tuple[str, str, str]] = set()
        for a in self.artifacts:
            if a.kind not in KINDS or a.precision not in PRECISIONS:
                raise MvgError(f"{self._where()}: artifact {a.file} has unknown kind/precision "
                               f"{a.kind}/{a.precision}; {REEXPORT}")
            if a.key in seen:
                raise MvgError(f"{self._where()} lists {a.precision} {a.kind} {a.component} twice; {REEXPORT}")
            seen.add(a.key)
            for rel, _ in a.files():
                if Path(rel).is_absolute() or ".." in Path(rel).parts:
                    raise MvgError(f"{self._where()}: artifact path {rel} leaves the engines folder; {REEXPORT}")

    def verify(self, artifact: Artifact) -> Path:
        """Check that the artifact's files exist and hash as recorded; returns the main file's path."""
        root = self._root()
        cache = HashCache(root)
        fix = REBUILD if artifact.kind == "trt" else REEXPORT
        for rel, expected in artifact.files():
            path = root / rel
            if not path.is_file():
                raise MvgError(f"{self._where()}: {artifact.component} file {rel} is missing; {fix}")
            if cache.sha256(path, rel) != expected:
                raise MvgError(f"{self._where()}: {artifact.component} file {rel} changed since export "
                               f"(sha256 differs from the manifest); {fix}")
        cache.save()
        return root / artifact.file

    def _root(self) -> Path:
        if self.root is None:
            raise ValueError("manifest has no root folder (read it with Manifest.read)")
        return self.root

    def _where(self) -> str:
        return f"engines folder {self.root}" if self.root is not None else "manifest"
