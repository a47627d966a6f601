"""Executors run the sampled devices' programs, sequentially or in parallel.

The interface is one method, :meth:`Executor.map`, over picklable
:class:`~secrelay.federated.client.DeviceTask` objects; device data is shipped to
workers once, by :meth:`Executor.start`. A distributed engine (Ray actors, one per
shard of devices) can implement the same two methods without any change to
strategies or the round loop.

:class:`RayExecutor` (``[run] executor = "ray"``, the ``secrelay[ray]`` extra) runs
devices on Ray actors, one per shard of the population: each actor receives its
devices' data once, at ``start``, through the object store, and keeps it; a round
puts the program in the object store once and sends each actor only its devices'
tasks. ``address`` connects to an existing cluster (``"auto"``,
``"ray://host:10001"``); empty starts a local instance with ``workers`` CPUs.

Results do not depend on the executor: every task carries its own seed and local
training runs on one torch thread (:func:`secrelay.federated.client.single_thread`).
"""

from __future__ import annotations

import abc
import concurrent.futures as cf
import importlib.util
import multiprocessing as mp
import os
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from protocols.errors import ConfigError, InvalidParameterError
from secrelay.federated.client import ClientProgram, DeviceData, DeviceOutput, DeviceTask

__all__ = [
    "Executor",
    "ProcessPoolExecutor",
    "RayExecutor",
    "SequentialExecutor",
    "in_worker_bootstrap",
    "make_executor",
    "ray_available",
]


class Executor(abc.ABC):
    """Runs a :class:`ClientProgram` on many devices."""

    def start(self, devices: Mapping[int, DeviceData]) -> None:
        """Make ``devices`` available to the workers (called once per run)."""
        self._devices = dict(devices)

    @abc.abstractmethod
    def map(self, program: ClientProgram, tasks: Sequence[DeviceTask]) -> list[DeviceOutput]:
        """Run ``program`` for every task; outputs in task order."""

    def close(self) -> None:
        """Release workers (idempotent)."""

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class SequentialExecutor(Executor):
    """Runs devices one after another in this process."""

    def map(self, program: ClientProgram, tasks: Sequence[DeviceTask]) -> list[DeviceOutput]:
        return [program.run(self._devices[t.device_id], t) for t in tasks]


_WORKER_DEVICES: dict[int, DeviceData] = {}


def in_worker_bootstrap() -> bool:
    """Whether this process is a spawned worker still importing its parent's
    ``__main__`` (an unguarded script re-running its top level in the worker)."""
    return bool(getattr(mp.process.current_process(), "_inheriting", False))


def _init_worker(devices: dict[int, DeviceData]) -> None:
    import torch

    torch.set_num_threads(1)
    _WORKER_DEVICES.clear()
    _WORKER_DEVICES.update(devices)


def _run_one(program: ClientProgram, task: DeviceTask) -> DeviceOutput:
    return program.run(_WORKER_DEVICES[task.device_id], task)


def _run_chunk(program: ClientProgram, tasks: list[DeviceTask]) -> list[DeviceOutput]:
    # One pickle of the program and of the round's models (shared by the tasks) per chunk.
    return [program.run(_WORKER_DEVICES[t.device_id], t) for t in tasks]


class ProcessPoolExecutor(Executor):
    """Runs devices in a pool of worker processes (one torch thread each).

    Parameters
    ----------
    workers:
        Number of processes (default: the machine's CPU count).
    start_method:
        ``"spawn"`` (default, safe with torch) or ``"fork"`` / ``"forkserver"``.
    """

    def __init__(
        self,
        workers: int | None = None,
        *,
        start_method: Literal["spawn", "fork", "forkserver"] = "spawn",
    ) -> None:
        n = workers if workers is not None else (os.cpu_count() or 1)
        if n < 1:
            raise InvalidParameterError(f"`workers` must be >= 1; got {workers!r}")
        self.workers = n
        self.start_method = start_method
        self._pool: cf.ProcessPoolExecutor | None = None

    def start(self, devices: Mapping[int, DeviceData]) -> None:
        self.close()
        self._pool = cf.ProcessPoolExecutor(
            max_workers=self.workers,
            mp_context=mp.get_context(self.start_method),
            initializer=_init_worker,
            initargs=(dict(devices),),
        )

    def map(self, program: ClientProgram, tasks: Sequence[DeviceTask]) -> list[DeviceOutput]:
        if self._pool is None:
            raise InvalidParameterError("ProcessPoolExecutor.map() called before start()")
        # A few chunks per worker: each pickles the program and the round's models once
        # (tasks of a round share one models dict), instead of once per device.
        size = max(1, -(-len(tasks) // (2 * self.workers)))
        chunks = [list(tasks[i : i + size]) for i in range(0, len(tasks), size)]
        futures = [self._pool.submit(_run_chunk, program, c) for c in chunks]
        try:
            return [out for f in futures for out in f.result()]
        except cf.process.BrokenProcessPool:
            self._pool = None
            raise InvalidParameterError(
                "a device worker process died before finishing its task. With the process "
                "executor, a script that calls secrelay must guard its entry point with "
                '`if __name__ == "__main__":` (workers re-import the script when they '
                "start); otherwise check the worker's error above, or use "
                "run.executor = 'sequential'"
            ) from None

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None


def ray_available() -> bool:
    """Whether the optional ``ray`` package is installed."""
    return importlib.util.find_spec("ray") is not None


class _Shard:
    """A Ray actor holding a shard of the devices' data (placed once per run)."""

    def __init__(self, devices: dict[int, DeviceData]) -> None:
        import torch

        torch.set_num_threads(1)
        self.devices = devices

    def run(self, program: ClientProgram, tasks: list[DeviceTask]) -> list[DeviceOutput]:
        return [program.run(self.devices[t.device_id], t) for t in tasks]


class RayExecutor(Executor):
    """Runs device programs on Ray actors, one per shard of the population.

    Parameters
    ----------
    workers:
        Actors (and CPUs of a local instance); default: the machine's CPU count, or
        the cluster's when connecting to one.
    address:
        An existing cluster to connect to; ``""`` starts a local instance.

    Raises
    ------
    ConfigError
        If Ray is not installed (install the ``secrelay[ray]`` extra).
    """

    def __init__(self, workers: int | None = None, *, address: str = "") -> None:
        if not ray_available():
            raise ConfigError(
                "run.executor = 'ray' needs Ray: install the extra with "
                "`pip install 'secrelay[ray]'` (or choose 'sequential' / 'process')"
            )
        if workers is not None and workers < 1:
            raise InvalidParameterError(f"`workers` must be >= 1; got {workers!r}")
        self.workers = workers
        self.address = address
        self._actors: list[Any] = []
        self._owner: dict[int, int] = {}
        self._started_ray = False

    def _init_ray(self) -> Any:
        import ray

        if not ray.is_initialized():
            kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
            if self.address:
                kwargs["address"] = self.address
            elif self.workers is not None:
                kwargs["num_cpus"] = self.workers
            ray.init(**kwargs)
            self._started_ray = True
        return ray

    def start(self, devices: Mapping[int, DeviceData]) -> None:
        self._release_actors()
        ray = self._init_ray()
        n = self.workers or max(1, int(ray.cluster_resources().get("CPU", 1)))
        ids = sorted(devices)
        n = max(1, min(n, len(ids)))
        shards: list[dict[int, DeviceData]] = [{} for _ in range(n)]
        for i, dev in enumerate(ids):  # contiguous blocks keep each shard's data together
            k = i * n // len(ids)
            shards[k][dev] = devices[dev]
            self._owner[dev] = k
        actor = ray.remote(num_cpus=1)(_Shard)
        self._actors = [actor.remote(ray.put(shard)) for shard in shards]

    def map(self, program: ClientProgram, tasks: Sequence[DeviceTask]) -> list[DeviceOutput]:
        if not self._actors:
            raise InvalidParameterError("RayExecutor.map() called before start()")
        import ray

        ref = ray.put(program)  # one copy of the round's program (and its model) for all
        by_actor: dict[int, list[int]] = {}
        for i, t in enumerate(tasks):
            if t.device_id not in self._owner:
                raise InvalidParameterError(f"device {t.device_id} was not given to start()")
            by_actor.setdefault(self._owner[t.device_id], []).append(i)
        futures = {
            k: self._actors[k].run.remote(ref, [tasks[i] for i in idx])
            for k, idx in by_actor.items()
        }
        out: list[DeviceOutput | None] = [None] * len(tasks)
        for k, idx in by_actor.items():
            for i, res in zip(idx, ray.get(futures[k])):
                out[i] = res
        return [o for o in out if o is not None]

    def _release_actors(self) -> None:
        if self._actors:
            import ray

            for a in self._actors:
                ray.kill(a)
        self._actors = []
        self._owner = {}

    def close(self) -> None:
        self._release_actors()
        if self._started_ray:
            import ray

            ray.shutdown()
            self._started_ray = False


def make_executor(kind: str, workers: int | None = None, *, address: str = "") -> Executor:
    """``"sequential"``, ``"process"`` (a :class:`ProcessPoolExecutor`) or ``"ray"``
    (a :class:`RayExecutor`, on ``address`` when given)."""
    if kind == "sequential":
        return SequentialExecutor()
    if kind == "process":
        return ProcessPoolExecutor(workers)
    if kind == "ray":
        return RayExecutor(workers, address=address)
    raise InvalidParameterError(
        f"`executor` must be 'sequential', 'process' or 'ray'; got {kind!r}"
    )
