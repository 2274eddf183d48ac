"""A small typed client of srcluster's HTTP API: the contract written once on the client side.

The tests, the benches and ``srcluster submit`` speak to a cluster through
:class:`Client` and its verbs (:meth:`~Client.submit`, :meth:`~Client.result`,
:meth:`~Client.follow`, :meth:`~Client.wait`, :meth:`~Client.download`,
:meth:`~Client.cancel`), so a change to the API shows up in one place here.

Errors::

    ServiceError    the service answered 4xx/5xx with its {code, message, detail} JSON
                    (``status`` is the HTTP status; 0 for a job that ended unsuccessfully)
    Unreachable     no answer at all: refused, reset, DNS, timed out

A :class:`Client` holds one ``requests.Session``: use one per thread.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

FINAL_STATUSES = frozenset({"success", "failed", "cancelled"})
"""Statuses after which a job changes no more."""

MAX_WAIT = 60
"""The longest ``Prefer: wait`` the service applies, in seconds."""

SAFE_METHODS = frozenset({"GET", "HEAD"})
"""Requests the client repeats when a connection drops before any answer (reads only)."""


class ServiceError(Exception):
    """The service refused a request: ``status`` is the HTTP status, ``code`` its error code."""

    def __init__(self, status: int, code: str, message: str, detail: Mapping[str, Any]):
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.detail = dict(detail)

    def describe(self) -> str:
        """One line for people: the message, then the status, code and parameter."""
        parameter = self.detail.get("parameter")
        where = f", parameter {parameter}" if parameter else ""
        status = f"HTTP {self.status} " if self.status else ""
        return f"{self.message} ({status}{self.code}{where})"


class Unreachable(Exception):
    """The service did not answer (connection refused or reset, unknown host, timeout)."""


@dataclass(frozen=True)
class Submission:
    """What ``POST /sr`` answered."""

    job_id: str
    result: dict[str, Any] | None
    """The job's ``result`` object when the service waited (``Prefer: wait``), else ``None``."""
    waited: int | None
    """The wait the service applied (``Preference-Applied``); ``None``: it did not wait."""


@dataclass(frozen=True)
class Download:
    """A finished job's image."""

    data: bytes
    content_type: str
    filename: str | None
    """The name ``Content-Disposition`` gives (``<task_id>.<ext>``)."""


_FILENAME = re.compile(r'filename="([^"]+)"')


class Client:
    """One cluster's API at ``url`` (``http://host:port``), as the holder of ``token``.

    ``timeout`` bounds each request (a ``Prefer: wait`` request gets its wait on top).
    ``patience``: seconds a submit keeps trying while the service says this token is over
    its limits for now (429), each time after the ``Retry-After`` it gave; 0 gives up at
    once (the :class:`ServiceError` says when to come back).
    """

    def __init__(
        self, url: str, token: str, *, timeout: float = 60.0, patience: float = 600.0
    ) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.patience = patience
        self.session = requests.Session()
        self.session.headers["X-Token"] = token
        # A kept-alive connection the server closed just as it was reused fails with no
        # answer; reading is safe to repeat, a submit is not (it could queue a job twice).
        retry = Retry(
            total=3, connect=3, read=2, status=0, backoff_factor=0.05, allowed_methods=SAFE_METHODS
        )
        self.session.mount("http://", HTTPAdapter(max_retries=retry))
        self.session.mount("https://", HTTPAdapter(max_retries=retry))

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def _call(
        self, method: str, path: str, *, wait: int | None = None, **kwargs: Any
    ) -> requests.Response:
        headers = {"Prefer": f"wait={wait}"} if wait is not None else {}
        timeout = self.timeout + (wait or 0)
        try:
            reply = self.session.request(
                method, self.url + path, headers=headers, timeout=timeout, **kwargs
            )
        except requests.RequestException as error:
            reason = type(error).__name__
            if isinstance(error, requests.ConnectionError):
                reason = "connection failed (nothing listening, or the host is unknown)"
            elif isinstance(error, requests.Timeout):
                reason = f"no answer within {timeout:.0f} s"
            raise Unreachable(f"{self.url}: {reason}") from error
        if reply.status_code >= 400:
            try:
                body = reply.json()
            except ValueError:
                body = {}
            if not isinstance(body, dict):
                body = {}
            raise ServiceError(
                reply.status_code,
                str(body.get("code", "http_error")),
                str(body.get("message", reply.text[:200] or reply.reason)),
                body.get("detail") or {},
            )
        return reply

    def info(self) -> dict[str, Any]:
        """``GET /``: version, models and workers up (also a check of the URL and token)."""
        return dict(self._call("GET", "/").json())

    def send(
        self,
        data: bytes | None = None,
        *,
        filename: str = "input.png",
        wait: int | None = None,
        **fields: object,
    ) -> Submission:
        """``POST /sr`` with the image ``data`` (or a ``url=`` field).

        ``fields`` are the form fields (``model``, ``scale``, ``tile_size``,
        ``callback_url``, ...); ``None`` values are left out. ``wait`` asks the
        service to hold the answer until the job ends or that many seconds pass.

        Raises:
            ServiceError: the service refused the job.
            Unreachable: no answer.
        """
        return self._send(data, filename, wait, fields)

    def _send(
        self, data: bytes | None, filename: str, wait: int | None, fields: Mapping[str, object]
    ) -> Submission:
        form = {k: str(v) for k, v in fields.items() if v is not None}
        files = None if data is None else {"file": (filename, data)}
        give_up = time.monotonic() + self.patience
        while True:
            try:
                reply = self._call("POST", "/sr", data=form, files=files, wait=wait)
                break
            except ServiceError as error:
                # over the token's jobs in flight or pixels per hour: nothing was queued
                pause = float(error.detail.get("retry_after") or 5)
                if error.status != 429 or time.monotonic() + pause > give_up:
                    raise
                time.sleep(pause)
        body = reply.json()
        return Submission(
            job_id=str(body["task_id"]),
            result=body.get("result"),
            waited=_applied(reply),
        )

    def submit(
        self, data: bytes | None = None, *, filename: str = "input.png", **fields: object
    ) -> str:
        """:meth:`send` without waiting; returns the job id."""
        return self._send(data, filename, None, fields).job_id

    def result(self, job_id: str, *, wait: int | None = None) -> dict[str, Any]:
        """``GET /result/<id>``: the job's ``result`` object (status, progress, output meta).

        ``wait``: hold until the job ends or that many seconds pass (``Prefer: wait``).
        """
        return dict(self._call("GET", f"/result/{job_id}", wait=wait).json()["result"])

    def follow(
        self, job_id: str, timeout: float = 600.0, interval: float = 0.25
    ) -> Iterator[dict[str, Any]]:
        """The job's ``result`` every ``interval`` seconds, until (and including) a final one.

        Raises:
            TimeoutError: it did not end within ``timeout`` seconds.
            ServiceError: the job is unknown to this token.
        """
        deadline = time.monotonic() + timeout
        while True:
            body = self.result(job_id)
            yield body
            if body["status"] in FINAL_STATUSES:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} did not end within {timeout:.0f} s: {body}")
            time.sleep(interval)

    def wait(self, job_id: str, timeout: float = 600.0, interval: float = 0.2) -> dict[str, Any]:
        """Block until the job ends; returns its final ``result`` object.

        Asks the service to hold each request (``Prefer: wait``), so it answers
        as soon as the job ends; polls every ``interval`` seconds when it will not.

        Raises:
            TimeoutError: it did not end within ``timeout`` seconds.
            ServiceError: the job is unknown to this token.
        """
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            reply = self._call("GET", f"/result/{job_id}", wait=max(0, min(MAX_WAIT, int(left))))
            body = dict(reply.json()["result"])
            if body["status"] in FINAL_STATUSES:
                return body
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} did not end within {timeout:.0f} s: {body}")
            if _applied(reply) is None:  # the service did not hold it: poll instead
                time.sleep(interval)

    def image(self, job_id: str) -> Download:
        """``GET /result/<id>/download``: the result's bytes, type and name.

        Raises:
            ServiceError: not ready (409), gone (410) or unknown (404).
        """
        reply = self._call("GET", f"/result/{job_id}/download")
        named = _FILENAME.search(reply.headers.get("Content-Disposition", ""))
        return Download(
            data=reply.content,
            content_type=reply.headers.get("Content-Type", "application/octet-stream"),
            filename=named.group(1) if named else None,
        )

    def download(self, job_id: str) -> bytes:
        """The result's bytes (see :meth:`image`)."""
        return self.image(job_id).data

    def cancel(self, job_id: str) -> dict[str, Any]:
        """``DELETE /result/<id>``: cancel a running job or delete a finished one's result."""
        return dict(self._call("DELETE", f"/result/{job_id}").json()["result"])

    def upscale(
        self, data: bytes, *, filename: str = "input.png", timeout: float = 600.0, **fields: object
    ) -> bytes:
        """Submit, wait and download in one call.

        Raises:
            ServiceError: the service refused the job, or it ended without success
                (``status`` 0, ``code`` the job's error code).
            TimeoutError: see :meth:`wait`.
        """
        job_id = self.submit(data, filename=filename, **fields)
        body = self.wait(job_id, timeout)
        if body["status"] != "success":
            raise job_error(body)
        return self.download(job_id)

    def close(self) -> None:
        self.session.close()


def job_error(body: Mapping[str, Any]) -> ServiceError:
    """A job that ended without success, as a :class:`ServiceError` (``status`` 0)."""
    error = body.get("error") or {}
    message = str(error.get("message") or f"the job ended {body.get('status')}")
    return ServiceError(0, str(error.get("code", body.get("status"))), message, dict(body))


def _applied(reply: requests.Response) -> int | None:
    found = re.search(r"wait=(\d+)", reply.headers.get("Preference-Applied", ""))
    return int(found.group(1)) if found else None
