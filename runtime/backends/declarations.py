"""What a backend's inputs accept, the one check of feeds against it, and output sizes from the same axes.

:meth:`Backend.infer <mvg_rt.runtime.backends.base.Backend.infer>` checks every feed
against the backend's :class:`InputMetadata` before the backend runs (as polygraphy's
``BaseRunner.infer`` checks a feed dict against the runner's input metadata before
``infer_impl``), so a wrong shape is one line instead of an ONNX Runtime or TensorRT
stack trace. Every backend's refusals read the same because they are written here only:

* ``{component}: input {name} was not fed (inputs: {names})``
* ``{component}: input {name} has shape {shape}, {bound} ({why}); {fix}``, where ``bound``
  is ``outside the engine's profile {min} .. {max}`` for a TensorRT optimisation profile
  (checked first; its fix is the ``mvg-rt build`` command that widens the profile, when one
  does) or ``allowed {declared shape}`` for the declaration: the rank, fixed dims (4 latent
  channels, 77 tokens, the text width), named axes that agree across inputs and lie in the
  manifest's ranges.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from mvg_rt.artifacts.manifest import Artifact, AxisRange, Dim, TensorDecl
from mvg_rt.errors import MvgError

Shape = tuple[int, ...]
ShapeRange = tuple[Shape, Shape, Shape]  # (min, opt, max)
DEFAULT_FIX = "feed the shape the engines were exported for"


def fmt(shape: Sequence[Dim]) -> str:
    """``(2, 4, 64, 64)`` or ``(batch, 4, latent_height, latent_width)``."""
    return "(" + ", ".join(str(d) for d in shape) + ")"


@dataclass(frozen=True)
class InputDecl:
    """One input: its declared shape (ints fixed, names axes) and, for a TensorRT engine, its profile."""

    name: str
    shape: tuple[Dim, ...]
    profile: ShapeRange | None = None


ProfileFix = Callable[[InputDecl, Shape], str | None]  # the fix for a shape outside the profile (None: none)


@dataclass(frozen=True)
class InputMetadata:
    """What one component's inputs accept, as a backend declares it."""

    component: str
    inputs: tuple[InputDecl, ...]
    axes: Mapping[str, AxisRange] = field(default_factory=dict)  # allowed sizes of named axes
    fix: str = DEFAULT_FIX
    profile_fix: ProfileFix | None = None

    @classmethod
    def declared(cls, artifact: Artifact, profiles: Mapping[str, ShapeRange] | None = None,
                 profile_fix: ProfileFix | None = None) -> InputMetadata:
        """From a manifest entry: its inputs' declared shapes and axis ranges (and an engine's profiles)."""
        return cls(artifact.component,
                   tuple(InputDecl(d.name, tuple(d.shape), None if profiles is None else profiles[d.name])
                         for d in artifact.inputs),
                   dict(artifact.axes), profile_fix=profile_fix)

    def check(self, shapes: Mapping[str, Sequence[int]]) -> dict[str, int]:
        """The named axes' sizes in ``shapes`` (keyed by input name); one-line :class:`MvgError` for the first
        input that is missing or does not fit."""
        sizes: dict[str, int] = {}
        for decl in self.inputs:
            if decl.name not in shapes:
                raise MvgError(f"{self.component}: input {decl.name} was not fed "
                               f"(inputs: {', '.join(d.name for d in self.inputs)})")
            shape = tuple(int(s) for s in shapes[decl.name])
            if decl.profile is not None and (why := profile_violation(decl.shape, shape, decl.profile)):
                low, _, high = decl.profile
                fix = (self.profile_fix(decl, shape) if self.profile_fix else None) or self.fix
                raise self._refusal(decl, shape, f"outside the engine's profile {fmt(low)} .. {fmt(high)}", why, fix)
            if why := declaration_violation(decl.shape, shape, sizes, self.axes):
                raise self._refusal(decl, shape, f"allowed {fmt(decl.shape)}", why, self.fix)
        return sizes

    def _refusal(self, decl: InputDecl, shape: Shape, bound: str, why: str, fix: str) -> MvgError:
        return MvgError(f"{self.component}: input {decl.name} has shape {fmt(shape)}, {bound} ({why}); {fix}")


def _fixed(i: int, size: int, want: int) -> str:
    return f"dim {i} is {size} where the graph has a fixed {want}"


def profile_violation(declared: Sequence[Dim], shape: Sequence[int], profile: ShapeRange) -> str | None:
    """Why ``shape`` is outside ``profile`` (None if inside); ``declared`` names the axes."""
    low, _, high = profile
    if len(shape) != len(low):
        return f"{len(shape)} dims instead of {len(low)}"
    for i, size in enumerate(shape):
        if low[i] <= size <= high[i]:
            continue
        axis = declared[i] if i < len(declared) else i
        if isinstance(axis, int):
            return _fixed(i, size, low[i])
        return f"{axis} {size} {'<' if size < low[i] else '>'} {low[i] if size < low[i] else high[i]}"
    return None


def declaration_violation(declared: Sequence[Dim], shape: Sequence[int], sizes: dict[str, int],
                          axes: Mapping[str, AxisRange]) -> str | None:
    """Why ``shape`` does not fit ``declared`` (None if it does); records the named axes' sizes in ``sizes``,
    against which later inputs are checked."""
    if len(shape) != len(declared):
        return f"{len(shape)} dims instead of {len(declared)}"
    for i, (size, want) in enumerate(zip(shape, declared)):
        if isinstance(want, int):
            if size != want:
                return _fixed(i, size, want)
            continue
        if want in sizes and sizes[want] != size:
            return f"{want} is {size} here but {sizes[want]} in another input"
        axis = axes.get(want)
        if axis is not None and not axis.allows(size):
            return f"{want} must be {axis.describe()}"
        sizes[want] = size
    return None


def output_shape(decl: TensorDecl, sizes: Mapping[str, int], scale: int) -> list[int]:
    """An output's concrete shape from the inputs' axis sizes (pixels = latents * scale)."""
    derived = dict(sizes)
    for pixel, latent in (("height", "latent_height"), ("width", "latent_width")):
        if latent in sizes and pixel not in sizes:
            derived[pixel] = sizes[latent] * scale
        if pixel in sizes and latent not in sizes:
            derived[latent] = sizes[pixel] // scale
    try:
        return [d if isinstance(d, int) else derived[d] for d in decl.shape]
    except KeyError as err:
        raise MvgError(f"cannot size output {decl.name} {decl.describe()}: axis {err} is not set by any input; "
                       "re-export the engines") from err
