"""The Ray executor: long-lived actors that each hold an opened runtime, fed one case at a time.

- **Actors.** One per GPU (``--device cuda``: each asks Ray for ``num_gpus=1``, and Ray sets the actor's
  CUDA_VISIBLE_DEVICES) or one per CPU slot (``num_cpus=1``, one torch thread); ``--workers N`` sets the
  count, default every GPU (or CPU) of the cluster. Each actor opens the runtime once in its constructor,
  so models or engines load once per worker and serve every case it is given.
- **Scheduling.** The driver keeps every actor busy with one case (``ray.wait`` on the in-flight calls) and
  hands the next case to whichever actor finishes first. Cases, not actors, are the unit of work.
- **Outputs.** The actor writes the case folder into the shared ``--out`` exactly as the local executor does
  (all-or-nothing); the driver alone writes the summary. ``--out`` and the inputs must therefore be on
  storage every node sees at the same path (the worklist resolves them to absolute paths).
- **Failures.** A case that fails (bad input) is an ordinary ``failed`` outcome. A lost actor (process
  killed, node gone, Ray's out-of-memory monitor) is replaced by a fresh one, and its case is resubmitted,
  at most ``retries`` times more; after that the case is recorded as failed with the reason. The killed
  worker's staging folder is removed when the retry claims the case folder (``staged_output_dir``).
- **Hangs.** With ``case_timeout`` (``--case-timeout``), a case still running that many seconds after it
  was handed out is treated like a lost actor: the actor is killed (a hung CUDA call or a deadlock cannot
  be interrupted from inside the process, only ended with it), replaced, and the case retried or failed
  ("timed out after N s"). Without it the driver waits as long as the case takes.

Ray is imported here only, so a batch without ``--ray`` never imports it.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections import deque
from typing import Any

from mvg_rt.batch.case import BatchEvents, CaseOutcome, CaseRunner, worker_name
from mvg_rt.batch.plan import PlannedCase
from mvg_rt.errors import MvgError, first_line
from mvg_rt.runtime.factory import RuntimeSpec, open_runtime

READY_TIMEOUT_S = 900.0  # opening a full-size runtime (SD 1.4 + SEINE from disk) on a slow node
KILL_WAIT_S = 30.0  # how long a killed actor's last call may take to report the actor's death


class CaseActor:
    """Runs in a Ray worker process: the opened runtime lives as long as the actor."""

    def __init__(self, spec: RuntimeSpec, notice: str | None, threads: int | None) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # workers never reach for a hub either
        if threads:
            import torch

            torch.set_num_threads(threads)
        self.error: str | None = None
        try:
            self.runner = CaseRunner(open_runtime(spec), notice)  # closed with the actor's process
        except MvgError as err:
            self.error = str(err)

    def ready(self) -> str | None:
        """None once the runtime is open, else the one-line reason it could not be opened."""
        return self.error

    def run(self, case: PlannedCase) -> CaseOutcome:
        if self.error:
            return CaseOutcome(case.case_id, "failed", 0.0, self.error, worker=worker_name())
        return self.runner.run(case)


def require_ray() -> None:
    """Fail before any work when Ray is not installed (it is an optional extra)."""
    try:
        import ray  # noqa: F401
    except ImportError as err:
        raise MvgError("--ray needs Ray: pip install 'mvg-rt[cluster]' (on every node of the cluster), or drop "
                       "--ray to run the cases in this process") from err


def _connect(address: str, workers: int | None) -> bool:
    """Connect to (or, for ``local``, start) a cluster; True when this call started Ray here."""
    import ray

    if ray.is_initialized():
        return False
    try:
        if address == "local":
            ray.init(num_cpus=workers or os.cpu_count(), include_dashboard=False, log_to_driver=False)
        else:
            ray.init(address=address, log_to_driver=False)
    except (ConnectionError, RuntimeError, ValueError) as err:
        first = first_line(err)
        raise MvgError(f"cannot connect to a Ray cluster at --ray {address} ({first}): start one with "
                       "`ray start --head` and pass its address, or use --ray local") from err
    return True


def _actor_options(spec: RuntimeSpec, workers: int | None) -> tuple[int, dict[str, Any], int | None]:
    """(actor count, Ray resources per actor, torch threads per actor) for this cluster."""
    import ray

    resources = ray.cluster_resources()
    if spec.device.startswith("cuda"):
        slots, per_actor, threads = int(resources.get("GPU", 0)), {"num_gpus": 1, "num_cpus": 1}, None
        kind = "GPUs"
    else:
        slots, per_actor, threads = int(resources.get("CPU", 0)), {"num_cpus": 1}, 1
        kind = "CPUs"
    count = workers or slots
    if count < 1 or count > slots:
        raise MvgError(f"the Ray cluster has {slots} {kind} but {count} workers were asked for: pass "
                       f"--workers 1..{slots}, or add nodes")
    return count, per_actor, threads


def run_on_ray(address: str, workers: int | None, retries: int, spec: RuntimeSpec, notice: str | None,
               cases: list[PlannedCase], events: BatchEvents, case_timeout: float | None = None) -> None:
    import ray
    from ray.exceptions import GetTimeoutError, RayError

    started_here = _connect(address, workers)
    actors: list[Any] = []
    try:
        count, per_actor, threads = _actor_options(spec, workers)
        count = min(count, len(cases))
        if spec.device.startswith("cuda"):
            spec = dataclasses.replace(spec, device="cuda")  # Ray narrows CUDA_VISIBLE_DEVICES to the actor's GPU
        actor_type = ray.remote(max_restarts=0, **per_actor)(CaseActor)

        def new_actor() -> Any:
            actor = actor_type.remote(spec, notice, threads)
            actors.append(actor)
            return actor

        idle = [new_actor() for _ in range(count)]
        try:
            problems = ray.get([actor.ready.remote() for actor in idle], timeout=READY_TIMEOUT_S)
        except GetTimeoutError as err:
            raise MvgError(f"Ray workers did not open the runtime within {READY_TIMEOUT_S:.0f} s: check that "
                           "every node has mvg-rt installed and sees the model folder") from err
        except RayError as err:  # e.g. killed by Ray's out-of-memory monitor while loading the models
            first = first_line(err)
            raise MvgError(f"a Ray worker died while opening the runtime ({type(err).__name__}: {first}); check "
                           "the node's memory and that mvg-rt is installed on every node") from err
        if problem := next((p for p in problems if p), None):
            raise MvgError(f"a Ray worker could not open the runtime: {problem}")

        pending = deque(cases)
        attempts: dict[str, int] = {}
        in_flight: dict[Any, tuple[Any, PlannedCase]] = {}
        deadlines: dict[Any, float] = {}  # with case_timeout: when each in-flight case is given up

        def lose(ref: Any, actor: Any, case: PlannedCase, reason: str) -> None:
            """The actor is gone or given up: kill it, give its slot a fresh one, retry or fail the case."""
            ray.kill(actor)
            ray.wait([ref], timeout=KILL_WAIT_S)  # resolves once the actor is dead: its case folder lock is free
            idle.append(new_actor())
            if attempts[case.case_id] <= retries:
                events.retried(case.case_id, reason)
                pending.appendleft(case)
            else:
                events.finished(CaseOutcome(case.case_id, "failed", 0.0, f"{reason} on every one of "
                                            f"{attempts[case.case_id]} attempts"), attempts[case.case_id])

        while pending or in_flight:
            while pending and idle:
                actor, case = idle.pop(), pending.popleft()
                attempts[case.case_id] = attempts.get(case.case_id, 0) + 1
                ref = actor.run.remote(case)
                in_flight[ref] = (actor, case)
                if case_timeout:
                    deadlines[ref] = time.monotonic() + case_timeout
                events.started(case.case_id, "ray")
            wait_s = max(0.0, min(deadlines.values()) - time.monotonic()) if deadlines else None
            ready, _ = ray.wait(list(in_flight), num_returns=1, timeout=wait_s)
            if not ready:  # the oldest case's time is up
                ref = min(deadlines, key=deadlines.__getitem__)
                del deadlines[ref]
                lose(ref, *in_flight.pop(ref), f"timed out after {case_timeout:g} s")
                continue
            (ref,) = ready
            deadlines.pop(ref, None)
            actor, case = in_flight.pop(ref)
            try:
                outcome = ray.get(ref)
            except RayError as err:  # the actor died (crash, kill, lost node, Ray's OOM monitor)
                lose(ref, actor, case, f"worker lost ({type(err).__name__})")
                continue
            idle.append(actor)
            events.finished(outcome, attempts[case.case_id])
    finally:
        for actor in actors:
            ray.kill(actor)
        if started_here:
            ray.shutdown()
