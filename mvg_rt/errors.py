"""User-facing errors.

Every problem a user can fix (bad input, missing or stale artifact, corrupt
checkpoint) is raised as :class:`MvgError` with a one-line message that names
the problem and the fix. The CLI prints it without a traceback and exits 2;
anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

EXIT_USAGE = 2


class MvgError(Exception):
    """A problem the user can fix; ``str(err)`` is one line: the problem, then the fix."""

    def __init__(self, message: str) -> None:
        one_line = " ".join(message.split())
        super().__init__(one_line)
