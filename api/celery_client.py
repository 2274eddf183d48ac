"""A Celery *client*: it sends the worker's tasks by name and never imports ``worker``.

Task ids are derived from the job id (``<job>-<task>``, ``<job>-stitch``) so a
job's tasks can be revoked knowing only the job id and its task count.
"""

from __future__ import annotations

import logging

from celery import Celery, chord, group

from common.settings import Settings

TILE_TASK = "srcluster.upscale_tile"
"""``upscale_tile(job_id, task)``: infer one tile."""

STITCH_TASK = "srcluster.stitch"
"""``stitch(results, job_id)``: the chord's callback; ``results`` are the tile tasks' returns."""

log = logging.getLogger(__name__)


def tile_task_id(job_id: str, task: int) -> str:
    return f"{job_id}-{task}"


def stitch_task_id(job_id: str) -> str:
    return f"{job_id}-stitch"


class TaskSender:
    """Sends a job's chord and revokes it; holds one Celery app (and its broker pool)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.app = Celery(
            "srcluster-api",
            broker=settings.redis_url,
            backend=settings.redis_url,
            set_as_current=False,
        )
        self.app.conf.update(
            task_serializer="json",
            result_serializer="json",
            accept_content=["json"],
            result_accept_content=["json"],
            broker_transport_options={"visibility_timeout": settings.visibility_timeout},
            result_expires=settings.result_ttl,
        )

    def send_job(self, job_id: str, task_count: int) -> None:
        """Queue ``task_count`` tile tasks with the stitch as their chord callback."""
        tiles = group(
            self.app.signature(
                TILE_TASK,
                args=(job_id, task),
                queue=self.settings.tile_queue,
                task_id=tile_task_id(job_id, task),
            )
            for task in range(task_count)
        )
        stitch = self.app.signature(
            STITCH_TASK,
            args=(job_id,),
            queue=self.settings.stitch_queue,
            task_id=stitch_task_id(job_id),
        )
        chord(tiles, stitch, app=self.app).apply_async()

    def revoke(self, job_id: str, task_count: int) -> None:
        """Ask workers to drop the job's queued tasks.

        Best effort: a broadcast reaches only workers that are up, and tasks
        check the job's status themselves before working.
        """
        ids = [tile_task_id(job_id, t) for t in range(task_count)] + [stitch_task_id(job_id)]
        try:
            self.app.control.revoke(ids)
        except Exception:  # the job is already cancelled in the store; this is only a hint
            log.warning("could not broadcast the revocation of job %s", job_id, exc_info=True)

    def close(self) -> None:
        self.app.close()
