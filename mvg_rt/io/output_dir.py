"""Output folders that are never shared, never half-written, and never the user's own files.

Every job that writes a folder (simulate, export, make-tiny-model, train-demo, bench) goes through
:func:`staged_output_dir`; batch claims its folder with :func:`claim_output_dir`; build locks the
engines folder it updates in place with :func:`lock_dir`.

0. **Refuse what is not an output folder.** Before any work, ``--out`` is refused (one line, exit 2)
   when it is ``.``, ``..`` or empty (``Path('.').name`` is ``''``: the folder would be the parent's
   entry), the working folder or one above it, ``/`` or the home folder, a symbolic link, a folder that
   is or holds an input of the run (image, mask, model, engines, worklist, ...), or a name too long for
   the file system once the staging prefix and suffix are added.
1. **Marker.** Every folder mvg-rt writes carries :data:`MARKER`, a small JSON file (the output's
   kind and mvg-rt's version), written into the staging folder right after it is created, so the
   staging folder, and the output it becomes, say they are mvg-rt's. ``--overwrite`` (and batch's
   ``--redo``, bench's replacing of its report) replaces an existing non-empty folder only if it
   carries the marker; anything else "holds files mvg-rt did not write" and is refused.
2. **Lock.** An exclusive ``flock`` on ``.<name>.mvg-lock`` beside ``out`` is taken before any
   work and held for the whole run, so a second run on the same ``out`` fails at once (exit 2).
   The kernel drops the lock when its owner dies, however it dies (kill -9 included).
3. **Recover.** Staging folders are named by ``mkdtemp``: ``.<name>.mvg-partial-XXXXXXXX`` (and, only
   with the two-rename fallback below, ``.<name>.mvg-old-XXXXXXXX``). Every claim looks at the parent
   folder: a folder of exactly that shape that is empty or carries the marker, and whose lock nobody
   holds, belongs to a dead run and is removed (an old run stranded by the fallback is put back at
   ``<name>`` first, if it carries the marker). Nothing else is touched, whatever its name.
4. **Stage.** The run writes into its staging folder; any exception, Ctrl-C or SIGTERM (the CLI
   turns SIGTERM into ``KeyboardInterrupt``) removes it.
5. **Commit in one step.** A new ``out`` appears by one ``rename``. An existing ``out``
   (``--overwrite``) is swapped with the staging folder by ``renameat2(RENAME_EXCHANGE)``, one
   atomic system call on Linux, so ``out`` always holds the complete old or the complete new
   run; the old one is then deleted from the staging name. Where the call is missing
   (another OS, a file system without it), a documented two-rename fallback moves ``out`` to
   ``.<name>.mvg-old-*`` and the staging folder to ``out``; a kill between the two renames
   leaves ``out`` absent for a moment, and step 3 of the next run puts the old run back.

Permissions: the staging folder is created private (0700, by ``mkdtemp``) so nobody reads a
half-written run; at commit it takes the mode a plain ``mkdir`` would give (0777 minus the
umask: 0755 under umask 022). Run under ``umask 077`` to keep outputs private to your account.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import json
import os
import re
import shutil
import signal
import stat
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from importlib import metadata
from pathlib import Path

from mvg_rt.errors import MvgError
from mvg_rt.io.stop_requests import STOP_SIGNALS, critical_section, on_forced_exit

MARKER = ".mvg-rt-output"
LOCK_SUFFIX = ".mvg-lock"
PARTIAL = ".mvg-partial-"
OLD = ".mvg-old-"
# exactly what mkdtemp(prefix=f".{name}{PARTIAL}") makes: 8 characters of tempfile's alphabet
_STAGING = re.compile(r"^\.(?P<name>.+)\.mvg-(?P<role>partial|old)-[a-z0-9_]{8}$")
_ADDED_BYTES = len(f".{PARTIAL}") + 8  # the longest name mvg-rt makes from <name>: its staging folder's
_MARKER_MAX_BYTES = 4096
_SELF_REPLACING = frozenset({"bench"})  # jobs whose folder is replaced without --overwrite, by their own kind only
_RENAME_EXCHANGE = 2  # linux/fs.h
_AT_FDCWD = -100
_DEFERRED_SIGNALS = (signal.SIGINT, *STOP_SIGNALS)  # every stop request waits for a commit

Inputs = Mapping[str, "str | Path | None"]  # what the run reads, by the option that names it
_held: dict[Path, int] = {}  # lock path -> fd, for the locks this process holds (re-entrant claims)
_staging: set[Path] = set()  # this process's staging folders not yet committed or removed


def live_staging() -> list[Path]:
    """This process's staging folders and held lock files, for a forced exit to remove (folders first).

    A stop that cannot unwind the stack (a watchdog ending the process) removes these; the kernel
    releases the locks themselves when the process dies.
    """
    return sorted(_staging) + sorted(_held)


def _remove_live_staging() -> None:
    """The forced exit's clean-up (see :mod:`mvg_rt.io.stop_requests`): staging folders, then lock files."""
    for path in live_staging():
        if path in _staging:
            _remove(path)
        else:
            with suppress(OSError):
                path.unlink()


on_forced_exit(_remove_live_staging)


# ---- the marker ---------------------------------------------------------------------------------------------

def _version() -> str:
    try:
        return metadata.version("mvg-rt")
    except metadata.PackageNotFoundError:
        return "unknown"


def mark_output(folder: Path, kind: str) -> None:
    """Write the marker that says ``folder`` is mvg-rt's output of ``kind`` (run, engines, model, bench, batch)."""
    (folder / MARKER).write_text(json.dumps({"mvg_rt_output": 1, "kind": kind, "mvg_rt_version": _version()}) + "\n")


def output_kind(folder: Path) -> str | None:
    """The kind in ``folder``'s marker, or None when the folder does not carry a valid one (a link is not one)."""
    marker = folder / MARKER
    try:
        if marker.is_symlink() or not marker.is_file():
            return None
        with marker.open("rb") as handle:
            record = json.loads(handle.read(_MARKER_MAX_BYTES))
    except (OSError, ValueError):
        return None
    kind = record.get("kind") if isinstance(record, dict) else None
    return kind if isinstance(kind, str) and record.get("mvg_rt_output") == 1 else None


def foreign(folder: Path) -> bool:
    """True when ``folder`` exists and is not mvg-rt's to replace: a file, a link, or a non-empty folder without
    the marker."""
    if folder.is_symlink() or (folder.exists() and not folder.is_dir()):
        return True
    return folder.exists() and not _is_empty(folder) and output_kind(folder) is None


def _is_empty(folder: Path) -> bool:
    """No entry but (perhaps) the marker, valid or empty: a folder just made, or one whose marker write was cut
    short (a user's file of that name with other data in it makes the folder not empty)."""
    try:
        entries = list(folder.iterdir())
    except OSError:
        return False
    if not entries:
        return True
    marker = entries[0]
    return (len(entries) == 1 and marker.name == MARKER and not marker.is_symlink() and marker.is_file()
            and (marker.stat().st_size == 0 or output_kind(folder) is not None))


def _remove(folder: Path) -> None:
    """Delete one of mvg-rt's own folders, its marker last: a kill midway leaves it recognisable, so the next
    claim finishes the job."""
    try:
        entries = [entry for entry in folder.iterdir() if entry.name != MARKER]
    except OSError:
        entries = []
    for entry in entries:
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            with suppress(OSError):
                entry.unlink()
    shutil.rmtree(folder, ignore_errors=True)


# ---- --out as a folder path ----------------------------------------------------------------------------------

def resolve_out(out: str | Path) -> Path:
    """``out`` as an absolute path (the parent's links resolved, the last name kept), or a one-line refusal."""
    given = str(out)
    path = Path(out)
    if path.name in ("", ".", ".."):
        raise MvgError(f"--out {given!r} names no new folder (it is the current folder, one above it, or empty): "
                       "give the output folder its own name, e.g. --out runs/p1")
    absolute = path.parent.resolve() / path.name
    try:
        cwd = Path.cwd().resolve()
    except OSError:  # the working folder was deleted: nothing of it to protect
        cwd = None
    if cwd is not None and (absolute == cwd or absolute in cwd.parents):
        raise MvgError(f"--out {given} is the working folder or a folder above it: choose a new folder, "
                       "e.g. --out runs/p1")
    try:
        home = Path.home().resolve()
    except (RuntimeError, OSError):  # no home folder known
        home = None
    if absolute == home:
        raise MvgError(f"--out {given} is your home folder: choose a new folder, e.g. --out runs/p1")
    return absolute


def _check_name_length(out: Path, given: str | Path) -> None:
    """Refuse a name the file system cannot hold once ``.`` and ``.mvg-partial-XXXXXXXX`` are added."""
    existing = out.parent
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    try:
        name_max = os.pathconf(existing, "PC_NAME_MAX")
    except (OSError, ValueError):
        name_max = 255
    length = len(os.fsencode(out.name))
    if length + _ADDED_BYTES > name_max:
        raise MvgError(f"--out {given}: its last name is {length} bytes, and with mvg-rt's staging prefix and "
                       f"suffix ({_ADDED_BYTES} bytes) it exceeds this file system's {name_max}-byte limit: choose a "
                       f"name of at most {name_max - _ADDED_BYTES} bytes")


def _check_inputs(out: Path, given: str | Path, inputs: Inputs | None) -> None:
    """Refuse an ``out`` that is, or holds, one of the run's inputs (compared as resolved paths)."""
    for label, value in (inputs or {}).items():
        if value is None or str(value) == "":
            continue
        source = Path(value).resolve()
        if source == out or out in source.parents:
            raise MvgError(f"--out {given} is or holds {label} of this run: choose a folder that holds none of the "
                           "run's inputs, e.g. --out runs/p1")


def _prepare_parent(out: Path, given: str | Path) -> None:
    parent = out.parent
    if parent.exists() and not parent.is_dir():
        raise MvgError(f"cannot write {given}: {parent} is a file; choose another --out")
    try:
        parent.mkdir(parents=True, exist_ok=True)  # like `mkdir -p`: `--out runs/p1` on a fresh clone just works
    except OSError as err:
        raise MvgError(f"cannot write {given}: cannot create {parent} ({err.strerror}); choose another --out") from err
    if not os.access(parent, os.W_OK | os.X_OK):
        raise MvgError(f"cannot write {given}: no write permission in {parent}; choose another --out")


def _check_destination(out: Path, given: str | Path, overwrite: bool, kind: str | None) -> None:
    """What may be done with an existing ``out``: a non-empty one must carry the marker (and --overwrite)."""
    if out.is_symlink():
        raise MvgError(f"--out {given} is a symbolic link to {out.resolve()}: pass --out {out.resolve()} instead "
                       "(mvg-rt never replaces a link)")
    if out.exists() and not out.is_dir():
        raise MvgError(f"--out {given} is a file: choose a folder path")
    if not out.exists() or _is_empty(out):
        return
    found = output_kind(out)
    if found is None:
        raise MvgError(f"--out {given} holds files mvg-rt did not write (no {MARKER} marker): choose a new folder")
    if kind in _SELF_REPLACING and found == kind:
        return  # e.g. bench: an earlier report is replaced once the new one is complete
    if kind in _SELF_REPLACING:
        raise MvgError(f"--out {given} holds mvg-rt's {found} output, not a {kind} report: choose a new folder")
    if not overwrite:
        raise MvgError(f"--out {given} already holds results: choose a new folder or pass --overwrite "
                       "(the old results are replaced only after the new run succeeds)")


def _checked_path(out: str | Path, inputs: Inputs | None) -> Path:
    """The resolved ``out`` after the checks of its path (the parent folder is created); what is at ``out`` is
    checked by :func:`_check_destination`, after recovery (which may put a stranded old run back there)."""
    path = resolve_out(out)
    _check_name_length(path, out)
    _check_inputs(path, out, inputs)
    _prepare_parent(path, out)
    return path


def check_output_dir(out: str | Path, overwrite: bool, inputs: Inputs | None = None, kind: str | None = None) -> None:
    """Fail before any work if ``out`` cannot be produced (no lock: :func:`claim_output_dir` takes it).

    ``inputs``: the run's input paths by the option that names them ({"--model-dir": ...}); ``out`` may be
    none of them nor a folder above one.
    """
    _check_destination(_checked_path(out, inputs), out, overwrite, kind)


# ---- locks and recovery --------------------------------------------------------------------------------------

def _lock_path(out: Path) -> Path:
    return out.parent / f".{out.name}{LOCK_SUFFIX}"


def _is_lock_file(path: Path) -> bool:
    """What mvg-rt's lock files are: empty regular files (a link, a folder or a file with data is not one)."""
    try:
        info = path.lstat()
    except OSError:
        return False
    return stat.S_ISREG(info.st_mode) and info.st_size == 0


def _try_lock(lock: Path, blocking: bool = False) -> int | None:
    """An fd holding an exclusive flock on ``lock`` (created if needed), or None if someone holds it.

    The lock file is unlinked by whoever releases it, so after locking we check the path still
    names the inode we locked; if not, another process removed it meanwhile and we retry. A path
    there that is not an empty regular file is someone else's: refused, never opened for writing.
    """
    while True:
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        except OSError as err:
            raise MvgError(f"cannot lock the output folder: {lock} is not mvg-rt's lock file ({err.strerror}); "
                           "choose another --out") from err
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_size:
            os.close(fd)
            raise MvgError(f"cannot lock the output folder: {lock} holds data mvg-rt did not write; choose another "
                           "--out")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            os.close(fd)
            return None
        try:
            same = os.stat(lock).st_ino == info.st_ino
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


def _is_ours(entry: Path) -> bool:
    """A staging folder of mvg-rt's: the exact mkdtemp name shape, a real folder, empty or marked."""
    return (_STAGING.match(entry.name) is not None and entry.is_dir() and not entry.is_symlink()
            and (_is_empty(entry) or output_kind(entry) is not None))


def _leftovers(parent: Path, name: str | None = None) -> dict[str, list[Path]]:
    """mvg-rt's staging folders in ``parent`` (of one destination name, or of all), by destination name."""
    found: dict[str, list[Path]] = {}
    try:
        entries = list(parent.iterdir())
    except OSError:
        return found
    for entry in entries:
        match = _STAGING.match(entry.name)
        if match and (name is None or match["name"] == name) and _is_ours(entry):
            found.setdefault(match["name"], []).append(entry)
    return found


def _recover_locked(out: Path, leftovers: list[Path]) -> None:
    """With ``out``'s lock held: restore a marked old run stranded mid-fallback, remove every other leftover."""
    old = [p for p in leftovers if _STAGING.match(p.name)["role"] == "old" and output_kind(p) is not None]
    if not out.exists() and not out.is_symlink() and len(old) == 1:
        old[0].rename(out)
        leftovers = [p for p in leftovers if p != old[0]]
    for path in leftovers:
        _remove(path)


def recover(parent: Path, patience_s: float = 0.0) -> None:
    """Remove what dead runs left in ``parent`` (names whose lock is free); live runs are left alone.

    ``patience_s``: how long to wait for a held lock to be freed, for a caller that has just killed
    the processes holding them (a process's locks are released only once it has fully exited).
    """
    leftovers = _leftovers(parent)
    for lock_file in parent.glob(f".*{LOCK_SUFFIX}"):  # a lock file alone: its owner died after its commit
        if _is_lock_file(lock_file):
            leftovers.setdefault(lock_file.name[1:-len(LOCK_SUFFIX)], [])
    give_up = time.monotonic() + patience_s
    for name, paths in leftovers.items():
        out = parent / name
        lock = _lock_path(out)
        if lock in _held:
            continue  # ours: removed by our own staging context
        try:
            fd = _try_lock(lock)
            while fd is None and time.monotonic() < give_up:
                time.sleep(0.05)
                fd = _try_lock(lock)
        except MvgError:
            continue  # the lock's name is taken by something not ours: leave it, and its name's folders
        if fd is None:
            continue  # a live run owns it
        try:
            _recover_locked(out, paths)
        finally:
            _unlock(lock, fd)


@contextmanager
def _locked(out: Path, wait: bool) -> Iterator[bool]:
    """Hold ``out``'s lock (re-entrant within this process); yields True when this call took it."""
    lock = _lock_path(out)
    if lock in _held:
        yield False
        return
    fd = _try_lock(lock, blocking=wait)
    if fd is None:
        raise MvgError(f"another mvg-rt run is writing {out} right now: wait for it to finish, or choose another "
                       "--out")
    _held[lock] = fd
    try:
        yield True
    finally:
        del _held[lock]
        _unlock(lock, fd)


@contextmanager
def _claim(out: str | Path, overwrite: bool, wait: bool, inputs: Inputs | None, kind: str | None) -> Iterator[Path]:
    """Check ``out``, lock it (re-entrant within this process), recover dead runs' leftovers, check again."""
    path = _checked_path(out, inputs)
    with _locked(path, wait) as took:
        if took:
            _recover_locked(path, _leftovers(path.parent, path.name).get(path.name, []))
            recover(path.parent)  # also when the claim is then refused: any run in the folder cleans up
        _check_destination(path, out, overwrite, kind)  # under the lock: a run that just finished is kept
        yield path


@contextmanager
def claim_output_dir(out: str | Path, overwrite: bool = False, wait: bool = False, inputs: Inputs | None = None,
                     kind: str | None = None) -> Iterator[Path]:
    """Hold ``out``'s lock (re-entrant within this process) after recovering dead runs' leftovers.

    ``wait``: block until another run releases the lock instead of failing at once. ``inputs``: see
    :func:`check_output_dir`. ``kind``: for a folder written into in place (batch's): created and marked
    here; an existing non-empty one must carry the marker of that kind.
    """
    with _claim(out, overwrite, wait, inputs, kind) as path:
        if kind is not None:
            found = None if _is_empty(path) else output_kind(path)
            if found not in (None, kind):
                raise MvgError(f"--out {out} holds mvg-rt's {found} output, not a {kind}: choose a new folder")
            path.mkdir(exist_ok=True)
            if found is None:
                mark_output(path, kind)
        yield path


@contextmanager
def lock_dir(folder: str | Path) -> Iterator[Path]:
    """Hold the lock of a folder updated in place (build adds engines to an export's folder): nothing is
    replaced, so none of the output-folder rules apply; a second build or export on it fails at once."""
    path = Path(folder).resolve()
    with _locked(path, wait=False):
        yield path


# ---- staging and the commit ----------------------------------------------------------------------------------

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
        _remove(staging)  # now holds the old run
        return
    retired = Path(tempfile.mkdtemp(prefix=f".{out.name}{OLD}", dir=out.parent))
    retired.rmdir()
    out.rename(retired)  # a kill here leaves `out` absent; the next claim puts `retired` back (it is marked)
    staging.rename(out)
    _remove(retired)


@contextmanager
def _signals_deferred() -> Iterator[None]:
    """Ctrl-C and every other stop request wait until the commit is done (then take effect): no commit is
    left half-way, and the stop watchdog waits for it too."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        with critical_section():
            yield
        return
    caught: list[int] = []
    previous = {sig: signal.signal(sig, lambda number, _frame: caught.append(number)) for sig in _DEFERRED_SIGNALS}
    try:
        with critical_section():
            yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for sig in caught[:1]:
            signal.raise_signal(sig)


@contextmanager
def staged_output_dir(out: str | Path, overwrite: bool = False, wait: bool = False, *, kind: str,
                      inputs: Inputs | None = None) -> Iterator[Path]:
    """Yield a private, marked staging folder while holding ``out``'s lock; on success it becomes ``out``.

    ``kind`` is recorded in the marker (run, engines, model, bench). On any error (or interrupt) the
    staging folder is removed and ``out`` is untouched.
    """
    with _claim(out, overwrite, wait, inputs, kind) as path:
        staging = Path(tempfile.mkdtemp(prefix=f".{path.name}{PARTIAL}", dir=path.parent))
        _staging.add(staging)
        try:
            mark_output(staging, kind)  # first: a staging folder left by a kill is recognisably mvg-rt's
            yield staging
            with _signals_deferred():
                _commit(staging, path)
        except BaseException:
            _remove(staging)
            raise
        finally:
            _staging.discard(staging)
