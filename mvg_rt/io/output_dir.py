"""All-or-nothing output folders.

A run writes into a hidden sibling folder and renames it into place only when
everything succeeded, so a failed or interrupted run never leaves a partial output
folder, and an existing folder (earlier results) is replaced only by a complete
new one and only when the user asked for it.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from mvg_rt.errors import MvgError


def check_output_dir(out: Path, overwrite: bool) -> None:
    """Fail before any work if ``out`` cannot be produced."""
    if out.exists() and not out.is_dir():
        raise MvgError(f"--out {out} is a file: choose a folder path")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise MvgError(f"--out {out} already holds results: choose a new folder or pass --overwrite "
                       "(the old results are replaced only after the new run succeeds)")
    parent = out.resolve().parent
    if parent.exists() and not parent.is_dir():
        raise MvgError(f"cannot write {out}: {parent} is a file; choose another --out")
    try:
        parent.mkdir(parents=True, exist_ok=True)  # like `mkdir -p`: `--out runs/p1` on a fresh clone just works
    except OSError as err:
        raise MvgError(f"cannot write {out}: cannot create {parent} ({err.strerror}); choose another --out") from err
    if not os.access(parent, os.W_OK | os.X_OK):
        raise MvgError(f"cannot write {out}: no write permission in {parent}; choose another --out")


@contextmanager
def staged_output_dir(out: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a staging folder; on success it becomes ``out``, on any error it is removed."""
    out = Path(out)
    check_output_dir(out, overwrite)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.resolve().parent))
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if out.exists():
        retired = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.resolve().parent))
        out.rename(retired / out.name)
        staging.rename(out)
        shutil.rmtree(retired, ignore_errors=True)
    else:
        staging.rename(out)
