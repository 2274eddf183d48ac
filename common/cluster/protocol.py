"""What the API and the workers agree on: task names and ids, queues and Celery's wire settings.

The API sends tasks by name and never imports ``worker``; both sides build
their Celery configuration from :func:`celery_config`, so serialization and
broker options cannot drift apart. Plain values only: no Celery import here.
"""

from __future__ import annotations

from typing import Any

from common.settings import Settings

TILE_TASK = "srcluster.upscale_tiles"
"""``upscale_tiles(job_id, group)``: infer the parts of one group of a job (``JobPlan.group_parts``)."""

STITCH_TASK = "srcluster.stitch"
"""``stitch(job_id)``: assemble a job whose parts have all landed; sent by the task that
landed the last one (or by a janitor, when that never happened)."""


BROKER_PRIORITY_SEP = "\x06\x16"
"""How kombu's Redis transport names a queue's priority lists: ``<queue><sep><priority>``."""

BROKER_PRIORITY_STEPS = (0, 3, 6, 9)
"""kombu's default priority steps; step 0 is the queue's own list, named just ``<queue>``."""

BROKER_UNACKED = "unacked"
"""kombu's hash of messages a worker has taken and not yet acknowledged (tasks running,
or reserved), across all queues."""


def broker_lists(queue: str) -> list[str]:
    """The Redis lists that hold ``queue``'s waiting messages (``LLEN`` each, summed, is its
    depth). We send no priorities, so everything waits in the first; the others are read
    so a priority sent by hand still counts."""
    return [queue] + [f"{queue}{BROKER_PRIORITY_SEP}{step}" for step in BROKER_PRIORITY_STEPS[1:]]


FAIR_SHARE_STEPS = ((4, 0), (16, 3), (64, 6))
"""``(rank below, priority)``: a token's first 4 queued groups go at priority 0 (kombu's
Redis transport pops 0 first), its next 12 at 3, the next 48 at 6, the rest at 9."""

RESEND_PRIORITY = 0
"""Priority of a group a janitor sends again (a dead host's or a stalled job's): it is late."""


def fair_priority(rank: int) -> int:
    """Priority of a token's group that has ``rank`` of the token's groups queued before it
    (its unfinished jobs' and this job's earlier ones): a token with a large backlog waits
    behind the first groups of every other token's, not the whole backlog (see README,
    "Fair shares")."""
    for below, priority in FAIR_SHARE_STEPS:
        if rank < below:
            return priority
    return BROKER_PRIORITY_STEPS[-1]


def tile_task_id(job_id: str, group: int) -> str:
    """The Celery task id of a job's group: derived, so revoking needs only the job id."""
    return f"{job_id}-{group}"


def stitch_task_id(job_id: str) -> str:
    return f"{job_id}-stitch"


def celery_config(settings: Settings) -> dict[str, Any]:
    """Celery settings shared by the API (a client) and the workers.

    Image data never travels in messages, only keys, and pickle is never
    accepted; a task is acknowledged only once done and requeued if its process
    dies (the worker adds its own execution settings on top). Tasks keep no
    results: the job store records what happened, so nothing per task lingers
    in Redis.
    """
    visibility = settings.visibility_timeout
    transport = {
        "visibility_timeout": visibility,
        # kombu's default sweep for messages held past the visibility timeout runs about
        # every 100 s (every 10th check of one every 10 s), whatever the timeout: a tile held
        # by a host that dropped off came back up to 100 s late. Sweep on every check, and
        # check ten times per timeout (every 1-10 s): one cheap ZRANGE per worker per check.
        "unacked_restore_throttle": 1,
        "unacked_restore_interval": max(1, min(10, visibility // 10)),
    }
    return {
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "result_accept_content": ["json"],
        "broker_transport_options": transport,
        "result_backend_transport_options": transport,
        "broker_connection_retry_on_startup": True,
        "result_expires": settings.result_ttl,
        "task_ignore_result": True,
        "task_default_queue": settings.tile_queue,
        "task_routes": {
            TILE_TASK: {"queue": settings.tile_queue},
            STITCH_TASK: {"queue": settings.stitch_queue},
        },
    }
