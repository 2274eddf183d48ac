"""Job callbacks (webhooks): when a job ends, POST its status to the ``callback_url`` it gave.

Why delivery cannot be lost: a job ends in one place only, the store's atomic
TRANSITION script, whoever ends it (the stitch, a failing tile, the janitor's
timeout, the API's cancel or a queueing error). That same script puts the
job's key in the outbox, the sorted set ``srcluster:callbacks`` scored by when
its delivery is due. So once a job has ended, its callback is recorded in
Redis (AOF), whatever happens to the process that ended it. Every worker runs
a deliverer thread (:func:`deliver_due`, from :mod:`worker.runtime`) that
claims due entries atomically (:data:`~common.cluster.lua.CLAIM_CALLBACKS`:
the score moves to the end of a lease, so no other deliverer takes it, and it
comes due again if this one dies mid-attempt), POSTs, and settles: a 2xx
answer removes the entry; anything else reschedules it with backoff
(``webhook_retry_delay``, 4x longer each time) until ``webhook_attempts``
attempts have failed.

Delivered once per job: one entry per job, removed on the first 2xx. As with
every webhook system, a deliverer that dies after the receiver answered 2xx
but before removing the entry delivers again after its lease; the
``webhook-id`` header (the job id) is the same on every attempt so a receiver
can tell.

Signed per the Standard Webhooks spec: ``webhook-id``, ``webhook-timestamp``
(Unix seconds) and ``webhook-signature: v1,<base64 HMAC-SHA256 of
"{id}.{timestamp}.{body}">`` keyed by ``webhook_secret``. The body is what
``GET /result/<id>`` answers, less its ``callback`` member (the delivery's own
state). Targets follow the ``url`` upload's SSRF rules (:mod:`common.cluster.egress`),
checked at submit and again, pinned, at every attempt.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import http.client
import json
import logging
import time
from collections.abc import Mapping

from common.cluster import lua
from common.cluster.egress import (
    AddressCheck,
    Refused,
    Resolver,
    any_address,
    check,
    connect,
    is_public,
    resolve,
)
from common.cluster.store import CALLBACKS, PREFIX, JobRecord, JobStore
from common.errors import BadParameter
from common.settings import Settings

log = logging.getLogger(__name__)

MAX_URL = 2048
"""Longest ``callback_url`` accepted, in characters."""

ATTEMPT_TIMEOUT = 10.0
"""Seconds one delivery attempt may take (connect, send, answer)."""

LEASE = 60.0
"""Seconds a claimed callback is reserved for its deliverer (above one attempt)."""

CLAIM_BATCH = 16
"""Callbacks one deliverer claims at a time."""

BACKOFF = 4
"""Each retry waits this many times longer than the one before."""

USER_AGENT = "srcluster-webhook/1"


def check_url(url: str, settings: Settings, resolver: Resolver = resolve) -> str:
    """``url`` if the service may post callbacks there (the API's check at submit).

    Raises:
        BadParameter: callbacks are not configured (no ``webhook_secret``), the
            URL is too long, or refused by the SSRF rules (``detail.parameter``
            is ``callback_url``).
    """
    url = url.strip()
    if settings.webhook_key() is None:
        raise BadParameter(
            "callbacks are off on this service (SRCLUSTER_WEBHOOK_SECRET is not set)",
            parameter="callback_url",
        )
    if len(url) > MAX_URL:
        raise BadParameter(
            f"callback_url is longer than {MAX_URL} characters", parameter="callback_url"
        )
    try:
        check(url, name="callback_url", resolver=resolver, allowed=_allowed(settings))
    except Refused as refused:
        raise BadParameter(refused.message, parameter="callback_url", value=url[:200]) from None
    return url


def _allowed(settings: Settings) -> AddressCheck:
    return any_address if settings.webhook_allow_private else is_public


def sign(key: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` value: ``v1,`` + base64 HMAC-SHA256 of ``id.timestamp.body``."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


def payload(record: JobRecord) -> bytes:
    """The body posted for ``record``: ``GET /result``'s, less the delivery's own state."""
    result = {k: v for k, v in record.public().items() if k != "callback"}
    return json.dumps({"result": result}, separators=(",", ":")).encode()


def retry_delay(settings: Settings, attempt: int) -> float:
    """Seconds after failed attempt number ``attempt`` (1-based) before the next one."""
    return float(settings.webhook_retry_delay * BACKOFF ** (attempt - 1))


class Outbox:
    """The undelivered callbacks in Redis (``srcluster:callbacks`` and the jobs' fields)."""

    def __init__(self, store: JobStore) -> None:
        self.store = store
        self._claim = store.redis.register_script(lua.CLAIM_CALLBACKS)

    def claim(self, now: float, limit: int = CLAIM_BATCH) -> list[tuple[str, int]]:
        """Claim the callbacks due by ``now``: ``(job id, this attempt's number)`` each."""
        keys = self._claim(keys=[CALLBACKS], args=[now, now + LEASE, limit])
        if not keys:
            return []
        pipe = self.store.redis.pipeline(transaction=False)
        for key in keys:
            pipe.hincrby(key, "callback_attempts", 1)
        attempts = pipe.execute()
        return [(k.decode()[len(PREFIX) :], int(n)) for k, n in zip(keys, attempts, strict=True)]

    def delivered(self, job_id: str) -> None:
        self._settle(job_id, "delivered", None, again_at=None)

    def failed(self, job_id: str, error: str, again_at: float | None) -> None:
        """Note a failed attempt; retry at ``again_at``, or give up when it is ``None``."""
        self._settle(job_id, "pending" if again_at is not None else "failed", error, again_at)

    def _settle(self, job_id: str, status: str, error: str | None, again_at: float | None) -> None:
        key = self.store.key(job_id)
        pipe = self.store.redis.pipeline(transaction=True)
        if again_at is None:
            pipe.zrem(CALLBACKS, key)
        else:
            pipe.zadd(CALLBACKS, {key: again_at}, xx=True)
        # only on a record that still exists: HSET would create a bare one
        if self.store.redis.exists(key):
            pipe.hset(key, "callback_status", status)
            if error is None:
                pipe.hdel(key, "callback_error")
            else:
                pipe.hset(key, "callback_error", error[:300])
        pipe.execute()

    def forget(self, job_id: str) -> None:
        """Drop the entry of a job whose record has expired (nothing is left to send)."""
        self.store.redis.zrem(CALLBACKS, self.store.key(job_id))


def post(
    url: str,
    body: bytes,
    headers: Mapping[str, str],
    settings: Settings,
    resolver: Resolver = resolve,
) -> str | None:
    """POST ``body`` to ``url``; ``None`` on a 2xx answer, else what went wrong.

    Redirects are not followed (a 3xx is a failed attempt).

    Raises:
        Refused: the URL breaks the SSRF rules now (its name resolves elsewhere than at submit).
    """
    target = check(url, name="callback_url", resolver=resolver, allowed=_allowed(settings))
    conn = connect(target, ATTEMPT_TIMEOUT)
    try:
        conn.request("POST", target.path, body=body, headers=dict(headers))
        response = conn.getresponse()
        response.read(64 * 1024)
    except (OSError, http.client.HTTPException) as error:
        return f"{type(error).__name__}: {error}"[:300]
    finally:
        conn.close()
    return None if 200 <= response.status < 300 else f"HTTP {response.status}"


def deliver_due(
    outbox: Outbox, settings: Settings, resolver: Resolver = resolve, now: float | None = None
) -> int:
    """Claim and attempt every callback due now; returns how many were attempted."""
    now = time.time() if now is None else now
    claimed = outbox.claim(now)
    key = settings.webhook_key()
    for job_id, attempt in claimed:
        record = outbox.store.get(job_id)
        if record is None or record.callback_url is None:
            outbox.forget(job_id)
            continue
        if key is None:
            unsigned = "this worker has no SRCLUSTER_WEBHOOK_SECRET to sign with"
            log.error("callback of job %s: %s", job_id, unsigned)
            outbox.failed(job_id, unsigned, _next(settings, attempt))
            continue
        body = payload(record)
        timestamp = int(time.time())
        headers = {
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
            "webhook-id": job_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": sign(key, job_id, timestamp, body),
        }
        try:
            error = post(record.callback_url, body, headers, settings, resolver)
        except Refused as refused:
            log.warning("callback of job %s refused: %s", job_id, refused.message)
            outbox.failed(job_id, refused.message, again_at=None)
            continue
        if error is None:
            outbox.delivered(job_id)
            continue
        again_at = _next(settings, attempt)
        log.warning(
            "callback of job %s, attempt %d: %s (%s)",
            job_id,
            attempt,
            error,
            "giving up" if again_at is None else f"retrying in {again_at - time.time():.0f} s",
        )
        outbox.failed(job_id, error, again_at)
    return len(claimed)


def _next(settings: Settings, attempt: int) -> float | None:
    """When to try again after failed attempt ``attempt``; ``None`` once they are used up."""
    if attempt >= settings.webhook_attempts:
        return None
    return time.time() + retry_delay(settings, attempt)
