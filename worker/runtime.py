"""Per-process state of a worker: its settings, its store, and the janitor thread.

Settings reach the worker one way, :func:`settings`: what
:data:`worker.app.settings` read from the environment, with the thread rule of
:meth:`~common.settings.Settings.session_threads` resolved once for this
worker's pool size before the pool forks (``worker_init``), so each of N pool
processes gets ``cores / N`` inference threads unless ``SRCLUSTER_THREADS``
says otherwise. Engine sessions are built lazily, once per model per process
(:func:`common.engines.get_engine`).
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from typing import Any

from celery import signals

from common import memory
from common.cluster import callbacks, jobs, recovery
from common.cluster.protocol import RESEND_PRIORITY, STITCH_TASK, TILE_TASK, tile_task_id
from common.cluster.store import JobStore
from common.engines import select
from common.engines.host import detect_host
from common.errors import ConfigError
from common.settings import Settings
from worker.app import app
from worker.app import settings as configured

log = logging.getLogger(__name__)

# outside a worker (a test importing the tasks) one process has all the cores
_settings = dataclasses.replace(configured, threads=configured.session_threads())
_pool_processes = 1
_takes_stitches = True
_store: JobStore | None = None
plans = jobs.PlanCache()
"""This process's parsed plans (each job's plan is read and parsed once per process)."""


def settings() -> Settings:
    """This process's settings, threads resolved (see the module docstring)."""
    return _settings


def store() -> JobStore:
    """This process's job store (one Redis connection pool per process)."""
    global _store
    if _store is None:
        _store = JobStore.from_settings(_settings)
    return _store


def takes_stitches() -> bool:
    """Whether this worker consumes the stitch queue (so it stitches a job its task completes)."""
    return _takes_stitches


def _queues(sender: Any, default: str) -> set[str]:
    """The queues the worker consumes (``-Q``), known before the pool forks."""
    try:
        return {q.name for q in sender.app.amqp.queues.consume_from.values()}
    except Exception:  # older Celery: assume it takes ``default``
        return {default}


def _pool_size(sender: Any) -> int:
    concurrency = getattr(sender, "concurrency", 1)
    return concurrency if isinstance(concurrency, int) and concurrency > 0 else 1


@signals.worker_init.connect
def _resolve_threads(sender: Any = None, **_: Any) -> None:
    # runs in the main process before the pool forks: every child inherits the result
    global _settings, _pool_processes, _takes_stitches
    _pool_processes = _pool_size(sender)
    _takes_stitches = configured.stitch_queue in _queues(sender, default=configured.stitch_queue)
    _settings = dataclasses.replace(configured, threads=configured.session_threads(_pool_processes))


@signals.worker_process_init.connect
def _fresh_process(**_: Any) -> None:
    global _store
    _store = None  # no Redis connection is shared across a fork


@signals.worker_ready.connect
def _start_janitor(sender: Any = None, **_: Any) -> None:
    name = getattr(sender, "hostname", None) or "worker"
    slots = _pool_processes
    consumes_tiles = configured.tile_queue in _queues(sender, default=configured.tile_queue)
    s = settings()  # never logged whole: it holds the Redis password and the tokens
    log.info(
        "srcluster worker %s: %d tile process(es), %d inference thread(s) each, engine %s, "
        "precision %s, provider %s",
        name,
        slots,
        s.threads,
        s.engine,
        s.precision,
        s.provider,
    )
    threading.Thread(
        target=_heartbeat,
        args=(name, slots if consumes_tiles else 0),
        name="srcluster-heartbeat",
        daemon=True,
    ).start()
    threading.Thread(target=_janitor, name="srcluster-janitor", daemon=True).start()
    threading.Thread(target=_deliverer, name="srcluster-callbacks", daemon=True).start()


def _heartbeat(name: str, slots: int) -> None:
    """Announce this worker every third of ``heartbeat_ttl``, forget the workers whose
    heartbeat expired and re-queue the tiles they were running, forever (a daemon thread
    of the main process, apart from the janitor so its slower rounds never delay this).

    The announcement carries what one pool process may spend on a window (this
    host's memory shared out among them), so the API plans windows that fit the
    smallest worker up. After this thread itself was cut off from Redis for a whole
    ttl (a Redis restart), it forgets no one for one more ttl: the others were cut
    off too, and must have the time to announce themselves again.
    """
    s = settings()
    beat_store = JobStore.from_settings(s)
    window_budget = memory.inference_budget(processes=max(1, _pool_processes))
    memory_key = _memory_key(s)
    period = s.heartbeat_ttl / 3
    last_beat = time.monotonic()
    patient_until = 0.0
    while True:
        try:
            beat_store.announce_worker(
                name, slots, ttl=s.heartbeat_ttl, window_budget=window_budget, memory_key=memory_key
            )
            now = time.monotonic()
            if now - last_beat > s.heartbeat_ttl:
                patient_until = now + s.heartbeat_ttl
            last_beat = now
            if now >= patient_until:
                dead = beat_store.forget_dead_workers()
                if dead:
                    log.warning("worker(s) %s stopped announcing themselves", ", ".join(dead))
                    _resend(recovery.requeue_dead(beat_store, s))
        except Exception:  # Redis restarting: try again next round
            log.warning("heartbeat round failed", exc_info=True)
        time.sleep(period)


def _resend(found: list[recovery.Resend]) -> None:
    """Send the groups again as the API sent them (same task, arguments and id), first in line."""
    s = settings()
    for resend in found:
        log.warning(
            "job %s: re-queueing group(s) %s (%s)",
            resend.job_id,
            ", ".join(map(str, resend.groups)),
            resend.why,
        )
        for group in resend.groups:
            app.send_task(
                TILE_TASK,
                args=(resend.job_id, group),
                queue=s.tile_queue,
                task_id=tile_task_id(resend.job_id, group),
                priority=RESEND_PRIORITY,
            )


def _janitor() -> None:
    """End overdue jobs, re-queue stalled ones, re-send lost stitches and sweep old blobs,
    every ``janitor_interval``, forever (a daemon thread of the main process)."""
    s = settings()
    janitor_store = JobStore.from_settings(s)
    grace = max(5.0, 2.0 * s.janitor_interval)
    while True:
        try:
            for job_id in jobs.reap(janitor_store):
                log.warning("job %s ended failed: past its timeout", job_id)
            _resend(recovery.requeue_stalled(janitor_store, s, time.time()))
            lease = max(grace, s.tile_time_limit / 5)
            for job_id in jobs.unstitched(janitor_store, grace=grace, lease=lease):
                log.warning("job %s: every tile is done but no stitch came; sending one", job_id)
                app.send_task(STITCH_TASK, args=(job_id,), queue=s.stitch_queue)
            swept = janitor_store.sweep_blobs()
            if swept:
                log.info("swept %d blob folder(s) or object(s) older than the result TTL", swept)
        except Exception:  # Redis restarting: try again next round
            log.warning("janitor round failed", exc_info=True)
        time.sleep(s.janitor_interval)


def _memory_key(s: Settings) -> str:
    """The memory key of the engine this worker's settings pick here (announced for planning).

    An automatic pick that fails its quality probe serves with ORT fp32 instead,
    whose windows take more memory; the budget's headroom covers that case.
    """
    try:
        return select.choose(s, detect_host()).memory_key
    except ConfigError:  # the worker will refuse its tiles with this error; plan as for ORT
        return "ort-cpu"


CALLBACK_POLL = 0.5
"""Seconds between a deliverer's looks at the callback outbox when it found nothing due."""


def _deliverer() -> None:
    """Deliver the callbacks of ended jobs, forever (a daemon thread of the main process).

    Apart from the janitor, so a slow receiver (up to 10 s an attempt) never
    delays the heartbeat; every worker runs one, and the outbox's claims keep
    them from posting the same callback twice.
    """
    s = settings()
    outbox = callbacks.Outbox(JobStore.from_url(s.redis_url, s.result_ttl))
    while True:
        try:
            if callbacks.deliver_due(outbox, s):
                continue  # maybe more are due
        except Exception:  # Redis restarting: the outbox is still there next round
            log.warning("callback round failed", exc_info=True)
        time.sleep(CALLBACK_POLL)
