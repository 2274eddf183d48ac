"""A small typed client of srcluster's HTTP API: the contract written once on the client side.

The tests, the benches and (later) ``srcluster submit`` speak to a cluster
through :class:`Client` and its verbs (:meth:`~Client.submit`, :meth:`~Client.wait`,
:meth:`~Client.download`, :meth:`~Client.cancel`), so a change to the API shows
up in one place here.

Every answer the service gives as an error (4xx/5xx with its
``{code, message, detail}`` JSON) raises :class:`ServiceError`.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import requests

FINAL_STATUSES = frozenset({"success", "failed", "cancelled"})
"""Statuses after which a job changes no more."""


class ServiceError(Exception):
    """The service refused a request: ``status`` is the HTTP status, ``code`` its error code."""

    def __init__(self, status: int, code: str, message: str, detail: Mapping[str, Any]):
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.detail = dict(detail)


class Client:
    """One cluster's API at ``url`` (``http://host:port``), as the holder of ``token``."""

    def __init__(self, url: str, token: str, *, timeout: float = 60.0) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.session = requests.Session()
        self.session.headers["X-Token"] = token

    def _call(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        reply = self.session.request(method, self.url + path, timeout=self.timeout, **kwargs)
        if reply.status_code >= 400:
            try:
                body = reply.json()
            except ValueError:
                body = {}
            raise ServiceError(
                reply.status_code,
                str(body.get("code", "http_error")),
                str(body.get("message", reply.text[:200])),
                body.get("detail") or {},
            )
        return reply

    def info(self) -> dict[str, Any]:
        """``GET /``: version, models and workers up."""
        return dict(self._call("GET", "/").json())

    def submit(
        self, data: bytes | None = None, *, filename: str = "input.png", **fields: object
    ) -> str:
        """``POST /sr`` with the image ``data`` (or a ``url=`` field); returns the job id.

        ``fields`` are the form fields (``model``, ``scale``, ``tile_size``, ...);
        ``None`` values are left out.

        Raises:
            ServiceError: the service refused the job.
        """
        form = {k: str(v) for k, v in fields.items() if v is not None}
        files = None if data is None else {"file": (filename, data)}
        reply = self._call("POST", "/sr", data=form, files=files)
        return str(reply.json()["task_id"])

    def result(self, job_id: str) -> dict[str, Any]:
        """``GET /result/<id>``: the job's ``result`` object (status, progress, output meta)."""
        return dict(self._call("GET", f"/result/{job_id}").json()["result"])

    def wait(self, job_id: str, timeout: float = 600.0, interval: float = 0.2) -> dict[str, Any]:
        """Poll the job until it ends; returns its final ``result`` object.

        Raises:
            TimeoutError: it did not end within ``timeout`` seconds.
            ServiceError: the job is unknown to this token.
        """
        deadline = time.monotonic() + timeout
        while True:
            body = self.result(job_id)
            if body["status"] in FINAL_STATUSES:
                return body
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} did not end within {timeout:.0f} s: {body}")
            time.sleep(interval)

    def download(self, job_id: str) -> bytes:
        """``GET /result/<id>/download``: the result's bytes.

        Raises:
            ServiceError: not ready (409), gone (410) or unknown (404).
        """
        return self._call("GET", f"/result/{job_id}/download").content

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
            error = body.get("error") or {}
            raise ServiceError(0, str(error.get("code", body["status"])), str(error), body)
        return self.download(job_id)

    def close(self) -> None:
        self.session.close()
