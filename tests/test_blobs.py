"""Blob stores against a real folder and a real S3 server, and the store's guarantees with them.

A blob is written before the script that marks it done, a tile finishing after
its job ended leaves nothing behind, a redelivered tile rewrites its blob
harmlessly, a job that ends drops its tiles and keeps its result, and a stitch
that finds a blob missing fails the job as a lost tile. The S3 cases run
against the server of :mod:`tests.s3` (MinIO or moto's, a separate process).
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from pathlib import Path

import pytest

from common.cluster import jobs
from common.cluster.blobs import MODELS, Blobs, BlobUnavailable, open_blobs
from common.cluster.blobs.files import FileBlobs
from common.cluster.records import JobStatus, WindowRead
from common.cluster.store import JobStore
from common.errors import ConfigError
from common.imageio import encode
from common.models import Registry
from common.params import parse_params
from common.settings import Settings, check_blob_url
from tests import s3
from tests.cluster import new_job, with_db

COMPACT = "realesr-animevideov3"
STORE_DB = 5
"""The Redis database of these tests' jobs: the session's workers (database 0) never see them."""


@pytest.fixture(params=["file", "s3"])
def blobs(request: pytest.FixtureRequest, tmp_path: Path) -> Blobs:
    if request.param == "file":
        return FileBlobs(tmp_path / "blobs")
    server: s3.S3Server = request.getfixturevalue("s3_server")
    found = open_blobs(f"s3://{s3.BUCKET}/unit-{uuid.uuid4().hex[:8]}", server.endpoint_url)
    assert found is not None
    return found


@pytest.fixture
def store(blobs: Blobs, redis_url: str) -> JobStore:
    return JobStore.from_url(with_db(redis_url, STORE_DB), ttl=60, blobs=blobs)


def job() -> str:
    return uuid.uuid4().hex


def test_put_get_and_ranges(blobs: Blobs) -> None:
    one, other = job(), job()
    data = bytes(range(256)) * 100
    blobs.put(one, "in-0-0", data)
    assert blobs.get(one, "in-0-0") == data
    assert blobs.read_range(one, "in-0-0", 10, 19) == data[10:20]
    reads = [("in-0-0", 0, 0), ("in-0-0", len(data) - 1, len(data) - 1), ("in-0-9", 0, 9)]
    assert blobs.read_ranges(one, reads) == [data[:1], data[-1:], b""], (
        "a missing strip reads empty"
    )
    assert blobs.get(one, "nope") is None and blobs.get(other, "in-0-0") is None
    assert blobs.get_many(one, ["in-0-0", "nope"]) == [data, None]
    assert blobs.stream(one, "nope", 10) is None
    found = blobs.stream(one, "in-0-0", 1000)
    assert found is not None
    size, chunks = found
    pieces = list(chunks)
    assert size == len(data) and b"".join(pieces) == data and max(map(len, pieces)) <= 1000


def test_a_rewrite_replaces_the_whole_blob(blobs: Blobs) -> None:
    one = job()
    blobs.put(one, "out-3", b"x" * 5000)
    blobs.put(one, "out-3", b"short")  # a redelivered tile writes its output again
    assert blobs.get(one, "out-3") == b"short"
    assert blobs.names(one) == ["out-3"]


def test_drop_keeps_the_result_and_remove_job_takes_all(blobs: Blobs) -> None:
    one, other = job(), job()
    blobs.put_many(one, [("in-0-0", b"a"), ("out-0", b"b"), ("out-1", b"c"), ("result", b"r")])
    blobs.put(other, "out-0", b"other")
    assert sorted(blobs.names(one)) == ["in-0-0", "out-0", "out-1", "result"]
    blobs.drop(one)
    assert blobs.names(one) == ["result"] and blobs.get(one, "result") == b"r"
    blobs.remove_job(one)
    assert blobs.names(one) == []
    blobs.drop(one)  # nothing left: no error
    blobs.remove_job(one)
    assert blobs.get(other, "out-0") == b"other", "another job is untouched"


def test_sweep_removes_only_what_is_older_than_the_ttl(blobs: Blobs) -> None:
    old, new = job(), job()
    blobs.put(old, "out-0", b"old")
    time.sleep(4)
    blobs.put(new, "out-0", b"new")
    # S3 dates are in whole seconds: the new one may look up to 1 s older than it is
    assert blobs.sweep(max_age=2.5) >= 1
    assert blobs.names(old) == [] and blobs.get(new, "out-0") == b"new"


def test_sweep_keeps_the_clusters_models(blobs: Blobs) -> None:
    blobs.put(MODELS, "0" * 64, b"onnx bytes")
    blobs.put(job(), "out-0", b"old")
    time.sleep(1.5)  # S3 dates are whole seconds
    assert blobs.sweep(max_age=0) == 1
    assert blobs.get(MODELS, "0" * 64) == b"onnx bytes"


def test_file_writes_are_atomic_under_concurrent_reads(tmp_path: Path) -> None:
    blobs = FileBlobs(tmp_path)
    one = job()
    versions = [b"a" * 3_000_000, b"b" * 1_000_000]
    blobs.put(one, "out-0", versions[0])
    stop = threading.Event()
    seen: list[bool] = []

    def read() -> None:
        while not stop.is_set():
            seen.append(blobs.get(one, "out-0") in versions)

    reader = threading.Thread(target=read)
    reader.start()
    for i in range(60):
        blobs.put(one, "out-0", versions[i % 2])
    stop.set()
    reader.join()
    assert seen and all(seen), "a reader never sees half a write"
    assert os.listdir(tmp_path / one) == ["out-0"], "no temporary file is left"


def test_file_writes_racing_a_job_removal_land_whole_or_say_so(tmp_path: Path) -> None:
    """A write racing the removal of its job's folder (a cancel) is written again; a write
    that keeps losing raises BlobUnavailable (its task is redelivered and finds the job
    ended). Either way nothing but whole blobs is ever there, and nothing stays."""
    blobs = FileBlobs(tmp_path)
    one = job()
    stop = threading.Event()

    def remove() -> None:
        while not stop.is_set():
            blobs.remove_job(one)

    remover = threading.Thread(target=remove)
    remover.start()
    landed = 0
    try:
        for i in range(300):
            try:
                blobs.put(one, f"out-{i % 4}", b"x" * 20_000)
                landed += 1
            except BlobUnavailable:
                pass
            assert blobs.get(one, f"out-{i % 4}") in (None, b"x" * 20_000)
    finally:
        stop.set()
        remover.join()
    assert landed > 0
    blobs.remove_job(one)
    assert not (tmp_path / one).exists()


def test_blob_urls_are_checked_at_start() -> None:
    for good in ("file:///srv/srcluster", "s3://bucket", "s3://bucket/a/prefix/"):
        check_blob_url(good)
    for bad in ("file://relative/path", "file:///", "/srv/blobs", "http://x/y", "s3:///prefix"):
        with pytest.raises(ConfigError, match="SRCLUSTER_BLOB_URL"):
            check_blob_url(bad)
    with pytest.raises(ConfigError, match="SRCLUSTER_BLOB_URL"):
        Settings.from_env({"SRCLUSTER_BLOB_URL": "ftp://host/x"})
    assert open_blobs("") is None
    settings = Settings.from_env(
        {"SRCLUSTER_BLOB_URL": "s3://b/p", "SRCLUSTER_S3_ENDPOINT_URL": "x"}
    )
    assert (settings.blob_url, settings.s3_endpoint_url) == ("s3://b/p", "x")


# --- the store with a blob store: the Lua scripts' guarantees, restated -----------------


def redis_keys(store: JobStore, job_id: str) -> list[str]:
    return sorted(k.decode() for k in store.redis.scan_iter(match=store.key(job_id, "*")))


def test_strips_and_outputs_go_to_blobs_and_a_late_tile_leaves_nothing(store: JobStore) -> None:
    assert store.blobs is not None
    job_id = new_job(store)
    assert [k for k in redis_keys(store, job_id) if ":in:" in k] == [], "strips are blobs"
    assert store.read_strip(job_id, 0, 1) == b"in1"
    start = store.begin_group(job_id, [WindowRead(0, 0, 1, 1, 2)], "host:1", max_deliveries=3)
    assert start.status is JobStatus.PENDING and start.windows == [b"n1"]
    assert store.status(job_id) is JobStatus.PROCESSING
    assert store.record_outputs(job_id, [(0, b"out")], "w1", model="m", seconds=[0.1]) == (1, False)
    assert store.record_outputs(job_id, [(0, b"again")], "w2", model="m", seconds=[0.1]) == (
        1,
        False,
    ), "a redelivered tile counts once"
    assert store.read_outputs(job_id, [0, 1]) == [b"again", None]
    assert store.record_outputs(
        job_id, [(1, b"kept")], "w1", model="m", seconds=[0.1], keep=False
    ) == (2, False)
    assert store.read_outputs(job_id, [1]) == [None], "keep=False stores no core"
    assert [k for k in redis_keys(store, job_id) if ":out:" in k] == []
    assert store.cancel(job_id)
    assert store.blobs.names(job_id) == [], "a cancel drops the job's blobs"
    assert store.record_outputs(job_id, [(2, b"late")], "w1", model="m", seconds=[0.1]) == (
        -1,
        False,
    )
    assert store.blobs.names(job_id) == [], "a tile finishing after the cancel leaves nothing"
    late = store.begin_group(job_id, [WindowRead(2, 0, 2, 0, 2)], "host:1", max_deliveries=3)
    assert late.windows is None


def test_a_successful_job_keeps_only_its_result(store: JobStore) -> None:
    assert store.blobs is not None
    job_id = new_job(store, parts=2)
    store.record_outputs(job_id, [(0, b"a"), (1, b"b")], "w", model="m", seconds=[0.1, 0.1])
    image = os.urandom(3 * 2**20 + 5)
    assert store.succeed(job_id, image, {"size": len(image)})
    assert not store.succeed(job_id, b"other", {"size": 5}), "success is final"
    assert store.blobs.names(job_id) == ["result"]
    assert store.result(job_id) == image
    found = store.result_stream(job_id)
    assert found is not None
    size, chunks = found
    assert size == len(image) and b"".join(chunks) == image
    assert not [k for k in redis_keys(store, job_id) if k.endswith(":result")]
    store.delete(job_id)
    assert store.blobs.names(job_id) == [] and store.result_stream(job_id) is None
    assert store.get(job_id) is not None, "the record stays until the TTL"


def test_a_stitch_that_finds_a_blob_missing_fails_the_job_as_a_lost_tile(
    tmp_path: Path, redis_url: str, settings: Settings, model_registry: Registry, photo
) -> None:
    blobs = FileBlobs(tmp_path)
    store = JobStore.from_url(with_db(redis_url, STORE_DB), 60, blobs=blobs)
    params = parse_params(model=COMPACT, tile_size=32)
    prepared = jobs.prepare(encode(photo[:64, :64], "png"), params, settings, model_registry)
    jobs.submit(store, prepared, params, owner="o", owner_name="alice", timeout=120)
    job_id, plan = prepared.job_id, prepared.plan
    plans = jobs.PlanCache()
    landed = [
        jobs.run_group(store, settings, job_id, g, "w", plans) for g in range(plan.group_count)
    ]
    assert landed.count(True) == 1, "the group that lands the last part asks for the stitch"
    assert sorted(blobs.names(job_id)) == sorted(
        [f"in-0-{c}" for c in range(len(plan.column_origins))]
        + [f"out-{p}" for p in range(plan.part_count)]
    )
    (tmp_path / job_id / "out-1").unlink()
    assert not jobs.stitch(store, settings, job_id)
    record = store.get(job_id)
    assert record is not None and record.status is JobStatus.FAILED
    assert record.error_code == "lost_tile" and "tile 1" in (record.error or "")
    assert blobs.names(job_id) == [], "the failure dropped the job's blobs"


def test_the_one_group_stitch_stores_no_cores(
    tmp_path: Path, redis_url: str, settings: Settings, model_registry: Registry, photo
) -> None:
    """``stitch_here``: a job of one group is stitched from memory; no core is written."""
    store = JobStore.from_url(with_db(redis_url, STORE_DB), 60, blobs=FileBlobs(tmp_path))
    params = parse_params(model=COMPACT)
    prepared = jobs.prepare(encode(photo[:48, :48], "png"), params, settings, model_registry)
    assert prepared.plan.group_count == 1
    jobs.submit(store, prepared, params, owner="o", owner_name="alice", timeout=120)
    ran = jobs.run_group(
        store, settings, prepared.job_id, 0, "w", jobs.PlanCache(), stitch_here=True
    )
    assert not ran, "stitched here: no one else is asked"
    record = store.get(prepared.job_id)
    assert record is not None and record.status is JobStatus.SUCCESS
    assert os.listdir(tmp_path / prepared.job_id) == ["result"]
    result = store.result(prepared.job_id)
    assert result is not None and len(result) == record.output["size"]
    assert result.startswith(b"\x89PNG\r\n\x1a\n")


def test_a_worker_looking_elsewhere_for_the_bytes_fails_the_job_plainly(
    tmp_path: Path, redis_url: str, settings: Settings, model_registry: Registry, photo
) -> None:
    """An API with file blobs and a worker without (or the other way round): the job fails
    at once, naming the setting, rather than waiting for its timeout."""
    url = with_db(redis_url, STORE_DB)
    api_side = JobStore.from_url(url, 60, blobs=FileBlobs(tmp_path))
    worker_side = JobStore.from_url(url, 60)
    params = parse_params(model=COMPACT, tile_size=32)
    prepared = jobs.prepare(encode(photo[:64, :64], "png"), params, settings, model_registry)
    jobs.submit(api_side, prepared, params, owner="o", owner_name="alice", timeout=120)
    assert not jobs.run_group(worker_side, settings, prepared.job_id, 0, "w", jobs.PlanCache())
    record = worker_side.get(prepared.job_id)
    assert record is not None and record.status is JobStatus.FAILED
    assert record.error_code == "misconfigured" and "SRCLUSTER_BLOB_URL" in (record.error or "")
