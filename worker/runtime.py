"""Per-process state of a worker: settings with the right thread count, the store, the janitor.

ONNX Runtime gets one inference thread per core in total: a worker of N
processes gives each session ``cores / N`` intra-op threads (more threads than
cores measured 12-26 % slower), unless ``SRCLUSTER_THREADS`` says otherwise.
Sessions are created lazily, once per model per process (:func:`common.engine.get_engine`).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time
from typing import Any

from celery import signals

from common import jobs
from common.settings import Settings, available_cores
from common.store import JobStore
from worker.app import app

log = logging.getLogger(__name__)
_state: dict[str, Any] = {}


def settings() -> Settings:
    if "settings" not in _state:
        base: Settings = app.conf.srcluster_settings
        if base.threads == 0:
            processes = int(os.environ.get("SRCLUSTER_WORKER_PROCESSES", "1"))
            base = dataclasses.replace(base, threads=max(1, available_cores() // processes))
        _state["settings"] = base
    result: Settings = _state["settings"]
    return result


def store() -> JobStore:
    if "store" not in _state:
        s = app.conf.srcluster_settings
        _state["store"] = JobStore.from_url(s.redis_url, s.result_ttl)
    result: JobStore = _state["store"]
    return result


@signals.worker_init.connect
def _remember_concurrency(sender: Any = None, **_: Any) -> None:
    # children are forked after this, so they inherit it
    os.environ["SRCLUSTER_WORKER_PROCESSES"] = str(getattr(sender, "concurrency", 1) or 1)


@signals.worker_process_init.connect
def _fresh_process(**_: Any) -> None:
    _state.clear()  # no Redis connection or session is shared across a fork


@signals.worker_ready.connect
def _start_janitor(sender: Any = None, **_: Any) -> None:
    name = getattr(sender, "hostname", None) or "worker"
    slots = int(os.environ.get("SRCLUSTER_WORKER_PROCESSES", "1"))
    consumes_tiles = True
    try:
        queues = {q.name for q in sender.app.amqp.queues.consume_from.values()}
        consumes_tiles = app.conf.srcluster_settings.tile_queue in queues
    except Exception:  # older Celery: assume it takes tiles
        pass
    threading.Thread(
        target=_janitor,
        args=(name, slots if consumes_tiles else 0),
        name="srcluster-janitor",
        daemon=True,
    ).start()


def _janitor(name: str, slots: int) -> None:
    """Announce this worker and end overdue jobs, forever (a daemon thread of the main process)."""
    s: Settings = app.conf.srcluster_settings
    janitor_store = JobStore.from_url(s.redis_url, s.result_ttl)
    while True:
        try:
            janitor_store.announce_worker(name, slots, ttl=3 * s.janitor_interval)
            for job_id in jobs.reap(janitor_store):
                log.warning("job %s ended failed: past its timeout", job_id)
            for job_id in jobs.unstitched(janitor_store, grace=max(5.0, 2.0 * s.janitor_interval)):
                log.warning("job %s: every tile is done but no stitch came; sending one", job_id)
                app.send_task("srcluster.stitch", args=([], job_id), queue=s.stitch_queue)
        except Exception:  # Redis restarting: try again next round
            log.warning("janitor round failed", exc_info=True)
        time.sleep(s.janitor_interval)
