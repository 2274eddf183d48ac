"""The Celery app: broker, serialization and reliability settings, read from ``SRCLUSTER_*``.

Imports run one way, as in Celery's own examples: :mod:`worker.runtime` and
:mod:`worker.tasks` import ``app`` from here, and Celery imports them
(``include=``) when a worker starts. Nothing here imports them back.
"""

from __future__ import annotations

import sys

from celery import Celery
from kombu.entity import Queue

from common.cluster.protocol import celery_config
from common.errors import ConfigError
from common.settings import Settings

TASK_MODULES = ["worker.runtime", "worker.tasks"]
"""Imported by every worker at start: the per-process signals, then the two tasks."""


def make_app(settings: Settings) -> Celery:
    """A Celery app for ``settings``; a worker of it registers :data:`TASK_MODULES`.

    Raises:
        ConfigError: no Redis is configured.
    """
    if not settings.redis_url:
        raise ConfigError("SRCLUSTER_REDIS_URL is not set: a worker needs the cluster's Redis")
    app = Celery(
        "srcluster", broker=settings.redis_url, backend=settings.redis_url, include=TASK_MODULES
    )
    app.conf.update(celery_config(settings))
    # Redis refusing writes for a while makes the consumer reconnect, not exit (worker.broker)
    app.conf.broker_transport = "worker.broker:Transport"
    app.conf.update(
        # a task is acknowledged only once done, and requeued if its process dies
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_queues=[Queue(settings.tile_queue), Queue(settings.stitch_queue)],
        worker_send_task_events=True,
        task_send_sent_event=True,
        worker_hijack_root_logger=False,
    )
    return app


try:
    settings = Settings.from_env()
    """This worker's settings as configured (threads not yet resolved: see :mod:`worker.runtime`)."""
    app = make_app(settings)
except ConfigError as error:
    sys.exit(f"srcluster worker: {error.message}")
