"""The one validation layer for numeric options: finite, in range, one line naming the range.

Every numeric command-line option has its allowed range here, once. The CLI converts option
values through :mod:`mvg_rt.cli_types` (which calls :func:`check`), and the settings dataclasses
call :func:`check` in ``__post_init__`` for callers that skip the CLI; both give the same message:
``--guidance must be a finite number in [0, 100] (got nan)``.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass

from mvg_rt.errors import MvgError

SEED_MAX = 2**63 - 1  # torch.Generator.manual_seed takes any int64; numpy and JSON readers keep it exact
# What both video writers honour over the whole range (measured with Pillow 13, PyAV 18 / libx264): a GIF frame's
# time is a 16-bit count of hundredths of a second (Pillow raises OverflowError past 65535, i.e. below 1/655.35 fps)
# and players stretch times under 2 hundredths to 10 (Pillow's writer kept 20 ms as its floor), so 50 fps at most;
# the MP4 takes every one of these rates (as the nearest fraction with a denominator <= 1000).
FPS_RANGE = (0.002, 50)


@dataclass(frozen=True)
class Limit:
    """Allowed values of one option: ``low``/``high`` (None: unbounded), open or closed, integer or real."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    integer: bool = False
    multiple_of: int | None = None
    hint: str = ""

    def describe(self) -> str:
        kind = "an integer" if self.integer else "a finite number"
        if self.low is not None and self.high is not None:
            where = f"in {'(' if self.low_open else '['}{_fmt(self.low)}, {_fmt(self.high)}]"
        elif self.low is not None:
            where = f"{'>' if self.low_open else '>='} {_fmt(self.low)}"
        else:
            where = f"<= {_fmt(self.high)}" if self.high is not None else ""
        multiple = f", a multiple of {self.multiple_of}" if self.multiple_of else ""
        return f"{kind} {where}{multiple}".rstrip()


def _fmt(value: float) -> str:
    return str(int(value)) if float(value).is_integer() and abs(value) < 1e18 else repr(value)


_STEPS = Limit(1, 1000, integer=True)
_CFG = Limit(0, 100, hint="7.5 is usual")
_SEED = Limit(0, SEED_MAX, integer=True)
_FRAMES = Limit(3, 256, integer=True)
_REPEAT = Limit(1, 10_000, integer=True)

LIMITS: dict[str, Limit] = {
    # simulate (and the PIE / transition settings)
    "--rounds": Limit(1, 1000, integer=True),
    "--strength": Limit(0, 1, low_open=True, hint="the paper uses 0.6"),
    "--steps": _STEPS,
    "--guidance": _CFG,
    "--beta1": Limit(0, 1),
    "--beta2": Limit(0, 1),
    "--seed": _SEED,
    "--feather": Limit(0, 10_000),
    "--segment-grow": Limit(0, 10_000),
    "--resolution": Limit(32, 4096, integer=True, multiple_of=8, hint="e.g. 512; below 32 px the identity metrics "
                          "(7x7 SSIM windows) and the ROI are meaningless"),
    "--frames": _FRAMES,
    "--transition-steps": _STEPS,
    "--transition-guidance": _CFG,
    "--fps": Limit(*FPS_RANGE, hint="the GIF stores each frame's time as 2 to 65535 hundredths of a second"),
    "--roi": Limit(-1e6, 1e6),
    "--clip": Limit(1, 1000, integer=True),  # eval --strip: one clip of at most --rounds clips  # box / ellipse coordinates, in input-image pixels
    "bench --resolution": Limit(64, 4096, integer=True, multiple_of=64),  # the real UNet's 3 downsamplings
    # export, build, train-demo, bench, check
    "--opset": Limit(17, 23, integer=True, hint="older opsets are too old: LayerNormalization is one op from 17"),
    "--decode-batch": Limit(1, 256, integer=True),
    "--workspace": Limit(1, 1 << 24, integer=True),
    "--builder-level": Limit(0, 5, integer=True),
    "--calibration-count": Limit(1, 10_000, integer=True),
    "--workers": Limit(1, 4096, integer=True),
    "--retries": Limit(0, 100, integer=True),
    "--case-timeout": Limit(0, 30 * 24 * 3600, low_open=True, hint="seconds"),
    "--llm-timeout": Limit(0, 3600, low_open=True, hint="seconds for each request to the LLM server"),
    "--scale": Limit(0, 100, low_open=True),
    "--repeat": _REPEAT,
    "--warmup": Limit(0, 10_000, integer=True),
    "--row-budget": Limit(0, 86_400, low_open=True),
    "--transition-frames": _FRAMES,
    "--e2e-repeat": _REPEAT,
    "--overhead-repeat": _REPEAT,
}


def _shown(value: object) -> str:
    """``value`` as the error line shows it: a number of hundreds of digits is cut, not printed whole."""
    try:
        text = str(value)
    except ValueError:  # an int past Python's 4300-digit str() limit
        return "an integer of over 4300 digits"
    return text if len(text) <= 40 else f"{text[:20]}... ({len(text)} characters)"


def check(option: str, value: float, limit: Limit | None = None) -> float:
    """``value`` if it is allowed for ``option``, else a one-line :class:`MvgError` naming the range."""
    limit = limit or LIMITS[option]
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if ok and isinstance(value, int) and not limit.integer:
        ok = abs(value) <= sys.float_info.max  # a real option's int becomes a float (a 400-digit one cannot)
    if ok and isinstance(value, float):  # an int is finite and whole (math.isfinite of a 400-digit int overflows)
        ok = math.isfinite(value) and (value.is_integer() or not limit.integer)
    if ok and limit.low is not None:
        ok = value > limit.low if limit.low_open else value >= limit.low
    if ok and limit.high is not None:
        ok = value <= limit.high
    if ok and limit.multiple_of:
        ok = int(value) % limit.multiple_of == 0
    if not ok:
        hint = f"; {limit.hint}" if limit.hint else ""
        raise MvgError(f"{option} must be {limit.describe()} (got {_shown(value)}){hint}")
    return int(value) if limit.integer else float(value)
