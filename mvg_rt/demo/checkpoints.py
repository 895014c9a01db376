"""Per-stage checkpoints of ``mvg-rt train-demo``, so a stopped training resumes where it stood.

Training the demo model takes about two hours on two cores, longer than many sessions or
maintenance windows. Every stage saves its whole state (weights, EMA, optimizer, learning
rate schedule, random generator, step) every few minutes and its result when it ends, in
one folder; rerunning the same command skips finished stages and continues a stopped one
from its last save, bit for bit as if it had not stopped (the generator state is restored
too, so the data order and noise are the same).

A stage's files are keyed by a fingerprint of the settings it depends on (its own and the
earlier stages'), so changing the SEINE budget reuses a finished VAE and UNet, and a
checkpoint of other settings is never resumed by mistake. Files are written atomically and
read with ``torch.load(weights_only=True)``: a checkpoint holds tensors and plain data, and
nothing in it can run code. Each file also keeps the seconds of work the stage has taken so
far, so a resumed training still reports what every stage cost (:attr:`StageCheckpoints.seconds`).
"""

from __future__ import annotations

import hashlib
import io
import json
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, Protocol

import torch

from mvg_rt.errors import MvgError
from mvg_rt.io.files import write_bytes_atomic

Log = Callable[[str], None]
SAVE_EVERY_SECONDS = 120.0  # at most this much work is lost when a training stops


class Stateful(Protocol):
    def state_dict(self) -> Mapping[str, Any]: ...
    def load_state_dict(self, state: Mapping[str, Any]) -> Any: ...


class GeneratorState:
    """A torch.Generator as a :class:`Stateful` (its state is a byte tensor)."""

    def __init__(self, generator: torch.Generator) -> None:
        self.generator = generator

    def state_dict(self) -> dict[str, Any]:
        return {"state": self.generator.get_state()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.generator.set_state(state["state"])


def fingerprint(settings: Mapping[str, Any]) -> str:
    """Short stable hash of JSON-able settings."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]


class StageCheckpoints:
    """The checkpoint folder of one training; ``keys`` maps a stage name to its settings fingerprint."""

    def __init__(self, folder: Path, keys: Mapping[str, str], log: Log,
                 save_every_seconds: float = SAVE_EVERY_SECONDS) -> None:
        self.folder, self.keys, self.log, self.save_every = Path(folder), dict(keys), log, save_every_seconds
        self.seconds: dict[str, float | None] = {}  # stage -> seconds of work over all runs (None: not recorded)
        self._started: dict[str, float] = {}  # stage -> monotonic time its work would have started, unbroken

    def _path(self, stage: str, kind: str) -> Path:
        return self.folder / f"{stage}-{self.keys[stage]}.{kind}.pt"

    def _load(self, path: Path) -> dict[str, Any] | None:
        if not path.is_file():
            return None
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # a damaged file: name it and the fix, never resume from garbage
            raise MvgError(f"training checkpoint {path} cannot be read ({type(err).__name__}): delete it to redo "
                           "that stage's work since its last save") from err

    def _save(self, path: Path, payload: dict[str, Any]) -> None:
        buffer = io.BytesIO()
        torch.save(payload, buffer)
        self.folder.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(path, buffer.getvalue())

    def finished(self, stage: str) -> dict[str, Any] | None:
        """The result a finished stage saved, or None."""
        result = self._load(self._path(stage, "done"))
        if result is not None:
            self.log(f"{stage}: finished earlier, loaded from {self._path(stage, 'done')}")
            self.seconds[stage] = result.get("seconds")  # checkpoints written before it was kept: None
        return result

    def finish(self, stage: str, result: dict[str, Any], seconds: float | None = None) -> None:
        """Save a stage's result and drop its progress file; ``seconds`` defaults to the time its
        :meth:`steps` took over all runs."""
        if seconds is None and stage in self._started:
            seconds = time.monotonic() - self._started[stage]
        self.seconds[stage] = seconds
        self._save(self._path(stage, "done"), {**result, "seconds": seconds})
        self._path(stage, "progress").unlink(missing_ok=True)

    def steps(self, stage: str, total: int, state: Mapping[str, Stateful]) -> Iterator[int]:
        """The step indices still to run; restores ``state`` from the last save first, and saves
        it every :data:`SAVE_EVERY_SECONDS` after a step completes (the loop body has run)."""
        path = self._path(stage, "progress")
        saved = self._load(path)
        first = 0
        if saved is not None:
            for name, part in state.items():
                part.load_state_dict(saved["state"][name])
            first = int(saved["step"])
            self.log(f"{stage}: resuming at step {first + 1}/{total} from {path}")
        last_save = time.monotonic()
        self._started[stage] = last_save - (saved or {}).get("seconds", 0.0)
        for step in range(first, total):
            yield step
            if time.monotonic() - last_save >= self.save_every and step + 1 < total:
                last_save = time.monotonic()
                self._save(path, {"step": step + 1, "seconds": last_save - self._started[stage],
                                  "state": {name: part.state_dict() for name, part in state.items()}})
