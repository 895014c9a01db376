"""``mvg-rt build``: TensorRT engines (one ``.plan`` per component) from an engines folder's ONNX graphs.

The build goes through polygraphy's loaders: ``NetworkFromOnnxPath`` (strongly typed
when the graph is already FP16, as TensorRT 10 prefers: the ONNX's own casts decide
each layer's precision, so the FP32 islands the FP16 export kept stay FP32),
``CreateConfig`` (one optimization profile per engine, builder optimization level,
workspace pool limit, the reusable timing cache), ``EngineFromNetwork`` (which also
saves the grown timing cache) and ``SaveEngine``.

Precision and typing depend on the TensorRT major (:func:`network_typing`, pure):

* ``fp16`` builds from the FP16 ONNX, strongly typed (TensorRT 10 and 11). With only FP32
  graphs in the folder, TensorRT 10 falls back to the FP32 graph with the builder's FP16
  flag (weakly typed, recorded in the manifest); TensorRT 11 removed weak typing
  (``BuilderFlag.FP16``/``INT8``/``OBEY_PRECISION_CONSTRAINTS`` and the INT8 calibrator are
  gone, every network is strongly typed), so there it is a one-line error asking for
  ``mvg-rt export --fp16``.
* ``int8`` builds the denoisers (UNet, SEINE) from the Q/DQ graph ``mvg-rt export --int8``
  wrote: explicit quantization, no calibrator. TensorRT 11: strongly typed (INT8 where the
  Q/DQ pairs are, the rest in the graph's own FP32). TensorRT 10: weakly typed with the
  INT8 and FP16 flags, so layers outside the Q/DQ pairs may also run in FP16. The other
  components run their FP16 engines (see ``INT8_FALLBACK`` in the manifest).
* ``fp32`` builds from the FP32 graph with TF32 off, so the engine matches the PyTorch FP32
  reference to FP32 rounding (strongly typed on 11, where that is the only mode; the
  graph's types are FP32 throughout, so the result is the same).

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
from mvg_rt.errors import MvgError, first_line
from mvg_rt.artifacts.hashing import HashCache
from mvg_rt.artifacts.manifest import Artifact, Manifest
from mvg_rt.artifacts.profiles import ProfileSettings, ShapeRange, profiles_for
from mvg_rt.artifacts.tensorrt import (
    INSTALL_HINT,
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
BUILD_PRECISIONS = ("fp16", "fp32", "int8")
SUPPORTED_MAJORS = (10, 11)


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
        if self.precision not in BUILD_PRECISIONS:
            raise MvgError(f"--precision must be one of {', '.join(BUILD_PRECISIONS)} (got {self.precision!r})")
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
class NetworkTyping:
    """How TensorRT learns each layer's precision: from the graph (strongly typed) or from builder flags."""

    strongly_typed: bool
    fp16_flag: bool = False
    int8_flag: bool = False

    def describe(self) -> str:
        if self.strongly_typed:
            return "strongly typed"
        flags = [f for f, on in (("INT8", self.int8_flag), ("FP16", self.fp16_flag)) if on]
        return f"weakly typed, {'+'.join(flags)} flag{'s' if len(flags) > 1 else ''}" if flags else "FP32, TF32 off"


def network_typing(trt_major: int, onnx_precision: str, precision: str) -> NetworkTyping:
    """The typing of a ``precision`` engine built from an ``onnx_precision`` graph by TensorRT ``trt_major``.

    Pure (see the module docstring for the rules); raises a one-line MvgError where the
    combination cannot be built by that TensorRT.
    """
    if trt_major < SUPPORTED_MAJORS[0]:
        raise MvgError(f"TensorRT {trt_major} is not supported: install TensorRT 10 or 11 ({INSTALL_HINT})")
    if onnx_precision == "int8":
        if precision != "int8":
            raise MvgError(f"a {precision} engine cannot be built from an INT8 (Q/DQ) graph: use --precision int8")
        return NetworkTyping(strongly_typed=True) if trt_major >= 11 else NetworkTyping(
            strongly_typed=False, fp16_flag=True, int8_flag=True)
    if precision == "int8":
        raise MvgError("INT8 engines are built from the Q/DQ graph of mvg-rt export --int8; this graph is "
                       f"{onnx_precision}: re-export with --int8")
    if onnx_precision == "fp16" or trt_major >= 11:
        if precision == "fp16" and onnx_precision != "fp16":
            raise MvgError(f"TensorRT {trt_major} builds only strongly typed networks, so an FP16 engine needs the "
                           "FP16 ONNX graph: re-export with mvg-rt export --fp16, then rebuild")
        return NetworkTyping(strongly_typed=True)
    return NetworkTyping(strongly_typed=False, fp16_flag=precision == "fp16")


@dataclass(frozen=True)
class Source:
    """The ONNX artifact an engine is built from and how its network is typed."""

    onnx: Artifact
    typing: NetworkTyping

    def describe(self) -> str:
        return f"{self.onnx.file} ({self.typing.describe()})"


def choose_onnx(manifest: Manifest, component: str, precision: str) -> Artifact:
    """The ONNX graph to build ``component`` at ``precision`` from: the graph of that precision, for fp16 else
    the FP32 graph (only TensorRT 10 can use it, see :func:`network_typing`)."""
    candidates = {"fp16": ("fp16", "fp32"), "fp32": ("fp32",), "int8": ("int8",)}[precision]
    for candidate in candidates:
        onnx = manifest.find(component, "onnx", candidate, exact=True)
        if onnx is not None:
            return onnx
    flag = {"fp16": "", "fp32": "", "int8": " --int8"}[precision]
    raise MvgError(f"engines folder {manifest.root} has no ONNX graph of {component} to build a {precision} engine "
                   f"from; export it first (mvg-rt export{flag} --help)")


def builder_options(settings: BuildSettings, typing: NetworkTyping, timing_cache: Path) -> dict[str, Any]:
    """``CreateConfig`` keyword arguments, with the memory pool limit as ``{"workspace": bytes}``.

    A strongly typed network takes its precisions from the graph, so no precision flag
    is set on it (TensorRT 10 rejects them there, TensorRT 11 no longer has them).
    """
    options: dict[str, Any] = {
        "fp16": typing.fp16_flag,
        "int8": typing.int8_flag,
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


def plan_profiles(manifest: Manifest, settings: BuildSettings) -> tuple[dict[str, Artifact], dict[str, dict]]:
    """Which ONNX each engine comes from and its profile (pure; validates the settings).

    ``--precision int8`` builds, by default, the components that have an INT8 graph.
    """
    available = [c for c in COMPONENTS if any(a.kind == "onnx" and a.component == c and (
        settings.precision != "int8" or a.precision == "int8") for a in manifest.artifacts)]
    wanted = settings.components or tuple(available)
    missing = [c for c in wanted if c not in available]
    if missing:
        what = "INT8 (Q/DQ) ONNX graph" if settings.precision == "int8" else "ONNX graph"
        flag = " --int8" if settings.precision == "int8" else ""
        raise MvgError(f"engines folder {manifest.root} has no {what} of {', '.join(missing)}; export it first "
                       f"(mvg-rt export{flag} --help)")
    sources = {c: choose_onnx(manifest, c, settings.precision) for c in wanted}
    multiples = {c: {axis: r.multiple_of for axis, r in s.axes.items() if r.multiple_of}
                 for c, s in sources.items()}
    inputs = {c: [(d.name, list(d.shape)) for d in s.inputs] for c, s in sources.items()}
    profiles = profiles_for(settings.profile, inputs, manifest.model.vae_scale_factor, multiples)
    return sources, profiles


def build_engines(engines_dir: str | Path, settings: BuildSettings, progress: Progress = lambda _: None,
                  environment: TrtEnvironment | None = None) -> list[Artifact]:
    """Build every requested engine, record it in the manifest; returns the new artifacts."""
    manifest = Manifest.read(engines_dir)
    root = Path(engines_dir)
    graphs, profiles = plan_profiles(manifest, settings)  # settings errors before TensorRT is touched
    environment = environment or current_environment()
    sources = {c: Source(g, network_typing(environment.major, g.precision, settings.precision))
               for c, g in graphs.items()}  # typing errors before the first engine is built
    timing_cache = Path(settings.timing_cache) if settings.timing_cache else root / TIMING_CACHE_NAME
    _quiet_polygraphy()
    built = []
    for component, source in sources.items():
        onnx_path = manifest.verify(source.onnx)
        plan = root / plan_path(component, settings.precision)
        partial = plan.with_name(plan.name + ".partial")
        options = builder_options(settings, source.typing, timing_cache)
        loader = polygraphy_loaders(onnx_path, partial, profiles[component], options, source.typing.strongly_typed,
                                    timing_cache)
        progress(f"{component}: building {settings.precision} engine from {source.describe()}")
        started = time.perf_counter()
        try:
            engine = loader()
        except Exception as err:  # noqa: BLE001 - polygraphy/TensorRT raise their own types
            partial.unlink(missing_ok=True)
            first = first_line(err)
            raise MvgError(f"TensorRT could not build the {component} engine from {source.onnx.file} ({first}); "
                           "rerun with --debug for the log, or lower --builder-level / raise --workspace") from err
        partial.replace(plan)
        details = {"strongly_typed": source.typing.strongly_typed, "onnx_precision": source.onnx.precision,
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
