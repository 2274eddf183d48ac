"""One model registry for the whole cluster: a model added once (admin route or CLI, against
the cluster's Redis) is run by a worker on another host, which fetches it by hash.

"Another host" here is a worker process with its own, empty data and models folders, so it
can only have the model from the cluster; ``test_a_namespace_host_runs_a_cluster_model``
also puts it in its own network namespace (:mod:`tests.hosts`, as root).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis
import requests
from onnx import TensorProto, helper

from common.catalog import check_model
from common.cluster.embedded import EmbeddedRedis
from common.cluster.models import DATA, ENTRIES, ClusterModels
from common.cluster.store import JobStore
from common.errors import InvalidModel, ModelTooLarge, ModelUnavailable
from common.imageio import decode, encode
from common.settings import Settings
from srcluster.client import Client, ServiceError
from tests.cluster import ROOT, ApiServer, WorkerProcess, redis_for_tests, with_db
from tests.hosts import Network, unavailable
from tests.tokens import ALICE

pytestmark = pytest.mark.cluster

ADMIN = "ops-admin-token-0123456789abcdef"
ADMIN_TOKENS = f"ops:{ADMIN}"
MAX_MODEL_BYTES = 64 * 1024
"""The tests' SRCLUSTER_MODEL_MAX_BYTES: far above the tiny models, easy to exceed."""


def tiny_model(
    scale: int = 2, tag: str = "a", shape: list[Any] | None = None, **kind: Any
) -> bytes:
    """A nearest-neighbour x``scale`` ONNX model (``Resize``), a few hundred bytes; ``tag``
    changes its bytes (and so its hash) but not what it computes."""
    shape = shape or ["N", 3, "H", "W"]
    elem = kind.get("elem", TensorProto.FLOAT)
    graph = helper.make_graph(
        [helper.make_node("Resize", ["x", "", "s"], ["y"], mode="nearest")],
        f"tiny-{tag}",
        [helper.make_tensor_value_info("x", elem, shape)],
        [helper.make_tensor_value_info("y", elem, None)],
        [helper.make_tensor("s", TensorProto.FLOAT, [4], [1, 1, scale, scale])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    return bytes(model.SerializeToString())


def photo(width: int = 48, height: int = 40) -> np.ndarray:
    rng = np.random.default_rng(7)
    blocks = rng.integers(0, 255, size=(height // 4, width // 4, 3), dtype=np.uint8)
    return np.kron(blocks, np.ones((4, 4, 1), np.uint8))


def nearest_x2(pixels: np.ndarray) -> np.ndarray:
    return np.repeat(np.repeat(pixels, 2, axis=0), 2, axis=1)


# --- the checks before a model is accepted (no Redis) ---------------------------


@pytest.mark.parametrize(
    ("data", "check", "message"),
    [
        (b"\x08\x01garbage, not a protobuf", "load", "not a model ONNX Runtime can load"),
        (tiny_model(shape=["N", 3, 16, 16]), "fixed_size", "height and width must be dynamic"),
        (tiny_model(shape=["N", "H", "W", 3]), "layout", "channels-last"),
        (tiny_model(shape=["N", 4, "H", "W"]), "layout", "3 .RGB. channels"),
        (tiny_model(elem=TensorProto.UINT8), "dtype", "must be float32"),
        (tiny_model(scale=9), "scale", "outside 1..8"),
    ],
)
def test_check_names_what_is_wrong(data: bytes, check: str, message: str) -> None:
    with pytest.raises(InvalidModel, match=message) as info:
        check_model(data, "m.onnx", MAX_MODEL_BYTES)
    assert info.value.detail["check"] == check and info.value.http_status == 422


def test_check_refuses_a_model_over_the_limit() -> None:
    with pytest.raises(ModelTooLarge) as info:
        check_model(tiny_model(), "m.onnx", max_bytes=100)
    assert info.value.http_status == 413 and info.value.detail["limit"] == 100
    assert check_model(tiny_model(scale=3), "m.onnx", MAX_MODEL_BYTES) == 3


# --- a cluster of its own: the API on one "host", a worker on another ---------------


@pytest.fixture(scope="module")
def registry_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with redis_for_tests(tmp_path_factory.mktemp("registry-redis")) as url:
        yield with_db(url, 9)  # never another test's queues, even on a configured Redis


@pytest.fixture(scope="module")
def api_settings(
    cluster_settings: Settings, registry_redis: str, tmp_path_factory: pytest.TempPathFactory
) -> Settings:
    """The API's host: its own data folder, admin tokens, a small model limit."""
    return dataclasses.replace(
        cluster_settings,
        redis_url=registry_redis,
        data_dir=tmp_path_factory.mktemp("api-host"),
        models_dir=None,
        admin_tokens=ADMIN_TOKENS,
        model_max_bytes=MAX_MODEL_BYTES,
    )


@pytest.fixture(scope="module")
def worker_settings(api_settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """The worker's host: another, empty data folder (so no model files but the cluster's)."""
    return dataclasses.replace(api_settings, data_dir=tmp_path_factory.mktemp("worker-host"))


@pytest.fixture(scope="module")
def cluster(
    api_settings: Settings, worker_settings: Settings, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ApiServer]:
    logs = tmp_path_factory.mktemp("registry-logs")
    api = ApiServer(api_settings, logs).wait_ready()
    try:
        worker = WorkerProcess(worker_settings, "host2", logs).wait_ready()
    except BaseException:
        api.stop()
        raise
    yield api
    worker.stop()
    api.stop()


@pytest.fixture
def client(cluster: ApiServer) -> Iterator[Client]:
    with Client(cluster.url, ALICE) as c:
        yield c


@pytest.fixture
def rdb(registry_redis: str) -> Iterator[Any]:
    r = redis.Redis.from_url(registry_redis)
    yield r
    r.close()


def put_model(api: ApiServer, name: str, data: bytes, token: str = ADMIN, **query: str) -> Any:
    return requests.put(
        f"{api.url}/models/{name}",
        data=data,
        params=query,
        headers={"X-Token": token, "Content-Type": "application/octet-stream"},
        timeout=60,
    )


def listed(api: ApiServer) -> dict[str, dict[str, Any]]:
    reply = requests.get(f"{api.url}/models", headers={"X-Token": ALICE}, timeout=30)
    assert reply.status_code == 200, reply.text
    return {m["name"]: m for m in reply.json()["models"]}


def run_job(client: Client, model: str) -> dict[str, Any]:
    job_id = client.submit(encode(photo(), "png"), model=model, tile_size=32)
    return client.wait(job_id, timeout=120) | {"task_id": job_id}


def test_a_model_added_through_the_api_runs_on_another_host(
    cluster: ApiServer, client: Client, worker_settings: Settings, api_settings: Settings
) -> None:
    data = tiny_model(tag="api")
    reply = put_model(cluster, "tiny-x2", data, description="nearest x2")
    assert reply.status_code == 201, reply.text
    model = reply.json()["model"]
    assert (model["scale"], model["source"], model["size"], model["added_by"]) == (
        2,
        "cluster",
        len(data),
        "ops",
    )

    shown = listed(cluster)["tiny-x2"]
    assert shown["description"] == "nearest x2" and ADMIN not in str(listed(cluster))
    assert "realesrgan-x4plus" in listed(cluster)  # built-ins are listed too
    result = run_job(client, "tiny-x2")
    assert result["status"] == "success", result
    out = decode(client.download(result["task_id"]), 1 << 24).pixels
    assert np.array_equal(out, nearest_x2(photo()))
    # the worker's host fetched it by hash; the API's host never needed the file
    assert (worker_settings.model_cache / f"cluster-{model['sha256']}.onnx").read_bytes() == data
    assert not list(api_settings.data_dir.rglob("cluster-*.onnx"))


def test_a_model_added_from_the_cli_runs_on_another_host(
    cluster: ApiServer, client: Client, api_settings: Settings, tmp_path: Path
) -> None:
    path = tmp_path / "mine.onnx"
    path.write_bytes(tiny_model(tag="cli"))
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "PYTHONPATH": str(ROOT),
        "SRCLUSTER_REDIS_URL": api_settings.redis_url,
        "SRCLUSTER_DATA_DIR": str(tmp_path / "cli-host"),
    }
    added = subprocess.run(
        [sys.executable, "-m", "srcluster", "models", "add", "cli-x2", str(path)],
        capture_output=True, text=True, timeout=120, env=env,
    )  # fmt: skip
    assert added.returncode == 0, added.stderr
    assert "added cluster model cli-x2: x2" in added.stdout
    assert listed(cluster)["cli-x2"]["added_by"].startswith("cli:")
    result = run_job(client, "cli-x2")
    assert result["status"] == "success", result
    assert np.array_equal(
        decode(client.download(result["task_id"]), 1 << 24).pixels, nearest_x2(photo())
    )

    again = subprocess.run(
        [sys.executable, "-m", "srcluster", "models", "add", "cli-x2", str(path)],
        capture_output=True, text=True, timeout=120, env=env,
    )  # fmt: skip
    assert again.returncode == 2 and "already exists" in again.stderr
    table = subprocess.run(
        [sys.executable, "-m", "srcluster", "models"],
        capture_output=True, text=True, timeout=120, env=env,
    )  # fmt: skip
    line = next(row for row in table.stdout.splitlines() if row.startswith("cli-x2 "))
    assert line.split()[1:3] == ["2", "cluster"] and "fetched on first use" in line


@pytest.mark.parametrize(
    ("name", "data", "token", "status", "code", "says"),
    [
        ("x", tiny_model(), None, 401, "unauthorized", "admin token is required"),
        ("x", tiny_model(), ALICE, 403, "forbidden", "needs an admin token"),
        ("Bad Name", tiny_model(), ADMIN, 422, "bad_parameter", "must be 1-64"),
        ("realesrgan-x4plus", tiny_model(), ADMIN, 409, "model_exists", "built-in"),
        ("x", b"not an onnx file at all", ADMIN, 422, "invalid_model", "ONNX Runtime can load"),
        ("x", tiny_model(shape=["N", 3, 64, 64]), ADMIN, 422, "invalid_model", "must be dynamic"),
        ("x", tiny_model(shape=["N", "H", "W", 3]), ADMIN, 422, "invalid_model", "NHWC"),
        ("x", b"\0" * (MAX_MODEL_BYTES + 1), ADMIN, 413, "model_too_large", "at most 65536"),
        ("x", b"", ADMIN, 422, "bad_parameter", "request body"),
    ],
)
def test_a_bad_model_is_refused_naming_the_problem(
    cluster: ApiServer,
    rdb: Any,
    name: str,
    data: bytes,
    token: str | None,
    status: int,
    code: str,
    says: str,
) -> None:
    before = rdb.hgetall(ENTRIES)
    headers = {"X-Token": token} if token else {}
    reply = requests.put(f"{cluster.url}/models/{name}", data=data, headers=headers, timeout=60)
    assert reply.status_code == status, reply.text
    body = reply.json()
    assert body["code"] == code and says in body["message"], body
    assert rdb.hgetall(ENTRIES) == before  # nothing recorded


def test_a_name_in_use_is_refused_unless_replaced(cluster: ApiServer, rdb: Any) -> None:
    first, second = tiny_model(tag="one"), tiny_model(scale=3, tag="two")
    assert put_model(cluster, "twice", first).status_code == 201
    taken = put_model(cluster, "twice", second)
    assert taken.status_code == 409 and taken.json()["code"] == "model_exists"
    replaced = put_model(cluster, "twice", second, replace="true")
    assert replaced.status_code == 200 and replaced.json()["model"]["scale"] == 3
    recorded = ClusterModels(rdb).entries()["twice"]
    assert (
        recorded.sha256 == hashlib.sha256(second).hexdigest() == replaced.json()["model"]["sha256"]
    )
    assert not rdb.keys(f"{DATA}{hashlib.sha256(first).hexdigest()}:*")  # the old bytes went


@pytest.mark.parametrize("damage", ["corrupt", "missing"])
def test_a_model_whose_bytes_are_damaged_fails_the_job_once(
    cluster: ApiServer, client: Client, rdb: Any, worker_settings: Settings, damage: str
) -> None:
    name = f"damaged-{damage}"
    reply = put_model(cluster, name, tiny_model(tag=name))
    sha = reply.json()["model"]["sha256"]
    key = f"{DATA}{sha}:0"
    if damage == "corrupt":
        rdb.set(key, tiny_model(tag="something else"))
    else:
        rdb.delete(key)
    result = run_job(client, name)
    assert result["status"] == "failed", result
    assert result["error"]["code"] == "model_unavailable"
    assert damage in result["error"]["message"] and name in result["error"]["message"]
    job = JobStore(rdb, 60).key(result["task_id"])
    deliveries = [int(v) for v in rdb.hvals(job + ":deliveries")]
    assert deliveries and max(deliveries) == 1  # failed at its first delivery, not retried
    assert not (worker_settings.model_cache / f"cluster-{sha}.onnx").exists()


def test_an_admin_deletes_a_model(cluster: ApiServer, client: Client, rdb: Any) -> None:
    sha = put_model(cluster, "short-lived", tiny_model(tag="del")).json()["model"]["sha256"]
    refused = requests.delete(
        f"{cluster.url}/models/short-lived", headers={"X-Token": ALICE}, timeout=30
    )
    assert refused.status_code == 403
    reply = requests.delete(
        f"{cluster.url}/models/short-lived", headers={"X-Token": ADMIN}, timeout=30
    )
    assert reply.status_code == 200 and reply.json()["deleted"] == "short-lived"
    assert "short-lived" not in listed(cluster) and not rdb.keys(f"{DATA}{sha}:*")
    gone = requests.delete(
        f"{cluster.url}/models/short-lived", headers={"X-Token": ADMIN}, timeout=30
    )
    assert gone.status_code == 404 and gone.json()["code"] == "not_found"
    builtin = requests.delete(
        f"{cluster.url}/models/realesrgan-x4plus", headers={"X-Token": ADMIN}, timeout=30
    )
    assert builtin.status_code == 422 and "built-in" in builtin.json()["message"]
    with pytest.raises(ServiceError, match="unknown model") as info:
        client.submit(encode(photo(), "png"), model="short-lived")
    assert (info.value.status, info.value.code) == (422, "unknown_model")


def test_model_bytes_in_a_blob_folder_are_never_swept(tmp_path: Path, registry_redis: str) -> None:
    from common.cluster.blobs.files import FileBlobs

    blobs = FileBlobs(tmp_path / "blobs")
    store = JobStore.from_url(registry_redis, 60, blobs=blobs)
    shared = ClusterModels.from_store(store)
    data = tiny_model(tag="blob")
    entry, _ = shared.add("in-blobs", data, added_by="t", max_bytes=MAX_MODEL_BYTES)
    try:
        assert entry.store == "file" and not store.redis.keys(f"{DATA}{entry.sha256}:*")
        assert blobs.sweep(max_age=-1) == 0
        assert shared.fetch(entry) == data
        # a process looking in Redis instead says so rather than failing obscurely
        with pytest.raises(ModelUnavailable, match="SRCLUSTER_BLOB_URL"):
            ClusterModels(store.redis).fetch(entry)
    finally:
        shared.remove("in-blobs")
    assert blobs.get("models", entry.sha256) is None
    store.close()


# --- a worker in a network namespace of its own (root only) ---------------------------


def test_a_namespace_host_runs_a_cluster_model(
    cluster_settings: Settings, tmp_path_factory: pytest.TempPathFactory
) -> None:
    reason = unavailable()
    if reason is not None:
        pytest.skip(f"no namespace hosts: {reason}")
    tmp = tmp_path_factory.mktemp("ns-registry")
    with Network() as net:
        host = net.add_host()  # the cluster address exists once a host is linked
        with EmbeddedRedis(tmp / "redis", bind=("127.0.0.1", net.address)) as server:
            ns_run(cluster_settings, server, net.address, host.prefix(), tmp)


def ns_run(
    cluster_settings: Settings, server: EmbeddedRedis, address: str, prefix: list[str], tmp: Path
) -> None:
    """The model added here (root namespace), the job run by the worker behind ``prefix``."""
    root = dataclasses.replace(
        cluster_settings, redis_url=server.url, data_dir=tmp / "root", models_dir=None
    )
    remote = dataclasses.replace(root, redis_url=server.url_at(address), data_dir=tmp / "host1")
    store = JobStore.from_url(root.redis_url, 60)
    ClusterModels.from_store(store).add(
        "ns-x2", tiny_model(tag="ns"), added_by="test", max_bytes=MAX_MODEL_BYTES
    )
    api = ApiServer(root, tmp).wait_ready()
    worker = WorkerProcess(remote, "ns-host1", tmp, prefix=prefix)
    try:
        worker.wait_ready()
        with Client(api.url, ALICE) as c:
            result = run_job(c, "ns-x2")
            assert result["status"] == "success", result
            out = decode(c.download(result["task_id"]), 1 << 24).pixels
        assert np.array_equal(out, nearest_x2(photo()))
        assert list((tmp / "host1" / "models").glob("cluster-*.onnx"))
    finally:
        worker.stop()
        api.stop()
        store.close()
