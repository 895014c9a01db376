"""What the property-based and file-system suites share: the hypothesis profiles, running the CLI in this
process, and a snapshot of a folder tree to prove nothing in it changed.

Profiles (``MVG_FUZZ_PROFILE``): ``ci`` (default) is derandomized (the same cases every run), keeps
no example database and neither shrinks nor explains a failure (that can take minutes on 2 cores;
the failing case is printed as generated); ``long`` runs ``SCALE`` (10) times the cases with random
seeds and shrinks. Suites size their ``max_examples`` as ``N * SCALE``.
"""

from __future__ import annotations

import contextlib
import io
import os
from pathlib import Path

from hypothesis import HealthCheck, Phase, settings

settings.register_profile("ci", deadline=None, derandomize=True, database=None, print_blob=True,
                          phases=[Phase.explicit, Phase.generate],
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                                 HealthCheck.filter_too_much, HealthCheck.function_scoped_fixture])
settings.register_profile("long", parent=settings.get_profile("ci"), derandomize=False,
                          phases=[Phase.explicit, Phase.generate, Phase.shrink])
PROFILE = os.environ.get("MVG_FUZZ_PROFILE", "ci")
SCALE = {"ci": 1, "long": 10}[PROFILE]
settings.load_profile(PROFILE)


def run_main(args: list[str]) -> tuple[int, str, str]:
    """``mvg-rt ARGS`` through the console entry point, in this process: (exit code, stdout, stderr)."""
    from mvg_rt.cli import main

    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        try:
            main(args)
            code = 0
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else 1
    return code, stdout.getvalue(), stderr.getvalue()


def tree_snapshot(root: Path) -> dict[str, bytes | str | None]:
    """Every entry under ``root`` by relative path: a file's bytes, a link's target, None for a folder."""
    entries: dict[str, bytes | str | None] = {}
    for path in sorted(root.rglob("*")):
        key = str(path.relative_to(root))
        entries[key] = os.readlink(path) if path.is_symlink() else path.read_bytes() if path.is_file() else None
    return entries
