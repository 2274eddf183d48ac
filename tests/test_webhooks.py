"""Callbacks and ``Prefer: wait`` through the real cluster: gunicorn, Celery workers, Redis.

The session's cluster lets callbacks reach loopback (``webhook_allow_private``,
tests only; ``test_callbacks.py`` shows the default refuses) and retries after
0.5 s. Every delivery is checked with the Standard Webhooks reference
implementation (the ``standardwebhooks`` package), not with our own signer.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pytest
from standardwebhooks import Webhook

from common.cluster.store import JobStore
from common.imageio import encode
from common.settings import Settings
from srcluster.client import Client
from tests.cluster import ApiServer, WorkerProcess, wait_for
from tests.receiver import Delivery, receiver
from tests.tokens import ALICE, WEBHOOK_SECRET

pytestmark = pytest.mark.cluster

COMPACT = "realesr-animevideov3"


def small(photo: np.ndarray) -> bytes:
    return encode(np.ascontiguousarray(photo[:40, :48]), "png")


def large(photo: np.ndarray, side: int = 384) -> bytes:
    return encode(np.resize(photo, (side, side, 3)).astype(np.uint8), "png")


def verified(delivery: Delivery) -> dict[str, Any]:
    body: dict[str, Any] = Webhook(WEBHOOK_SECRET).verify(delivery.body, delivery.headers)
    return body


def as_shown(client: Client, job_id: str) -> dict[str, Any]:
    """``GET /result``'s body less the delivery's own state: what the callback carries."""
    shown = client.result(job_id)
    shown.pop("callback", None)
    return {"result": shown}


def test_a_callback_arrives_once_signed(api: ApiServer, worker: WorkerProcess, photo) -> None:
    with receiver() as hook, Client(api.url, ALICE) as client:
        job_id = client.submit(small(photo), model=COMPACT, callback_url=hook.url)
        (delivery,) = hook.wait_for(job_id)
        body = verified(delivery)
        assert body["result"]["status"] == "success"
        assert body == as_shown(client, job_id)
        assert delivery.headers["webhook-id"] == job_id
        assert abs(int(delivery.headers["webhook-timestamp"]) - time.time()) < 60
        time.sleep(2)  # a few deliverer rounds (0.5 s each)
        assert len(hook.for_job(job_id)) == 1, "once per job"
        assert client.result(job_id)["callback"] == {"status": "delivered", "attempts": 1}


def test_a_failed_delivery_is_retried(api: ApiServer, worker: WorkerProcess, photo) -> None:
    with receiver(answers=[500]) as hook, Client(api.url, ALICE) as client:
        job_id = client.submit(small(photo), model=COMPACT, callback_url=hook.url)
        first, second = hook.wait_for(job_id, count=2, timeout=60)
        assert verified(first) == verified(second), "the same message, signed each time"
        assert first.headers["webhook-id"] == second.headers["webhook-id"] == job_id
        time.sleep(2)
        assert len(hook.for_job(job_id)) == 2, "no more after the 200"
        shown = client.result(job_id)["callback"]
        assert shown["status"] == "delivered" and shown["attempts"] == 2, shown


def test_cancel_and_timeout_are_called_back(
    api: ApiServer, worker: WorkerProcess, cluster_settings: Settings, photo
) -> None:
    # ended by the API process (cancel), and by this test's process as the janitor ends an
    # overrun job (a job estimated to overrun its timeout is refused at submit, so none is
    # made to): neither delivers callbacks, a worker does
    with receiver() as hook, Client(api.url, ALICE) as client:
        cancelled = client.submit(large(photo), model=COMPACT, tile_size=32, callback_url=hook.url)
        wait_for(lambda: client.result(cancelled)["status"] == "processing", 60, "processing")
        client.cancel(cancelled)
        overdue = client.submit(
            large(photo, 1024), model=COMPACT, tile_size=32, callback_url=hook.url
        )
        store = JobStore.from_url(cluster_settings.redis_url, cluster_settings.result_ttl)
        try:
            assert store.fail(overdue, "timeout", "the job ran past its timeout")
        finally:
            store.close()
        (on_cancel,) = hook.wait_for(cancelled)
        assert verified(on_cancel)["result"]["status"] == "cancelled"
        (on_timeout,) = hook.wait_for(overdue)
        result = verified(on_timeout)["result"]
        assert result["status"] == "failed" and result["error"]["code"] == "timeout", result


def test_prefer_wait_answers_the_final_status_in_one_request(
    api: ApiServer, worker: WorkerProcess, photo
) -> None:
    with Client(api.url, ALICE) as client:
        sent = client.send(small(photo), model=COMPACT, wait=60)
        assert sent.waited == 60
        assert sent.result is not None and sent.result["status"] == "success", sent
        assert sent.result["progress"]["done"] == sent.result["progress"]["total"]
        assert client.download(sent.job_id).startswith(b"\x89PNG")
        start = time.monotonic()
        assert client.result(sent.job_id, wait=60)["status"] == "success"
        assert time.monotonic() - start < 2, "an ended job answers at once"
