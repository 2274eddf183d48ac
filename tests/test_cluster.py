"""The cluster end to end: real HTTP to the API under gunicorn, real Redis, real Celery workers.

What a user must be able to rely on: an upload gives exactly the local
pipeline's pixels, whichever workers ran its tiles; progress rises to the tile
count; a cancelled job stops and its data is gone; nobody reads another's job.
The tests of those that depend on where the bytes live run three times
(``blob_cluster``): bytes in Redis, in a folder, in S3.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import cv2
import numpy as np
import pytest
import redis
from celery import Celery

from common.cluster.protocol import STITCH_TASK, TILE_TASK, celery_config
from common.cluster.store import BLOB_SWEEP, JobStore
from common.imageio import decode, encode
from common.params import parse_params
from common.pipeline import upscale_bytes
from common.settings import Settings
from srcluster.client import Client, Download, ServiceError
from tests.cluster import ROOT, ApiServer, WorkerProcess, child_env, wait_for
from tests.conftest import Cluster
from tests.tokens import ALICE, BOB

COMPACT = "realesr-animevideov3"
pytestmark = pytest.mark.cluster


def client(api: ApiServer, token: str = ALICE) -> Client:
    return Client(api.url, token)


def submit(api: ApiServer, data: bytes, token: str = ALICE, **fields: Any) -> str:
    return client(api, token).submit(data, model=COMPACT, **fields)


def result(api: ApiServer, job_id: str, token: str = ALICE) -> dict[str, Any]:
    return client(api, token).result(job_id)


def wait_done(api: ApiServer, job_id: str, timeout: float = 120) -> dict[str, Any]:
    return client(api).wait(job_id, timeout)


def download(api: ApiServer, job_id: str, token: str = ALICE) -> Download:
    return client(api, token).image(job_id)


def local(settings: Settings, data: bytes, **params: Any) -> np.ndarray:
    encoded, _ = upscale_bytes(data, parse_params(model=COMPACT, **params), settings)
    return decode(encoded, 1 << 30).pixels


def inputs(photo: np.ndarray) -> dict[str, bytes]:
    rgb = photo[:70, :90]
    alpha = np.tile(np.linspace(0, 255, 90, dtype=np.uint8), (70, 1))[..., None]
    gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)[..., None]
    return {
        "rgb": encode(rgb, "png"),
        "rgba": encode(np.dstack([rgb, alpha]), "png"),
        "rgb16": encode(rgb.astype(np.uint16) * 257 + 7, "png"),
        "gray": encode(gray, "png"),
    }


@pytest.mark.parametrize("kind", ["rgb", "rgba", "rgb16", "gray"])
def test_upload_is_pixel_identical_to_local_pipeline(blob_cluster: Cluster, photo, kind) -> None:
    api, cluster_settings = blob_cluster.api, blob_cluster.settings
    data = inputs(photo)[kind]
    job_id = submit(api, data, tile_size=32)
    body = wait_done(api, job_id)
    assert body["status"] == "success", body
    assert body["progress"]["done"] == body["progress"]["total"] > 1
    reply = download(api, job_id)
    assert reply.content_type == "image/png"
    remote = decode(reply.data, 1 << 30).pixels
    expected = local(cluster_settings, data, tile_size=32)
    assert remote.dtype == expected.dtype and remote.shape == expected.shape
    np.testing.assert_array_equal(remote, expected)
    assert (body["width"], body["height"]) == (expected.shape[1], expected.shape[0])
    if blob_cluster.kind != "redis":  # the bytes went to the blob store, not through Redis
        store = JobStore.from_settings(cluster_settings)
        keys = [k.decode() for k in store.redis.scan_iter(match=store.key(job_id, "*"))]
        assert not [k for k in keys if ":in:" in k or ":out:" in k or k.endswith(":result")]
        assert store.blobs is not None and store.blobs.names(job_id) == ["result"]
        assert store.result(job_id) == reply.data
        store.close()


def test_scale_resize_and_format_match_local(api, worker, cluster_settings, photo) -> None:
    data = inputs(photo)["rgba"]
    job_id = submit(api, data, tile_size=48, scale=3, format="webp", skip_alpha="true")
    assert wait_done(api, job_id)["status"] == "success"
    reply = download(api, job_id)
    assert reply.content_type == "image/webp"
    expected, _ = upscale_bytes(
        data,
        parse_params(model=COMPACT, tile_size=48, scale=3, format="webp", skip_alpha=True),
        cluster_settings,
    )
    assert reply.data == expected


def test_two_workers_share_one_image(api, worker, cluster_settings, logs, photo) -> None:
    second = WorkerProcess(cluster_settings, "second", logs).wait_ready()
    try:
        data = encode(np.resize(photo, (160, 256, 3)).astype(np.uint8), "png")
        job_id = submit(api, data, tile_size=32)
        assert wait_done(api, job_id)["status"] == "success"
        store = JobStore.from_url(cluster_settings.redis_url, 60)
        ran = store.workers_of(job_id)
        assert len(ran) == 40
        assert set(ran.values()) == {worker.hostname, second.hostname}
        remote = decode(download(api, job_id).data, 1 << 30).pixels
        np.testing.assert_array_equal(remote, local(cluster_settings, data, tile_size=32))
    finally:
        second.stop()


def test_progress_rises_to_the_tile_count(api, worker, photo) -> None:
    data = encode(np.resize(photo, (256, 256, 3)).astype(np.uint8), "png")
    job_id = submit(api, data, tile_size=32)
    seen = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        body = result(api, job_id)
        seen.append(body["progress"]["done"])
        if body["status"] == "success":
            break
        time.sleep(0.05)
    total = body["progress"]["total"]
    assert total == 64
    assert seen == sorted(seen), "progress never goes back"
    assert seen[-1] == total
    assert any(0 < done < total for done in seen), f"saw only {sorted(set(seen))}"


def test_cancel_stops_a_running_job_and_deletes_its_data(blob_cluster: Cluster, photo) -> None:
    api, cluster_settings = blob_cluster.api, blob_cluster.settings
    data = encode(np.resize(photo, (384, 384, 3)).astype(np.uint8), "png")
    job_id = submit(api, data, tile_size=32)
    wait_for(lambda: result(api, job_id)["progress"]["done"] >= 2, 60, "two tiles done")
    assert Client(api.url, ALICE).cancel(job_id)["status"] == "cancelled"
    done_at_cancel = result(api, job_id)["progress"]["done"]
    time.sleep(3)
    body = result(api, job_id)
    assert body["status"] == "cancelled"
    assert body["progress"]["done"] <= done_at_cancel + 1, "at most the tile in flight finishes"
    assert body["progress"]["total"] == 144
    client = redis.Redis.from_url(cluster_settings.redis_url)
    leftovers = [k.decode() for k in client.scan_iter(match=f"srcluster:job:{job_id}:*")]
    assert not [k for k in leftovers if ":in:" in k or ":out:" in k or k.endswith(":result")]
    store = JobStore.from_settings(cluster_settings)
    assert store.blobs is None or store.blobs.names(job_id) == [], "no blob is left either"
    store.close()
    with pytest.raises(ServiceError) as refused:
        download(api, job_id)
    assert refused.value.status == 409


def test_another_token_sees_nothing(blob_cluster: Cluster, photo) -> None:
    api = blob_cluster.api
    job_id = submit(api, inputs(photo)["rgb"], tile_size=32)
    wait_done(api, job_id)
    bob = client(api, BOB)
    for verb in (bob.result, bob.download, bob.cancel):
        answers = []
        for target in (job_id, "0" * 32):  # bob's view of alice's job, and of no job
            with pytest.raises(ServiceError) as refused:
                verb(target)
            e = refused.value
            answers.append((e.status, e.code, e.message, e.detail))
        assert answers[0] == answers[1] and answers[0][0] == 404, answers
    assert download(api, job_id).data, "the owner still has it"


def test_a_real_worker_registers_both_tasks_and_announces_itself(worker, cluster_settings) -> None:
    client = Celery("probe", broker=cluster_settings.redis_url, set_as_current=False)
    client.conf.update(celery_config(cluster_settings))
    try:
        registered = client.control.inspect([worker.hostname], timeout=10).registered() or {}
    finally:
        client.close()
    assert {TILE_TASK, STITCH_TASK} <= set(registered.get(worker.hostname, [])), registered
    store = JobStore.from_url(cluster_settings.redis_url, 60)
    assert store.worker_slots() >= 1, "the janitor announces the worker's tile processes"
    store.close()


@pytest.mark.parametrize("first", ["worker.app", "worker.tasks", "worker.runtime", "worker"])
def test_worker_modules_import_in_any_order(first: str, cluster_settings) -> None:
    # imports run one way (app <- runtime <- tasks): no "partially initialized module"
    code = f"import {first}, worker.tasks; print(sorted(worker.app.tasks))"
    done = subprocess.run(
        [sys.executable, "-c", code],
        env=child_env(cluster_settings),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert TILE_TASK in done.stdout and STITCH_TASK in done.stdout


def test_index_reports_what_each_worker_runs(api, worker, photo) -> None:
    wait_done(api, submit(api, inputs(photo)["rgb"]))
    engines = client(api).info()["engines"]
    described = engines.get(worker.hostname, [])
    assert described, engines
    # e.g. "openvino bf16 on CPU (Intel Xeon), 2 threads": engine, precision and threads named
    precisions = ("fp32", "bf16", "fp16")
    assert any(any(p in d for p in precisions) and "thread" in d for d in described), described


@pytest.mark.parametrize("blob_cluster", ["file"], indirect=True)
def test_a_janitor_sweeps_blob_folders_older_than_the_result_ttl(blob_cluster: Cluster) -> None:
    """Blobs a dead process left behind (or of a job whose record expired) do not pile up."""
    settings = blob_cluster.settings
    root = Path(urlsplit(settings.blob_url).path)
    old, fresh = root / uuid.uuid4().hex, root / uuid.uuid4().hex
    for folder in (old, fresh):
        folder.mkdir()
        (folder / "out-0").write_bytes(b"left behind")
    long_ago = time.time() - settings.result_ttl - 60
    os.utime(old, (long_ago, long_ago))
    store = JobStore.from_settings(settings)
    store.redis.delete(BLOB_SWEEP)  # this session's janitors swept already: let one sweep now
    wait_for(lambda: not old.exists(), 30, "a janitor to sweep the old folder")
    assert fresh.exists(), "a recent folder stays"
    store.close()
