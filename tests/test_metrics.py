"""``GET /metrics`` against a real cluster: real Redis, the API under gunicorn, real workers.

The module has its own Redis, so its queue depths and counters are its own
jobs' alone: a queued job shows in the tile queue while no worker runs, and
the queue is empty once one has.
"""

from __future__ import annotations

import dataclasses
import math
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import requests
from celery import Celery
from kombu.transport import redis as kombu_redis
from prometheus_client.parser import text_string_to_metric_families

from common.cluster import stats
from common.cluster.embedded import EmbeddedRedis
from common.cluster.protocol import (
    BROKER_PRIORITY_SEP,
    BROKER_PRIORITY_STEPS,
    BROKER_UNACKED,
    TILE_TASK,
    broker_lists,
    celery_config,
)
from common.cluster.store import JobStatus, JobStore
from common.imageio import encode
from common.settings import Settings
from srcluster.client import Client
from tests.cluster import ApiServer, WorkerProcess, new_job, wait_for
from tests.test_deploy import dashboard_metric_names
from tests.tokens import ALICE

pytestmark = pytest.mark.cluster
COMPACT = "realesr-animevideov3"

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


# --- fixtures -------------------------------------------------------------------


@pytest.fixture(scope="module")
def metrics_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRedis]:
    server = EmbeddedRedis(tmp_path_factory.mktemp("metrics-redis")).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def metrics_settings(cluster_settings: Settings, metrics_redis: EmbeddedRedis) -> Settings:
    return dataclasses.replace(cluster_settings, redis_url=metrics_redis.url)


@pytest.fixture(scope="module")
def metrics_api(
    metrics_settings: Settings, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ApiServer]:
    server = ApiServer(metrics_settings, tmp_path_factory.mktemp("metrics-api")).wait_ready()
    yield server
    server.stop()


@pytest.fixture
def store(metrics_settings: Settings) -> Iterator[JobStore]:
    store = JobStore.from_url(metrics_settings.redis_url, 60)
    yield store
    store.close()


@pytest.fixture
def start_worker(
    metrics_settings: Settings, tmp_path: Path
) -> Iterator[Callable[[], WorkerProcess]]:
    """No worker runs until a test calls this: until then its jobs wait in the queue."""
    started: list[WorkerProcess] = []

    def start() -> WorkerProcess:
        process = WorkerProcess(metrics_settings, "metrics", tmp_path).wait_ready()
        started.append(process)
        return process

    yield start
    for process in started:
        process.stop()


def scrape(api: ApiServer, headers: dict[str, str] | None = None) -> Samples:
    """``GET /metrics`` parsed by prometheus_client's own parser: (sample name, labels) -> value."""
    reply = requests.get(
        api.url + "/metrics", headers=headers or {"Authorization": f"Bearer {ALICE}"}, timeout=30
    )
    assert reply.status_code == 200, reply.text[:300]
    assert reply.headers["Content-Type"].startswith("text/plain")
    samples: Samples = {}
    for family in text_string_to_metric_families(reply.text):
        for sample in family.samples:
            samples[sample.name, frozenset(sample.labels.items())] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[name, frozenset(labels.items())]


def image(width: int = 96, height: int = 64) -> bytes:
    pixels = np.random.default_rng(1).integers(0, 255, size=(height, width, 3), dtype=np.uint8)
    return encode(pixels, "png")


# --- the naming we rely on ----------------------------------------------------------


def test_broker_key_names_are_kombus() -> None:
    """Queue depth is LLEN of the lists kombu's Redis transport really uses."""
    assert kombu_redis.Channel.sep == BROKER_PRIORITY_SEP
    assert tuple(kombu_redis.PRIORITY_STEPS) == BROKER_PRIORITY_STEPS
    assert kombu_redis.Channel.unacked_key == BROKER_UNACKED
    assert broker_lists("tiles")[0] == "tiles"


def test_histograms_are_cumulative_whatever_the_bounds() -> None:
    assert stats.bucket_of(0.05, stats.TILE_BUCKETS) == "0.05"
    assert stats.bucket_of(0.051, stats.TILE_BUCKETS) == "0.1"
    assert stats.bucket_of(1e6, stats.TILE_BUCKETS) == "+Inf"
    raw = {
        "jobs:success": "2",
        "tiles:m": "4",
        "tile_seconds:m:0.1": "1",
        "tile_seconds:m:1": "2",
        "tile_seconds:m:0.7": "1",  # a bound no longer among TILE_BUCKETS
        "tile_seconds:m:sum": "2.5",
    }
    jobs, tiles, tile_seconds, job_seconds = stats.parse(raw, [s.value for s in JobStatus])
    assert jobs == {"pending": 0, "processing": 0, "success": 2, "failed": 0, "cancelled": 0}
    assert tiles == {"m": 4} and job_seconds == {}
    histogram = tile_seconds["m"]
    counts = dict(histogram.buckets)
    assert counts[0.05] == 0 and counts[0.1] == 1 and counts[0.7] == 2 and counts[1.0] == 4
    assert histogram.count == 4 and counts[math.inf] == 4 and histogram.sum == 2.5
    assert [c for _, c in histogram.buckets] == sorted(c for _, c in histogram.buckets)


# --- the store's counters --------------------------------------------------------------


def test_each_part_and_status_counts_once(store: JobStore) -> None:
    before = store.metrics([])
    job_id = new_job(store, parts=2)
    store.start(job_id)
    store.start(job_id)  # already processing: no second count
    store.record_outputs(job_id, [(0, b"a"), (1, b"b")], "w", model="m", seconds=[0.2, 3.0])
    store.record_outputs(job_id, [(1, b"b")], "w", model="m", seconds=[9.0])  # a redelivery
    assert store.succeed(job_id, b"image", {})
    assert not store.succeed(job_id, b"image", {})
    assert not store.fail(job_id, "late", "too late")
    after = store.metrics([])

    def grew(name: str) -> int:
        return after.jobs_entered[name] - before.jobs_entered[name]

    assert {s.value: grew(s.value) for s in JobStatus} == {
        "pending": 1,
        "processing": 1,
        "success": 1,
        "failed": 0,
        "cancelled": 0,
    }
    old = before.tile_seconds.get("m")
    tiles = after.tile_seconds["m"]
    assert after.tiles["m"] - before.tiles.get("m", 0) == 2
    assert tiles.count - (old.count if old else 0) == 2
    assert tiles.sum - (old.sum if old else 0) == pytest.approx(3.2)
    assert (
        after.job_seconds["m"].count
        - (before.job_seconds["m"].count if "m" in before.job_seconds else 0)
        == 1
    )


# --- through the API -------------------------------------------------------------------


def test_metrics_take_the_token(metrics_api: ApiServer) -> None:
    reply = requests.get(metrics_api.url + "/metrics", timeout=30)
    assert reply.status_code == 401 and reply.json()["code"] == "unauthorized"
    reply = requests.get(
        metrics_api.url + "/metrics", headers={"Authorization": "Bearer not-a-token"}, timeout=30
    )
    assert reply.status_code == 401
    assert ("srcluster_workers_up", frozenset()) in scrape(metrics_api, {"X-Token": ALICE})


def test_queue_depth_rises_while_queued_and_falls_after_a_worker_ran_it(
    metrics_api: ApiServer, store: JobStore, start_worker: Callable[[], WorkerProcess]
) -> None:
    before = scrape(metrics_api)
    job_id = Client(metrics_api.url, ALICE).submit(image(), model=COMPACT, tile_size=32)
    record = store.get(job_id)
    assert record is not None and record.parts > 1
    queued = scrape(metrics_api)
    tiles = ("srcluster_queue_length", {"queue": "tiles"})
    assert value(queued, tiles[0], **tiles[1]) - value(before, tiles[0], **tiles[1]) == (
        record.groups
    )
    assert value(queued, "srcluster_jobs_unfinished", status="pending") >= 1

    worker = start_worker()
    assert Client(metrics_api.url, ALICE).wait(job_id, 120)["status"] == "success"
    done = scrape(metrics_api)
    assert value(done, tiles[0], **tiles[1]) == 0
    assert value(done, "srcluster_queue_length", queue="stitch") == 0

    def grew(name: str, **labels: str) -> float:
        key = (name, frozenset(labels.items()))
        return done[key] - before.get(key, 0.0)

    assert grew("srcluster_jobs_total", status="pending") == 1
    assert grew("srcluster_jobs_total", status="processing") == 1
    assert grew("srcluster_jobs_total", status="success") == 1
    assert grew("srcluster_jobs_total", status="failed") == 0
    assert value(done, "srcluster_jobs_unfinished", status="processing") == 0
    assert grew("srcluster_tiles_total", model=COMPACT) == record.parts
    assert grew("srcluster_tile_seconds_count", model=COMPACT) == record.parts
    assert grew("srcluster_tile_seconds_bucket", model=COMPACT, le="+Inf") == record.parts
    assert grew("srcluster_tile_seconds_sum", model=COMPACT) > 0
    assert grew("srcluster_job_seconds_count", model=COMPACT) == 1
    final = store.get(job_id)
    assert final is not None and final.finished is not None
    assert grew("srcluster_job_seconds_sum", model=COMPACT) == pytest.approx(
        final.finished - final.created, abs=0.01
    )
    assert value(done, "srcluster_workers_up") == 1
    assert value(done, "srcluster_worker_tile_processes", worker=worker.hostname) == 1
    engines = [
        dict(labels)
        for name, labels in done
        if name == "srcluster_worker_engine_info" and dict(labels)["worker"] == worker.hostname
    ]
    assert [e["model"] for e in engines] == [COMPACT] and engines[0]["engine"]
    # the stitch is acknowledged just after it ends the job
    wait_for(lambda: value(scrape(metrics_api), "srcluster_tasks_unacked") == 0, 30, "the acks")

    # the dashboard asks only for series this endpoint exports
    exported = {name for name, _ in done}
    asked = dashboard_metric_names()
    assert asked and asked <= exported, asked - exported


def test_a_cancelled_job_counts_and_its_messages_drain(
    metrics_api: ApiServer, store: JobStore, start_worker: Callable[[], WorkerProcess]
) -> None:
    before = scrape(metrics_api)
    client = Client(metrics_api.url, ALICE)
    job_id = client.submit(image(64, 64), model=COMPACT, tile_size=32)
    assert client.cancel(job_id)["status"] == "cancelled"
    cancelled = scrape(metrics_api)
    grew = value(cancelled, "srcluster_jobs_total", status="cancelled") - value(
        before, "srcluster_jobs_total", status="cancelled"
    )
    assert grew == 1
    assert value(cancelled, "srcluster_jobs_unfinished", status="pending") == value(
        before, "srcluster_jobs_unfinished", status="pending"
    )
    # a revoke reaches only workers that are up: the messages wait until one drops them
    assert value(cancelled, "srcluster_queue_length", queue="tiles") > 0
    start_worker()
    wait_for(
        lambda: value(scrape(metrics_api), "srcluster_queue_length", queue="tiles") == 0,
        60,
        "the cancelled job's messages to drain",
    )
    assert store.status(job_id) is JobStatus.CANCELLED


def test_a_message_sent_with_a_priority_is_counted(
    metrics_settings: Settings, store: JobStore
) -> None:
    queue = f"prio-{uuid.uuid4().hex[:8]}"  # no worker consumes it
    app = Celery("metrics-test", broker=metrics_settings.redis_url, set_as_current=False)
    app.conf.update(celery_config(metrics_settings))
    try:
        app.send_task(TILE_TASK, args=("0" * 32, 0), queue=queue)
        app.send_task(TILE_TASK, args=("0" * 32, 0), queue=queue, priority=9)
        assert store.metrics([queue]).queues == {queue: 2}
        assert store.redis.llen(f"{queue}{BROKER_PRIORITY_SEP}9") == 1, "kombu's naming changed"
    finally:
        store.redis.delete(*broker_lists(queue))
        app.close()
