"""Honest answers at submit, against the API under gunicorn with a real worker and Redis.

Nothing asked for is dropped in silence: an unknown field is named, a translucent
image sent to JPEG says it was flattened, a job that cannot finish in time is
refused with its estimate, and a running job says how long it has left.
"""

from __future__ import annotations

import re
import time
from typing import Any

import numpy as np
import pytest
import requests

from common.cluster.store import JobStore
from common.imageio import decode, encode
from common.settings import Settings
from srcluster.client import Client, ServiceError
from tests.cluster import ApiServer, WorkerProcess
from tests.tokens import ALICE

pytestmark = pytest.mark.cluster
COMPACT = "realesr-animevideov3"


def noise(height: int, width: int, channels: int = 3, seed: int = 3) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, channels), dtype=np.uint8)


def smooth(height: int, width: int) -> np.ndarray:
    y, x = np.mgrid[0:height, 0:width]
    return np.dstack([x * 255 // width, y * 255 // height, (x + y) % 256]).astype(np.uint8)


def post(api: ApiServer, data: bytes, **fields: Any) -> requests.Response:
    return requests.post(
        api.url + "/sr",
        headers={"X-Token": ALICE},
        files={"file": ("in.png", data)},
        data={k: str(v) for k, v in fields.items()},
        timeout=60,
    )


def test_unknown_fields_are_named_with_the_nearest_known_one(api: ApiServer, worker) -> None:
    reply = post(api, encode(noise(24, 24), "png"), model=COMPACT, scael=2, outscale=2)
    assert reply.status_code == 422
    body = reply.json()
    assert body["code"] == "unknown_field"
    assert body["detail"]["fields"] == ["outscale", "scael"]
    assert body["detail"]["suggestions"]["scael"] == "scale"
    assert "'scael' (did you mean 'scale'?)" in body["message"] and "'outscale'" in body["message"]


def test_every_field_of_krau_and_ours_is_accepted(api: ApiServer, worker) -> None:
    """krau/super-resolution-api's fields (file, url, model, scale, tile_size, skip_alpha,
    resize_to, timeout), as its clients send them, and ours (tile_pad, format)."""
    client = Client(api.url, ALICE)
    job = client.submit(
        encode(noise(24, 24), "png"),
        model=COMPACT,
        scale=4,
        tile_size=64,
        tile_pad=12,
        skip_alpha="false",
        resize_to="",
        format="png",
        timeout=120,
    )
    body = client.wait(job, 120)
    assert body["status"] == "success", body
    assert (body["width"], body["height"]) == (96, 96) and body["notes"] == []


def test_a_translucent_image_sent_to_jpeg_is_flattened_and_the_job_says_so(
    api: ApiServer, worker
) -> None:
    rgba = np.dstack([smooth(32, 40), np.full((32, 40), 255, np.uint8)])
    rgba[:, :10, 3] = 0
    client = Client(api.url, ALICE)
    job = client.submit(encode(rgba, "png"), model=COMPACT, format="jpg")
    body = client.wait(job, 120)
    assert body["status"] == "success", body
    assert len(body["notes"]) == 1 and "flattened over white" in body["notes"][0]
    pixels = decode(client.download(job), 1 << 24).pixels
    assert body["format"] == "jpeg" and pixels.shape == (128, 160, 3)
    assert (pixels[:, :36] > 245).all(), "the transparent quarter is white, not black"


def test_a_job_that_cannot_finish_in_time_is_refused_with_its_estimate(
    api: ApiServer, worker, cluster_settings: Settings
) -> None:
    data = encode(smooth(768, 768), "png")
    reply = post(api, data, model="realesrgan-x4plus", timeout=5)
    assert reply.status_code == 422, reply.text
    body = reply.json()
    assert body["code"] == "job_too_long" and body["detail"]["parameter"] == "timeout"
    found = body["detail"]["estimate"]
    assert found["seconds"] > 5 and found["processes"] >= 1
    assert found["basis"] in ("measured", "scaled", "figure")
    assert "parts per group" in body["detail"]["formula"]
    said = re.search(r"about (\d+) s of inference", body["message"])
    assert said is not None and abs(int(said[1]) - found["seconds"]) <= 1, body["message"]
    assert "more than its timeout of 5 s" in body["message"]
    # within what a timeout may be, the message says so; beyond it, what else would help
    advice = "ask for a timeout" if found["seconds"] <= cluster_settings.max_timeout else "faster"
    assert advice in body["message"]


def test_the_workers_measured_speed_drives_the_estimate(
    api: ApiServer, worker: WorkerProcess, cluster_settings: Settings
) -> None:
    """After the worker has run the compact model it has a measured speed, and an estimate
    made from it refuses a 1-second timeout for a megapixel."""
    client = Client(api.url, ALICE)
    assert (
        client.wait(client.submit(encode(noise(48, 48), "png"), model=COMPACT), 120)["status"]
        == "success"
    )
    store = JobStore.from_url(cluster_settings.redis_url, cluster_settings.result_ttl)
    try:
        speeds = store.worker_speeds()
    finally:
        store.close()
    measured = speeds[worker.hostname][1][COMPACT]
    assert 0 < measured < 1000, speeds
    reply = post(api, encode(smooth(1024, 1024), "png"), model=COMPACT, timeout=1)
    assert reply.status_code == 422, reply.text
    found = reply.json()["detail"]["estimate"]
    assert found["basis"] == "measured", found
    assert found["seconds"] > 1


def test_a_running_job_shows_an_eta(api: ApiServer, worker) -> None:
    client = Client(api.url, ALICE)
    job = client.submit(encode(noise(384, 384), "png"), model=COMPACT, tile_size=32)
    first = client.result(job)
    assert first["estimated_seconds"] > 0 and "eta_seconds" in first
    seen: list[float] = []
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        body = client.result(job)
        if body["status"] in ("success", "failed", "cancelled"):
            break
        if body["progress"]["done"] > 0:
            assert isinstance(body["eta_seconds"], float | int) and body["eta_seconds"] >= 0
            seen.append(body["eta_seconds"])
        time.sleep(0.05)
    assert body["status"] == "success", body
    assert "eta_seconds" not in body, "a finished job has no ETA"
    assert seen, "the job was never seen running with tiles done"


def test_the_client_names_the_refusal(api: ApiServer, worker) -> None:
    with pytest.raises(ServiceError) as info:
        Client(api.url, ALICE).submit(encode(noise(24, 24), "png"), model=COMPACT, scael=2)
    assert info.value.status == 422 and info.value.code == "unknown_field"
