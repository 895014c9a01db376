"""Single output files (``--json``, ``--figure``, summaries): checked before the work, written whole or not at all.

Why: a command that computes for minutes must not fail at its last step because the folder of its
``--json`` path does not exist, and a full disk must never leave a 0-byte or truncated file where the
user expects a report, nor replace an earlier complete one with it. Folders of results are staged
as a whole (:mod:`mvg_rt.io.output_dir`); these helpers are the same promise for one file.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from mvg_rt.errors import MvgError

NAME_MAX = 255  # bytes of one file name on the file systems mvg-rt runs on (ext4, xfs, tmpfs, NTFS via WSL)


def check_output_file(path: str | Path, option: str) -> Path:
    """``path`` if a file can be written there; else a one-line :class:`MvgError` naming ``option`` and the fix.

    Called before any work, so that a bad path costs nothing: the folder must exist and be writable,
    the path must not be a folder or a special file (a device, a pipe: replacing one would destroy it),
    and an existing file must be writable (a read-only report stays as the user protected it).
    """
    path = Path(path)
    parent = path.parent
    fix = "pass a file path in an existing folder you can write to"
    if path.is_dir():
        raise MvgError(f"{option} {path} is a folder, not a file: {fix}")
    if len(path.name.encode()) > NAME_MAX:
        raise MvgError(f"{option}: the file name is {len(path.name.encode())} bytes long, longer than the "
                       f"{NAME_MAX} a file system allows: pass a shorter name")
    if not parent.is_dir():
        what = "is not a folder" if parent.exists() else "does not exist"
        raise MvgError(f"{option} {path}: the folder {parent} {what}: create it first, or {fix}")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise MvgError(f"{option} {path}: the folder {parent} is not writable (no permission or a read-only "
                       f"file system): {fix}")
    if path.exists() and not path.is_file():
        raise MvgError(f"{option} {path} exists and is not a regular file: {fix}")
    if path.is_file() and not os.access(path, os.W_OK):
        raise MvgError(f"{option} {path} exists and is read-only: make it writable or choose another path")
    return path


def _new_file_mode(path: Path) -> int:
    """The mode of the file being replaced, else what ``open`` would give (mkstemp's 0600 would hide a report)."""
    if path.is_file():
        return path.stat().st_mode & 0o7777
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` whole or not at all: a temporary sibling, flushed to disk, renamed over ``path``.

    On any failure (a full disk, an interrupt) the temporary file is removed and ``path`` is as it was;
    an OSError names ``path`` so :func:`mvg_rt.errors.user_errors` can say which file did not fit.
    A symlink at ``path`` is kept: the file it points to is replaced.
    """
    target = Path(os.path.realpath(path))
    handle, staging = tempfile.mkstemp(prefix=f".{target.name[:64]}.", suffix=".partial", dir=target.parent)
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.chmod(staging, _new_file_mode(target))
        os.replace(staging, target)
    except BaseException as err:
        Path(staging).unlink(missing_ok=True)
        if isinstance(err, OSError) and err.filename is None:
            err.filename = str(path)
        raise


def write_text_atomic(path: str | Path, text: str) -> None:
    """:func:`write_bytes_atomic` of ``text`` as UTF-8, written as given (no newline translation)."""
    write_bytes_atomic(path, text.encode("utf-8"))
