"""Every bad request in ``tests/bad_requests.py`` gets its exact 4xx as JSON, never a 5xx.

Sent over real HTTP to the API under gunicorn while a real worker runs; a job
submitted before the corpus and one after both still succeed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import http.client
import http.server
import io
import json
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import cv2
import numpy as np
import PIL.Image
import pytest
import requests

from api import create_app, routes
from api.fetch import fetch
from api.server import HEAD_SECONDS
from common.cluster.store import JobStore, token_hash
from common.errors import BadParameter
from common.imageio import decode, encode
from common.settings import DEFAULT_MAX_BYTES, Settings
from tests.bad_requests import CASES, COMPACT, PNG, BadRequest
from tests.cluster import ApiServer
from tests.slow_clients import healthz_seconds, slow_connections
from tests.test_cluster import download, submit, wait_done
from tests.tokens import ALICE

pytestmark = pytest.mark.cluster


@pytest.fixture(scope="module")
def jobs(api: ApiServer, worker: Any, cluster_settings: Settings) -> Iterator[dict[str, str]]:
    """The placeholders of the corpus: a real job of ALICE's (submitted before any bad
    request), a pending job of ALICE's that never runs, and the API's address."""
    assert cluster_settings.max_bytes == DEFAULT_MAX_BYTES, "the corpus's limits are the defaults"
    before = submit(api, PNG, tile_size=32)
    store = JobStore.from_url(cluster_settings.redis_url, cluster_settings.result_ttl)
    pending = "f" * 32
    store.create(
        pending,
        owner=token_hash(ALICE),
        owner_name="alice",
        params={"model": COMPACT},
        plan={},
        parts=0,
        strips=[],
        extras={},
        timeout=cluster_settings.max_timeout,
    )
    yield {"alice_job": before, "pending_job": pending, "api": api.url}
    store.cancel(pending)
    store.delete(pending)
    store.redis.close()


def send(api: ApiServer, case: BadRequest, values: dict[str, str]) -> tuple[int, str, bytes]:
    """Send ``case``; its status, Content-Type and body."""
    path = case.path.format_map(values)
    if case.raw:
        conn = http.client.HTTPConnection("127.0.0.1", api.port, timeout=60)
        try:
            conn.request(case.method, path, body=case.body, headers=case.headers)
            reply = conn.getresponse()
            return reply.status, reply.getheader("Content-Type", ""), reply.read()
        finally:
            conn.close()
    kwargs: dict[str, Any] = {"headers": case.headers, "timeout": 60}
    if case.body is not None:
        kwargs["data"] = case.body
    elif case.method in ("POST", "PUT"):
        kwargs["data"] = {k: v.format_map(values) for k, v in case.form.items()}
        if case.files:
            kwargs["files"] = {
                name: (filename, data() if callable(data) else data, mime)
                for name, (filename, data, mime) in case.files.items()
            }
    reply = requests.request(case.method, api.url + path, **kwargs)
    return reply.status_code, reply.headers.get("Content-Type", ""), reply.content


def test_the_corpus_is_big_and_named_uniquely() -> None:
    assert len(CASES) >= 30
    names = [case.name for case in CASES]
    assert len(names) == len(set(names))


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_bad_request_gets_its_exact_4xx(
    api: ApiServer, jobs: dict[str, str], case: BadRequest
) -> None:
    status, content_type, raw = send(api, case, jobs)
    assert status < 500, f"{case.name}: server error {status}: {raw[:500]!r}"
    assert status == case.status, f"{case.name}: {status} {raw[:500]!r}"
    assert content_type.split(";")[0] == "application/json", (case.name, content_type)
    body = json.loads(raw)
    assert set(body) == {"code", "message", "detail"}, body
    assert body["code"] == case.code, body
    assert isinstance(body["message"], str) and body["message"].strip(), body
    assert isinstance(body["detail"], dict), body
    if case.parameter is not None:
        assert body["detail"].get("parameter") == case.parameter, body


def test_jobs_before_and_after_the_corpus_succeed(
    api: ApiServer, jobs: dict[str, str], cluster_settings: Settings
) -> None:
    after = submit(api, PNG, tile_size=32)
    for job_id in (jobs["alice_job"], after):
        body = wait_done(api, job_id)
        assert body["status"] == "success", body
        assert (body["width"], body["height"]) == (96, 96)
        assert download(api, job_id).content_type == "image/png"
    assert "unexpected error" not in api.log.read_text(errors="replace")


# --- a redirect to loopback, through the API -------------------------------------------


class _Handler(http.server.BaseHTTPRequestHandler):
    hits: list[str] = []  # noqa: RUF012 (one list for the test's two servers)
    target = ""

    def do_GET(self) -> None:
        self.hits.append(f"{self.server.server_address[0]}{self.path}")
        if self.path in ("/go", "/broken"):
            self.send_response(302)
            self.send_header("Location", self.target if self.path == "/go" else "http://[::1/a")
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.send_header("Content-Length", str(len(PNG)))
        self.end_headers()
        self.wfile.write(PNG)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def two_servers() -> Iterator[tuple[str, str]]:
    """An image server on 127.0.0.1 and a redirector on 127.0.0.2 (another loopback address)."""
    servers = []
    for host in ("127.0.0.1", "127.0.0.2"):
        try:
            server = http.server.ThreadingHTTPServer((host, 0), _Handler)
        except OSError as exc:
            for started in servers:
                started.shutdown()
                started.server_close()
            pytest.skip(f"cannot listen on {host}: {exc}")
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
    _Handler.hits = []
    image, redirector = (f"http://{s.server_address[0]}:{s.server_address[1]}" for s in servers)
    yield image, redirector
    for server in servers:
        server.shutdown()
        server.server_close()


def test_redirect_to_loopback_is_refused(
    cluster_settings: Settings, two_servers: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first hop (127.0.0.2) is let through for the test; its redirect to 127.0.0.1 is not."""
    image, redirector = two_servers
    _Handler.target = image + "/a.png"
    allowed = functools.partial(fetch, allowed=lambda address: address == "127.0.0.2")
    monkeypatch.setattr(routes, "fetch", allowed)
    app = create_app(dataclasses.replace(cluster_settings))
    try:
        client = app.test_client()
        # the first hop alone would be fetched: proof the allowance works
        assert allowed(redirector + "/a.png", max_bytes=10**6) == PNG
        start = time.monotonic()
        reply = client.post(
            "/sr",
            data={"model": COMPACT, "url": redirector + "/go"},
            headers={"X-Token": ALICE},
        )
        assert time.monotonic() - start < 10
        assert reply.status_code == 422, reply.json
        assert reply.json["code"] == "bad_parameter"
        assert reply.json["detail"]["parameter"] == "url"
        assert "non-public" in reply.json["message"]
        host = redirector.removeprefix("http://").split(":")[0]
        assert _Handler.hits == [f"{host}/a.png", f"{host}/go"], "127.0.0.1 was never asked"
        # a redirect to a malformed address is refused too (it was a 500)
        reply = client.post(
            "/sr",
            data={"model": COMPACT, "url": redirector + "/broken"},
            headers={"X-Token": ALICE},
        )
        assert reply.status_code == 422, reply.json
        assert reply.json["detail"]["parameter"] == "url"
    finally:
        app.extensions["srcluster"].close()


# --- gunicorn's own refusals, over a raw socket ----------------------------------------

RAW_REFUSALS = [
    ("request line over the limit (a 5000-character job id)", b"GET /result/" + b"a" * 5000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414, "uri_too_long"),
    ("a header over the limit (a long token)", b"GET / HTTP/1.1\r\nHost: x\r\nX-Token: " + b"t" * 9000 + b"\r\n\r\n", 431, "headers_too_large"),
    ("too many headers", b"GET / HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(150)) + b"\r\n", 431, "headers_too_large"),
    ("a bad Content-Length", b"POST /sr HTTP/1.1\r\nHost: x\r\nContent-Length: 12x\r\n\r\n", 400, "bad_request"),
    ("two Content-Lengths", b"POST /sr HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab", 400, "bad_request"),
    ("a control byte in a header", b"GET / HTTP/1.1\r\nHost: x\r\nX-Token: a\x01b\r\n\r\n", 400, "bad_request"),
    ("bare LF line ends", b"GET / HTTP/1.1\nHost: x\n\n", 400, "bad_request"),
    ("HTTP/0.9", b"GET /\r\n\r\n", 400, "bad_request"),
    ("HTTP/2.0 in a request line", b"GET / HTTP/2.0\r\nHost: x\r\n\r\n", 400, "bad_request"),
    ("a garbage request line", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 hello\r\n\r\n", 400, "bad_request"),
    ("an Expect it cannot meet", b"POST /sr HTTP/1.1\r\nHost: x\r\nExpect: 200-ok\r\nContent-Length: 1\r\n\r\na", 417, "expectation_failed"),
    ("a malformed chunked body", b"POST /sr HTTP/1.1\r\nHost: x\r\nX-Token: " + ALICE.encode() + b"\r\nContent-Type: multipart/form-data; boundary=x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n", 400, "bad_request"),
]  # fmt: skip
"""Requests gunicorn itself refuses (or that break while the app reads them), and the
status and code each must get, in the service's JSON."""


def raw_exchange(port: int, request: bytes, timeout: float = 30) -> bytes:
    """Send ``request`` as bytes, return everything the server sends until it closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(request)
        with contextlib.suppress(ConnectionResetError):
            sock.shutdown(socket.SHUT_WR)
        reply = b""
        with contextlib.suppress(ConnectionResetError):
            while chunk := sock.recv(65536):
                reply += chunk
    return reply


def parse_reply(reply: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = reply.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
    return int(lines[0].split(" ")[1]), {k.lower(): v for k, v in headers.items()}, body


@pytest.mark.parametrize(
    "name,request_bytes,status,code", RAW_REFUSALS, ids=[r[0] for r in RAW_REFUSALS]
)
def test_gunicorn_refusal_is_our_json(
    api: ApiServer, name: str, request_bytes: bytes, status: int, code: str
) -> None:
    got, headers, body = parse_reply(raw_exchange(api.port, request_bytes))
    assert got == status, (name, got, body[:300])
    assert headers["content-type"].split(";")[0] == "application/json", (name, headers)
    payload = json.loads(body[: int(headers["content-length"])])
    assert set(payload) == {"code", "message", "detail"}, payload
    assert payload["code"] == code, payload
    assert payload["message"].strip(), payload


@pytest.fixture
def dripping_server() -> Iterator[str]:
    """A server that answers ``200`` and then one header line a second, for a minute."""
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve() -> None:
        with contextlib.suppress(OSError):
            conn, _ = listener.accept()
            with conn:
                conn.recv(65536)
                conn.sendall(b"HTTP/1.1 200 OK\r\n")
                for i in range(60):
                    if stop.wait(1.0):
                        return
                    conn.sendall(b"X-Drip-%d: 1\r\n" % i)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}/a.png"
    stop.set()
    listener.close()
    thread.join(5)


def test_url_dripping_headers_is_cut_at_the_time_limit(dripping_server: str) -> None:
    """The fetch's one deadline covers the headers too (a server dripping one header a
    second held a fetch 60 s past the 10 s limit)."""
    start = time.monotonic()
    with pytest.raises(BadParameter) as refused:
        fetch(dripping_server, max_bytes=10**6, time_limit=3, allowed=lambda address: True)
    took = time.monotonic() - start
    assert took < 8, f"the fetch took {took:.1f} s, its limit is 3 s"
    assert refused.value.detail["parameter"] == "url"
    assert "took over 3 s" in refused.value.message


# --- odd but honest images: they work -------------------------------------------------------


def _cmyk_tiff() -> bytes:
    rgb = np.zeros((24, 24, 3), np.uint8)
    rgb[..., 0], rgb[:12, :, 1], rgb[..., 2] = 200, 120, 60
    out = io.BytesIO()
    PIL.Image.fromarray(rgb).convert("CMYK").save(out, "TIFF", compression="tiff_lzw")
    return out.getvalue()


def _tiff16() -> bytes:
    pixels = np.arange(24 * 24 * 3, dtype=np.uint32).reshape(24, 24, 3) * 37 % 65536
    ok, buf = cv2.imencode(".tiff", pixels.astype(np.uint16))
    assert ok
    return buf.tobytes()


ODD_IMAGES = {
    "1x20000 png": (lambda: encode(np.full((20000, 1, 3), 128, np.uint8), "png"), (4, 80000)),
    "20000x1 png": (lambda: encode(np.full((1, 20000, 3), 64, np.uint8), "png"), (80000, 4)),
    "CMYK tiff": (_cmyk_tiff, (96, 96)),
    "16-bit tiff": (_tiff16, (96, 96)),
}


@pytest.mark.parametrize("name", list(ODD_IMAGES))
def test_odd_image_completes(api: ApiServer, worker: Any, name: str) -> None:
    make, (width, height) = ODD_IMAGES[name]
    job_id = submit(api, make())
    body = wait_done(api, job_id, timeout=300)
    assert body["status"] == "success", body
    assert (body["width"], body["height"]) == (width, height)
    out = decode(download(api, job_id).data, 1 << 30)
    assert (out.width, out.height) == (width, height)
    if name == "16-bit tiff":
        assert out.bit_depth == 16
    if name == "CMYK tiff":  # converted to RGB, not CMYK samples read as RGB
        top = out.pixels[10, 48, :3].astype(int)
        assert abs(top[0] - 200) < 12 and abs(top[1] - 120) < 12 and abs(top[2] - 60) < 12, top


# --- slow clients ---------------------------------------------------------------------------

SLOW_DRIPPING = 200
SLOW_IDLE = 100
"""Slow connections the test holds: 6 times the API's 2 x 16 threads (and the 6-64 slow
connections that made /healthz time out with 2 sync workers)."""


def test_slow_clients_do_not_take_the_api(api: ApiServer) -> None:
    """Hundreds of connections dripping their headers, or sending nothing, hold no thread:
    /healthz keeps answering; a head not whole after HEAD_SECONDS is answered 408 JSON."""
    with slow_connections(api.port, SLOW_DRIPPING, SLOW_IDLE, lines=int(HEAD_SECONDS) + 3) as held:
        time.sleep(1.5)
        waits = [healthz_seconds(api.port) for _ in range(8)]
        time.sleep(HEAD_SECONDS + 1.5)  # their heads are overdue now
        waits += [healthz_seconds(api.port) for _ in range(4)]
    assert max(waits) < 2.0, f"/healthz waited {max(waits):.2f} s behind slow clients"
    timed_out = [r for r in held.replies if r.startswith(b"HTTP/1.1 408")]
    assert len(timed_out) == SLOW_DRIPPING, f"{len(timed_out)} of {SLOW_DRIPPING} got a 408"
    _, headers, body = parse_reply(timed_out[0])
    assert headers["content-type"] == "application/json"
    assert json.loads(body)["code"] == "request_timeout"
