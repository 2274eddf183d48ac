"""krau/super-resolution-api's README requests, sent unchanged, get krau's answers
(``SRCLUSTER_API_COMPAT=krau``), against the API under gunicorn with a real worker and
Redis; and the answers that mode changes stay ours with it off.

krau's default model is x4plus-anime (slow on CPU), so the images are tiny.
"""

from __future__ import annotations

import dataclasses
import http.server
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests

from api import compat
from api.fetch import fetch
from common.errors import BadParameter
from common.imageio import decode, encode
from common.settings import Settings
from tests.cluster import ApiServer, WorkerProcess
from tests.tokens import ALICE

WIDTH, HEIGHT = 32, 24
"""The input krau's requests send (not square, so the aspect shows)."""


def picture(height: int = HEIGHT, width: int = WIDTH, channels: int = 3) -> np.ndarray:
    y, x = np.mgrid[0:height, 0:width]
    planes = [x * 255 // width, y * 255 // height, (x * y) % 256, 128 + 0 * x][:channels]
    return np.dstack(planes).astype(np.uint8)


def jpeg() -> bytes:
    return encode(picture(), "jpeg")


# --- krau's resize_to, as its worker reads it (pure) ---------------------------------


@pytest.mark.parametrize(
    ("text", "scale", "size"),
    [
        ("1920x1080", 4, (1920, 1440)),  # the width, the input's aspect
        ("100x1", 2, (100, 75)),
        ("100xjunk", 4, (100, 75)),  # krau reads only what is before the first x
        ("1/2", 4, (16, 12)),  # half the INPUT's size
        ("3/2", 8, (48, 36)),
        ("0x100", 2, (128, 96)),  # a zero width drops every resize, scale's too: x4
        ("0x100", 8, (512, 384)),  # ... and for scale 5..8, its two passes: x16
        ("1/100", 2, (128, 96)),  # int(32 / 100) == 0: the same
    ],
)
def test_krau_resize_to_sizes(text: str, scale: int, size: tuple[int, int]) -> None:
    resize = compat.parse_resize_to(text)
    assert resize is not None
    assert compat.final_size(resize, WIDTH, HEIGHT, scale, 4) == size


@pytest.mark.parametrize("text", ["", "junk", "1920X1080", "1920*1080", "2"])
def test_krau_ignores_resize_to_without_x_or_slash(text: str) -> None:
    assert compat.parse_resize_to(text) is None


@pytest.mark.parametrize("text", ["abcx100", "x100", "1/0", "a/b", "1/2x", "-5x10"])
def test_resize_to_that_fails_a_krau_job_is_refused_at_submit(text: str) -> None:
    with pytest.raises(BadParameter):
        resize = compat.parse_resize_to(text)
        assert resize is not None
        compat.final_size(resize, WIDTH, HEIGHT, 4, 4)


# --- the cluster ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def krau_settings(cluster_settings: Settings) -> Settings:
    return dataclasses.replace(cluster_settings, api_compat="krau")


@pytest.fixture(scope="module")
def krau_api(
    krau_settings: Settings, worker: WorkerProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ApiServer]:
    server = ApiServer(krau_settings, tmp_path_factory.mktemp("krau-api")).wait_ready()
    yield server
    server.stop()


def sr(api: ApiServer, image: bytes | None, headers: Any = None, **fields: Any) -> Any:
    files = None if image is None else {"file": ("in.jpg", image, "image/jpeg")}
    return requests.post(
        api.url + "/sr",
        headers={"X-Token": ALICE} if headers is None else headers,
        files=files,
        data={k: str(v) for k, v in fields.items()},
        timeout=60,
    )


def wait(url: str, task_id: str, seconds: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + seconds
    while True:
        reply = requests.get(f"{url}/result/{task_id}", headers={"X-Token": ALICE}, timeout=10)
        assert reply.status_code == 200, reply.text
        result: dict[str, Any] = reply.json()["result"]
        if result["status"] in ("success", "failed", "cancelled") or time.monotonic() > deadline:
            return result
        time.sleep(0.1)


def download(url: str, task_id: str) -> requests.Response:
    return requests.get(f"{url}/result/{task_id}/download", headers={"X-Token": ALICE}, timeout=30)


def run_krau(api: ApiServer, image: bytes, **fields: Any) -> tuple[dict[str, Any], np.ndarray]:
    """Submit as krau's README does; krau's answers on the way; the result and its pixels."""
    reply = sr(api, image, **fields)
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["message"] == "Success" and body["task_id"]
    result = wait(api.url, body["task_id"])
    assert result["status"] == "success", result
    assert result["path"] == f"output/{body['task_id']}.png"
    got = download(api.url, body["task_id"])
    assert got.status_code == 200 and got.headers["Content-Type"] == "image/png"
    assert result["size"] == len(got.content)
    return result, decode(got.content, 10**8).pixels


@pytest.mark.cluster
def test_krau_readme_requests(krau_api: ApiServer) -> None:
    cases: list[tuple[dict[str, Any], tuple[int, int]]] = [
        ({}, (128, 96)),  # krau's defaults: x4_Anime_6B-Official, x4, PNG from a JPEG
        ({"model": "x4_Anime_6B-Official", "tile_size": 32, "timeout": 30}, (128, 96)),
        ({"scale": 2}, (64, 48)),
        ({"scale": 3}, (96, 72)),
        ({"scale": 8}, (256, 192)),
        ({"resize_to": "1920x1080"}, (1920, 1440)),
        ({"resize_to": "1/2"}, (16, 12)),
        ({"resize_to": "0x100", "scale": 2}, (128, 96)),
        ({"resize_to": "junk", "scale": 2}, (64, 48)),
    ]
    for fields, (width, height) in cases:
        result, pixels = run_krau(krau_api, jpeg(), **fields)
        assert pixels.shape[:2] == (height, width), fields
        assert result["model"] == "realesrgan-x4plus-anime", fields
    # skip_alpha: the alpha plane is resized, not inferred; still x4 and still PNG
    result, pixels = run_krau(
        krau_api, encode(picture(channels=4), "png"), skip_alpha="true", tile_size=64
    )
    assert pixels.shape == (96, 128, 4)


@pytest.mark.cluster
def test_krau_status_codes(krau_api: ApiServer) -> None:
    assert sr(krau_api, jpeg(), headers={}).status_code == 422  # no token
    assert sr(krau_api, jpeg(), headers={"X-Token": "not-a-token-at-all"}).status_code == 401
    assert sr(krau_api, None).status_code == 400  # neither file nor url
    assert sr(krau_api, b"not an image").status_code == 400
    assert sr(krau_api, jpeg(), scale=9).status_code == 422
    assert sr(krau_api, jpeg(), tile_size=16).status_code == 422
    assert requests.get(krau_api.url + "/", timeout=10).status_code == 422
    missing = requests.get(
        krau_api.url + "/result/" + "0" * 32, headers={"X-Token": ALICE}, timeout=10
    )
    assert missing.status_code == 404
    # download before ready: 400 (a larger image, so the job is still running)
    task_id = sr(krau_api, encode(picture(96, 128), "jpeg")).json()["task_id"]
    early = download(krau_api.url, task_id)
    assert early.status_code == 400, early.text
    assert wait(krau_api.url, task_id)["status"] == "success"
    # a deleted (or expired) result is krau's 404
    requests.delete(f"{krau_api.url}/result/{task_id}", headers={"X-Token": ALICE}, timeout=10)
    assert download(krau_api.url, task_id).status_code == 404


@pytest.mark.cluster
def test_krau_cors_allows_every_origin(krau_api: ApiServer) -> None:
    origin = "https://anything.example"
    pre = requests.options(
        krau_api.url + "/sr",
        headers={"Origin": origin, "Access-Control-Request-Method": "POST"},
        timeout=10,
    )
    assert pre.status_code == 204 and "POST" in pre.headers["Access-Control-Allow-Methods"]
    assert "X-Token" in pre.headers["Access-Control-Allow-Headers"]
    reply = requests.get(
        krau_api.url + "/", headers={"X-Token": ALICE, "Origin": origin}, timeout=10
    )
    assert reply.headers["Access-Control-Allow-Origin"] == origin


class _OneImage(http.server.BaseHTTPRequestHandler):
    body = b""

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "image/jpeg")
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def image_server() -> Iterator[str]:
    _OneImage.body = jpeg()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _OneImage)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/a.jpg"
    server.shutdown()
    server.server_close()
    thread.join()


@pytest.mark.cluster
def test_krau_url_request(
    krau_settings: Settings,
    worker: WorkerProcess,
    image_server: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``url`` as krau's README sends it. The API runs in this process (the real worker and
    Redis do the job) so that a loopback address may be fetched, which the API refuses."""
    from api import create_app, routes

    def loopback_fetch(url: str, max_bytes: int) -> bytes:
        return fetch(url, max_bytes=max_bytes, allowed=lambda address: address == "127.0.0.1")

    monkeypatch.setattr(routes, "fetch", loopback_fetch)
    app = create_app(krau_settings)
    try:
        client = app.test_client()
        reply = client.post(
            "/sr", data={"url": image_server, "scale": 2}, headers={"X-Token": ALICE}
        )
        assert reply.status_code == 200, reply.json
        task_id = reply.json["task_id"]
        deadline = time.monotonic() + 120
        while (
            result := client.get(f"/result/{task_id}", headers={"X-Token": ALICE}).json["result"]
        )["status"] not in ("success", "failed") and time.monotonic() < deadline:
            time.sleep(0.1)
        assert result["status"] == "success", result
        assert (result["width"], result["height"]) == (64, 48)
        assert result["path"].endswith(".png") and result["format"] == "png"
    finally:
        app.extensions["srcluster"].close()


# --- compatibility off: our own answers -----------------------------------------------


@pytest.mark.cluster
def test_our_api_keeps_its_answers_with_compat_off(api: ApiServer, worker: WorkerProcess) -> None:
    assert sr(api, jpeg(), headers={}).status_code == 401
    assert sr(api, None).status_code == 422
    assert sr(api, b"not an image").status_code == 415
    # the default model stays realesrgan-x4plus (cancelled at once: slow on CPU)
    reply = sr(api, jpeg())
    assert reply.status_code == 202
    task_id = reply.json()["task_id"]
    assert wait(api.url, task_id, 0)["model"] == "realesrgan-x4plus"
    requests.delete(f"{api.url}/result/{task_id}", headers={"X-Token": ALICE}, timeout=10)
    # krau's model name is an alias in both modes; resize_to 1/2 halves the UPSCALED size,
    # a JPEG stays JPEG, there is no path, and no CORS header for an unknown origin
    reply = sr(api, jpeg(), model="x4_Anime_6B-Official", resize_to="1/2")
    assert reply.status_code == 202, reply.text
    task_id = reply.json()["task_id"]
    early = download(api.url, task_id)
    result = wait(api.url, task_id)
    assert result["status"] == "success" and "path" not in result
    assert result["model"] == "realesrgan-x4plus-anime"
    assert (result["width"], result["height"], result["format"]) == (64, 48, "jpeg")
    assert early.status_code in (200, 409)  # 409 unless the job had already finished
    got = download(api.url, task_id)
    assert got.headers["Content-Type"] == "image/jpeg"
    reply = requests.get(
        api.url + "/", headers={"X-Token": ALICE, "Origin": "https://a.example"}, timeout=10
    )
    assert "Access-Control-Allow-Origin" not in reply.headers


def test_compat_setting_is_checked(tmp_path: Path) -> None:
    from common.errors import ConfigError

    with pytest.raises(ConfigError, match="SRCLUSTER_API_COMPAT"):
        Settings.from_env({}, data_dir=tmp_path, api_compat="krua")
    krau = Settings.from_env({"SRCLUSTER_API_COMPAT": "krau"}, data_dir=tmp_path)
    assert krau.cors_origin_list() == ("*",)
    narrowed = dataclasses.replace(krau, cors_origins="https://a.example")
    assert narrowed.cors_origin_list() == ("https://a.example",)
    assert Settings.from_env({}, data_dir=tmp_path).cors_origin_list() == ()
