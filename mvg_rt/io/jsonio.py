"""JSON in and out: files the runtime reads become a dict or one line; what it writes every reader accepts.

Reading: manifests, model and scheduler configs come from outside (copied, edited, damaged), and
``json.loads`` has more ways to fail than ``JSONDecodeError`` (a document nested deeper than the
parser's recursion limit is a ``RecursionError``, an over-long integer a ``ValueError``, bytes that
are not UTF-8 a ``UnicodeDecodeError``); :func:`read_json` turns every one of them into the one-line
:class:`MvgError` that names the file and the fix.

Writing: no NaN or Infinity (``json.dumps`` writes them by default).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from mvg_rt.errors import MvgError


def parse_json(data: bytes, label: str, fix: str) -> Any:
    """The JSON value in ``data``; anything unreadable is a one-line :class:`MvgError`: "``label`` ...; ``fix``".

    ``label`` names the file to the user (e.g. "engines manifest /x/manifest.json").
    """
    try:
        return json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as err:
        raise MvgError(f"{label} is not UTF-8 text (byte {err.start}); {fix}") from err
    except json.JSONDecodeError as err:
        raise MvgError(f"{label} is not valid JSON ({err.msg}, line {err.lineno} column {err.colno}); {fix}") from err
    except RecursionError as err:
        raise MvgError(f"{label} is nested too deeply to be a real one; {fix}") from err
    except ValueError as err:  # e.g. an integer longer than Python's int conversion limit
        raise MvgError(f"{label} holds a value that cannot be read ({str(err)[:80]}); {fix}") from err


def read_json(path: str | Path, what: str, fix: str) -> dict[str, Any]:
    """The JSON object in ``path``; any other content is a one-line :class:`MvgError`: "``what`` ``path`` ...; ``fix``".

    ``what`` says what the file is to the user (e.g. "engines manifest"), ``fix`` what to do about it.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as err:
        raise MvgError(f"{what} {path} cannot be read ({err.strerror or type(err).__name__}); {fix}") from err
    value = parse_json(data, f"{what} {path}", fix)
    if not isinstance(value, dict):
        raise MvgError(f"{what} {path} holds a JSON {type(value).__name__}, not an object; {fix}")
    return value


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
