"""A Celery *client*: it sends the worker's tasks by name and never imports ``worker``.

Task ids are derived from the job id (:mod:`common.cluster.protocol`) so a
job's tasks can be revoked knowing only the job id and its group count.
"""

from __future__ import annotations

import logging

from celery import Celery

from common.cluster.protocol import (
    TILE_TASK,
    celery_config,
    fair_priority,
    stitch_task_id,
    tile_task_id,
)
from common.settings import Settings

log = logging.getLogger(__name__)


class TaskSender:
    """Sends a job's tasks and revokes them; holds one Celery app (and its broker pool)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        # no result backend: the job store records outcomes, and with one Celery would
        # open a pub/sub subscription per sending thread for results nobody reads
        self.app = Celery("srcluster-api", broker=settings.redis_url, set_as_current=False)
        self.app.conf.update(celery_config(settings))

    def send_job(self, job_id: str, groups: int, backlog: int = 0) -> None:
        """Queue one tile task per group (the worker that lands the last part asks for the
        stitch); ``backlog`` is the owner's groups still queued before this job: each group
        goes at its :func:`~common.cluster.protocol.fair_priority` (with ``fair_share`` on)."""
        fair = self.settings.fair_share
        with self.app.producer_or_acquire() as producer:
            for group in range(groups):
                self.app.send_task(
                    TILE_TASK,
                    args=(job_id, group),
                    queue=self.settings.tile_queue,
                    task_id=tile_task_id(job_id, group),
                    producer=producer,
                    priority=fair_priority(backlog + group) if fair else 0,
                )

    def revoke(self, job_id: str, groups: int) -> None:
        """Ask workers to drop the job's queued tasks.

        Best effort: a broadcast reaches only workers that are up, and tasks
        check the job's status themselves before working.
        """
        ids = [tile_task_id(job_id, g) for g in range(groups)] + [stitch_task_id(job_id)]
        try:
            self.app.control.revoke(ids)
        except Exception:  # the job is already cancelled in the store; this is only a hint
            log.warning("could not broadcast the revocation of job %s", job_id, exc_info=True)

    def close(self) -> None:
        self.app.close()
