"""TensorRT optimization profiles from the user's settings (pure functions, no TensorRT needed).

An engine accepts, for every input, shapes between a profile's ``min`` and ``max``
and is fastest at ``opt``. Profiles are derived per named axis from what the
pipelines actually call:

==============  ==============================  ==========================================
component       batch (min, opt, max)           other axes
==============  ==============================  ==========================================
text_encoder    1, 2, 2   ([negative, prompt])  77 tokens (fixed)
vae_encoder     1, 1, 3*  (PIE: 1 image;        height/width: the resolutions
                transitions: start, end, blank)
vae_decoder     1, 1, D*  (PIE: 1; clips: D =   latent_height/width: resolutions / 8
                decode batch, default 4)
unet            1, 2, 2   (CFG pair; 2, 2, 2    latent_height/width
                with ``cfg_batch="static"``)
seine           as unet                         frames: min/first/max of ``frames``
==============  ==============================  ==========================================

``*`` only when the build includes SEINE (transitions); PIE alone never goes above 1.
Several resolutions (or frame counts) give one profile spanning them, ``opt`` at the
first one given. ``overrides`` set any axis explicitly: ``[component.]axis=min:opt:max``
(or ``axis=N`` for a fixed size), e.g. ``unet.batch=2``, ``frames=8:16:24``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from mvg_rt.errors import MvgError

Range = tuple[int, int, int]  # (min, opt, max)
Shape = tuple[int, ...]
ShapeRange = tuple[Shape, Shape, Shape]
Profiles = dict[str, dict[str, ShapeRange]]  # component -> input -> (min, opt, max) shapes

CFG_BATCH_MODES = ("dynamic", "static")
TRANSITION_ENCODE_BATCH = 3  # TransitionSampler encodes [start, end, blank] in one call
SEINE_COMPONENTS = ("seine",)


@dataclass(frozen=True)
class AxisOverride:
    component: str | None  # None: every component with that axis
    axis: str
    range: Range

    @classmethod
    def parse(cls, spec: str) -> AxisOverride:
        """``[component.]axis=min:opt:max`` or ``[component.]axis=N``."""
        name, sep, values = spec.partition("=")
        if not sep or not name.strip() or not values.strip():
            raise MvgError(f"--axis {spec!r}: write [component.]axis=min:opt:max (or axis=N), e.g. frames=8:16:24")
        component, dot, axis = name.strip().rpartition(".")
        try:
            numbers = tuple(int(v) for v in values.split(":"))
        except ValueError as err:
            raise MvgError(f"--axis {spec!r}: sizes must be integers, e.g. frames=8:16:24") from err
        if len(numbers) == 1:
            numbers = numbers * 3
        if len(numbers) != 3:
            raise MvgError(f"--axis {spec!r}: give one size or min:opt:max")
        check_range(f"--axis {spec}", numbers)  # type: ignore[arg-type]
        return cls(component if dot else None, axis, numbers)  # type: ignore[arg-type]


@dataclass(frozen=True)
class ProfileSettings:
    """What the engines must accept (see the module docstring for how each axis follows)."""

    resolutions: tuple[tuple[int, int], ...]  # (height, width) in pixels; the first is ``opt``
    frames: tuple[int, ...] = (16,)
    cfg_batch: str = "dynamic"
    decode_batch: int = 4
    overrides: tuple[AxisOverride, ...] = field(default=())

    def __post_init__(self) -> None:
        if not self.resolutions:
            raise MvgError("give at least one --resolution")
        if self.cfg_batch not in CFG_BATCH_MODES:
            raise MvgError(f"CFG batch must be one of {', '.join(CFG_BATCH_MODES)} (got {self.cfg_batch!r})")
        if not self.frames or min(self.frames) < 3:
            raise MvgError(f"--frames must be at least 3 (got {', '.join(map(str, self.frames)) or 'none'})")
        if self.decode_batch < 1:
            raise MvgError(f"--decode-batch must be >= 1 (got {self.decode_batch})")


def parse_resolution(text: str | int) -> tuple[int, int]:
    """``512`` or ``448x576`` (height x width) -> (height, width)."""
    if isinstance(text, int):
        return text, text
    parts = text.lower().replace(" ", "").split("x")
    try:
        sizes = [int(p) for p in parts]
    except ValueError as err:
        raise MvgError(f"--resolution {text!r}: write N or HEIGHTxWIDTH in pixels, e.g. 512 or 448x576") from err
    if len(sizes) == 1:
        sizes *= 2
    if len(sizes) != 2 or min(sizes) < 1:
        raise MvgError(f"--resolution {text!r}: write N or HEIGHTxWIDTH in pixels, e.g. 512 or 448x576")
    return sizes[0], sizes[1]


def check_range(what: str, values: Range) -> None:
    low, opt, high = values
    if not 1 <= low <= opt <= high:
        raise MvgError(f"{what}: need 1 <= min <= opt <= max (got {low}:{opt}:{high})")


def span(values: Sequence[int]) -> Range:
    """(min, first, max): one profile covering every value, fastest at the first."""
    return min(values), values[0], max(values)


def axis_ranges(component: str, settings: ProfileSettings, vae_scale_factor: int,
                with_transitions: bool) -> dict[str, Range]:
    """The named axes of one component, before overrides."""
    heights = [h for h, _ in settings.resolutions]
    widths = [w for _, w in settings.resolutions]
    pixels = {"height": span(heights), "width": span(widths)}
    latents = {"latent_height": span([h // vae_scale_factor for h in heights]),
               "latent_width": span([w // vae_scale_factor for w in widths])}
    cfg = (2, 2, 2) if settings.cfg_batch == "static" else (1, 2, 2)
    if component == "text_encoder":
        return {"batch": (1, 2, 2)}
    if component == "vae_encoder":
        return {"batch": (1, 1, TRANSITION_ENCODE_BATCH if with_transitions else 1)} | pixels
    if component == "vae_decoder":
        return {"batch": (1, 1, settings.decode_batch if with_transitions else 1)} | latents
    if component == "unet":
        return {"batch": cfg} | latents
    if component == "seine":
        return {"batch": cfg, "frames": span(settings.frames)} | latents
    raise MvgError(f"no TensorRT profile rule for component {component!r}")


def apply_overrides(component: str, ranges: dict[str, Range], overrides: Iterable[AxisOverride]) -> dict[str, Range]:
    out = dict(ranges)
    for override in overrides:
        if override.component in (None, component) and override.axis in out:
            out[override.axis] = override.range
    return out


def check_overrides(overrides: Iterable[AxisOverride], axes_by_component: Mapping[str, Iterable[str]]) -> None:
    """Every override must name a component being built and an axis it has."""
    for o in overrides:
        targets = [o.component] if o.component else list(axes_by_component)
        if o.component and o.component not in axes_by_component:
            raise MvgError(f"--axis {o.component}.{o.axis}: {o.component} is not being built "
                           f"(components: {', '.join(axes_by_component)})")
        if not any(o.axis in axes_by_component[c] for c in targets):
            have = sorted({a for c in targets for a in axes_by_component[c]})
            raise MvgError(f"--axis {o.axis}: no such axis{' in ' + o.component if o.component else ''} "
                           f"(axes: {', '.join(have)})")


def check_multiples(component: str, ranges: Mapping[str, Range], multiples: Mapping[str, int],
                    vae_scale_factor: int) -> None:
    """Spatial sizes the exported graph cannot take (e.g. UNet latents must divide by 2 per level)."""
    for axis, values in ranges.items():
        multiple = multiples.get(axis)
        if not multiple:
            continue
        for value in values:
            if value % multiple:
                pixels = vae_scale_factor * multiple if axis.startswith("latent_") else multiple
                raise MvgError(f"{component}: {axis} {value} is not a multiple of {multiple}; use resolutions "
                               f"that are multiples of {pixels} pixels")


def shape_range(shape: Sequence[int | str], ranges: Mapping[str, Range], component: str, name: str) -> ShapeRange:
    """An input's declared shape (ints and axis names) -> its (min, opt, max) shapes."""
    dims: list[Range] = []
    for dim in shape:
        if isinstance(dim, int):
            dims.append((dim, dim, dim))
        elif dim in ranges:
            dims.append(ranges[dim])
        else:
            raise MvgError(f"{component}: input {name} has axis {dim!r} with no profile rule; pass --axis "
                           f"{component}.{dim}=min:opt:max")
    return tuple(tuple(d[k] for d in dims) for k in range(3))  # type: ignore[return-value]


def profiles_for(settings: ProfileSettings, inputs: Mapping[str, Sequence[tuple[str, Sequence[int | str]]]],
                 vae_scale_factor: int = 8, multiples: Mapping[str, Mapping[str, int]] | None = None) -> Profiles:
    """``{component: {input: (min, opt, max)}}`` for the components in ``inputs``.

    ``inputs`` maps each component to its declared inputs ``(name, shape)`` (from the
    manifest: ints are fixed sizes, strings axis names); ``multiples`` the
    ``multiple_of`` constraints of its axes.
    """
    with_transitions = any(c in inputs for c in SEINE_COMPONENTS)
    ranges = {c: axis_ranges(c, settings, vae_scale_factor, with_transitions) for c in inputs}
    check_overrides(settings.overrides, {c: list(r) for c, r in ranges.items()})
    profiles: Profiles = {}
    for component, declared in inputs.items():
        final = apply_overrides(component, ranges[component], settings.overrides)
        check_multiples(component, final, (multiples or {}).get(component, {}), vae_scale_factor)
        profiles[component] = {name: shape_range(shape, final, component, name) for name, shape in declared}
    return profiles


def profile_to_json(profile: Mapping[str, ShapeRange]) -> dict[str, dict[str, list[int]]]:
    return {name: {"min": list(r[0]), "opt": list(r[1]), "max": list(r[2])} for name, r in profile.items()}


def axis_limits(shape: Sequence[int | str], profile: ShapeRange) -> dict[str, tuple[int, int]]:
    """Named axes -> (min, max) of one input's profile (for the manifest's ``axes``)."""
    return {dim: (profile[0][i], profile[2][i]) for i, dim in enumerate(shape) if isinstance(dim, str)}
