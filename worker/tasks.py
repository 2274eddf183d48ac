"""The two tasks: each moves arguments to a step of :mod:`common.cluster.jobs` and back."""

from __future__ import annotations

import logging
from typing import Any

import redis
from celery.exceptions import Reject, SoftTimeLimitExceeded

from common.cluster import jobs
from common.cluster.blobs import BlobUnavailable
from common.cluster.protocol import STITCH_TASK, TILE_TASK, stitch_task_id
from common.cluster.store import refused_for_now
from worker.app import app
from worker.runtime import plans, settings, store, takes_stitches

log = logging.getLogger(__name__)
LIMIT = settings().tile_time_limit


def ask_for_stitch(job_id: str) -> None:
    """Queue the job's stitch (a repeat is harmless: ``success`` is final)."""
    app.send_task(
        STITCH_TASK, args=(job_id,), queue=settings().stitch_queue, task_id=stitch_task_id(job_id)
    )


def _refused(error: redis.ResponseError, what: str) -> None:
    """Give the message back when Redis still refuses writes for a passing reason after
    :data:`~common.cluster.jobs.WRITE_RETRY_SECONDS` of retries (nothing was changed: see
    :func:`~common.cluster.store.refused_for_now`); else return."""
    if refused_for_now(error):
        log.warning("%s: Redis still refuses writes (%s); requeued", what, error)
        raise Reject(f"Redis refuses writes: {error}", requeue=True) from error


@app.task(name=TILE_TASK, bind=True, soft_time_limit=LIMIT * 0.9, time_limit=LIMIT)
def upscale_tiles(self: Any, job_id: str, group: int) -> None:
    """Infer group ``group`` of job ``job_id``; a failure ends the job, never the worker."""
    try:
        stitch_here = takes_stitches()
        if jobs.while_refused(
            lambda: jobs.run_group(
                store(),
                settings(),
                job_id,
                group,
                self.request.hostname,
                plans,
                stitch_here=stitch_here,
            )
        ):
            jobs.while_refused(lambda: ask_for_stitch(job_id))
    except (redis.ConnectionError, redis.TimeoutError, BlobUnavailable) as error:
        # Redis (or the blob store) is restarting: the job is not at fault; give the message
        # back (or, if even that fails, the broker restores it after the visibility timeout)
        raise Reject(f"store unavailable: {error}", requeue=True) from error
    except SoftTimeLimitExceeded:
        store().fail(job_id, "tile_timeout", f"tile group {group} ran past {LIMIT * 0.9:.0f} s")
    except redis.ResponseError as error:
        _refused(error, f"tile group {group} of job {job_id}")
        log.exception("tile group %s of job %s failed", group, job_id)
        store().fail(job_id, "internal", f"tile group {group} failed: {error}")
    except Exception as error:  # a failed tile must end its job, not leave it waiting
        log.exception("tile group %s of job %s failed", group, job_id)
        store().fail(
            job_id, "internal", f"tile group {group} failed: {type(error).__name__}: {error}"
        )


@app.task(name=STITCH_TASK, bind=True, max_retries=None)
def stitch(self: Any, job_id: str) -> None:
    """Assemble the job's result, or retry while a redelivered tile finishes."""
    try:
        jobs.while_refused(lambda: jobs.stitch(store(), settings(), job_id))
    except jobs.TilesPending:
        raise self.retry(countdown=1) from None
    except (redis.ConnectionError, redis.TimeoutError, BlobUnavailable) as error:
        raise Reject(f"store unavailable: {error}", requeue=True) from error
    except redis.ResponseError as error:
        _refused(error, f"the stitch of job {job_id}")
        log.exception("stitch of job %s failed", job_id)
        store().fail(job_id, "internal", f"stitching failed: {error}")
    except Exception as error:
        log.exception("stitch of job %s failed", job_id)
        store().fail(job_id, "internal", f"stitching failed: {type(error).__name__}: {error}")
