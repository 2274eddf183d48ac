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
                      callback_url      where to POST the job's status when it ends (if asked)
                      callback_status   pending | delivered | failed, callback_attempts, callback_error
                      blobs             where its bytes are: redis, file or the s3:// URL
                      timeout, uncommitted  its timeout; set until the API queued all its tasks
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
    srcluster:callbacks      sorted set of ended jobs' keys whose callback is undelivered, scored by
                             when it is next due (see :mod:`common.cluster.callbacks`)
    srcluster:blob-sweep     set while one janitor sweeps old blobs (a blob store only)
    srcluster:healthz        written by GET /healthz (does Redis accept writes?), 60 s TTL
    srcluster:stats          hash of counters and latency buckets, no TTL (:mod:`common.cluster.stats`)

and the workers' keys (:mod:`common.cluster.workers`). With a blob store
(``SRCLUSTER_BLOB_URL``, :mod:`common.cluster.blobs`) the strips, output cores
and result are blobs of the job instead of ``P:in``, ``P:out`` and
``P:result``; the rest stays here, the small extras too.

Arrays travel as raw bytes or ``.npy`` (dtype, shape, data; never pickles), not
PNG: encoding every tile would cost more than a compact-model tile's inference.
A cluster task reads and writes a whole group of parts in one round trip each
(:meth:`JobStore.begin_group`, :meth:`JobStore.record_outputs`), plus, with a
blob store, its reads and writes of blobs: written before the script that
marks them done, deleted again when the script says the job has ended.

Status changes go through :meth:`JobStore.transition`, an atomic check-and-set
in Lua: ``success``, ``failed`` and ``cancelled`` are final, so a late tile or
a redelivered stitch can never revive or overwrite a finished job. The same
step that ends a job queues its callback and publishes ``P:ended`` (a pub/sub
channel, not a key) for requests waiting on it (:mod:`common.cluster.events`).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import redis

from common.cluster import lua, stats
from common.cluster.blobs import (
    RESULT,
    SWEEP_INTERVAL,
    Blobs,
    from_settings,
    output_name,
    strip_name,
)
from common.cluster.protocol import BROKER_UNACKED, broker_lists
from common.cluster.records import (
    GroupStart,
    JobRecord,
    JobStatus,
    WindowRead,
    pack_array,
    token_hash,
    unpack_array,
)
from common.cluster.stats import STATS
from common.cluster.workers import WORKER_ENGINES, WORKER_SLOTS, WORKERS, WorkerRegistry
from common.settings import Settings

__all__ = [
    "ACTIVE",
    "BLOB_SWEEP",
    "PREFIX",
    "WORKERS",
    "GroupStart",
    "JobRecord",
    "JobStatus",
    "JobStore",
    "WindowRead",
    "pack_array",
    "token_hash",
    "unpack_array",
]

PREFIX = "srcluster:job:"
ACTIVE = "srcluster:active"
CALLBACKS = "srcluster:callbacks"
BLOB_SWEEP = "srcluster:blob-sweep"
HEALTH = "srcluster:healthz"
"""Written by ``GET /healthz`` to learn that Redis accepts writes."""

RESULT_CHUNK = 1 << 20
"""Bytes of a result streamed from a blob store at a time (a download's memory)."""

REDIS_VALUE_LIMIT = 512 * 1024 * 1024
"""Redis's default ``proto-max-bulk-len``: a larger value is refused (its connection cut)."""

TOKEN_JOBS = "srcluster:token-jobs:"
"""+ owner: sorted set of the token's job keys by creation (finished ones pruned at submit)."""

TOKEN_PIXELS = "srcluster:token-pixels:"
"""+ owner: sorted set of ``"<job id> <input pixels>"`` by creation, for the hourly budget."""

HOUR = 3600.0


_PASSING_REFUSAL = re.compile(
    r"(^|-)(MISCONF|READONLY|NOREPLICAS|OOM|BUSY|MASTERDOWN|TRYAGAIN|CLUSTERDOWN|LOADING)\b"
)


def refused_for_now(error: BaseException) -> bool:
    """Whether Redis refused a command for a passing reason (it cannot persist, has too few
    replicas, is a replica or out of memory, runs a slow script): retry, do not fail jobs.
    Inside a script the refused command is the first write, so nothing was changed."""
    if isinstance(error, redis.ReadOnlyError | redis.OutOfMemoryError):
        return True
    return isinstance(error, redis.ResponseError) and bool(_PASSING_REFUSAL.search(str(error)))


class ResultTooLarge(Exception):
    """A job's encoded result is over what one Redis value may hold."""

    def __init__(self, message: str, **detail: int) -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail


@dataclass(frozen=True)
class Refusal:
    """Why a token may not submit now: ``reason`` (``jobs`` or ``pixels``), the limit, what
    is in use, and ``retry_after`` seconds (``None``: never, the job alone is over it)."""

    reason: str
    limit: int
    used: int
    retry_after: float | None


class JobStore(WorkerRegistry):
    """All of srcluster's Redis reads and writes of jobs, and of their blobs.

    Every method either does what it says or raises ``redis.RedisError`` (or
    :class:`~common.cluster.blobs.BlobUnavailable`) having changed nothing it
    would not change again on a retry (writes are idempotent).
    """

    def __init__(self, client: redis.Redis, ttl: int, blobs: Blobs | None = None):
        # Any: redis-py's annotations cannot tell that replies are bytes (decode_responses off)
        self.redis: Any = client
        self.ttl = ttl
        self.blobs = blobs
        """Where strips, cores and results live; ``None``: in this Redis."""
        self._transition = client.register_script(lua.TRANSITION)
        self._begin_group = client.register_script(lua.BEGIN_GROUP)
        self._forget_dead = client.register_script(lua.FORGET_DEAD)
        self._record_outputs = client.register_script(lua.RECORD_OUTPUTS)
        self._take_orphans = client.register_script(lua.TAKE_ORPHANS)
        self._value_limit: int | None = None

    @classmethod
    def from_settings(cls, settings: Settings, connect_timeout: float | None = None) -> JobStore:
        """The store of ``settings``: its Redis, result TTL and blob store."""
        return cls.from_url(
            settings.redis_url,
            settings.result_ttl,
            connect_timeout=connect_timeout,
            blobs=from_settings(settings),
        )

    @classmethod
    def from_url(
        cls,
        url: str,
        ttl: int,
        connect_timeout: float | None = None,
        blobs: Blobs | None = None,
    ) -> JobStore:
        """A store on the Redis at ``url``; ``connect_timeout`` bounds each connection attempt."""
        client = redis.Redis.from_url(
            url, health_check_interval=30, socket_connect_timeout=connect_timeout
        )
        return cls(client, ttl, blobs)

    @property
    def blob_kind(self) -> str:
        """Where this store keeps bytes: ``redis``, ``file`` or the ``s3://`` URL."""
        return "redis" if self.blobs is None else self.blobs.kind

    def misplaced(self, job_id: str) -> str | None:
        """Why this store cannot find the job's bytes (the job was recorded by a process
        with another ``SRCLUSTER_BLOB_URL``), or ``None`` when that is not the reason."""
        recorded = self.redis.hget(self.key(job_id), "blobs")
        if recorded is None or recorded.decode() == self.blob_kind:
            return None
        return (
            f"the job's tiles are in {recorded.decode()} but this worker's are in "
            f"{self.blob_kind}: every process needs the same SRCLUSTER_BLOB_URL"
        )

    @staticmethod
    def key(job_id: str, *parts: object) -> str:
        return PREFIX + job_id + "".join(f":{p}" for p in parts)

    def ping(self) -> None:
        """Raise ``redis.RedisError`` unless Redis answers."""
        self.redis.ping()

    def check_writable(self) -> None:
        """Raise ``redis.RedisError`` unless Redis accepts a write (it refuses them at
        ``maxmemory`` with ``noeviction``, or as a read-only replica)."""
        self.redis.set(HEALTH, "1", ex=60)

    def close(self) -> None:
        """Release this store's connections."""
        self.redis.close()
        if self.blobs is not None:
            self.blobs.close()

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
        estimate: float | None = None,
        callback_url: str | None = None,
        commit_within: float | None = None,
        pixels: int = 0,
    ) -> None:
        """Record a new ``pending`` job of ``parts`` parts (in ``groups`` tasks; default one
        per part) with its input, all expiring after the TTL; ``estimate`` is its estimated
        seconds of inference; ``callback_url`` (checked by the caller) is posted the job's
        status when it ends; ``pixels`` (its input's) count in the owner's hourly budget.

        ``strips`` are ``(plane, column, raw bytes)`` (see the key layout). One
        transaction: a job is recorded whole or not at all (with a blob store, the
        strips are written first and deleted again if the transaction fails).

        ``commit_within``: the job is *uncommitted* until :meth:`commit` (its caller has
        queued all its tasks), and its deadline is that many seconds away (at most its
        timeout) until then: a caller that dies while queueing leaves a job the janitor
        ends (and drops) within those seconds, not after the whole timeout.
        """
        pipe = self.redis.pipeline(transaction=True)
        if self.blobs is None:
            for plane, column, data in strips:
                pipe.set(self.key(job_id, "in", plane, column), data, ex=self.ttl)
        else:
            self.blobs.put_many(job_id, [(strip_name(p, c), data) for p, c, data in strips])
        for name, data in extras.items():
            pipe.set(self.key(job_id, "extra", name), data, ex=self.ttl)
        now = time.time()
        record = {
            "status": JobStatus.PENDING.value,
            "owner": owner,
            "owner_name": owner_name,
            "params": json.dumps(dict(params)),
            "plan": json.dumps(dict(plan)),
            "parts": parts,
            "groups": parts if groups is None else groups,
            "created": now,
            "deadline": now + (timeout if commit_within is None else min(timeout, commit_within)),
            "timeout": timeout,
            "blobs": self.blob_kind,
        }
        if commit_within is not None:
            record["uncommitted"] = 1
        if estimate is not None:
            record["estimate"] = estimate
        if callback_url:
            record["callback_url"] = callback_url
        pipe.hset(self.key(job_id), mapping=record)
        pipe.expire(self.key(job_id), self.ttl)
        pipe.zadd(ACTIVE, {self.key(job_id): record["deadline"]})
        pipe.zadd(TOKEN_JOBS + owner, {self.key(job_id): now})
        pipe.expire(TOKEN_JOBS + owner, self.ttl)
        if pixels > 0:
            pipe.zadd(TOKEN_PIXELS + owner, {f"{job_id} {pixels}": now})
            pipe.expire(TOKEN_PIXELS + owner, int(HOUR) + 60)
        pipe.hincrby(STATS, f"jobs:{JobStatus.PENDING.value}", 1)
        try:
            pipe.execute()
        except BaseException:
            if self.blobs is not None:
                self.blobs.remove_job(job_id)
            raise

    def commit(self, job_id: str) -> None:
        """Mark a job created with ``commit_within`` as queued whole: its deadline becomes
        its creation plus its timeout. A job that has ended meanwhile stays off the
        unfinished list."""
        created, timeout = self.redis.hmget(self.key(job_id), "created", "timeout")
        if created is None or timeout is None:
            return
        deadline = float(created) + float(timeout)
        pipe = self.redis.pipeline(transaction=True)
        pipe.hset(self.key(job_id), "deadline", deadline)
        pipe.hdel(self.key(job_id), "uncommitted")
        pipe.zadd(ACTIVE, {self.key(job_id): deadline}, xx=True)
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
        callback: dict[str, Any] | None = None
        if "callback_url" in fields:
            callback = {
                "status": fields.get("callback_status", "waiting"),
                "attempts": int(fields.get("callback_attempts", 0)),
            }
            if "callback_error" in fields:
                callback["error"] = fields["callback_error"]
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
            estimate=float(fields["estimate"]) if "estimate" in fields else None,
            callback_url=fields.get("callback_url"),
            callback=callback,
            committed="uncommitted" not in fields,
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
        args: list[str | float | int] = [to.value, time.time(), *(s.value for s in allowed), "--"]
        for name, value in fields.items():
            args += [name, value]
        keys = [self.key(job_id), ACTIVE, STATS, CALLBACKS]
        return bool(self._transition(keys=keys, args=args))

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

    def value_limit(self) -> int:
        """The largest value this Redis takes (``proto-max-bulk-len``; 512 MiB where
        ``CONFIG`` is refused), read once."""
        if self._value_limit is None:
            try:
                found = self.redis.config_get("proto-max-bulk-len")
                self._value_limit = int(next(iter(found.values())))
            except (redis.ResponseError, StopIteration, ValueError):
                self._value_limit = REDIS_VALUE_LIMIT
        return self._value_limit

    def succeed(self, job_id: str, result: bytes, output: Mapping[str, Any]) -> bool:
        """Store the final image and end the job ``success`` (counting the stitch, and its
        time since submission in the job latency histogram); a second call changes nothing.

        Raises:
            ResultTooLarge: the result is in Redis and over its value limit (nothing changed).
        """
        status, created, params = self.redis.hmget(self.key(job_id), "status", "created", "params")
        if status is None or JobStatus(status.decode()).finished:
            return False
        if self.blobs is None and len(result) > self.value_limit():
            raise ResultTooLarge(
                f"the result is {len(result)} bytes, over the {self.value_limit()} bytes one "
                "Redis value may hold: set SRCLUSTER_BLOB_URL to keep results in a blob store",
                size=len(result),
                limit=self.value_limit(),
            )
        if self.blobs is None:
            self.redis.set(self.key(job_id, "result"), result, ex=self.ttl)
        else:
            self.blobs.put(job_id, RESULT, result)
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
            if self.blobs is None:
                self.redis.delete(self.key(job_id, "result"))
            else:
                self.blobs.delete(job_id, [RESULT])
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
        if self.blobs is not None:
            self.blobs.drop(job_id, keep=[RESULT])

    def delete(self, job_id: str) -> None:
        """Delete everything of a job but its record (a cancelled job's status stays readable)."""
        keys = list(self.redis.scan_iter(match=self.key(job_id, "*"), count=1000))
        if keys:
            self.redis.delete(*keys)
        if self.blobs is not None:
            self.blobs.remove_job(job_id)

    def discard(self, job_id: str) -> None:
        """Remove every trace of a job that was never queued: its keys, record included,
        its blobs, its place on the unfinished list. Deletes only, which Redis accepts
        even when it refuses writes (``maxmemory``). A job never queued costs its token
        nothing: it leaves the token's jobs and its hourly pixels too."""
        raw_owner = self.redis.hget(self.key(job_id), "owner")
        self.delete(job_id)
        self.redis.delete(self.key(job_id))
        self.forget(job_id)
        if raw_owner is not None:
            owner = raw_owner.decode()
            mine = f"{job_id} ".encode()
            spent = [
                m for m in self.redis.zrange(TOKEN_PIXELS + owner, 0, -1) if m.startswith(mine)
            ]
            pipe = self.redis.pipeline(transaction=False)
            pipe.zrem(TOKEN_JOBS + owner, self.key(job_id))
            if spent:
                pipe.zrem(TOKEN_PIXELS + owner, *spent)
            pipe.execute()

    # --- parts ----------------------------------------------------------------

    def read_strip(self, job_id: str, plane: int, column: int) -> bytes | None:
        """A whole input strip, or ``None`` once the job has dropped its tiles."""
        if self.blobs is not None:
            return self.blobs.get(job_id, strip_name(plane, column))
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
        read their input windows (see :class:`GroupStart` for when it does not): inside
        the script, or, with a blob store, from it once the script said go. A group
        whose parts are all done already changes nothing (``already_done``).
        """
        keys = [
            self.key(job_id),
            self.key(job_id, "deliveries"),
            self.key(job_id, "running"),
            STATS,
            self.key(job_id, "done"),
        ]
        if self.blobs is None:
            keys += [self.key(job_id, "in", r.plane, r.column) for r in reads]
        args: list[str | int | float] = [runner, self.ttl, time.time(), max_deliveries, len(reads)]
        for r in reads:
            args += [r.part, r.first, r.last]
        reply = self._begin_group(keys=keys, args=args)
        status = JobStatus(reply[0].decode()) if reply[0] else None
        started = int(reply[4]) if len(reply) > 4 else 0
        if len(reply) > 5 and int(reply[5]) == 0:
            landed = len(reply) > 6 and int(reply[6]) == 1
            return GroupStart(
                status, float(reply[1]), 0, -1, None, started, already_done=True, landed=landed
            )
        windows: list[bytes] | None = None
        if len(reply) > 5 and self.blobs is None:
            windows = [bytes(w) for w in reply[6:]]
        elif len(reply) > 5 and self.blobs is not None:
            ranges = [(strip_name(r.plane, r.column), r.first, r.last) for r in reads]
            windows = self.blobs.read_ranges(job_id, ranges)
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
        one else stitches it without them. With a blob store the cores are written
        there first, and deleted again if the job turns out to have ended.

        Returns ``(parts done so far, whether this call landed the job's last part)``;
        ``(-1, False)``, with nothing stored, if the job has ended.

        Raises:
            ValueError: ``seconds`` and ``outputs`` differ in length (nothing is stored).
        """
        if len(seconds) != len(outputs):
            raise ValueError(f"{len(seconds)} timings for {len(outputs)} outputs")
        where = "none" if not keep else "redis" if self.blobs is None else "blobs"
        written = [(output_name(part), data) for part, data in outputs] if where == "blobs" else []
        if self.blobs is not None and written:
            self.blobs.put_many(job_id, written)
        keys = [self.key(job_id), self.key(job_id, "done"), self.key(job_id, "workers"), STATS]
        args: list[str | int | float | bytes] = [worker, self.ttl, time.time(), len(outputs)]
        args += [model, where]
        args += [part for part, _ in outputs]
        args += [stats.bucket_of(s, stats.TILE_BUCKETS) for s in seconds]
        args += [repr(float(s)) for s in seconds]
        if where == "redis":
            keys += [self.key(job_id, "out", part) for part, _ in outputs]
            args += [data for _, data in outputs]
        done, landed = self._record_outputs(keys=keys, args=args)
        if int(done) < 0 and self.blobs is not None and written:
            # the job ended meanwhile: leave nothing behind
            self.blobs.delete(job_id, [name for name, _ in written])
        return int(done), bool(landed)

    def done_parts(self, job_id: str) -> set[int]:
        """The parts of the job whose output has landed."""
        return {int(v) for v in self.redis.smembers(self.key(job_id, "done"))}

    def read_outputs(self, job_id: str, parts: Iterable[int]) -> list[bytes | None]:
        """The output cores of ``parts`` (raw bytes; ``None`` for one missing), in one round trip."""
        if self.blobs is not None:
            return self.blobs.get_many(job_id, [output_name(p) for p in parts])
        values: list[bytes | None] = self.redis.mget([self.key(job_id, "out", p) for p in parts])
        return values

    def runner_of(self, job_id: str, part: int) -> str | None:
        """The ``host:pid`` that last started a part."""
        value = self.redis.hget(self.key(job_id, "running"), str(part))
        return None if value is None else str(value.decode())

    def workers_of(self, job_id: str) -> dict[int, str]:
        """Which worker ran each finished part."""
        raw = self.redis.hgetall(self.key(job_id, "workers"))
        return {int(k): v.decode() for k, v in raw.items()}

    def result(self, job_id: str) -> bytes | None:
        """The encoded final image, whole."""
        if self.blobs is not None:
            return self.blobs.get(job_id, RESULT)
        value: bytes | None = self.redis.get(self.key(job_id, "result"))
        return value

    def result_stream(self, job_id: str) -> tuple[int, Iterable[bytes]] | None:
        """``(size, chunks)`` of the final image, for a download: from a blob store a
        megabyte at a time, never whole in memory."""
        if self.blobs is not None:
            return self.blobs.stream(job_id, RESULT, RESULT_CHUNK)
        data = self.result(job_id)
        return None if data is None else (len(data), [data])

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

    def begin_stitch(self, job_id: str) -> int:
        """Count a stitch starting on the job and note when; returns the starts so far."""
        pipe = self.redis.pipeline(transaction=True)
        pipe.hincrby(self.key(job_id), "stitch_attempts", 1)
        pipe.hset(self.key(job_id), "stitching", time.time())
        return int(pipe.execute()[0])

    def stitching_since(self, job_ids: list[str]) -> list[float | None]:
        """When a stitch last started on each job, in one round trip."""
        pipe = self.redis.pipeline(transaction=False)
        for job_id in job_ids:
            pipe.hget(self.key(job_id), "stitching")
        return [None if v is None else float(v) for v in pipe.execute()] if job_ids else []

    # --- recovery (:mod:`common.cluster.recovery`) ------------------------------------

    def take_orphans(
        self,
        job_id: str,
        *,
        every: bool,
        fresh: float,
        grace: float,
        leave: Iterable[int] = (),
    ) -> list[int]:
        """Take over the job's unfinished parts that no live worker holds, atomically: those
        started by a worker whose heartbeat is gone, and with ``every`` also those never
        started or re-queued over ``fresh`` seconds ago, except ``leave``. Each is marked
        re-queued (no other caller takes it within ``fresh``), and the job's deadline is
        moved to at least ``grace`` seconds from now. Returns the parts taken."""
        keys = [
            self.key(job_id),
            self.key(job_id, "running"),
            self.key(job_id, "done"),
            WORKERS,
            ACTIVE,
        ]
        args: list[str | float | int] = [time.time(), "all" if every else "started"]
        args += [fresh, grace, self.ttl, *leave]
        return [int(p) for p in self._take_orphans(keys=keys, args=args)]

    def progress_marks(self, job_ids: list[str]) -> list[tuple[float, float | None, int]]:
        """``(last progress, estimate, groups)`` of each job, in one round trip: the last
        progress is when a part last started or landed (its creation, before any)."""
        pipe = self.redis.pipeline(transaction=False)
        for job_id in job_ids:
            pipe.hmget(self.key(job_id), "created", "touched", "estimate", "groups")
        marks = []
        for created, touched, estimate, groups in pipe.execute() if job_ids else []:
            last = max(float(created or 0), float(touched or 0))
            marks.append((last, None if estimate is None else float(estimate), int(groups or 1)))
        return marks

    def count_stall(self, job_id: str) -> int:
        """Count one more re-queue of a stalled job; returns how many so far."""
        return int(self.redis.hincrby(self.key(job_id), "stalls", 1))

    def queued_tasks(self, queue: str) -> set[str]:
        """Ids of the tasks waiting in ``queue``'s broker lists (not those a worker took)."""
        pipe = self.redis.pipeline(transaction=False)
        for key in broker_lists(queue):
            pipe.lrange(key, 0, -1)
        found = set()
        for messages in pipe.execute():
            for raw in messages:
                try:
                    found.add(str(json.loads(raw)["headers"]["id"]))
                except (ValueError, KeyError, TypeError):
                    continue  # not a Celery message of ours
        return found

    def claim(self, name: str, seconds: float) -> bool:
        """Whether this caller is the one (of all janitors) to do ``name`` in the next
        ``seconds`` (``SET NX``)."""
        return bool(self.redis.set(f"srcluster:claim:{name}", 1, nx=True, px=int(seconds * 1000)))

    # --- per-token limits -------------------------------------------------------------

    def backlog(self, owner: str) -> int:
        """Groups of the token's unfinished jobs not yet done (parts left over group size),
        in two round trips."""
        keys = [k for k in self.redis.zrange(TOKEN_JOBS + owner, 0, -1)]
        if not keys:
            return 0
        pipe = self.redis.pipeline(transaction=False)
        for key in keys:
            pipe.hmget(key, "status", "parts", "groups")
            pipe.scard(key + b":done")
        replies = pipe.execute()
        left = 0
        for (status, parts, groups), done in zip(replies[::2], replies[1::2], strict=True):
            if status is None or JobStatus(status.decode()).finished:
                continue
            size = -(-int(parts) // max(1, int(groups or parts)))
            left += -(-(int(parts) - int(done)) // max(1, size))
        return left

    def admit(self, owner: str, pixels: int, max_jobs: int, pixels_per_hour: int) -> Refusal | None:
        """Whether the token ``owner`` (its hash) may submit a job of ``pixels`` input
        pixels: ``None``, or why not. Prunes the token's ended jobs as it counts.

        Not atomic with :meth:`create`: concurrent submits of one token may pass the
        limits by as many requests as race (each API thread checks, then records).
        """
        now = time.time()
        pipe = self.redis.pipeline(transaction=False)
        pipe.zrange(TOKEN_JOBS + owner, 0, -1, withscores=True)
        pipe.zremrangebyscore(TOKEN_PIXELS + owner, "-inf", now - HOUR)
        pipe.zrange(TOKEN_PIXELS + owner, 0, -1, withscores=True)
        jobs, _, spent = pipe.execute()
        pipe = self.redis.pipeline(transaction=False)
        for key, _ in jobs:
            pipe.hmget(key, "status", "created", "estimate")
        unfinished: list[float] = []
        ended = []
        for (key, _), (status, created, estimate) in zip(
            jobs, pipe.execute() if jobs else [], strict=True
        ):
            if status is None or JobStatus(status.decode()).finished:
                ended.append(key)
            else:
                unfinished.append(float(created) + float(estimate or 0))
        if ended:
            self.redis.zrem(TOKEN_JOBS + owner, *ended)
        if len(unfinished) >= max_jobs:
            # the soonest estimated end of a job in flight, within 1..60 s
            soonest = min(unfinished) - now
            return Refusal("jobs", max_jobs, len(unfinished), min(60.0, max(1.0, soonest)))
        if pixels_per_hour <= 0:
            return None
        entries = [(int(member.decode().rpartition(" ")[2]), float(at)) for member, at in spent]
        used = sum(n for n, _ in entries)
        if used + pixels <= pixels_per_hour:
            return None
        if pixels > pixels_per_hour:
            return Refusal("pixels", pixels_per_hour, used, None)
        freed = used
        for n, at in sorted(entries, key=lambda e: e[1]):
            freed -= n
            if freed + pixels <= pixels_per_hour:
                return Refusal("pixels", pixels_per_hour, used, max(1.0, at + HOUR - now))
        return Refusal("pixels", pixels_per_hour, used, HOUR)

    def sweep_blobs(self) -> int:
        """Delete blobs older than the result TTL (those of expired jobs, or left by a
        process that died between a write and its script); returns how many went.

        Any janitor may call it every round: one in the cluster sweeps per
        :data:`~common.cluster.blobs.SWEEP_INTERVAL`, the others return 0.
        """
        if self.blobs is None or not self.redis.set(BLOB_SWEEP, 1, nx=True, ex=SWEEP_INTERVAL):
            return 0
        return self.blobs.sweep(self.ttl)

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
