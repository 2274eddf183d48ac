"""The command lines of the cluster's processes, written once.

``srcluster up`` and the test suite start the same processes with the same
arguments, so a test that passes also vouches for what ``up`` runs.
"""

from __future__ import annotations

import sys

API_WORKERS = 2
"""gunicorn worker processes of the API."""

API_THREADS = 8
"""Threads per API process (uploads wait on Redis and the network, not the CPU). Twice the
default ``SRCLUSTER_WAIT_SLOTS``: requests held by ``Prefer: wait`` never take them all."""

API_TIMEOUT = 120
"""Seconds gunicorn lets one request run (large uploads, ``url`` fetches)."""


def worker_command(
    hostname: str,
    concurrency: int = 1,
    *,
    queues: str | None = None,
    loglevel: str = "INFO",
    quiet: bool = False,
) -> list[str]:
    """``celery -A worker worker`` with a prefork pool of ``concurrency`` processes.

    ``quiet`` turns off gossip and mingle (peer chatter a test cluster does not need).
    """
    args = [
        sys.executable, "-m", "celery", "-A", "worker", "worker",
        "--pool", "prefork", "--concurrency", str(concurrency),
        "--hostname", hostname, "--loglevel", loglevel,
    ]  # fmt: skip
    if quiet:
        args += ["--without-gossip", "--without-mingle"]
    if queues:
        args += ["--queues", queues]
    return args


def api_command(host: str, port: int, workers: int = API_WORKERS) -> list[str]:
    """The API under gunicorn, as deployed (``api:create_app()`` reads ``SRCLUSTER_*``)."""
    return [
        sys.executable, "-m", "gunicorn", "--bind", f"{host}:{port}",
        "--workers", str(workers), "--threads", str(API_THREADS),
        "--timeout", str(API_TIMEOUT), "api:create_app()",
    ]  # fmt: skip


def flower_command(host: str, port: int) -> list[str]:
    """Flower on the cluster's broker; its password goes in ``FLOWER_BASIC_AUTH``, never here."""
    return [sys.executable, "-m", "celery", "-A", "worker", "flower",
            f"--port={port}", f"--address={host}"]  # fmt: skip
