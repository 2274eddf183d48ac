"""Which workers are up, with how many tile processes, running which engines: in Redis.

Part of the job store (:class:`~common.cluster.store.JobStore` inherits these
methods, so callers keep one object): the janitor of each worker announces it,
the API plans jobs for the workers up and ``GET /`` and ``GET /metrics`` list
them. Keys, none with a TTL (a dead worker's entries are dropped by
:meth:`WorkerRegistry.forget_dead_workers`)::

    srcluster:workers        sorted set of worker names, scored by when their heartbeat expires
    srcluster:worker-slots   hash worker name -> "<tile processes> <window budget bytes>"
    srcluster:worker-engines hash "worker pid model" -> what runs it (``Engine.describe()``)
"""

from __future__ import annotations

import os
import time
from typing import Any

WORKERS = "srcluster:workers"
WORKER_SLOTS = "srcluster:worker-slots"
WORKER_ENGINES = "srcluster:worker-engines"


class WorkerRegistry:
    """The workers' heartbeats and what they run (a part of the job store)."""

    redis: Any
    _forget_dead: Any
    """The registered :data:`common.cluster.lua.FORGET_DEAD` script."""

    def announce_worker(self, name: str, slots: int, ttl: int = 30, window_budget: int = 0) -> None:
        """A worker says it is up with ``slots`` tile processes, each of which may spend
        ``window_budget`` bytes on a window (0: unknown); it must repeat within ``ttl``."""
        pipe = self.redis.pipeline(transaction=True)
        pipe.zadd(WORKERS, {name: time.time() + ttl})
        pipe.hset(WORKER_SLOTS, name, f"{slots} {window_budget}")
        pipe.execute()

    def workers_up(self) -> dict[str, tuple[int, int]]:
        """Workers whose heartbeat has not expired: name -> (tile processes, window budget
        in bytes, 0 if unknown), in one round trip."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.zrangebyscore(WORKERS, time.time(), "+inf")
        pipe.hgetall(WORKER_SLOTS)
        names, slots = pipe.execute()
        table: dict[str, tuple[int, int]] = {}
        for key, value in slots.items():
            count, _, budget = value.decode().partition(" ")
            table[key.decode()] = (int(count), int(budget or 0))
        return {n.decode(): table.get(n.decode(), (0, 0)) for n in names}

    def capacity(self) -> tuple[int, int | None]:
        """``(tile processes up, the smallest window budget among them)``, for planning a job;
        the budget is ``None`` when no tile worker said one."""
        up = [info for info in self.workers_up().values() if info[0] > 0]
        budgets = [budget for _, budget in up if budget > 0]
        return sum(slots for slots, _ in up), min(budgets) if budgets else None

    def report_engine(self, worker: str, model: str, description: str) -> None:
        """A worker process says which engine runs ``model`` (shown by ``GET /``)."""
        self.redis.hset(WORKER_ENGINES, f"{worker} {os.getpid()} {model}", description)

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
        return sum(slots for slots, _ in self.workers_up().values())

    def forget_dead_workers(self) -> None:
        """Drop the heartbeats that expired (the janitor's housekeeping; atomic, so a worker
        announcing itself meanwhile is never forgotten)."""
        self._forget_dead(keys=[WORKERS, WORKER_SLOTS, WORKER_ENGINES], args=[time.time()])
