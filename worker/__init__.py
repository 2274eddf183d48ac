"""srcluster's Celery worker: ``celery -A worker worker`` (from the repo root or once installed).

Set ``SRCLUSTER_REDIS_URL`` to the cluster's Redis. ``-Q tiles`` makes a host
that only infers (a GPU host); without ``-Q`` a worker takes tiles and stitches.
"""

from worker.app import app

__all__ = ["app"]
