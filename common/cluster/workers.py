"""Which workers are up, with how many tile processes, running which engines: in Redis.

Part of the job store (:class:`~common.cluster.store.JobStore` inherits these
methods, so callers keep one object): the janitor of each worker announces it,
the API plans jobs for the workers up and ``GET /`` and ``GET /metrics`` list
them. Keys, none with a TTL (a dead worker's entries are dropped by
:meth:`WorkerRegistry.forget_dead_workers`)::

    srcluster:workers        sorted set of worker names, scored by when their heartbeat expires
    srcluster:worker-slots   hash worker name -> "<tile processes> <window budget bytes> <memory key>"
    srcluster:worker-engines hash "worker pid model" -> what runs it (``Engine.describe()``)
    srcluster:worker-speeds  hash "worker model" -> seconds one of its tile processes takes per
                             inferred megapixel of that model, as measured (see common.estimate)
"""

from __future__ import annotations

import os
import time
from typing import Any, NamedTuple

WORKERS = "srcluster:workers"
WORKER_SLOTS = "srcluster:worker-slots"
WORKER_ENGINES = "srcluster:worker-engines"
WORKER_SPEEDS = "srcluster:worker-speeds"


class WorkerInfo(NamedTuple):
    """What a worker announced: tile processes, window budget per process in bytes (0:
    unknown) and the memory key of its engine (empty: unknown)."""

    slots: int
    window_budget: int
    memory_key: str


class Capacity(NamedTuple):
    """The tile processes up, and each distinct ``(memory key, window budget)`` among them."""

    slots: int
    limits: tuple[tuple[str, int], ...]


class WorkerRegistry:
    """The workers' heartbeats and what they run (a part of the job store)."""

    redis: Any
    _forget_dead: Any
    """The registered :data:`common.cluster.lua.FORGET_DEAD` script."""

    def announce_worker(
        self, name: str, slots: int, ttl: int = 30, window_budget: int = 0, memory_key: str = ""
    ) -> None:
        """A worker says it is up with ``slots`` tile processes, each of which may spend
        ``window_budget`` bytes on a window (0: unknown) of the engine ``memory_key`` names
        (a :mod:`common.memory` key; empty: unknown); it must repeat within ``ttl``."""
        pipe = self.redis.pipeline(transaction=True)
        pipe.zadd(WORKERS, {name: time.time() + ttl})
        pipe.hset(WORKER_SLOTS, name, f"{slots} {window_budget} {memory_key}".rstrip())
        pipe.execute()

    def workers_up(self) -> dict[str, WorkerInfo]:
        """Workers whose heartbeat has not expired, by name, in one round trip."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.zrangebyscore(WORKERS, time.time(), "+inf")
        pipe.hgetall(WORKER_SLOTS)
        names, slots = pipe.execute()
        table: dict[str, WorkerInfo] = {}
        for key, value in slots.items():
            count, budget, memory_key = (value.decode().split(" ") + ["", ""])[:3]
            table[key.decode()] = WorkerInfo(int(count), int(budget or 0), memory_key)
        return {n.decode(): table.get(n.decode(), WorkerInfo(0, 0, "")) for n in names}

    def capacity(self) -> Capacity:
        """What a job is planned for: the tile processes up and each distinct window limit."""
        up = [info for info in self.workers_up().values() if info.slots > 0]
        limits = {(info.memory_key, info.window_budget) for info in up if info.window_budget > 0}
        return Capacity(sum(info.slots for info in up), tuple(sorted(limits)))

    def report_engine(self, worker: str, model: str, description: str) -> None:
        """A worker process says which engine runs ``model`` (shown by ``GET /``)."""
        self.redis.hset(WORKER_ENGINES, f"{worker} {os.getpid()} {model}", description)

    def report_speed(self, worker: str, model: str, seconds_per_megapixel: float) -> None:
        """A worker says how long one of its tile processes takes per inferred megapixel of
        ``model`` (its latest smoothed measurement)."""
        self.redis.hset(WORKER_SPEEDS, f"{worker} {model}", f"{seconds_per_megapixel:.6g}")

    def worker_speeds(self) -> dict[str, tuple[int, dict[str, float]]]:
        """Tile workers up: name -> (tile processes, model -> measured seconds per inferred
        megapixel of one process), in one round trip (see :mod:`common.estimate`)."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.zrangebyscore(WORKERS, time.time(), "+inf")
        pipe.hgetall(WORKER_SLOTS)
        pipe.hgetall(WORKER_SPEEDS)
        names, slots, speeds = pipe.execute()
        up: dict[str, tuple[int, dict[str, float]]] = {}
        for name in (n.decode() for n in names):
            count = int((slots.get(name.encode()) or b"0").decode().partition(" ")[0])
            if count > 0:
                up[name] = (count, {})
        for key, value in speeds.items():
            worker, _, model = key.decode().partition(" ")
            if worker in up:
                up[worker][1][model] = float(value)
        return up

    def worker_engines(self) -> dict[str, list[str]]:
        """What each worker that is up runs: worker name -> distinct engine descriptions."""
        up = self.workers_up()
        found: dict[str, list[str]] = {}
        for key, value in self.redis.hgetall(WORKER_ENGINES).items():
            worker = key.decode().split(" ", 1)[0]
            if worker in up and value.decode() not in found.setdefault(worker, []):
                found[worker].append(value.decode())
        return found

    def worker_slots(self) -> int:
        """Tile processes across the workers that announced themselves recently."""
        return sum(info.slots for info in self.workers_up().values())

    def forget_dead_workers(self) -> list[str]:
        """Drop the heartbeats that expired (the janitor's housekeeping; atomic, so a worker
        announcing itself meanwhile is never forgotten); returns the names dropped. Of
        janitors calling at once, each name goes to exactly one, which re-queues the
        tiles that worker was running (:mod:`common.cluster.recovery`)."""
        dead = self._forget_dead(
            keys=[WORKERS, WORKER_SLOTS, WORKER_ENGINES, WORKER_SPEEDS], args=[time.time()]
        )
        return [name.decode() for name in dead]
