"""``GET /metrics``: the cluster's state in Prometheus' text format, read from Redis per scrape.

A custom collector, not module-level metrics mutated by requests: the work
happens in worker processes on other hosts, and gunicorn runs several API
processes, so each scrape reads the counters every process writes into Redis
(:mod:`common.cluster.stats`), the broker's queue lists and the workers'
heartbeats, in two round trips (:meth:`~common.cluster.store.JobStore.metrics`).
Any API process gives the same answer. The route takes the API's token, like
every other route (Prometheus sends it as ``Authorization: Bearer``).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import cast

from flask import Blueprint, Response, current_app
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from api.auth import token_required
from api.services import Services
from common.cluster.stats import Histogram, Snapshot
from common.cluster.store import JobStore

bp = Blueprint("metrics", __name__)


class StoreCollector(Collector):
    """Every srcluster metric, from one :meth:`JobStore.metrics` snapshot per scrape."""

    def __init__(self, store: JobStore, queues: list[str]) -> None:
        self.store = store
        self.queues = queues

    def collect(self) -> Iterator[Metric]:
        yield from families(self.store.metrics(self.queues))


def _histogram(name: str, documentation: str, by_model: dict[str, Histogram]) -> Metric:
    family = HistogramMetricFamily(name, documentation, labels=["model"], unit="seconds")
    for model, histogram in sorted(by_model.items()):
        buckets = [(floatToGoString(bound), count) for bound, count in histogram.buckets]
        family.add_metric([model], buckets, histogram.sum)
    return family


def families(snapshot: Snapshot) -> Iterator[Metric]:
    """The metric families of one snapshot (names: README, "Metrics")."""
    jobs = CounterMetricFamily(
        "srcluster_jobs",
        "Jobs that entered each status (pending: submitted; success, failed, cancelled: ended)",
        labels=["status"],
    )
    for status, count in snapshot.jobs_entered.items():
        jobs.add_metric([status], count)
    yield jobs
    unfinished = GaugeMetricFamily(
        "srcluster_jobs_unfinished", "Jobs pending or processing now", labels=["status"]
    )
    for status, count in snapshot.jobs_unfinished.items():
        unfinished.add_metric([status], count)
    yield unfinished
    tiles = CounterMetricFamily(
        "srcluster_tiles", "Tiles (parts) done, each counted once", labels=["model"]
    )
    for model, count in sorted(snapshot.tiles.items()):
        tiles.add_metric([model], count)
    yield tiles
    yield _histogram(
        "srcluster_tile_seconds",
        "Worker seconds per tile: inference and crop, a batch's time shared among its tiles",
        snapshot.tile_seconds,
    )
    yield _histogram(
        "srcluster_job_seconds",
        "Seconds from a job's submission to its success",
        snapshot.job_seconds,
    )
    queue = GaugeMetricFamily(
        "srcluster_queue_length",
        "Celery messages waiting in the broker, per queue (not yet taken by a worker)",
        labels=["queue"],
    )
    for name, depth in snapshot.queues.items():
        queue.add_metric([name], depth)
    yield queue
    yield GaugeMetricFamily(
        "srcluster_tasks_unacked",
        "Celery messages taken by a worker and not yet acknowledged (running or reserved)",
        value=snapshot.unacked,
    )
    yield GaugeMetricFamily(
        "srcluster_workers_up", "Workers whose heartbeat is current", value=len(snapshot.workers)
    )
    processes = GaugeMetricFamily(
        "srcluster_worker_tile_processes",
        "Tile processes of each worker that is up (0: it only stitches)",
        labels=["worker"],
    )
    for worker, count in sorted(snapshot.workers.items()):
        processes.add_metric([worker], count)
    yield processes
    engines = InfoMetricFamily(
        "srcluster_worker_engine",
        "The engine each worker that is up runs each model with",
        labels=["worker", "model"],
    )
    for worker, model, engine in snapshot.engines:
        engines.add_metric([worker, model], {"engine": engine})
    yield engines


@bp.get("/metrics")
@token_required
def metrics() -> Response:
    svc = cast(Services, current_app.extensions["srcluster"])
    registry = CollectorRegistry(auto_describe=False)
    registry.register(
        StoreCollector(svc.store, [svc.settings.tile_queue, svc.settings.stitch_queue])
    )
    # a Redis error here is a 503 like on every route (api.errors)
    return Response(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)
