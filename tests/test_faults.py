"""Faults survived, nothing lost: real SIGKILLs, a real Redis restart, real lost messages.

The module has its own Redis and API (the session's cluster must not see these
kills) and a short visibility timeout, so a message held by a dead worker comes
back within seconds instead of the production default. The killed-worker tests
also run with the bytes in a blob folder and in S3 (``fault_blobs``). The tests
of :mod:`common.cluster.recovery` start their workers with the production
defaults instead (:data:`DEFAULT_RECOVERY`: visibility timeout, heartbeat,
janitor interval and stall threshold), to show that recovery needs no tuning.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis

from common.cluster.embedded import EmbeddedRedis
from common.cluster.store import JobStore
from common.imageio import decode, encode
from common.params import parse_params
from common.pipeline import upscale_bytes
from common.settings import Settings
from srcluster.client import Client
from tests.cluster import ApiServer, WorkerProcess, wait_for
from tests.conftest import blob_settings
from tests.tokens import ALICE

pytestmark = [pytest.mark.cluster, pytest.mark.slow]
_DEFAULTS = Settings()
DEFAULT_RECOVERY = {
    name: getattr(_DEFAULTS, name)
    for name in ("visibility_timeout", "janitor_interval", "heartbeat_ttl", "stall_after")
}
"""What a worker's recovery depends on, at the production defaults (1200, 10, 15, 60 s)."""
COMPACT = "realesr-animevideov3"
TILE = 256  # ~0.5 s a tile on this CPU: long enough to be caught mid-tile


@pytest.fixture(scope="module")
def fault_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRedis]:
    server = EmbeddedRedis(tmp_path_factory.mktemp("fault-redis")).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def fault_blobs(request: pytest.FixtureRequest) -> str:
    """Where the module's jobs keep their bytes: Redis unless a test asks for a blob store."""
    return getattr(request, "param", "redis")


@pytest.fixture(scope="module")
def fault_settings(
    cluster_settings: Settings,
    fault_redis: EmbeddedRedis,
    fault_blobs: str,
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
) -> Settings:
    base = dataclasses.replace(
        cluster_settings,
        redis_url=fault_redis.url,
        visibility_timeout=6,
        max_deliveries=3,
        threads=2,
        # these tests need jobs that run past their timeout, which the estimate would refuse
        estimate_check=False,
    )
    # its own Redis already: keep database 0 (the Redis restart test counts on it)
    folder = tmp_path_factory.mktemp(f"fault-{fault_blobs}")
    moved = blob_settings(fault_blobs, base, request, folder, db=0)
    return dataclasses.replace(moved, redis_url=base.redis_url)


@pytest.fixture(scope="module")
def fault_api(
    fault_settings: Settings, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ApiServer]:
    server = ApiServer(fault_settings, tmp_path_factory.mktemp("fault-api")).wait_ready()
    yield server
    server.stop()


@pytest.fixture
def start_worker(fault_settings: Settings, tmp_path: Path) -> Iterator[Any]:
    started: list[WorkerProcess] = []

    def start(name: str, queues: str | None = None, **changes: Any) -> WorkerProcess:
        settings = dataclasses.replace(fault_settings, **changes)
        process = WorkerProcess(settings, name, tmp_path, queues=queues).wait_ready()
        started.append(process)
        return process

    yield start
    for process in started:
        process.stop()


@pytest.fixture
def store(fault_settings: Settings) -> JobStore:
    return JobStore.from_settings(dataclasses.replace(fault_settings, result_ttl=60))


def image(width: int = 768, height: int = 512, seed: int = 0) -> bytes:
    photo = np.random.default_rng(seed).integers(
        0, 255, size=(height // 8, width // 8, 3), dtype=np.uint8
    )
    return encode(np.kron(photo, np.ones((8, 8, 1), np.uint8)), "png")


def submit(api: ApiServer, data: bytes, **fields: Any) -> str:
    return Client(api.url, ALICE).submit(data, **{"model": COMPACT, "tile_size": TILE, **fields})


def final(store: JobStore, job_id: str, timeout: float = 120) -> Any:
    def ended() -> Any:
        record = store.get(job_id)
        return record if record is not None and record.status.finished else None

    return wait_for(ended, timeout, f"job {job_id} to end", interval=0.1)


def in_flight(store: JobStore, job_id: str) -> int | None:
    """A task that has started (its delivery was counted) and not finished, if any."""
    started = {int(k) for k in store.redis.hkeys(store.key(job_id, "deliveries"))}
    done = {int(v) for v in store.redis.smembers(store.key(job_id, "done"))}
    running = started - done
    return min(running) if running else None


def assert_identical_and_stitched_once(
    api: ApiServer, store: JobStore, job_id: str, data: bytes, settings: Settings
) -> None:
    record = final(store, job_id)
    assert record.status.value == "success", record
    downloaded = Client(api.url, ALICE).download(job_id)
    expected, _ = upscale_bytes(data, parse_params(model=COMPACT, tile_size=TILE), settings)
    np.testing.assert_array_equal(
        decode(downloaded, 1 << 30).pixels, decode(expected, 1 << 30).pixels
    )
    assert store.get(job_id).stitches == 1  # type: ignore[union-attr]
    if store.blobs is not None:  # the dead process's blobs went with the others
        assert store.blobs.names(job_id) == ["result"]


@pytest.mark.parametrize("fault_blobs", ["redis", "file", "s3"], indirect=True)
def test_pool_child_killed_mid_tile(fault_api, fault_settings, store, start_worker) -> None:
    worker = start_worker("child")
    data = image()
    job_id = submit(fault_api, data)
    task = wait_for(lambda: in_flight(store, job_id), 60, "a tile in flight")
    for child in worker.children():
        os.kill(child, signal.SIGKILL)
    assert_identical_and_stitched_once(fault_api, store, job_id, data, fault_settings)
    assert int(store.redis.hget(store.key(job_id, "deliveries"), str(task))) >= 2, (
        "the tile was re-run"
    )


@pytest.mark.parametrize("fault_blobs", ["redis", "file"], indirect=True)
def test_whole_worker_killed_mid_image(fault_api, fault_settings, store, start_worker) -> None:
    doomed = start_worker("doomed")
    survivor = start_worker("survivor")
    data = image(seed=1)
    job_id = submit(fault_api, data)
    wait_for(
        lambda: in_flight(store, job_id) is not None and store.get(job_id).done >= 1,
        60,
        "work under way",
    )
    doomed.kill()
    assert_identical_and_stitched_once(fault_api, store, job_id, data, fault_settings)
    assert survivor.process.poll() is None


def test_redis_restart_with_jobs_queued(
    fault_api, fault_redis, fault_settings, store, start_worker
) -> None:
    start_worker("steady")
    jobs = [submit(fault_api, image(384, 256, seed=s)) for s in range(3)]
    fault_redis.stop()  # SIGTERM: Redis writes its AOF and exits
    time.sleep(2)
    fault_redis.start()
    for job_id in jobs:
        assert final(store, job_id, timeout=180).status.value == "success"


def test_poison_tile_fails_its_job_and_blocks_nothing(
    fault_api, fault_settings, store, start_worker
) -> None:
    start_worker("poisoned")
    start_worker("bystander")
    poison_job = submit(fault_api, image(seed=2))
    poison_task = 0
    stop = threading.Event()

    def kill_whoever_runs_it() -> None:
        """Plays a tile that crashes its process: each time task 0 starts, its process dies."""
        seen = 0
        while not stop.is_set():
            count = int(
                store.redis.hget(store.key(poison_job, "deliveries"), str(poison_task)) or 0
            )
            if count > seen:
                seen = count
                runner = store.runner_of(poison_job, poison_task)
                if runner is not None and count <= fault_settings.max_deliveries:
                    os.kill(int(runner.rsplit(":", 1)[1]), signal.SIGKILL)
            time.sleep(0.005)

    killer = threading.Thread(target=kill_whoever_runs_it, daemon=True)
    killer.start()
    try:
        other = submit(fault_api, image(384, 256, seed=3))
        record = final(store, poison_job, timeout=180)
        assert record.status.value == "failed", record
        assert record.error_code == "poison_tile" and "tile 0" in (record.error or "")
        assert final(store, other, timeout=120).status.value == "success"
    finally:
        stop.set()
        killer.join()
    deliveries = int(store.redis.hget(store.key(poison_job, "deliveries"), str(poison_task)))
    assert deliveries == fault_settings.max_deliveries + 1, "bounded, not a loop"


def test_job_past_its_timeout_fails_and_drops_its_tiles(fault_api, store, start_worker) -> None:
    start_worker("slow", threads=1)
    job_id = submit(fault_api, image(2048, 1024, seed=4), timeout=2)
    record = final(store, job_id, timeout=60)
    assert record.status.value == "failed" and record.error_code == "timeout"
    assert record.done < record.parts
    time.sleep(2)
    assert not list(store.redis.scan_iter(match=store.key(job_id, "in", "*")))
    assert store.get(job_id).done == record.done, "the remaining tiles were dropped"


def test_lost_tile_message_is_requeued_before_the_deadline(
    fault_api, fault_settings, store, start_worker
) -> None:
    """A tile task's message is lost before any worker sees it: its parts never start.
    Once the job's progress has stalled past the threshold (60 s by default) with no
    live worker holding those parts and no queue carrying them, a janitor sends them
    again, long before the job's 600 s deadline."""
    client = redis.Redis.from_url(fault_settings.redis_url)
    data = image(512, 256, seed=5)
    job_id = submit(fault_api, data)
    queued = client.lrange(fault_settings.tile_queue, 0, -1)
    lost = next(m for m in queued if json.loads(m)["headers"]["id"] == f"{job_id}-0")
    assert client.lrem(fault_settings.tile_queue, 1, lost) == 1
    worker = start_worker("janitor", **DEFAULT_RECOVERY)
    record = final(store, job_id, timeout=150)
    assert record.status.value == "success", record
    assert record.finished is not None and record.finished < record.created + 150
    assert_identical_and_stitched_once(fault_api, store, job_id, data, fault_settings)
    assert "(stalled)" in worker.log.read_text()


def test_whole_host_killed_recovered_at_default_timeouts(
    fault_api, fault_settings, store, start_worker
) -> None:
    """A whole worker host dies mid-tile while another is up, every timeout at its
    default: its tiles are re-queued when its heartbeat expires (about 15-20 s), not
    after the broker's 1200 s visibility timeout, and the job ends identical within
    60 s of the kill."""
    doomed = start_worker("doomed-default", **DEFAULT_RECOVERY)
    survivor = start_worker("survivor-default", **DEFAULT_RECOVERY)
    data = image(seed=7)
    job_id = submit(fault_api, data)

    def doomed_mid_tile() -> bool:
        part = in_flight(store, job_id)
        runner = None if part is None else store.runner_of(job_id, part)
        return runner is not None and runner.startswith(doomed.hostname + ":")

    wait_for(doomed_mid_tile, 60, "the doomed host mid-tile", interval=0.02)
    doomed.kill()
    killed = time.time()
    record = final(store, job_id, timeout=60)
    assert record.status.value == "success", record
    assert record.finished is not None and record.finished - killed < 60
    assert_identical_and_stitched_once(fault_api, store, job_id, data, fault_settings)
    assert "(dead worker)" in survivor.log.read_text()
    assert survivor.process.poll() is None


def test_redis_killed_mid_job_and_restarted_from_its_aof(
    fault_api, fault_redis, fault_settings, store, start_worker
) -> None:
    """Redis is SIGKILLed (no shutdown, no final AOF write) while tiles run, then started
    again from its AOF: every job still completes (what the last second lost is re-queued)."""
    start_worker("through-a-crash")
    jobs = [submit(fault_api, image(512, 256, seed=s)) for s in (10, 11)]
    wait_for(lambda: store.get(jobs[0]).done >= 1, 60, "work under way")  # type: ignore[union-attr]
    process = fault_redis.process
    assert process is not None
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    fault_redis.process = None
    time.sleep(2)
    fault_redis.start()
    for job_id in jobs:
        assert final(store, job_id, timeout=180).status.value == "success"


def test_stitch_killed_mid_way_completes(fault_api, fault_settings, store, start_worker) -> None:
    """The process stitching a job is SIGKILLed (as the OOM killer does): its task is
    delivered again and the job completes, stitched once."""
    worker = start_worker("stitch-victim")
    data = image(seed=8)
    job_id = submit(fault_api, data)
    wait_for(lambda: store.redis.hexists(store.key(job_id), "stitching"), 120, "the stitch", 0.01)
    for child in worker.children():
        os.kill(child, signal.SIGKILL)
    assert_identical_and_stitched_once(fault_api, store, job_id, data, fault_settings)
    assert int(store.redis.hget(store.key(job_id), "stitch_attempts")) == 2


def test_stitch_whose_result_cannot_be_stored_fails_once(
    fault_api, fault_settings, store, start_worker
) -> None:
    """A result over what one Redis value may hold (``proto-max-bulk-len``, lowered here
    to its 1 MiB minimum instead of making a 512 MiB image) fails the job once, with a
    clear code, instead of retrying as "Redis unavailable" until the deadline."""
    client = redis.Redis.from_url(fault_settings.redis_url)
    if store.blobs is not None:
        pytest.skip("results go to the blob store")
    client.config_set("proto-max-bulk-len", "1mb")
    try:
        start_worker("small-values")
        job_id = submit(fault_api, image(seed=9), tile_size=64)  # cores of 196 KB
        record = final(store, job_id, timeout=120)
    finally:
        client.config_set("proto-max-bulk-len", str(512 * 1024 * 1024))
    assert record.status.value == "failed" and record.error_code == "result_too_large", record
    assert "SRCLUSTER_BLOB_URL" in (record.error or "")
    assert int(client.hget(store.key(job_id), "stitch_attempts")) == 1


def test_redis_refusing_writes_for_8_s_fails_no_job(
    fault_api, fault_settings, store, start_worker
) -> None:
    """Redis refuses every write for 8 s (too few replicas: ``min-replicas-to-write``)
    while a job runs: the writes are retried, and the job completes identical."""
    client = redis.Redis.from_url(fault_settings.redis_url)
    start_worker("refused")
    data = image(seed=12)
    job_id = submit(fault_api, data)
    wait_for(lambda: store.get(job_id).done >= 1, 60, "work under way")  # type: ignore[union-attr]
    client.config_set("min-replicas-to-write", 1)
    try:
        time.sleep(8)
    finally:
        client.config_set("min-replicas-to-write", 0)
    assert_identical_and_stitched_once(fault_api, store, job_id, data, fault_settings)


def test_an_idle_worker_outlives_redis_refusing_writes(
    fault_api, fault_settings, store, start_worker
) -> None:
    """Redis refuses writes while a worker waits for work: its consumer's ``BRPOP`` (a pop,
    so a write) is refused; the worker reconnects instead of exiting (``worker.broker``),
    and takes the next job."""
    client = redis.Redis.from_url(fault_settings.redis_url)
    worker = start_worker("idle")
    client.config_set("min-replicas-to-write", 1)
    try:
        time.sleep(4)  # several of the consumer's 1 s BRPOPs
    finally:
        client.config_set("min-replicas-to-write", 0)
    assert worker.process.poll() is None, worker.log.read_text()[-3000:]
    data = image(256, 256, seed=13)
    assert_identical_and_stitched_once(
        fault_api, store, submit(fault_api, data), data, fault_settings
    )
    assert "Unrecoverable error" not in worker.log.read_text()


def test_lost_stitch_message_is_recovered_by_the_janitor(
    fault_api, fault_settings, store, start_worker
) -> None:
    """Every part lands but the stitch message is lost (its sender died, or the broker
    dropped it): the janitor of a worker sees the job complete and unstitched, and
    sends the stitch itself."""
    client = redis.Redis.from_url(fault_settings.redis_url)
    data = image(512, 256, seed=6)
    inferer = start_worker("infers-only", queues=fault_settings.tile_queue)
    job_id = submit(fault_api, data)
    wait_for(lambda: store.get(job_id).landed is not None, 120, "every part to land")
    inferer.stop()
    assert client.delete(fault_settings.stitch_queue) == 1, "the stitch was queued, unconsumed"
    worker = start_worker("recovery")
    assert_identical_and_stitched_once(fault_api, store, job_id, data, fault_settings)
    assert "no stitch came; sending one" in worker.log.read_text()


def _job_keys(store: JobStore) -> set[bytes]:
    return set(store.redis.scan_iter(match=b"srcluster:job:*", count=1000))


def assert_refused(api: ApiServer, data: bytes) -> None:
    """``POST /sr`` of ``data`` is a 503 JSON saying Redis refuses writes, with Retry-After."""
    import requests

    reply = requests.post(
        api.url + "/sr",
        headers={"X-Token": ALICE},
        data={"model": COMPACT, "tile_size": str(TILE)},
        files={"file": ("in.png", data, "image/png")},
        timeout=60,
    )
    assert reply.status_code == 503, reply.text
    assert reply.headers["Content-Type"].startswith("application/json")
    assert reply.headers["Retry-After"].isdigit()
    body = reply.json()
    assert body["code"] == "unavailable" and "refuses writes" in body["message"], body


def test_redis_refusing_writes_during_submit(fault_api, store, start_worker) -> None:
    """Redis at ``maxmemory`` (noeviction): the submit is a 503 JSON with Retry-After, nothing
    of the job is left behind, /healthz says not ready; once it has room, a job completes."""
    import requests

    data = image(seed=9)  # over a MB of input strips
    before_keys, before_active = _job_keys(store), store.redis.zcard("srcluster:active")
    used = int(store.redis.info("memory")["used_memory"])
    store.redis.config_set("maxmemory-policy", "noeviction")
    store.redis.config_set("maxmemory", used + 512 * 1024)
    try:
        # room for the strips of none of it: the transaction fills it up halfway, and fails
        assert_refused(fault_api, data)
        assert _job_keys(store) == before_keys, "nothing of the refused job was written"
        assert store.redis.zcard("srcluster:active") == before_active
        # full already: /healthz says so too
        store.redis.config_set("maxmemory", used // 2)
        assert_refused(fault_api, data)
        health = requests.get(fault_api.url + "/healthz", timeout=10)
        assert health.status_code == 503, health.text
        assert health.json()["redis"] == "refusing writes"
        assert health.headers["Retry-After"].isdigit()
        assert _job_keys(store) == before_keys
    finally:
        store.redis.config_set("maxmemory", 0)
    assert requests.get(fault_api.url + "/healthz", timeout=10).status_code == 200
    # a worker that lived through the refusal is another matter (not yet survived: see README)
    start_worker("after-oom")
    record = final(store, submit(fault_api, data))
    assert record.status.value == "success", record


def test_job_left_uncommitted_by_a_dead_api_is_ended_soon(fault_settings, store, start_worker):
    """An API killed between recording a job and queueing all its tasks leaves an
    uncommitted job: the janitor ends it at its short commit deadline and drops its
    input, not after the job's whole timeout (the reaper's 10 minutes)."""
    start_worker("janitor")
    job_id = "c" * 32
    store.create(
        job_id,
        owner="o",
        owner_name="alice",
        params={"model": COMPACT},
        plan={},
        parts=2,
        strips=[(0, c, b"x" * 1000) for c in range(2)],
        extras={},
        timeout=600,
        commit_within=1,
    )
    assert not store.get(job_id).committed
    record = final(store, job_id, timeout=30)
    assert record.status.value == "failed" and record.error_code == "queue_error", record
    wait_for(
        lambda: not list(store.redis.scan_iter(match=store.key(job_id, "in", "*"))),
        10,
        "the uncommitted job's input to be dropped",
    )
    # committed in time, a job keeps its whole timeout
    store.create(
        "d" * 32,
        owner="o",
        owner_name="alice",
        params={"model": COMPACT},
        plan={},
        parts=1,
        strips=[],
        extras={},
        timeout=600,
        commit_within=1,
    )
    store.commit("d" * 32)
    time.sleep(3)
    kept = store.get("d" * 32)
    assert kept.committed and kept.status.value == "pending", kept
    assert kept.deadline - kept.created == pytest.approx(600)
    store.cancel("d" * 32)
    store.delete("d" * 32)
