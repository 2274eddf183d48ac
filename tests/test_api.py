"""The HTTP API's shape against a real Redis, without a worker: auth, validation, status codes, errors."""

from __future__ import annotations

import dataclasses
import fnmatch
import http.server
import io
import os
import re
import threading
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient

from api import create_app
from api.auth import TokenTable
from api.fetch import fetch, is_public
from common import tiling
from common.cluster.embedded import free_port
from common.cluster.jobs import window_read
from common.cluster.store import JobStore
from common.errors import BadParameter, ConfigError, ImageTooLarge
from common.imageio import decode
from common.pipeline import JobPlan
from common.settings import Settings
from tests.cluster import redis_for_tests
from tests.tokens import ALICE, BOB, TOKENS

MODEL = "realesr-animevideov3"


# --- fixtures -------------------------------------------------------------------


@pytest.fixture(scope="session")
def api_redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Redis of the API tests' own: they flush it before each test (rq's habit), which on
    the session's shared server would also wipe the queue bindings its workers route by."""
    with redis_for_tests(tmp_path_factory.mktemp("api-redis")) as url:
        yield url


@pytest.fixture
def api_settings(settings: Settings, api_redis_url: str) -> Settings:
    return dataclasses.replace(settings, redis_url=api_redis_url, tokens=TOKENS)


@pytest.fixture
def make_app(api_settings: Settings) -> Iterator[Callable[..., Flask]]:
    """Build apps (``**changes`` to the settings) against a flushed Redis; closed afterwards."""
    apps: list[Flask] = []

    def build(**changes: Any) -> Flask:
        app = create_app(dataclasses.replace(api_settings, **changes))
        app.config["TESTING"] = True
        apps.append(app)
        return app

    client = redis.Redis.from_url(api_settings.redis_url)
    client.flushdb()
    client.close()
    yield build
    for app in apps:
        app.extensions["srcluster"].close()


@pytest.fixture
def app(make_app: Callable[..., Flask]) -> Flask:
    return make_app()


@pytest.fixture
def store(app: Flask) -> JobStore:
    return app.extensions["srcluster"].store  # type: ignore[no-any-return]


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


def as_user(token: str) -> dict[str, str]:
    return {"X-Token": token}


def png(height: int = 120, width: int = 160, channels: int = 3, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (height, width, channels), dtype=np.uint8)
    ok, data = cv2.imencode(".png", pixels)
    assert ok
    return data.tobytes()


def post_sr(
    client: FlaskClient, token: str = ALICE, image: bytes | None = None, **fields: Any
) -> Any:
    form: dict[str, Any] = {"model": MODEL, **fields}
    if image is not None:
        form["file"] = (_stream(image), "in.png")
    return client.post("/sr", data=form, headers=as_user(token), content_type="multipart/form-data")


def _stream(data: bytes) -> io.BytesIO:
    return io.BytesIO(data)


def submit(client: FlaskClient, token: str = ALICE, **fields: Any) -> str:
    reply = post_sr(client, token, png(), tile_size=64, **fields)
    assert reply.status_code == 202, reply.json
    job_id: str = reply.json["task_id"]
    return job_id


def assert_error(reply: Any, status: int, code: str) -> dict[str, Any]:
    assert reply.status_code == status, reply.data[:500]
    assert reply.mimetype == "application/json"
    body: dict[str, Any] = reply.json
    assert set(body) == {"code", "message", "detail"}
    assert body["code"] == code
    assert isinstance(body["message"], str) and body["message"]
    assert isinstance(body["detail"], dict)
    return body


# --- start-up -------------------------------------------------------------------


def test_no_token_configured_fails_at_start(api_settings: Settings) -> None:
    with pytest.raises(ConfigError, match="SRCLUSTER_TOKENS"):
        create_app(dataclasses.replace(api_settings, tokens=""))


def test_no_redis_configured_fails_at_start(api_settings: Settings) -> None:
    with pytest.raises(ConfigError, match="SRCLUSTER_REDIS_URL"):
        create_app(dataclasses.replace(api_settings, redis_url=""))


def test_settings_from_environment(monkeypatch: pytest.MonkeyPatch, api_settings: Settings) -> None:
    monkeypatch.setenv("SRCLUSTER_TOKENS", f"alice:{ALICE}")
    monkeypatch.setenv("SRCLUSTER_REDIS_URL", api_settings.redis_url)
    app = create_app()
    try:
        assert app.test_client().get("/", headers=as_user(ALICE)).status_code == 200
    finally:
        app.extensions["srcluster"].close()


# --- service routes ---------------------------------------------------------------


def test_healthz_needs_no_token(client: FlaskClient) -> None:
    reply = client.get("/healthz")
    assert reply.status_code == 200
    assert reply.json == {"status": "ok"}


def test_healthz_is_503_without_redis(make_app: Callable[..., Flask]) -> None:
    app = make_app(redis_url=f"redis://127.0.0.1:{free_port()}/0")
    reply = app.test_client().get("/healthz")
    assert reply.status_code == 503
    assert reply.json["status"] == "unavailable"


def test_redis_down_is_503_json_not_500(make_app: Callable[..., Flask]) -> None:
    app = make_app(redis_url=f"redis://127.0.0.1:{free_port()}/0")
    assert_error(app.test_client().get("/", headers=as_user(ALICE)), 503, "unavailable")


def test_index(client: FlaskClient) -> None:
    reply = client.get("/", headers=as_user(ALICE))
    assert reply.status_code == 200
    body = reply.json
    assert body["message"] == "srcluster is running"
    assert MODEL in body["models"]
    assert body["workers"] == 0
    assert isinstance(body["version"], str)


def test_index_sends_browsers_to_the_page(client: FlaskClient) -> None:
    reply = client.get("/", headers={"Accept": "text/html,application/xhtml+xml"})
    assert reply.status_code == 302
    assert reply.location.endswith("/ui")


def test_index_describes_each_model(client: FlaskClient) -> None:
    body = client.get("/", headers=as_user(ALICE)).json
    details = body["model_details"]
    assert [d["name"] for d in details] == body["models"]
    compact = next(d for d in details if d["name"] == MODEL)
    assert compact["scale"] == 4 and compact["description"]


@pytest.mark.parametrize("path", ["/ui", "/docs"])
def test_pages_load_only_their_own_files(client: FlaskClient, path: str) -> None:
    reply = client.get(path)
    assert reply.status_code == 200
    assert reply.mimetype == "text/html"
    csp = reply.headers["Content-Security-Policy"]
    assert "default-src 'none'" in csp and "script-src 'self';" in csp
    assert "unsafe" not in csp  # no inline script or style, no eval
    assert reply.headers["X-Content-Type-Options"] == "nosniff"
    html = reply.get_data(as_text=True)
    assert "<script>" not in html and " style=" not in html and "http" not in html
    for asset in re.findall(r'(?:src|href)="(/[^"]+)"', html):
        with client.get(asset) as served:  # a file reply: closed, or its file stays open
            assert served.status_code == 200, asset
            assert served.mimetype in (
                "text/javascript",
                "text/css",
                "image/png",
                "text/html",
                "application/json",
            )


def test_ui_page_scripts_import_what_is_served(client: FlaskClient) -> None:
    with client.get("/static/ui/main.js") as reply:
        main = reply.get_data(as_text=True)
    for module in re.findall(r'from "\./([^"]+)"', main):
        with client.get(f"/static/ui/{module}") as reply:
            assert reply.status_code == 200, module


def test_static_files_stay_inside_their_folders(client: FlaskClient) -> None:
    for path in ("/static/../ui.py", "/static/%2e%2e/ui.py", "/docs/assets/../LICENSE",
                 "/docs/assets/missing.js", "/static/ui/missing.js"):  # fmt: skip
        assert_error(client.get(path), 404, "not_found")


def test_the_wheel_ships_the_page_files() -> None:
    """Every file of the pages matches a ``package-data`` glob, so ``pip install .`` ships it."""
    root = Path(__file__).resolve().parents[1]
    config = tomllib.loads((root / "pyproject.toml").read_text())
    globs = config["tool"]["setuptools"]["package-data"]["api"]
    files = [p for folder in ("static", "templates") for p in (root / "api" / folder).rglob("*")]
    assert files
    for path in files:
        if path.is_file():
            relative = path.relative_to(root / "api").as_posix()
            assert any(fnmatch.fnmatch(relative, g) for g in globs), relative


def test_openapi_describes_every_route(app: Flask, client: FlaskClient) -> None:
    reply = client.get("/openapi.json")
    assert reply.status_code == 200
    doc = reply.json
    assert doc["openapi"].startswith("3.1")
    described = {
        (re.sub(r"\{(\w+)\}", r"<\1>", path.replace("{task_id}", "<job_id>")), method.upper())
        for path, item in doc["paths"].items()
        for method in item
        if method != "parameters"
    }
    routes = {
        (rule.rule, method)
        for rule in app.url_map.iter_rules()
        if rule.endpoint.rpartition(".")[2] != "static"  # files, not operations
        for method in rule.methods or ()
        if method not in ("HEAD", "OPTIONS")
    }
    assert routes == described
    assert "Error" in doc["components"]["schemas"]


# --- errors and auth --------------------------------------------------------------


def test_unknown_route_is_404_json(client: FlaskClient) -> None:
    assert_error(client.get("/no/such/route", headers=as_user(ALICE)), 404, "not_found")


def test_wrong_method_is_405_json(client: FlaskClient) -> None:
    reply = client.put("/sr", headers=as_user(ALICE))
    assert_error(reply, 405, "method_not_allowed")
    assert "POST" in reply.headers["Allow"]


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"X-Token": "wrong-token-0123456789abcdefghij"},
        {"X-Token": ALICE[:-1]},
        {"Authorization": f"Basic {ALICE}"},
        {"Authorization": "Bearer "},
    ],
    ids=["none", "wrong", "prefix", "basic", "empty-bearer"],
)
@pytest.mark.parametrize("route", ["/", "/result/" + "0" * 32, "/result/" + "0" * 32 + "/download"])
def test_token_required(client: FlaskClient, headers: dict[str, str], route: str) -> None:
    reply = client.get(route, headers=headers)
    assert_error(reply, 401, "unauthorized")
    assert reply.headers["WWW-Authenticate"].startswith("Bearer")


def test_submit_and_delete_need_a_token(client: FlaskClient) -> None:
    assert_error(client.post("/sr", data={"file": (_stream(png()), "a.png")}), 401, "unauthorized")
    assert_error(client.delete("/result/" + "0" * 32), 401, "unauthorized")


def test_bearer_token_works(client: FlaskClient) -> None:
    assert client.get("/", headers={"Authorization": f"Bearer {BOB}"}).status_code == 200


def test_token_table_names_tokens() -> None:
    table = TokenTable({ALICE: "alice", BOB: "bob"})
    assert table.check(ALICE) == "alice"
    assert table.check(BOB) == "bob"
    assert table.check(ALICE + "x") is None
    assert table.check("") is None


# --- submitting -------------------------------------------------------------------


def test_submit_records_a_pending_job_and_queues_its_tiles(
    client: FlaskClient, store: JobStore, api_settings: Settings
) -> None:
    upload = png()
    reply = post_sr(client, ALICE, upload, tile_size=64, timeout=30)
    assert reply.status_code == 202
    job_id = reply.json["task_id"]
    assert reply.json["message"] == "Success"
    assert len(job_id) == 32 and int(job_id, 16) >= 0
    assert reply.headers["Location"] == f"/result/{job_id}"

    record = store.get(job_id)
    assert record is not None
    plan = JobPlan.from_dict(record.plan)
    tasks = plan.part_count
    assert tasks > 1
    # every part's window is exactly the bytes its task will read from the stored strips
    extended = tiling.extend(decode(upload, 1 << 24).pixels)
    shape = (plan.tiles.window_height, plan.tiles.window_width, 3)
    for part in range(tasks):
        read = window_read(plan, part)
        strip = store.read_strip(job_id, read.plane, read.column)
        assert strip is not None
        window = np.frombuffer(strip[read.first : read.last + 1], np.uint8).reshape(shape)
        _, tile = plan.locate(part)
        np.testing.assert_array_equal(window, tiling.window(extended, plan.tiles, tile))
    assert record.owner_name == "alice"
    assert record.deadline - record.created == pytest.approx(30)
    assert record.groups == plan.group_count >= 1
    assert store.redis.llen(api_settings.tile_queue) == record.groups

    result = client.get(f"/result/{job_id}", headers=as_user(ALICE))
    assert result.status_code == 200
    body = result.json["result"]
    assert body["status"] == "pending"
    assert body["progress"] == {"done": 0, "total": tasks}
    assert body["model"] == MODEL


def test_submit_with_bearer_and_defaults(client: FlaskClient, store: JobStore) -> None:
    reply = client.post(
        "/sr",
        data={"file": (_stream(png(40, 50, 4)), "in.png"), "model": MODEL},
        headers={"Authorization": f"Bearer {BOB}"},
    )
    assert reply.status_code == 202, reply.json
    record = store.get(reply.json["task_id"])
    assert record is not None
    assert record.owner_name == "bob"
    assert record.deadline - record.created == pytest.approx(store_timeout(client))


def store_timeout(client: FlaskClient) -> int:
    return client.application.extensions["srcluster"].settings.timeout  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    ("field", "value", "code"),
    [
        ("scale", "1", "bad_parameter"),
        ("scale", "abc", "bad_parameter"),
        ("tile_size", "8", "bad_parameter"),
        ("tile_size", "huge", "bad_parameter"),
        ("tile_pad", "-1", "bad_parameter"),
        ("skip_alpha", "maybe", "bad_parameter"),
        ("resize_to", "big", "bad_parameter"),
        ("format", "gif", "bad_parameter"),
        ("format", "bmp", "bad_parameter"),
        ("model", "no-such-model", "unknown_model"),
        ("timeout", "0", "bad_parameter"),
        ("timeout", "3601", "bad_parameter"),
        ("timeout", "soon", "bad_parameter"),
    ],
)
def test_bad_parameters_are_422_naming_them(
    client: FlaskClient, field: str, value: str, code: str
) -> None:
    body = assert_error(post_sr(client, ALICE, png(), **{field: value}), 422, code)
    assert body["detail"]["parameter"] == field


def test_neither_file_nor_url_is_422(client: FlaskClient) -> None:
    assert_error(post_sr(client, ALICE), 422, "bad_parameter")
    reply = client.post("/sr", json={"model": MODEL}, headers=as_user(ALICE))
    assert_error(reply, 422, "bad_parameter")


def test_both_file_and_url_is_422(client: FlaskClient) -> None:
    reply = post_sr(client, ALICE, png(), url="https://example.com/a.png")
    assert_error(reply, 422, "bad_parameter")


def test_file_as_a_plain_field_is_422(client: FlaskClient) -> None:
    reply = client.post("/sr", data={"file": "not an upload"}, headers=as_user(ALICE))
    assert_error(reply, 422, "bad_parameter")


def test_a_form_part_without_a_name_is_422(client: FlaskClient) -> None:
    # found by the fuzz test: werkzeug keys such a part under None
    body = (
        b"--b\r\nContent-Disposition: form-data\r\n\r\nx\r\n"
        b'--b\r\nContent-Disposition: form-data; name="model"\r\n\r\n'
        + MODEL.encode()
        + b"\r\n--b--\r\n"
    )
    reply = client.post(
        "/sr", data=body, content_type="multipart/form-data; boundary=b", headers=as_user(ALICE)
    )
    assert "no name" in assert_error(reply, 422, "bad_parameter")["message"]


def test_empty_file_is_415(client: FlaskClient) -> None:
    body = assert_error(post_sr(client, ALICE, b""), 415, "unsupported_image")
    assert body["message"] == "empty file"


def test_not_an_image_is_415(client: FlaskClient) -> None:
    assert_error(post_sr(client, ALICE, b"hello, I am text" * 10), 415, "unsupported_image")
    assert_error(post_sr(client, ALICE, png()[:60]), 415, "unsupported_image")


def test_too_many_bytes_is_413(make_app: Callable[..., Flask]) -> None:
    image = png()
    client = make_app(max_bytes=len(image) - 1).test_client()
    assert_error(post_sr(client, ALICE, image), 413, "too_large")
    # far over: refused by MAX_CONTENT_LENGTH before the body is parsed
    client = make_app(max_bytes=1000).test_client()
    reply = post_sr(client, ALICE, png(300, 300))
    body = assert_error(reply, 413, "too_large")
    assert body["detail"]["limit"] == 1000


def test_too_many_pixels_is_413(make_app: Callable[..., Flask]) -> None:
    client = make_app(max_pixels=100 * 100).test_client()
    assert_error(post_sr(client, ALICE, png(101, 100)), 413, "too_large")


def test_private_url_is_refused(client: FlaskClient) -> None:
    for url in (
        f"http://127.0.0.1:{free_port()}/a.png",
        "http://localhost/a.png",
        "http://[::1]/a.png",
        "http://169.254.169.254/latest/meta-data",
        "http://10.1.2.3/a.png",
        "ftp://example.com/a.png",
        "file:///etc/passwd",
        "http://user:pw@example.com/a.png",
    ):
        body = assert_error(post_sr(client, ALICE, url=url), 422, "bad_parameter")
        assert body["detail"]["parameter"] == "url", url


# --- reading, downloading, cancelling ------------------------------------------------


@pytest.mark.parametrize(
    "job_id", ["xyz", "0" * 31, "0" * 33, "A" * 32, "g" * 32, "*", "0" * 31 + "*", "0" * 32 + " "]
)
def test_odd_ids_are_404_without_touching_redis(
    client: FlaskClient, store: JobStore, monkeypatch: pytest.MonkeyPatch, job_id: str
) -> None:
    def forbidden(*args: Any) -> None:
        raise AssertionError("redis was asked about a malformed id")

    monkeypatch.setattr(store, "get", forbidden)
    for reply in (
        client.get(f"/result/{job_id}", headers=as_user(ALICE)),
        client.get(f"/result/{job_id}/download", headers=as_user(ALICE)),
        client.delete(f"/result/{job_id}", headers=as_user(ALICE)),
    ):
        assert_error(reply, 404, "not_found")


def test_another_tokens_job_looks_missing(client: FlaskClient) -> None:
    job_id = submit(client, ALICE)
    missing = client.get("/result/" + "0" * 32, headers=as_user(BOB))
    for reply in (
        client.get(f"/result/{job_id}", headers=as_user(BOB)),
        client.get(f"/result/{job_id}/download", headers=as_user(BOB)),
        client.delete(f"/result/{job_id}", headers=as_user(BOB)),
    ):
        assert_error(reply, 404, "not_found")
        assert reply.json == missing.json
    # and bob's delete changed nothing
    assert (
        client.get(f"/result/{job_id}", headers=as_user(ALICE)).json["result"]["status"]
        == "pending"
    )


def test_download_of_a_pending_job_is_409(client: FlaskClient) -> None:
    job_id = submit(client)
    body = assert_error(
        client.get(f"/result/{job_id}/download", headers=as_user(ALICE)), 409, "not_ready"
    )
    assert body["detail"]["status"] == "pending"


def test_delete_of_a_pending_job_cancels_it(client: FlaskClient, store: JobStore) -> None:
    job_id = submit(client)
    reply = client.delete(f"/result/{job_id}", headers=as_user(ALICE))
    assert reply.status_code == 200
    assert reply.json["result"]["status"] == "cancelled"
    assert not list(store.redis.scan_iter(match=store.key(job_id, "in", "*")))
    assert (
        client.get(f"/result/{job_id}", headers=as_user(ALICE)).json["result"]["status"]
        == "cancelled"
    )
    body = assert_error(
        client.get(f"/result/{job_id}/download", headers=as_user(ALICE)), 409, "not_ready"
    )
    assert body["detail"]["status"] == "cancelled"
    again = client.delete(f"/result/{job_id}", headers=as_user(ALICE))
    assert again.status_code == 200 and again.json["result"]["status"] == "cancelled"


def test_download_and_delete_of_a_finished_job(client: FlaskClient, store: JobStore) -> None:
    job_id = submit(client, format="webp")
    image = b"RIFF....WEBPfake"
    output = {
        "size": len(image),
        "width": 640,
        "height": 480,
        "format": "webp",
        "content_type": "image/webp",
    }
    assert store.succeed(job_id, image, output)

    status = client.get(f"/result/{job_id}", headers=as_user(ALICE)).json["result"]
    assert status["status"] == "success"
    assert status["width"] == 640 and status["format"] == "webp"

    reply = client.get(f"/result/{job_id}/download", headers=as_user(ALICE))
    assert reply.status_code == 200
    assert reply.data == image
    assert reply.mimetype == "image/webp"
    assert f'filename="{job_id}.webp"' in reply.headers["Content-Disposition"]

    deleted = client.delete(f"/result/{job_id}", headers=as_user(ALICE))
    assert deleted.status_code == 200
    assert deleted.json["result"]["status"] == "success"
    assert store.result(job_id) is None
    assert_error(client.get(f"/result/{job_id}/download", headers=as_user(ALICE)), 410, "gone")


# --- url fetching -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "public"),
    [
        ("8.8.8.8", True),
        ("2606:4700:4700::1111", True),
        ("127.0.0.1", False),
        ("10.0.0.1", False),
        ("172.16.5.4", False),
        ("192.168.1.1", False),
        ("100.64.0.1", False),
        ("169.254.169.254", False),
        ("0.0.0.0", False),
        ("224.0.1.1", False),
        ("255.255.255.255", False),
        ("::1", False),
        ("::", False),
        ("fe80::1", False),
        ("fc00::1", False),
        ("ff02::1", False),
        ("::ffff:127.0.0.1", False),
        ("::ffff:8.8.8.8", True),
        ("64:ff9b::a00:1", False),
        ("2002:a00:1::", False),
        ("not-an-ip", False),
    ],
)
def test_is_public(address: str, public: bool) -> None:
    assert is_public(address) is public


class _Handler(http.server.BaseHTTPRequestHandler):
    body = b""

    def do_GET(self) -> None:
        if self.path.startswith("/loop"):
            self.send_response(302)
            self.send_header("Location", "/loop")
            self.end_headers()
        elif self.path == "/private":
            self.send_response(301)
            self.send_header("Location", "http://10.0.0.1/a.png")
            self.end_headers()
        elif self.path == "/missing":
            self.send_error(404)
        else:
            self.send_response(200)
            self.send_header("Content-Length", str(len(self.body)))
            self.end_headers()
            self.wfile.write(self.body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def local_server() -> Iterator[str]:
    _Handler.body = png(20, 20)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join()


def loopback_only(address: str) -> bool:
    return address == "127.0.0.1"


def test_fetch_reads_and_limits(local_server: str) -> None:
    assert fetch(local_server + "/a.png", max_bytes=10**6, allowed=loopback_only) == _Handler.body
    with pytest.raises(ImageTooLarge):
        fetch(local_server + "/a.png", max_bytes=10, allowed=loopback_only)
    with pytest.raises(BadParameter, match="HTTP 404"):
        fetch(local_server + "/missing", max_bytes=10**6, allowed=loopback_only)


def test_fetch_checks_every_redirect(local_server: str) -> None:
    with pytest.raises(BadParameter, match="redirected more than"):
        fetch(local_server + "/loop", max_bytes=10**6, allowed=loopback_only)
    with pytest.raises(BadParameter, match="non-public"):
        fetch(local_server + "/private", max_bytes=10**6, allowed=loopback_only)
    with pytest.raises(BadParameter, match="non-public"):
        fetch(local_server + "/a.png", max_bytes=10**6)


ODD_VALUES = [
    "",
    " ",
    "nan",
    "inf",
    "-inf",
    "1e999",
    "9" * 5000,
    "0x10",
    "1/0",
    "0x0",
    "\u00e9\u0000",
    "true",
]


@pytest.mark.parametrize(
    "field",
    ["model", "scale", "tile_size", "tile_pad", "skip_alpha", "resize_to", "format", "timeout"],
)
def test_odd_values_are_never_500(client: FlaskClient, field: str) -> None:
    for value in ODD_VALUES:
        reply = post_sr(client, ALICE, png(24, 24), **{field: value})
        assert reply.status_code in (202, 413, 422), (field, value, reply.json)
        if reply.status_code != 202:
            assert_error(reply, reply.status_code, reply.json["code"])


def test_a_result_in_a_blob_folder_is_streamed_to_its_owner_only(
    make_app: Callable[..., Flask], tmp_path: Path
) -> None:
    app = make_app(blob_url=(tmp_path / "blobs").as_uri())
    client = app.test_client()
    store: JobStore = app.extensions["srcluster"].store
    job_id = submit(client, ALICE)
    assert store.blobs is not None and any(n.startswith("in-") for n in store.blobs.names(job_id))
    image = os.urandom(5 * 2**20 + 3)  # several chunks of the stream
    assert store.succeed(job_id, image, {"size": len(image), "content_type": "image/png"})
    assert_error(client.get(f"/result/{job_id}/download", headers=as_user(BOB)), 404, "not_found")
    reply = client.get(f"/result/{job_id}/download", headers=as_user(ALICE))
    assert reply.status_code == 200 and reply.content_length == len(image)
    assert reply.data == image and reply.mimetype == "image/png"
    assert client.delete(f"/result/{job_id}", headers=as_user(ALICE)).status_code == 200
    assert store.blobs.names(job_id) == []
    assert_error(client.get(f"/result/{job_id}/download", headers=as_user(ALICE)), 410, "gone")


def test_a_blob_store_that_fails_is_a_503(make_app: Callable[..., Flask], tmp_path: Path) -> None:
    root = tmp_path / "blobs"
    app = make_app(blob_url=root.as_uri())
    root.rmdir()
    root.write_bytes(b"not a folder")  # every job folder under it now fails to be made
    body = assert_error(post_sr(app.test_client(), ALICE, png(), tile_size=64), 503, "unavailable")
    assert "blob store" in body["message"]
