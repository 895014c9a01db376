"""Output folders that are never shared and never half-written.

Every job that writes a folder (simulate, export, make-tiny-model, train-demo, bench; build
locks its engines folder) goes through :func:`staged_output_dir`:

1. **Lock.** An exclusive ``flock`` on ``.<name>.mvg-lock`` beside ``out`` is taken before any
   work and held for the whole run, so a second run on the same ``out`` fails at once (exit 2).
   The kernel drops the lock when its owner dies, however it dies (kill -9 included).
2. **Recover.** Staging folders are named ``.<name>.mvg-partial-*`` (and, only with the
   two-rename fallback below, ``.<name>.mvg-old-*``). Every run first looks at its parent
   folder: a name whose lock nobody holds belongs to a dead run, and its leftovers are removed
   (an old run stranded by the fallback is put back at ``<name>`` first).
3. **Stage.** The run writes into a fresh hidden staging folder; any exception, Ctrl-C or
   SIGTERM (the CLI turns SIGTERM into ``KeyboardInterrupt``) removes it.
4. **Commit in one step.** A new ``out`` appears by one ``rename``. An existing ``out``
   (``--overwrite``) is swapped with the staging folder by ``renameat2(RENAME_EXCHANGE)``, one
   atomic system call on Linux, so ``out`` always holds the complete old or the complete new
   run; the old one is then deleted from the staging name. Where the call is missing
   (another OS, a file system without it), a documented two-rename fallback moves ``out`` to
   ``.<name>.mvg-old-*`` and the staging folder to ``out``; a kill between the two renames
   leaves ``out`` absent for a moment, and step 2 of the next run puts the old run back.

Permissions: the staging folder is created private (0700, by ``mkdtemp``) so nobody reads a
half-written run; at commit it takes the mode a plain ``mkdir`` would give (0777 minus the
umask: 0755 under umask 022). Run under ``umask 077`` to keep outputs private to your account.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import re
import shutil
import signal
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from mvg_rt.errors import MvgError

LOCK_SUFFIX = ".mvg-lock"
PARTIAL = ".mvg-partial-"
OLD = ".mvg-old-"
_LEFTOVER = re.compile(r"^\.(?P<name>.+?)(?:\.mvg-(?:partial|old)-[A-Za-z0-9_]+|\.(?:partial|old)-[a-z0-9_]{8})$")
_RENAME_EXCHANGE = 2  # linux/fs.h
_AT_FDCWD = -100
_held: dict[Path, int] = {}  # lock path -> fd, for the locks this process holds (re-entrant claims)


def _lock_path(out: Path) -> Path:
    return out.parent / f".{out.name}{LOCK_SUFFIX}"


def _try_lock(lock: Path, blocking: bool = False) -> int | None:
    """An fd holding an exclusive flock on ``lock`` (created if needed), or None if someone holds it.

    The lock file is unlinked by whoever releases it, so after locking we check the path still
    names the inode we locked; if not, another process removed it meanwhile and we retry.
    """
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            os.close(fd)
            return None
        try:
            same = os.stat(lock).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)


def _unlock(lock: Path, fd: int) -> None:
    try:
        os.unlink(lock)  # while still locked: a waiter that opened it re-checks the inode and retries
    except FileNotFoundError:
        pass
    os.close(fd)


def _leftovers(parent: Path, name: str | None = None) -> dict[str, list[Path]]:
    """Staging/old folders in ``parent`` (of one destination name, or of all), by destination name."""
    found: dict[str, list[Path]] = {}
    try:
        entries = list(parent.iterdir())
    except OSError:
        return found
    for entry in entries:
        match = _LEFTOVER.match(entry.name)
        if match and entry.is_dir() and (name is None or match["name"] == name):
            found.setdefault(match["name"], []).append(entry)
    return found


def _recover_locked(out: Path, leftovers: list[Path]) -> None:
    """With ``out``'s lock held: restore an old run stranded mid-fallback, remove every leftover."""
    old = [p for p in leftovers if OLD in p.name or ".old-" in p.name]
    if not out.exists() and len(old) == 1:
        inner = old[0] / out.name  # the legacy layout kept the old run one level down
        (inner if inner.is_dir() else old[0]).rename(out)
    for path in leftovers:
        shutil.rmtree(path, ignore_errors=True)


def recover(parent: Path, patience_s: float = 0.0) -> None:
    """Remove what dead runs left in ``parent`` (names whose lock is free); live runs are left alone.

    ``patience_s``: how long to wait for a held lock to be freed, for a caller that has just killed
    the processes holding them (a process's locks are released only once it has fully exited).
    """
    leftovers = _leftovers(parent)
    for lock_file in parent.glob(f".*{LOCK_SUFFIX}"):  # a lock file alone: its owner died after its commit
        leftovers.setdefault(lock_file.name[1:-len(LOCK_SUFFIX)], [])
    give_up = time.monotonic() + patience_s
    for name, paths in leftovers.items():
        out = parent / name
        lock = _lock_path(out)
        if lock in _held:
            continue  # ours: removed by our own staging context
        fd = _try_lock(lock)
        while fd is None and time.monotonic() < give_up:
            time.sleep(0.05)
            fd = _try_lock(lock)
        if fd is None:
            continue  # a live run owns it
        try:
            _recover_locked(out, paths)
        finally:
            _unlock(lock, fd)


def _prepare_parent(out: Path) -> Path:
    if out.exists() and not out.is_dir():
        raise MvgError(f"--out {out} is a file: choose a folder path")
    parent = out.resolve().parent
    if parent.exists() and not parent.is_dir():
        raise MvgError(f"cannot write {out}: {parent} is a file; choose another --out")
    try:
        parent.mkdir(parents=True, exist_ok=True)  # like `mkdir -p`: `--out runs/p1` on a fresh clone just works
    except OSError as err:
        raise MvgError(f"cannot write {out}: cannot create {parent} ({err.strerror}); choose another --out") from err
    if not os.access(parent, os.W_OK | os.X_OK):
        raise MvgError(f"cannot write {out}: no write permission in {parent}; choose another --out")
    return parent


def _check_destination(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise MvgError(f"--out {out} is a file: choose a folder path")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise MvgError(f"--out {out} already holds results: choose a new folder or pass --overwrite "
                       "(the old results are replaced only after the new run succeeds)")


def check_output_dir(out: Path, overwrite: bool) -> None:
    """Fail before any work if ``out`` cannot be produced (no lock: :func:`claim_output_dir` takes it)."""
    out = Path(out)
    _prepare_parent(out)
    _check_destination(out, overwrite)


@contextmanager
def claim_output_dir(out: str | Path, overwrite: bool = False, wait: bool = False) -> Iterator[Path]:
    """Hold ``out``'s lock (re-entrant within this process) after recovering dead runs' leftovers.

    ``wait``: block until another run releases the lock instead of failing at once.
    """
    out = Path(out)
    parent = _prepare_parent(out)
    out = parent / out.name
    lock = _lock_path(out)
    if lock in _held:
        _check_destination(out, overwrite)
        yield out
        return
    fd = _try_lock(lock, blocking=wait)
    if fd is None:
        raise MvgError(f"another mvg-rt run is writing {out} right now: wait for it to finish, or choose another "
                       "--out")
    _held[lock] = fd
    try:
        _recover_locked(out, _leftovers(parent, out.name).get(out.name, []))
        recover(parent)
        _check_destination(out, overwrite)
        yield out
    finally:
        del _held[lock]
        _unlock(lock, fd)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _libc_renameat2():
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        function = libc.renameat2
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    function.restype = ctypes.c_int
    return function


_renameat2 = _libc_renameat2()


def exchange(a: Path, b: Path) -> bool:
    """Swap two directories atomically (``renameat2(RENAME_EXCHANGE)``); False where unsupported."""
    if _renameat2 is None:
        return False
    if _renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):
        return False
    raise OSError(code, os.strerror(code), str(a))


def _commit(staging: Path, out: Path) -> None:
    """Make ``staging`` the folder ``out`` in one step (see the module docstring)."""
    staging.chmod(0o777 & ~_umask())
    if not out.exists():
        staging.rename(out)
        return
    if exchange(staging, out):
        shutil.rmtree(staging, ignore_errors=True)  # now holds the old run
        return
    retired = Path(tempfile.mkdtemp(prefix=f".{out.name}{OLD}", dir=out.parent))
    retired.rmdir()
    out.rename(retired)  # a kill here leaves `out` absent; the next claim puts `retired` back
    staging.rename(out)
    shutil.rmtree(retired, ignore_errors=True)


@contextmanager
def _signals_deferred() -> Iterator[None]:
    """Ctrl-C / SIGTERM wait until the commit is done (then take effect): no commit is left half-way."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    previous = {sig: signal.signal(sig, lambda number, _frame: caught.append(number))
                for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for sig in caught[:1]:
            signal.raise_signal(sig)


@contextmanager
def staged_output_dir(out: str | Path, overwrite: bool = False, wait: bool = False) -> Iterator[Path]:
    """Yield a private staging folder while holding ``out``'s lock; on success it becomes ``out``.

    On any error (or interrupt) the staging folder is removed and ``out`` is untouched.
    """
    with claim_output_dir(out, overwrite, wait) as out:
        staging = Path(tempfile.mkdtemp(prefix=f".{out.name}{PARTIAL}", dir=out.parent))
        try:
            yield staging
            with _signals_deferred():
                _commit(staging, out)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
