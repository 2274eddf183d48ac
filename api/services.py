"""What the routes use, built once per app by :func:`api.create_app`."""

from __future__ import annotations

from dataclasses import dataclass

from api.auth import TokenTable
from api.celery_client import TaskSender
from api.waiting import Waits
from common.cluster.models import ClusterModels
from common.cluster.store import JobStore
from common.models import Registry
from common.settings import Settings


@dataclass
class Services:
    """What the routes use, built once per app (``app.extensions["srcluster"]``)."""

    settings: Settings
    tokens: TokenTable
    admins: TokenTable
    """The admin tokens (``SRCLUSTER_ADMIN_TOKENS``): adding and deleting cluster models."""
    store: JobStore
    registry: Registry
    """Built-ins, the cluster's models (:attr:`models`) and this host's."""
    models: ClusterModels
    sender: TaskSender
    version: str
    waits: Waits
    """Slots for requests holding on ``Prefer: wait`` (see :mod:`api.waiting`)."""

    def close(self) -> None:
        """Release the Redis and broker connections (tests; gunicorn just exits)."""
        self.sender.close()
        self.store.close()
