"""Callbacks and ``Prefer: wait`` at the API, against a real Redis, without a worker.

The deliverer (:func:`common.cluster.callbacks.deliver_due`) runs here in the
test's process against a receiver on loopback, so each outcome (signed body,
retry after a 500, refusal at delivery) is checked exactly; ``test_webhooks.py``
shows the same through real workers.
"""

from __future__ import annotations

import base64
import dataclasses
import io
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient
from standardwebhooks import Webhook
from werkzeug.datastructures import Headers

from api import create_app
from api.waiting import requested_wait
from common.cluster import callbacks
from common.cluster.store import CALLBACKS, JobStore
from common.errors import BadParameter
from common.settings import Settings
from tests.cluster import redis_for_tests
from tests.receiver import receiver
from tests.test_api import as_user, assert_error, png, post_sr
from tests.tokens import ALICE, TOKENS, WEBHOOK_SECRET


@pytest.fixture(scope="module")
def hook_redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Redis of this module's own, flushed before each test (as the API tests do)."""
    with redis_for_tests(tmp_path_factory.mktemp("callbacks-redis")) as url:
        yield url


@pytest.fixture
def make_app(settings: Settings, hook_redis_url: str) -> Iterator[Callable[..., Flask]]:
    """Build apps (``**changes`` to the settings) against a flushed Redis; closed afterwards."""
    apps: list[Flask] = []
    base = dataclasses.replace(settings, redis_url=hook_redis_url, tokens=TOKENS)

    def build(**changes: Any) -> Flask:
        app = create_app(dataclasses.replace(base, **changes))
        app.config["TESTING"] = True
        apps.append(app)
        return app

    flush = redis.Redis.from_url(hook_redis_url)
    flush.flushdb()
    flush.close()
    yield build
    for app in apps:
        app.extensions["srcluster"].close()


@pytest.fixture
def hooked(make_app: Callable[..., Flask]) -> Flask:
    """An app with callbacks on and the default SSRF rules (private targets refused)."""
    return make_app(webhook_secret=WEBHOOK_SECRET)


@pytest.fixture
def loopback_app(make_app: Callable[..., Flask]) -> Flask:
    """An app that lets callbacks reach a receiver on loopback (tests only)."""
    return make_app(webhook_secret=WEBHOOK_SECRET, webhook_allow_private=True, wait_slots=2)


def store_of(app: Flask) -> JobStore:
    return app.extensions["srcluster"].store  # type: ignore[no-any-return]


def settings_of(app: Flask) -> Settings:
    return app.extensions["srcluster"].settings  # type: ignore[no-any-return]


def submit(client: FlaskClient, **fields: Any) -> str:
    reply = post_sr(client, ALICE, png(40, 40), tile_size=32, **fields)
    assert reply.status_code == 202, reply.json
    return str(reply.json["task_id"])


# --- callback_url at submit ---------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:9/hook",
        "http://localhost/hook",
        "http://[::1]/hook",
        "http://[::ffff:127.0.0.1]/hook",
        "http://10.1.2.3/hook",
        "http://192.168.0.10/hook",
        "http://172.16.0.1/hook",
        "http://169.254.169.254/latest/meta-data",
        "http://0.0.0.0/hook",
        "ftp://example.com/hook",
        "file:///etc/passwd",
        "http://user:pw@example.com/hook",
        "http:///no-host",
        "http://example.com/" + "a" * 2100,
    ],
)
def test_loopback_and_private_callbacks_are_refused(hooked: Flask, url: str) -> None:
    assert not settings_of(hooked).webhook_allow_private, "the default refuses"
    body = assert_error(
        post_sr(hooked.test_client(), ALICE, png(), callback_url=url), 422, "bad_parameter"
    )
    assert body["detail"]["parameter"] == "callback_url", body
    assert store_of(hooked).redis.zcard("srcluster:active") == 0, "no job was made"


def test_callbacks_are_refused_when_no_secret_is_set(make_app: Callable[..., Flask]) -> None:
    client = make_app().test_client()
    body = assert_error(
        post_sr(client, ALICE, png(), callback_url="http://example.com/hook"), 422, "bad_parameter"
    )
    assert "SRCLUSTER_WEBHOOK_SECRET" in body["message"]


def test_a_malformed_secret_fails_at_start() -> None:
    with pytest.raises(Exception, match="SRCLUSTER_WEBHOOK_SECRET"):
        Settings.from_env({"SRCLUSTER_WEBHOOK_SECRET": "not base64 !"})


# --- delivery (in this process) -------------------------------------------------------


def verify(delivery: Any) -> dict[str, Any]:
    """The body, once the reference implementation has checked its signature."""
    return Webhook(WEBHOOK_SECRET).verify(delivery.body, delivery.headers)  # type: ignore[no-any-return]


def test_a_cancelled_job_is_called_back_signed(loopback_app: Flask) -> None:
    client = loopback_app.test_client()
    store = store_of(loopback_app)
    outbox = callbacks.Outbox(store)
    with receiver() as hook:
        job_id = submit(client, callback_url=hook.url)
        shown = client.get(f"/result/{job_id}", headers=as_user(ALICE)).json["result"]
        assert shown["callback"] == {"status": "waiting", "attempts": 0}
        assert callbacks.deliver_due(outbox, settings_of(loopback_app)) == 0, "nothing ended yet"

        client.delete(f"/result/{job_id}", headers=as_user(ALICE))
        # queued by the same step that ended the job, before anyone delivers it
        assert store.redis.zscore(CALLBACKS, store.key(job_id)) is not None
        assert callbacks.deliver_due(outbox, settings_of(loopback_app)) == 1
        (delivery,) = hook.for_job(job_id)
        body = verify(delivery)
        expected = client.get(f"/result/{job_id}", headers=as_user(ALICE)).json["result"]
        assert expected.pop("callback") == {"status": "delivered", "attempts": 1}
        assert body == {"result": expected}
        assert body["result"]["status"] == "cancelled" and body["result"]["task_id"] == job_id
        assert delivery.headers["content-type"] == "application/json"

        assert callbacks.deliver_due(outbox, settings_of(loopback_app)) == 0, "once per job"
        assert store.redis.zcard(CALLBACKS) == 0
        assert len(hook.for_job(job_id)) == 1


def test_a_failed_delivery_is_retried_with_backoff(make_app: Callable[..., Flask]) -> None:
    app = make_app(
        webhook_secret=WEBHOOK_SECRET,
        webhook_allow_private=True,
        webhook_retry_delay=0.3,
        webhook_attempts=3,
    )
    client, store, settings = app.test_client(), store_of(app), settings_of(app)
    outbox = callbacks.Outbox(store)
    with receiver(answers=[500, 503]) as hook:
        job_id = submit(client, callback_url=hook.url)
        store.fail(job_id, "timeout", "the job ran past its timeout")
        assert callbacks.deliver_due(outbox, settings) == 1
        assert callbacks.deliver_due(outbox, settings) == 0, "not due again at once"
        shown = store.get(job_id)
        assert shown is not None and shown.callback == {
            "status": "pending",
            "attempts": 1,
            "error": "HTTP 500",
        }
        time.sleep(0.35)
        assert callbacks.deliver_due(outbox, settings) == 1  # 503
        assert callbacks.deliver_due(outbox, settings) == 0, "the second wait is 4x the first"
        time.sleep(0.9)
        assert callbacks.deliver_due(outbox, settings) == 0
        time.sleep(0.4)
        assert callbacks.deliver_due(outbox, settings) == 1  # 200
        deliveries = hook.for_job(job_id)
        assert len(deliveries) == 3
        bodies = [verify(d) for d in deliveries]
        assert all(b == bodies[0] for b in bodies), "the same body every time"
        assert bodies[0]["result"]["error"]["code"] == "timeout"
        shown = store.get(job_id)
        assert shown is not None and shown.callback == {"status": "delivered", "attempts": 3}


def test_delivery_gives_up_after_its_attempts(make_app: Callable[..., Flask]) -> None:
    app = make_app(
        webhook_secret=WEBHOOK_SECRET,
        webhook_allow_private=True,
        webhook_retry_delay=0.05,
        webhook_attempts=2,
    )
    store, settings = store_of(app), settings_of(app)
    outbox = callbacks.Outbox(store)
    with receiver(answers=[500, 500, 500]) as hook:
        job_id = submit(app.test_client(), callback_url=hook.url)
        store.cancel(job_id)
        callbacks.deliver_due(outbox, settings)
        time.sleep(0.1)
        callbacks.deliver_due(outbox, settings)
        time.sleep(0.3)
        assert callbacks.deliver_due(outbox, settings) == 0
        assert len(hook.for_job(job_id)) == 2
        shown = store.get(job_id)
        assert shown is not None and shown.callback is not None
        assert shown.callback["status"] == "failed" and shown.callback["attempts"] == 2


def test_delivery_checks_the_address_again(loopback_app: Flask) -> None:
    # accepted while private targets were allowed; by delivery time the rules refuse it
    # (as when a public name is re-pointed at an internal address after submit)
    store = store_of(loopback_app)
    with receiver() as hook:
        job_id = submit(loopback_app.test_client(), callback_url=hook.url)
        store.cancel(job_id)
        strict = dataclasses.replace(settings_of(loopback_app), webhook_allow_private=False)
        assert callbacks.deliver_due(callbacks.Outbox(store), strict) == 1
        assert hook.for_job(job_id) == []
        shown = store.get(job_id)
        assert shown is not None and shown.callback is not None
        assert shown.callback["status"] == "failed"
        assert "non-public" in shown.callback["error"]
        assert store.redis.zcard(CALLBACKS) == 0


def test_signature_matches_the_spec_example() -> None:
    # Standard Webhooks' own example (spec, "Signature scheme")
    key = base64.b64decode("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
    body = b'{"test": 2432232314}'
    assert (
        callbacks.sign(key, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body)
        == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    )


# --- Prefer: wait ---------------------------------------------------------------------


def prefer(value: str) -> dict[str, str]:
    return {**as_user(ALICE), "Prefer": value}


@pytest.mark.parametrize(
    ("lines", "seconds"),
    [
        (["wait=10"], 10),
        (["respond-async, wait=5"], 5),
        (['WAIT="7"; foo=bar'], 7),
        (["wait=3600"], 60),
        (["wait=0"], 0),
        (["handling=lenient"], None),
        ([], None),
        (["return=minimal", "wait=2", "wait=9"], 2),
    ],
)
def test_prefer_wait_is_read_as_rfc_7240_says(lines: list[str], seconds: int | None) -> None:
    headers = Headers([("Prefer", line) for line in lines])
    assert requested_wait(headers) == seconds


@pytest.mark.parametrize("value", ["wait=soon", "wait=-1", "wait=1.5", "wait", "wait="])
def test_a_malformed_wait_is_422_and_makes_no_job(loopback_app: Flask, value: str) -> None:
    client = loopback_app.test_client()
    reply = client.post(
        "/sr",
        data={"file": (io.BytesIO(png()), "a.png"), "model": "realesr-animevideov3"},
        headers=prefer(value),
    )
    body = assert_error(reply, 422, "bad_parameter")
    assert body["detail"]["parameter"] == "Prefer"
    assert store_of(loopback_app).redis.zcard("srcluster:active") == 0
    with pytest.raises(BadParameter):
        requested_wait(Headers([("Prefer", value)]))


def test_result_waits_then_answers_as_get_would(loopback_app: Flask) -> None:
    client = loopback_app.test_client()
    job_id = submit(client)
    start = time.monotonic()
    reply = client.get(f"/result/{job_id}", headers=prefer("wait=1"))
    assert 0.9 <= time.monotonic() - start < 5
    assert reply.status_code == 200
    assert reply.headers["Preference-Applied"] == "wait=1"
    assert "Prefer" in reply.headers["Vary"]
    assert reply.json["result"]["status"] == "pending"


def test_result_wakes_when_the_job_ends(loopback_app: Flask) -> None:
    client, store = loopback_app.test_client(), store_of(loopback_app)
    job_id = submit(client)
    timer = threading.Timer(0.5, store.cancel, args=(job_id,))
    timer.start()
    start = time.monotonic()
    reply = client.get(f"/result/{job_id}", headers=prefer("wait=30"))
    timer.join()
    assert time.monotonic() - start < 5, "woken by the end, not by the 30 s"
    assert reply.json["result"]["status"] == "cancelled"
    assert reply.headers["Preference-Applied"] == "wait=30"


def test_a_finished_job_answers_at_once_with_the_wait_clamped(loopback_app: Flask) -> None:
    client = loopback_app.test_client()
    job_id = submit(client)
    client.delete(f"/result/{job_id}", headers=as_user(ALICE))
    start = time.monotonic()
    reply = client.get(f"/result/{job_id}", headers=prefer("wait=3600"))
    assert time.monotonic() - start < 1
    assert reply.headers["Preference-Applied"] == "wait=60"
    assert reply.json["result"]["status"] == "cancelled"


def test_submit_with_wait_answers_with_the_status(loopback_app: Flask) -> None:
    client = loopback_app.test_client()
    reply = client.post(
        "/sr",
        data={
            "file": (io.BytesIO(png(40, 40)), "a.png"),
            "model": "realesr-animevideov3",
        },
        headers=prefer("wait=1"),
    )
    assert reply.status_code == 202, "no worker: still pending after the wait"
    assert reply.headers["Preference-Applied"] == "wait=1"
    job_id = reply.json["task_id"]
    assert reply.headers["Location"] == f"/result/{job_id}"
    assert reply.json["result"]["status"] == "pending"
    assert reply.json["result"]["task_id"] == job_id


def test_no_free_slot_means_no_wait(make_app: Callable[..., Flask]) -> None:
    client = make_app(wait_slots=0).test_client()
    job_id = submit(client)
    start = time.monotonic()
    reply = client.get(f"/result/{job_id}", headers=prefer("wait=30"))
    assert time.monotonic() - start < 1
    assert reply.status_code == 200
    assert "Preference-Applied" not in reply.headers


def test_openapi_describes_callbacks_and_waiting(loopback_app: Flask) -> None:
    doc = loopback_app.test_client().get("/openapi.json").json
    submit_op = doc["paths"]["/sr"]["post"]
    fields = submit_op["requestBody"]["content"]["multipart/form-data"]["schema"]["properties"]
    assert "callback_url" in fields
    for op in (submit_op, doc["paths"]["/result/{task_id}"]["get"]):
        assert [p["name"] for p in op["parameters"]] == ["Prefer"]
    assert "Preference-Applied" in submit_op["responses"]["200"]["headers"]
    hook = doc["webhooks"]["jobEnded"]["post"]
    assert {p["name"] for p in hook["parameters"]} == {
        "webhook-id",
        "webhook-timestamp",
        "webhook-signature",
    }
    assert "callback" in doc["components"]["schemas"]["Result"]["properties"]
