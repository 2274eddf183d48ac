"""Jobs, tiles and results in Redis: the only module that reads or writes them.

A job's work is numbered in *parts*: one part is one tile of one plane (see
:meth:`common.pipeline.JobPlan.part`). Keys (``P`` = ``srcluster:job:<id>``),
every one with the result TTL::

    P               hash: the fields of :class:`JobRecord`, and
                      status, owner (sha256 of the token), owner_name, params, plan (JSON),
                      parts, groups, created, deadline, started, finished, error, error_code, output,
                      landed            when the last part's output landed (the stitch should follow)
                      stitch_requested  when the janitor last re-sent a stitch for it
                      stitches          how many stitches ended the job (1; more would be a bug)
    P:done          set of finished part numbers (SADD is idempotent under redelivery; SCARD is progress)
    P:in:<p>:<c>    column strip ``c`` of plane ``p``'s reflection-extended input: raw C-order
                    (rows, window width, 3) pixels, so a window is one contiguous byte range
    P:out:<part>    integer output core of one part: raw C-order bytes (its shape is in the plan)
    P:extra:<name>  what the stitch needs besides tiles: the input alpha, the ICC profile, the EXIF
    P:result        the encoded final image
    P:deliveries    hash part -> deliveries so far (a poison tile fails its job, it does not loop)
    P:workers       hash part -> the worker that ran it
    P:running       hash part -> the process (host:pid) that last started it
    srcluster:active         sorted set of unfinished job keys, scored by deadline (the periodic check)
    srcluster:workers        sorted set of worker names, scored by when their heartbeat expires
    srcluster:worker-slots   hash worker name -> its tile processes
    srcluster:worker-engines hash "worker pid model" -> what runs it (``Engine.describe()``)
    srcluster:stats          hash of counters and latency buckets, no TTL (:mod:`common.cluster.stats`)

Arrays travel as raw bytes or ``.npy`` (dtype, shape, data; never pickles), not
PNG: encoding every tile would cost more than a compact-model tile's inference.
A cluster task reads and writes a whole group of parts in one round trip each
(:meth:`JobStore.begin_group`, :meth:`JobStore.record_outputs`).

Status changes go through :meth:`JobStore.transition`, an atomic check-and-set
in Lua: ``success``, ``failed`` and ``cancelled`` are final, so a late tile or
a redelivered stitch can never revive or overwrite a finished job.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import numpy as np
import numpy.typing as npt
import redis

from common.cluster import lua, stats
from common.cluster.protocol import BROKER_UNACKED, broker_lists
from common.cluster.stats import STATS

PREFIX = "srcluster:job:"
ACTIVE = "srcluster:active"
WORKERS = "srcluster:workers"
WORKER_SLOTS = "srcluster:worker-slots"
WORKER_ENGINES = "srcluster:worker-engines"


class JobStatus(StrEnum):
    """A job's state; the value is what the API reports."""

    PENDING = "pending"
    PROCESSING = "processing"
    SUCCESS = "success"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        """Whether the job has ended (``success``, ``failed`` or ``cancelled``); that is final."""
        return self in (JobStatus.SUCCESS, JobStatus.FAILED, JobStatus.CANCELLED)


@dataclass(frozen=True)
class WindowRead:
    """Where a part's input window lies: bytes ``[first, last]`` of a plane's column strip."""

    part: int
    plane: int
    column: int
    first: int
    last: int


@dataclass(frozen=True)
class GroupStart:
    """What :meth:`JobStore.begin_group` found: the job's state and the group's windows.

    ``windows`` is ``None`` unless the job is unfinished, in time and no part of
    the group is over its deliveries; an empty ``bytes`` stands for a window
    whose strip is gone (the job ended meanwhile).
    """

    status: JobStatus | None
    deadline: float
    deliveries: int
    """The most deliveries of any part of the group, this one included."""
    worst_part: int
    windows: list[bytes] | None
    started_parts: int = 0
    """Parts of the job started at least once so far, this group's included (0 when the job
    had ended or was past its deadline)."""


def token_hash(token: str) -> str:
    """What a job records of its owner: the token's sha256, never the token."""
    return hashlib.sha256(token.encode()).hexdigest()


def pack_array(array: npt.NDArray[Any]) -> bytes:
    """Serialize an array as ``.npy`` bytes (dtype, shape, data)."""
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return buffer.getvalue()


def unpack_array(data: bytes) -> npt.NDArray[Any]:
    """Inverse of :func:`pack_array`; refuses pickled objects."""
    array: npt.NDArray[Any] = np.load(io.BytesIO(data), allow_pickle=False)
    return array


@dataclass
class JobRecord:
    """A job as stored; ``params`` and ``plan`` are the JSON dicts the API recorded."""

    id: str
    status: JobStatus
    owner: str
    owner_name: str
    params: dict[str, Any]
    plan: dict[str, Any]
    parts: int
    groups: int
    """Tasks the job was sent as (each carries a group of parts)."""
    created: float
    deadline: float
    done: int = 0
    started: float | None = None
    finished: float | None = None
    landed: float | None = None
    """When the last part's output landed (the stitch should follow)."""
    stitch_requested: float | None = None
    """When the janitor last re-sent a stitch (see :func:`common.cluster.jobs.unstitched`)."""
    stitches: int = 0
    """Stitches that ended the job ``success``: 1 once it has, never more."""
    error: str | None = None
    error_code: str | None = None
    output: dict[str, Any] = field(default_factory=dict)

    def public(self) -> dict[str, Any]:
        """The ``result`` object of ``GET /result/<id>``."""
        body: dict[str, Any] = {
            "status": self.status.value,
            "progress": {"done": self.done, "total": self.parts},
            "model": self.params.get("model"),
            "created": self.created,
        }
        if self.started is not None:
            body["started"] = self.started
        if self.finished is not None:
            body["finished"] = self.finished
        body.update(self.output)
        if self.error is not None:
            body["error"] = {"code": self.error_code or "failed", "message": self.error}
        return body


class JobStore:
    """All of srcluster's Redis reads and writes of jobs.

    Every method either does what it says or raises ``redis.RedisError`` having
    changed nothing it would not change again on a retry (writes are idempotent).
    """

    def __init__(self, client: redis.Redis, ttl: int):
        # Any: redis-py's annotations cannot tell that replies are bytes (decode_responses off)
        self.redis: Any = client
        self.ttl = ttl
        self._transition = client.register_script(lua.TRANSITION)
        self._begin_group = client.register_script(lua.BEGIN_GROUP)
        self._forget_dead = client.register_script(lua.FORGET_DEAD)
        self._record_outputs = client.register_script(lua.RECORD_OUTPUTS)

    @classmethod
    def from_url(cls, url: str, ttl: int, connect_timeout: float | None = None) -> JobStore:
        """A store on the Redis at ``url``; ``connect_timeout`` bounds each connection attempt."""
        client = redis.Redis.from_url(
            url, health_check_interval=30, socket_connect_timeout=connect_timeout
        )
        return cls(client, ttl)

    @staticmethod
    def key(job_id: str, *parts: object) -> str:
        return PREFIX + job_id + "".join(f":{p}" for p in parts)

    def ping(self) -> None:
        """Raise ``redis.RedisError`` unless Redis answers."""
        self.redis.ping()

    def close(self) -> None:
        """Release this store's connections."""
        self.redis.close()

    # --- creating and reading jobs -------------------------------------------------

    def create(
        self,
        job_id: str,
        *,
        owner: str,
        owner_name: str,
        params: Mapping[str, Any],
        plan: Mapping[str, Any],
        parts: int,
        strips: Iterable[tuple[int, int, bytes]],
        extras: Mapping[str, bytes],
        timeout: float,
        groups: int | None = None,
    ) -> None:
        """Record a new ``pending`` job of ``parts`` parts (in ``groups`` tasks; default one
        per part) with its input, all expiring after the TTL.

        ``strips`` are ``(plane, column, raw bytes)`` (see the key layout). One
        transaction: a job is recorded whole or not at all.
        """
        now = time.time()
        pipe = self.redis.pipeline(transaction=True)
        for plane, column, data in strips:
            pipe.set(self.key(job_id, "in", plane, column), data, ex=self.ttl)
        for name, data in extras.items():
            pipe.set(self.key(job_id, "extra", name), data, ex=self.ttl)
        record = {
            "status": JobStatus.PENDING.value,
            "owner": owner,
            "owner_name": owner_name,
            "params": json.dumps(dict(params)),
            "plan": json.dumps(dict(plan)),
            "parts": parts,
            "groups": parts if groups is None else groups,
            "created": now,
            "deadline": now + timeout,
        }
        pipe.hset(self.key(job_id), mapping=record)
        pipe.expire(self.key(job_id), self.ttl)
        pipe.zadd(ACTIVE, {self.key(job_id): now + timeout})
        pipe.hincrby(STATS, f"jobs:{JobStatus.PENDING.value}", 1)
        pipe.execute()

    def get(self, job_id: str) -> JobRecord | None:
        """The job, or ``None`` if it does not exist (or expired)."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.hgetall(self.key(job_id))
        pipe.scard(self.key(job_id, "done"))
        raw, done = pipe.execute()
        if not raw:
            return None
        fields = {k.decode(): v.decode() for k, v in raw.items()}
        output = json.loads(fields["output"]) if "output" in fields else {}
        return JobRecord(
            id=job_id,
            status=JobStatus(fields["status"]),
            owner=fields["owner"],
            owner_name=fields.get("owner_name", ""),
            params=json.loads(fields["params"]),
            plan=json.loads(fields["plan"]),
            parts=int(fields["parts"]),
            groups=int(fields.get("groups", fields["parts"])),
            created=float(fields["created"]),
            deadline=float(fields["deadline"]),
            done=int(done),
            started=float(fields["started"]) if "started" in fields else None,
            finished=float(fields["finished"]) if "finished" in fields else None,
            landed=float(fields["landed"]) if "landed" in fields else None,
            stitch_requested=(
                float(fields["stitch_requested"]) if "stitch_requested" in fields else None
            ),
            stitches=int(fields.get("stitches", 0)),
            error=fields.get("error"),
            error_code=fields.get("error_code"),
            output=output,
        )

    def status(self, job_id: str) -> JobStatus | None:
        value = self.redis.hget(self.key(job_id), "status")
        return None if value is None else JobStatus(value.decode())

    # --- status changes -----------------------------------------------------------

    def transition(
        self,
        job_id: str,
        to: JobStatus,
        allowed: Iterable[JobStatus],
        **fields: str | float | int,
    ) -> bool:
        """Set the status to ``to`` if it is now one of ``allowed``; also set ``fields``.

        Returns whether the change happened (atomic: of two racing callers, one wins).
        """
        args: list[str | float | int] = [to.value, *(s.value for s in allowed), "--"]
        for name, value in fields.items():
            args += [name, value]
        return bool(self._transition(keys=[self.key(job_id), ACTIVE, STATS], args=args))

    def start(self, job_id: str) -> None:
        """Mark a pending job ``processing`` (the first tile has begun)."""
        self.transition(job_id, JobStatus.PROCESSING, [JobStatus.PENDING], started=time.time())

    def fail(self, job_id: str, code: str, message: str) -> bool:
        """End an unfinished job ``failed`` with a reason; returns whether it was unfinished."""
        changed = self.transition(
            job_id,
            JobStatus.FAILED,
            [JobStatus.PENDING, JobStatus.PROCESSING],
            error=message,
            error_code=code,
            finished=time.time(),
        )
        if changed:
            self.drop_tiles(job_id)
        return changed

    def cancel(self, job_id: str) -> bool:
        """End an unfinished job ``cancelled`` and delete its data; returns whether it was unfinished."""
        changed = self.transition(
            job_id,
            JobStatus.CANCELLED,
            [JobStatus.PENDING, JobStatus.PROCESSING],
            finished=time.time(),
        )
        if changed:
            self.drop_tiles(job_id)
        return changed

    def succeed(self, job_id: str, result: bytes, output: Mapping[str, Any]) -> bool:
        """Store the final image and end the job ``success`` (counting the stitch, and its
        time since submission in the job latency histogram); a second call changes nothing."""
        status, created, params = self.redis.hmget(self.key(job_id), "status", "created", "params")
        if status is None or JobStatus(status.decode()).finished:
            return False
        self.redis.set(self.key(job_id, "result"), result, ex=self.ttl)
        now = time.time()
        changed = self.transition(
            job_id,
            JobStatus.SUCCESS,
            [JobStatus.PENDING, JobStatus.PROCESSING],
            output=json.dumps(dict(output)),
            finished=now,
        )
        if changed:
            model = str(json.loads(params).get("model", ""))
            seconds = max(0.0, now - float(created))
            kind = stats.JOB_SECONDS
            pipe = self.redis.pipeline(transaction=False)
            pipe.hincrby(STATS, stats.bucket_field(kind, model, seconds, stats.JOB_BUCKETS), 1)
            pipe.hincrbyfloat(STATS, stats.sum_field(kind, model), seconds)
            pipe.execute()
            self.drop_tiles(job_id)
        elif self.status(job_id) is not JobStatus.SUCCESS:
            # cancelled between the check and the transition: the result must not outlive it
            # (a stitch that lost to another stitch leaves the winner's result, the same bytes)
            self.redis.delete(self.key(job_id, "result"))
        return changed

    def drop_tiles(self, job_id: str) -> None:
        """Delete a job's inputs, outputs and extras (the record and result stay until the TTL)."""
        keys = list(self.redis.scan_iter(match=self.key(job_id, "*"), count=1000))
        # progress and who ran what stay readable, as the record does, until the TTL
        keep = {
            self.key(job_id, part).encode() for part in ("result", "done", "workers", "deliveries")
        }
        doomed = [k for k in keys if k not in keep]
        if doomed:
            self.redis.delete(*doomed)

    def delete(self, job_id: str) -> None:
        """Delete everything of a job but its record (a cancelled job's status stays readable)."""
        keys = list(self.redis.scan_iter(match=self.key(job_id, "*"), count=1000))
        if keys:
            self.redis.delete(*keys)

    # --- parts ----------------------------------------------------------------

    def read_strip(self, job_id: str, plane: int, column: int) -> bytes | None:
        """A whole input strip, or ``None`` once the job has dropped its tiles."""
        value: bytes | None = self.redis.get(self.key(job_id, "in", plane, column))
        return value

    def plan_of(self, job_id: str) -> dict[str, Any] | None:
        """The job's plan (the dict the API recorded), or ``None`` for no such job."""
        raw = self.redis.hget(self.key(job_id), "plan")
        return None if raw is None else dict(json.loads(raw))

    def read_extra(self, job_id: str, name: str) -> bytes | None:
        value: bytes | None = self.redis.get(self.key(job_id, "extra", name))
        return value

    def begin_group(
        self, job_id: str, reads: list[WindowRead], runner: str, max_deliveries: int
    ) -> GroupStart:
        """Start a group of parts, in one round trip: count a delivery of each, note
        ``runner`` (``host:pid``) as running them, mark the job ``processing`` and
        read their input windows (see :class:`GroupStart` for when it does not).
        """
        keys = [
            self.key(job_id),
            self.key(job_id, "deliveries"),
            self.key(job_id, "running"),
            STATS,
        ]
        keys += [self.key(job_id, "in", r.plane, r.column) for r in reads]
        args: list[str | int | float] = [runner, self.ttl, time.time(), max_deliveries, len(reads)]
        for r in reads:
            args += [r.part, r.first, r.last]
        reply = self._begin_group(keys=keys, args=args)
        status = JobStatus(reply[0].decode()) if reply[0] else None
        windows = [bytes(w) for w in reply[5:]] if len(reply) > 5 else None
        started = int(reply[4]) if len(reply) > 4 else 0
        return GroupStart(status, float(reply[1]), int(reply[2]), int(reply[3]), windows, started)

    def record_outputs(
        self,
        job_id: str,
        outputs: list[tuple[int, bytes]],
        worker: str,
        *,
        model: str,
        seconds: Sequence[float],
        keep: bool = True,
    ) -> tuple[int, bool]:
        """Store parts' output cores, mark them done, note the worker, atomically; a part
        done for the first time is counted in ``model``'s tiles, and its ``seconds`` (one
        per output) in the tile latency histogram.

        Without ``keep`` the cores are not stored (the caller holds every part of
        the job and stitches them itself) and the job is never marked landed, so no
        one else stitches it without them.

        Returns ``(parts done so far, whether this call landed the job's last part)``;
        ``(-1, False)``, with nothing stored, if the job has ended.

        Raises:
            ValueError: ``seconds`` and ``outputs`` differ in length (nothing is stored).
        """
        if len(seconds) != len(outputs):
            raise ValueError(f"{len(seconds)} timings for {len(outputs)} outputs")
        keys = [self.key(job_id), self.key(job_id, "done"), self.key(job_id, "workers"), STATS]
        keys += [self.key(job_id, "out", part) for part, _ in outputs]
        args: list[str | int | float | bytes] = [worker, self.ttl, time.time(), len(outputs)]
        args += [model]
        args += [part for part, _ in outputs]
        args += [data if keep else b"" for _, data in outputs]
        args += [stats.bucket_of(s, stats.TILE_BUCKETS) for s in seconds]
        args += [repr(float(s)) for s in seconds]
        done, landed = self._record_outputs(keys=keys, args=args)
        return int(done), bool(landed)

    def done_parts(self, job_id: str) -> set[int]:
        """The parts of the job whose output has landed."""
        return {int(v) for v in self.redis.smembers(self.key(job_id, "done"))}

    def read_outputs(self, job_id: str, parts: Iterable[int]) -> list[bytes | None]:
        """The output cores of ``parts`` (npy bytes; ``None`` for one missing), in one round trip."""
        values: list[bytes | None] = self.redis.mget([self.key(job_id, "out", p) for p in parts])
        return values

    def count_delivery(self, job_id: str, part: int, runner: str) -> int:
        """Count one more delivery of a part, run by ``runner`` (``host:pid``); returns the count."""
        pipe = self.redis.pipeline(transaction=True)
        pipe.hincrby(self.key(job_id, "deliveries"), str(part), 1)
        pipe.expire(self.key(job_id, "deliveries"), self.ttl)
        pipe.hset(self.key(job_id, "running"), str(part), runner)
        pipe.expire(self.key(job_id, "running"), self.ttl)
        count: int = pipe.execute()[0]
        return count

    def runner_of(self, job_id: str, part: int) -> str | None:
        """The ``host:pid`` that last started a part."""
        value = self.redis.hget(self.key(job_id, "running"), str(part))
        return None if value is None else str(value.decode())

    def workers_of(self, job_id: str) -> dict[int, str]:
        """Which worker ran each finished part."""
        raw = self.redis.hgetall(self.key(job_id, "workers"))
        return {int(k): v.decode() for k, v in raw.items()}

    def result(self, job_id: str) -> bytes | None:
        value: bytes | None = self.redis.get(self.key(job_id, "result"))
        return value

    # --- the periodic check ---------------------------------------------------------

    def unfinished(self) -> list[str]:
        """Ids of every job not yet ended."""
        return [k.decode()[len(PREFIX) :] for k in self.redis.zrange(ACTIVE, 0, -1)]

    def overdue(self, now: float | None = None) -> list[str]:
        """Ids of unfinished jobs past their deadline."""
        now = time.time() if now is None else now
        keys = self.redis.zrangebyscore(ACTIVE, "-inf", now)
        return [k.decode()[len(PREFIX) :] for k in keys]

    def forget(self, job_id: str) -> None:
        """Take a job off the unfinished list (its record expired: nothing is left to end)."""
        self.redis.zrem(ACTIVE, self.key(job_id))

    def stitch_marks(self, job_ids: list[str]) -> list[tuple[float | None, float | None]]:
        """``(landed, stitch_requested)`` of each job, in one round trip (see :class:`JobRecord`)."""
        if not job_ids:
            return []
        pipe = self.redis.pipeline(transaction=False)
        for job_id in job_ids:
            pipe.hmget(self.key(job_id), "landed", "stitch_requested")
        return [
            (None if landed is None else float(landed), None if asked is None else float(asked))
            for landed, asked in pipe.execute()
        ]

    def mark_stitch_requested(self, job_id: str, when: float) -> None:
        """Note that a stitch was re-sent for the job at ``when``."""
        self.redis.hset(self.key(job_id), "stitch_requested", when)

    # --- workers ------------------------------------------------------------------

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

    # --- metrics ------------------------------------------------------------------

    def metrics(self, queues: Sequence[str]) -> stats.Snapshot:
        """What ``GET /metrics`` reports, with the broker depth of each of ``queues``
        (Celery queue names), in two round trips: one for the counters, the broker and
        the workers, one for the status of each unfinished job."""
        now = time.time()
        pipe = self.redis.pipeline(transaction=False)
        pipe.hgetall(STATS)
        pipe.zrange(ACTIVE, 0, -1)
        pipe.zrangebyscore(WORKERS, now, "+inf")
        pipe.hgetall(WORKER_SLOTS)
        pipe.hgetall(WORKER_ENGINES)
        pipe.hlen(BROKER_UNACKED)
        lists = {queue: broker_lists(queue) for queue in dict.fromkeys(queues)}
        for keys in lists.values():
            for key in keys:
                pipe.llen(key)
        raw, active, names, slots, engines, unacked, *lengths = pipe.execute()
        pipe = self.redis.pipeline(transaction=False)
        for key in active:
            pipe.hget(key, "status")
        unfinished = {JobStatus.PENDING.value: 0, JobStatus.PROCESSING.value: 0}
        for status in pipe.execute() if active else []:
            if status is not None and status.decode() in unfinished:
                unfinished[status.decode()] += 1
        depth: dict[str, int] = {}
        at = 0
        for queue, keys in lists.items():
            depth[queue] = sum(lengths[at : at + len(keys)])
            at += len(keys)
        up = [n.decode() for n in names]
        processes = {k.decode(): int(v.decode().partition(" ")[0]) for k, v in slots.items()}
        described = set()
        for key, value in engines.items():
            worker, _, rest = key.decode().partition(" ")
            if worker in up:
                described.add((worker, rest.partition(" ")[2], value.decode()))
        jobs, tiles, tile_seconds, job_seconds = stats.parse(
            {k.decode(): v.decode() for k, v in raw.items()}, [s.value for s in JobStatus]
        )
        return stats.Snapshot(
            jobs_entered=jobs,
            jobs_unfinished=unfinished,
            tiles=tiles,
            tile_seconds=tile_seconds,
            job_seconds=job_seconds,
            queues=depth,
            unacked=int(unacked),
            workers={name: processes.get(name, 0) for name in up},
            engines=sorted(described),
        )
