"""``mvg-rt build``: TensorRT engines (one ``.plan`` per component) from an engines folder's ONNX graphs.

The build goes through polygraphy's loaders: ``NetworkFromOnnxPath`` (strongly typed
when the graph is already FP16, as TensorRT 10 prefers: the ONNX's own casts decide
each layer's precision, so the FP32 islands the FP16 export kept stay FP32),
``CreateConfig`` (one optimization profile per engine, builder optimization level,
workspace pool limit, the reusable timing cache), ``EngineFromNetwork`` (which also
saves the grown timing cache) and ``SaveEngine``.

Precision: ``fp16`` builds from the FP16 ONNX (strongly typed); if the folder has only
FP32 graphs it falls back to the FP32 graph with the builder's FP16 flag (weakly
typed, recorded in the manifest). ``fp32`` builds from the FP32 graph with TF32 off,
so the engine matches the PyTorch FP32 reference to FP32 rounding.

Everything up to calling the loaders is pure (:func:`builder_options`,
:func:`polygraphy_loaders`), so what polygraphy receives is tested without TensorRT.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mvg_rt.components import COMPONENTS
from mvg_rt.errors import MvgError
from mvg_rt.artifacts.hashing import HashCache
from mvg_rt.artifacts.manifest import Artifact, Manifest
from mvg_rt.artifacts.profiles import ProfileSettings, ShapeRange, profiles_for
from mvg_rt.artifacts.tensorrt import (
    TrtEnvironment,
    current_environment,
    format_stage_memory,
    plan_path,
    stage_memory,
    trt_artifact,
)

Progress = Callable[[str], None]
TIMING_CACHE_NAME = "timing.cache"
DEFAULT_BUILDER_LEVEL = 3  # TensorRT's default: good engines in minutes; 5 searches longer for a few % more
LOW_MEMORY_WORKSPACE_MB = 1024


@dataclass(frozen=True)
class BuildSettings:
    precision: str = "fp16"
    profile: ProfileSettings = field(default_factory=lambda: ProfileSettings(resolutions=((512, 512),)))
    components: tuple[str, ...] = ()  # empty: every component the folder has ONNX for
    workspace_mb: int | None = None  # None: TensorRT's default (the device's memory); low-memory: 1024
    timing_cache: Path | None = None  # None: <engines>/timing.cache
    builder_level: int = DEFAULT_BUILDER_LEVEL
    low_memory: bool = False

    def __post_init__(self) -> None:
        if self.precision not in ("fp16", "fp32"):
            raise MvgError(f"--precision must be fp16 or fp32 (got {self.precision!r})")
        if not 0 <= self.builder_level <= 5:
            raise MvgError(f"--builder-level must be in 0..5 (got {self.builder_level}); TensorRT's default is 3")
        if self.workspace_mb is not None and self.workspace_mb < 1:
            raise MvgError(f"--workspace must be a positive number of MiB (got {self.workspace_mb})")
        unknown = [c for c in self.components if c not in COMPONENTS]
        if unknown:
            raise MvgError(f"unknown component(s) {', '.join(unknown)}: choose from {', '.join(COMPONENTS)}")

    @property
    def workspace_bytes(self) -> int | None:
        mb = self.workspace_mb if self.workspace_mb is not None else (
            LOW_MEMORY_WORKSPACE_MB if self.low_memory else None)
        return None if mb is None else mb << 20

    def recorded(self) -> dict[str, Any]:
        """The settings as stored in the manifest (and replayed by the rebuild command)."""
        p = self.profile
        axes = [f"{o.component + '.' if o.component else ''}{o.axis}={':'.join(map(str, o.range))}"
                for o in p.overrides]
        return {"resolutions": [f"{h}x{w}" for h, w in p.resolutions], "frames": list(p.frames), "axes": axes,
                "cfg_batch": p.cfg_batch, "decode_batch": p.decode_batch, "low_memory": self.low_memory}


@dataclass(frozen=True)
class Source:
    """The ONNX artifact an engine is built from and how its network is typed."""

    onnx: Artifact
    strongly_typed: bool
    fp16_flag: bool

    def describe(self) -> str:
        typing = "strongly typed" if self.strongly_typed else ("weakly typed, FP16 flag" if self.fp16_flag else
                                                               "FP32, TF32 off")
        return f"{self.onnx.file} ({typing})"


def choose_source(manifest: Manifest, component: str, precision: str) -> Source:
    """The ONNX graph to build ``component`` at ``precision`` from (see the module docstring)."""
    if precision == "fp16":
        fp16 = manifest.find(component, "onnx", "fp16")
        if fp16 is not None:
            return Source(fp16, strongly_typed=True, fp16_flag=False)
        fp32 = manifest.find(component, "onnx", "fp32")
        if fp32 is not None:
            return Source(fp32, strongly_typed=False, fp16_flag=True)
    else:
        fp32 = manifest.find(component, "onnx", "fp32")
        if fp32 is not None:
            return Source(fp32, strongly_typed=False, fp16_flag=False)
    raise MvgError(f"engines folder {manifest.root} has no ONNX graph of {component} to build a {precision} engine "
                   "from; export it first (mvg-rt export --help)")


def builder_options(settings: BuildSettings, source: Source, timing_cache: Path) -> dict[str, Any]:
    """``CreateConfig`` keyword arguments, with the memory pool limit as ``{"workspace": bytes}``.

    A strongly typed network takes its precisions from the graph, so no precision flag
    is set on it (TensorRT rejects them there).
    """
    options: dict[str, Any] = {
        "fp16": source.fp16_flag,
        "tf32": False,
        "builder_optimization_level": settings.builder_level,
        "load_timing_cache": str(timing_cache),
    }
    if settings.workspace_bytes is not None:
        options["memory_pool_limits"] = {"workspace": settings.workspace_bytes}
    if settings.low_memory:
        options["max_aux_streams"] = 0  # parallel streams need their own activation memory
    return options


def polygraphy_profile(profile: dict[str, ShapeRange]) -> Any:
    """A ``polygraphy.backend.trt.Profile`` (constructible without TensorRT)."""
    from polygraphy.backend.trt import Profile

    out = Profile()
    for name, (low, opt, high) in profile.items():
        out.add(name, min=low, opt=opt, max=high)
    return out


def polygraphy_loaders(onnx_path: Path, plan: Path, profile: dict[str, ShapeRange], options: dict[str, Any],
                       strongly_typed: bool, timing_cache: Path) -> Any:
    """The loader chain ``SaveEngine(EngineFromNetwork(NetworkFromOnnxPath, CreateConfig))``; calling it builds.

    Constructing it needs no TensorRT unless a memory pool limit is set (its key is a
    ``tensorrt.MemoryPoolType``).
    """
    from polygraphy.backend.trt import CreateConfig, EngineFromNetwork, NetworkFromOnnxPath, SaveEngine

    kwargs = dict(options)
    pools = kwargs.pop("memory_pool_limits", None)
    if pools:
        from mvg_rt.artifacts.tensorrt import import_tensorrt

        trt = import_tensorrt()
        kwargs["memory_pool_limits"] = {getattr(trt.MemoryPoolType, k.upper()): v for k, v in pools.items()}
    network = NetworkFromOnnxPath(str(onnx_path), strongly_typed=strongly_typed)
    config = CreateConfig(profiles=[polygraphy_profile(profile)], **kwargs)
    return SaveEngine(EngineFromNetwork(network, config=config, save_timing_cache=str(timing_cache)), str(plan))


def device_memory_bytes(engine: Any) -> int:
    """Activation memory the engine needs at its largest profile shapes (TensorRT 10.1+: ``_v2``)."""
    for attribute in ("device_memory_size_v2", "device_memory_size"):
        value = getattr(engine, attribute, None)
        if value is not None:
            return int(value)
    return 0


def _inputs_of(sources: dict[str, Source]) -> dict[str, list[tuple[str, list[int | str]]]]:
    return {c: [(d.name, list(d.shape)) for d in s.onnx.inputs] for c, s in sources.items()}


def plan_profiles(manifest: Manifest, settings: BuildSettings) -> tuple[dict[str, Source], dict[str, dict]]:
    """Which ONNX each engine comes from and its profile (pure; validates the settings)."""
    available = [c for c in COMPONENTS if any(a.kind == "onnx" and a.component == c for a in manifest.artifacts)]
    wanted = settings.components or tuple(available)
    missing = [c for c in wanted if c not in available]
    if missing:
        raise MvgError(f"engines folder {manifest.root} has no ONNX graph of {', '.join(missing)}; export it first "
                       "(mvg-rt export --help)")
    sources = {c: choose_source(manifest, c, settings.precision) for c in wanted}
    multiples = {c: {axis: r.multiple_of for axis, r in s.onnx.axes.items() if r.multiple_of}
                 for c, s in sources.items()}
    profiles = profiles_for(settings.profile, _inputs_of(sources), manifest.model.vae_scale_factor,
                            multiples)
    return sources, profiles


def build_engines(engines_dir: str | Path, settings: BuildSettings, progress: Progress = lambda _: None,
                  environment: TrtEnvironment | None = None) -> list[Artifact]:
    """Build every requested engine, record it in the manifest; returns the new artifacts."""
    manifest = Manifest.read(engines_dir)
    root = Path(engines_dir)
    sources, profiles = plan_profiles(manifest, settings)  # settings errors before TensorRT is touched
    environment = environment or current_environment()
    timing_cache = Path(settings.timing_cache) if settings.timing_cache else root / TIMING_CACHE_NAME
    _quiet_polygraphy()
    built = []
    for component, source in sources.items():
        onnx_path = manifest.verify(source.onnx)
        plan = root / plan_path(component, settings.precision)
        partial = plan.with_name(plan.name + ".partial")
        options = builder_options(settings, source, timing_cache)
        loader = polygraphy_loaders(onnx_path, partial, profiles[component], options, source.strongly_typed,
                                    timing_cache)
        progress(f"{component}: building {settings.precision} engine from {source.describe()}")
        started = time.perf_counter()
        try:
            engine = loader()
        except Exception as err:  # noqa: BLE001 - polygraphy/TensorRT raise their own types
            partial.unlink(missing_ok=True)
            first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
            raise MvgError(f"TensorRT could not build the {component} engine from {source.onnx.file} ({first}); "
                           "rerun with --debug for the log, or lower --builder-level / raise --workspace") from err
        partial.replace(plan)
        details = {"strongly_typed": source.strongly_typed, "onnx_precision": source.onnx.precision,
                   "device_memory_bytes": device_memory_bytes(engine),
                   "build_seconds": round(time.perf_counter() - started, 1),
                   "builder": {k: v for k, v in options.items() if k != "load_timing_cache"} | {
                       "timing_cache": str(timing_cache)},
                   "settings": settings.recorded()}
        del engine
        hashes = HashCache(root)
        artifact = trt_artifact(root, component, settings.precision, plan, source.onnx, profiles[component],
                                environment, details, hashes)
        hashes.save()
        manifest.add(artifact)
        manifest.validate()
        manifest.write(root)  # after every engine: an interrupted build keeps what it finished
        built.append(artifact)
        progress(f"{component}: {plan.relative_to(root)} ({artifact.size / 2**20:.0f} MiB, "
                 f"{details['build_seconds']} s)")
    progress(format_stage_memory(stage_memory({a.component: a for a in built}, manifest.model.vae_scale_factor)))
    return built


def _quiet_polygraphy() -> None:
    from polygraphy.logger import G_LOGGER

    G_LOGGER.module_severity = G_LOGGER.WARNING
    G_LOGGER.colors = False
