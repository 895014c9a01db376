"""JSON that every reader accepts: no NaN or Infinity (``json.dumps`` writes them by default)."""

from __future__ import annotations

import json
import math
from typing import Any


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None  # a measurement that has no value (e.g. SSIM of a constant image) is null, not NaN
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(item) for item in value]
    return value


def finite_json(record: Any) -> str:
    """``record`` as indented JSON, non-finite floats written as null; never emits NaN/Infinity."""
    return json.dumps(_finite(record), indent=2, allow_nan=False) + "\n"
