"""Waiting for a job to end without polling: the ``P:ended`` channel.

The store's TRANSITION script publishes the new status on ``<job key>:ended``
in the same atomic step that ends a job (:mod:`common.cluster.lua`). A waiter
subscribes *before* it reads the status, so an end that happens between the
two is never missed: either the read sees it, or the message arrives.
A Redis restart drops subscriptions; the waiter then falls back to reading the
status every :data:`RECHECK` seconds until its time is up.
"""

from __future__ import annotations

import time

import redis

from common.cluster.store import JobStatus, JobStore

RECHECK = 1.0
"""Seconds between status reads while waiting (a safety net: the message normally wakes us)."""


def ended_channel(job_id: str) -> str:
    """The pub/sub channel on which the job's end is announced."""
    return JobStore.key(job_id, "ended")


def wait_until_ended(store: JobStore, job_id: str, seconds: float) -> JobStatus | None:
    """Block until the job has ended or ``seconds`` have passed; returns its status then.

    ``None`` for no such job. Holds one Redis connection (the subscription) while it waits.
    """
    deadline = time.monotonic() + seconds
    pubsub = store.redis.pubsub(ignore_subscribe_messages=True)
    try:
        try:
            pubsub.subscribe(ended_channel(job_id))
        except redis.RedisError:
            pubsub = None  # subscribing failed: read the status now and then instead
        while True:
            status = store.status(job_id)
            left = deadline - time.monotonic()
            if status is None or status.finished or left <= 0:
                return status
            pause = min(left, RECHECK)
            if pubsub is None:
                time.sleep(pause)
                continue
            try:
                pubsub.get_message(timeout=pause)
            except redis.RedisError:
                pubsub.close()
                pubsub = None
    finally:
        if pubsub is not None:
            pubsub.close()
