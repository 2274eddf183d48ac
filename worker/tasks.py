"""The two tasks: each moves arguments to a step of :mod:`common.cluster.jobs` and back."""

from __future__ import annotations

import logging
from typing import Any

import redis
from celery.exceptions import Reject, SoftTimeLimitExceeded

from common.cluster import jobs
from common.cluster.protocol import STITCH_TASK, TILE_TASK
from worker.app import app
from worker.runtime import settings, store

log = logging.getLogger(__name__)
LIMIT = settings().tile_time_limit


@app.task(name=TILE_TASK, bind=True, soft_time_limit=LIMIT * 0.9, time_limit=LIMIT)
def upscale_tile(self: Any, job_id: str, part: int) -> str:
    """Infer part ``part`` of job ``job_id``; returns a deterministic key, never raises."""
    try:
        return jobs.run_part(store(), settings(), job_id, part, self.request.hostname)
    except (redis.ConnectionError, redis.TimeoutError) as error:
        # Redis is restarting: the job is not at fault; give the message back (or, if
        # even that fails, the broker restores it after the visibility timeout)
        raise Reject(f"Redis unavailable: {error}", requeue=True) from error
    except SoftTimeLimitExceeded:
        store().fail(job_id, "tile_timeout", f"tile {part} ran past {LIMIT * 0.9:.0f} s")
    except Exception as error:  # a failed tile must end its job, not leave it waiting
        log.exception("tile %s of job %s failed", part, job_id)
        store().fail(job_id, "internal", f"tile {part} failed: {type(error).__name__}: {error}")
    return jobs.part_result(job_id, part)


@app.task(name=STITCH_TASK, bind=True, max_retries=None)
def stitch(self: Any, results: list[str], job_id: str) -> None:
    """Chord callback: assemble the job's result, or retry while a redelivered tile finishes."""
    try:
        jobs.stitch(store(), settings(), job_id)
    except jobs.TilesPending:
        raise self.retry(countdown=1) from None
    except (redis.ConnectionError, redis.TimeoutError) as error:
        raise Reject(f"Redis unavailable: {error}", requeue=True) from error
    except Exception as error:
        log.exception("stitch of job %s failed", job_id)
        store().fail(job_id, "internal", f"stitching failed: {type(error).__name__}: {error}")
