"""User-facing errors.

Every problem a user can fix (bad input, missing or stale artifact, corrupt
checkpoint) is raised as :class:`MvgError` with a one-line message that names
the problem and the fix. The CLI prints it without a traceback and exits 2;
anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import errno
from collections.abc import Iterator
from contextlib import contextmanager

EXIT_USAGE = 2


class MvgError(Exception):
    """A problem the user can fix; ``str(err)`` is one line: the problem, then the fix."""

    def __init__(self, message: str) -> None:
        one_line = " ".join(message.split())
        super().__init__(one_line)


_ENVIRONMENT_ERRNOS = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EMFILE: "too many open files",
}


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn errors the machine causes (full disk, no permission, out of memory) into one-line MvgErrors.

    They are not bugs: the fix is on the user's side (free space, another folder, a smaller run).
    """
    try:
        yield
    except OSError as err:
        reason = _ENVIRONMENT_ERRNOS.get(err.errno or 0)
        if reason is None:
            raise
        where = f" writing {err.filename}" if err.filename else ""
        raise MvgError(f"{reason}{where} ({err.strerror or err}); free space or fix the permissions, or choose "
                       "another --out; nothing partial was kept") from err
    except MemoryError as err:
        raise MvgError("out of memory: lower --resolution or --frames, or close other programs") from err
