"""User-facing errors.

Every problem a user can fix (bad input, missing or stale artifact, corrupt
checkpoint) is raised as :class:`MvgError` with a one-line message that names
the problem and the fix. The CLI prints it without a traceback and exits 2;
anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import errno
import re
from collections.abc import Iterator
from contextlib import contextmanager

EXIT_USAGE = 2


class MvgError(Exception):
    """A problem the user can fix; ``str(err)`` is one line: the problem, then the fix."""

    def __init__(self, message: str) -> None:
        one_line = " ".join(message.split())
        super().__init__(one_line)


def first_line(err: BaseException, limit: int = 200) -> str:
    """An exception's first line, at most ``limit`` characters (its type's name if it says nothing):
    what a one-line error quotes of a library's long, multi-line message."""
    lines = str(err).strip().splitlines()
    return (lines[0].strip() if lines else "")[:limit] or type(err).__name__


_ENVIRONMENT_ERRNOS = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EMFILE: "too many open files",
}


# Libraries that write files in native code report a full disk in their own exception types, not OSError.
_RUST_IO_ERRNO = re.compile(r"\(os error (\d+)\)")  # Rust's io::Error text (safetensors' SafetensorError)
_TORCH_SHORT_WRITE = re.compile(r"inline_container\.cc.*(unexpected pos|failed writing file)")  # torch.save


def _environment_reason(err: BaseException) -> str | None:
    """What of the machine failed, for an OSError or a library's wrapped one; None: not the machine's doing."""
    if isinstance(err, OSError):
        return _ENVIRONMENT_ERRNOS.get(err.errno or 0)
    text = str(err)
    rust = _RUST_IO_ERRNO.search(text)
    if rust:
        return _ENVIRONMENT_ERRNOS.get(int(rust.group(1)))
    if isinstance(err, RuntimeError) and _TORCH_SHORT_WRITE.search(text):
        return "a file could not be written whole (the disk is probably full)"  # torch names no errno
    return None


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn errors the machine causes (full disk, no permission, out of memory) into one-line MvgErrors.

    They are not bugs: the fix is on the user's side (free space, another folder, a smaller run).
    """
    try:
        yield
    except MemoryError as err:
        raise MvgError("out of memory: lower --resolution or --frames, or close other programs") from err
    except Exception as err:
        reason = _environment_reason(err)
        if reason is None or isinstance(err, MvgError):
            raise
        filename = getattr(err, "filename", None)
        where = f" writing {filename}" if filename else ""
        detail = (err.strerror if isinstance(err, OSError) else None) or type(err).__name__
        raise MvgError(f"{reason}{where} ({detail}); free space or fix the permissions, or choose "
                       "another output path; nothing partial was kept") from err
