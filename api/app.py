"""The app factory: settings in, Flask app out, nothing done at import time."""

from __future__ import annotations

from importlib import metadata

from flask import Flask

from api import compat, cors, errors, metrics, models, routes, ui
from api.auth import TokenTable
from api.celery_client import TaskSender
from api.services import Services
from api.waiting import Waits
from common.cluster.models import ClusterModels
from common.cluster.store import JobStore
from common.errors import ConfigError
from common.models import Registry
from common.settings import Settings

MULTIPART_OVERHEAD = 64 * 1024
"""Bytes allowed above ``max_bytes`` for the multipart envelope and the form fields."""

REDIS_CONNECT_TIMEOUT = 5.0
"""Seconds to wait for a Redis connection (so ``/healthz`` answers 503 rather than hanging)."""


def _version() -> str:
    try:
        return metadata.version("srcluster")
    except metadata.PackageNotFoundError:
        return "0+unknown"


def create_app(settings: Settings | None = None) -> Flask:
    """Build the API for ``settings`` (default: :meth:`Settings.from_env`).

    Raises:
        ConfigError: no token is configured (``SRCLUSTER_TOKENS``) or no Redis
            (``SRCLUSTER_REDIS_URL``), or a setting is malformed.
    """
    settings = Settings.from_env() if settings is None else settings
    tokens = TokenTable(settings.token_names())
    if not tokens:
        raise ConfigError(
            "SRCLUSTER_TOKENS is empty: the API needs at least one name:token pair "
            "(tokens of 16+ characters)"
        )
    if not settings.redis_url:
        raise ConfigError("SRCLUSTER_REDIS_URL is empty: the API needs the cluster's Redis")

    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_bytes + MULTIPART_OVERHEAD
    app.config["SRCLUSTER_MAX_BYTES"] = settings.max_bytes
    app.json.sort_keys = False  # type: ignore[attr-defined]
    store = JobStore.from_settings(settings, connect_timeout=REDIS_CONNECT_TIMEOUT)
    shared = ClusterModels.from_store(store)
    app.extensions["srcluster"] = Services(
        settings=settings,
        tokens=tokens,
        admins=TokenTable(settings.admin_token_names()),
        store=store,
        registry=Registry(settings, cluster=shared),
        models=shared,
        sender=TaskSender(settings),
        version=_version(),
        waits=Waits(settings.wait_slots),
    )
    errors.register(app, compat.STATUSES if compat.enabled(settings) else None)
    cors.register(app, settings.cors_origin_list())
    app.register_blueprint(routes.bp)
    app.register_blueprint(metrics.bp)
    app.register_blueprint(models.bp)
    ui.register(app)
    return app
