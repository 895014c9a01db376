"""Stop requests (Ctrl-C, SIGTERM, a closed terminal) that end a run within seconds, whatever it is doing.

Python runs a signal handler only between bytecodes of the main thread, so a run inside one long
native call (a UNet attention at a huge resolution, an ONNX Runtime session, a TensorRT build) would
hold off ``timeout``, ``systemctl stop`` or a dropped SSH session for as long as the call lasts (13
minutes was seen). :func:`stop_requests` makes every stop request take effect in one of two ways:

1. **Normally**: the signal raises ``KeyboardInterrupt`` in the main thread, so the job unwinds as
   after Ctrl-C (staging folders removed, locks released, the CLI exits 130).
2. **Forced**, when the main thread has not finished within ``grace_s`` of the request: a watchdog
   thread, woken by the signal at C level (``signal.set_wakeup_fd``), waits for any commit in
   progress (:func:`critical_section`: a commit is never cut half-way), runs the registered
   clean-up hooks (:func:`on_forced_exit`: the output folders' staging and locks) and ends the
   process with ``os._exit(130)``. Native calls release the GIL, so the watchdog runs beside them.

Handled like SIGTERM: SIGHUP (a closed terminal or SSH session), SIGQUIT, SIGUSR1 and SIGUSR2 (whose
default action would end the process with its staging folder left behind). SIGINT keeps Python's
own ``KeyboardInterrupt``.
"""

from __future__ import annotations

import itertools
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2)
GRACE_S = 3.0
INTERRUPTED = "mvg-rt: interrupted; no partial output was kept"

_hooks: list[Callable[[], None]] = []
_commit = threading.RLock()  # held by a commit; the forced exit waits for it
_blocks = itertools.count(1)
_armed: list[tuple[int, float]] = [(0, GRACE_S)]  # (the armed block's number, 0: none; its grace)
_pipe: tuple[int, int] | None = None  # the wake-up pipe and its watchdog, started once per process


def on_forced_exit(hook: Callable[[], None]) -> None:
    """Run ``hook`` (it must not raise, and must be quick) before a forced exit."""
    _hooks.append(hook)


@contextmanager
def critical_section() -> Iterator[None]:
    """A forced exit waits until this block has finished (an output folder's commit)."""
    with _commit:
        yield


def _raise_interrupt(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


def _forced_exit(grace_s: float) -> None:
    with _commit:
        for hook in _hooks:
            try:
                hook()
            except Exception:  # noqa: BLE001 - a clean-up hook must not keep the process alive
                pass
        os.write(2, f"\n{INTERRUPTED} (stopped {grace_s:g} s after the request, inside a long call)\n".encode())
        os._exit(130)


def _watch(read_fd: int) -> None:
    while os.read(read_fd, 64):  # one byte per signal, written at C level the moment it arrives
        block, grace_s = _armed[0]
        if block:
            time.sleep(grace_s)
            if _armed[0][0] == block:  # the block that got the request has not unwound
                _forced_exit(grace_s)


def _forget_pipe() -> None:
    global _pipe
    _pipe = None  # a forked child has the pipe but not the thread that reads it: it starts its own


os.register_at_fork(after_in_child=_forget_pipe)


def _wakeup_fd() -> int:
    global _pipe
    if _pipe is None:
        _pipe = os.pipe()
        os.set_blocking(_pipe[1], False)
        threading.Thread(target=_watch, args=(_pipe[0],), name="mvg-rt-stop-watchdog", daemon=True).start()
    return _pipe[1]


@contextmanager
def stop_requests(grace_s: float = GRACE_S) -> Iterator[None]:
    """Within this block every stop signal ends the run as Ctrl-C does, forcibly after ``grace_s``.

    Outside the main thread (an embedding application's worker) it does nothing: signal handlers
    belong to the main thread.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, _raise_interrupt) for sig in STOP_SIGNALS}
    previous_fd = signal.set_wakeup_fd(_wakeup_fd(), warn_on_full_buffer=False)
    outer = _armed[0]
    _armed[0] = (next(_blocks), grace_s)
    try:
        yield
    finally:
        _armed[0] = outer
        signal.set_wakeup_fd(previous_fd)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
