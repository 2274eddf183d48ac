"""The Celery app: broker, serialization and reliability settings, read from ``SRCLUSTER_*``."""

from __future__ import annotations

import sys

from celery import Celery
from kombu.entity import Queue

from common.errors import ConfigError
from common.settings import Settings


def make_app(settings: Settings) -> Celery:
    """A Celery app for ``settings``; tasks are registered by :mod:`worker.tasks`."""
    if not settings.redis_url:
        raise ConfigError("SRCLUSTER_REDIS_URL is not set: a worker needs the cluster's Redis")
    app = Celery("srcluster", broker=settings.redis_url, backend=settings.redis_url)
    transport = {"visibility_timeout": settings.visibility_timeout}
    app.conf.update(
        # image data never travels in messages, only keys; and pickle is never accepted
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        result_accept_content=["json"],
        # a task is acknowledged only once done, and requeued if its process dies
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        broker_transport_options=transport,
        result_backend_transport_options=transport,
        broker_connection_retry_on_startup=True,
        result_expires=settings.result_ttl,
        task_queues=[Queue(settings.tile_queue), Queue(settings.stitch_queue)],
        task_default_queue=settings.tile_queue,
        task_routes={
            "srcluster.upscale_tile": {"queue": settings.tile_queue},
            "srcluster.stitch": {"queue": settings.stitch_queue},
        },
        worker_send_task_events=True,
        task_send_sent_event=True,
        worker_hijack_root_logger=False,
    )
    app.conf.srcluster_settings = settings
    return app


try:
    app = make_app(Settings.from_env())
except ConfigError as error:
    sys.exit(f"srcluster worker: {error.message}")

import worker.runtime  # noqa: E402  (signals)
import worker.tasks  # noqa: E402,F401  (registers the tasks on app)
