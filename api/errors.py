"""The one place where errors become HTTP replies: ``{"code", "message", "detail"}`` JSON.

The API's own errors extend :mod:`common.errors`'s tree::

    SrclusterError
    +-- InputError
    |   +-- Unauthorized        no token, or not one we know (401)
    |   |   +-- TokenMissing    no token at all (401; krau mode 422)
    |   +-- Forbidden           a valid token, but not an admin token, on an admin route (403)
    |   +-- MissingImage        neither file nor url (422; krau mode 400)
    |   +-- NotFound            no such job, or another token's (404)
    |   +-- NotReady            the job has no result yet (409)
    |   +-- Gone                the job's result was deleted or expired (410)
    +-- Unavailable             Redis or the blob store does not answer (503)

werkzeug's HTTP exceptions (unknown route, wrong method, body over
``MAX_CONTENT_LENGTH``) get the same shape, and so does a body gunicorn cannot
read (a malformed chunk, a client that stops sending: ``400 bad_request``);
gunicorn's own refusals before the app runs are written by :mod:`api.server`
with :func:`error_body`. A 503 says when to retry (``Retry-After``). Anything
unexpected is logged and answered ``500 internal`` without its details. :func:`register` may be given
other statuses for some error classes (``api.compat``'s krau mode); codes,
messages and details stay as they are.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import redis
from flask import Flask, Response, current_app, jsonify
from gunicorn.http.errors import NoMoreData, ParseException
from werkzeug.exceptions import HTTPException

from common.cluster.blobs import BlobUnavailable
from common.errors import BadParameter, InputError, QuotaExceeded, SrclusterError


class Unauthorized(InputError):
    """The request carries no token, or one that is not configured."""

    code = "unauthorized"
    http_status = 401


class TokenMissing(Unauthorized):
    """The request carries no token at all (neither header)."""


class Forbidden(InputError):
    """A known token on a route that needs an admin token (``SRCLUSTER_ADMIN_TOKENS``)."""

    code = "forbidden"
    http_status = 403


class MissingImage(BadParameter):
    """``POST /sr`` has neither a ``file`` nor a ``url``."""


class NotFound(InputError):
    """No job by that id belongs to this token (missing and foreign jobs look the same)."""

    code = "not_found"
    http_status = 404


class NotReady(InputError):
    """The job has not succeeded (yet); ``detail["status"]`` says where it is."""

    code = "not_ready"
    http_status = 409


class Gone(InputError):
    """The job succeeded but its result was deleted or has expired."""

    code = "gone"
    http_status = 410


class Unavailable(SrclusterError):
    """A service the API needs (Redis, the blob store) does not answer; retry later."""

    code = "unavailable"
    http_status = 503


# werkzeug names some statuses in words of its own; these are the codes clients see
_HTTP_CODES = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    413: "too_large",
    415: "unsupported_media_type",
}


RETRY_AFTER = 5
"""Seconds a 503 asks the client to wait before trying again."""

UNREADABLE_BODY = (ParseException, NoMoreData, TimeoutError)
"""What reading a request's body raises under gunicorn when the client sent a malformed
chunked body, closed early, or paused longer than :data:`api.server.BODY_IDLE_SECONDS`."""


def error_body(code: str, message: str, detail: dict[str, Any] | None = None) -> bytes:
    """The JSON error body, for what answers outside Flask (:mod:`api.server`)."""
    return json.dumps({"code": code, "message": message, "detail": detail or {}}).encode()


def error_response(
    status: int, code: str, message: str, detail: dict[str, Any] | None = None
) -> Response:
    response = jsonify({"code": code, "message": message, "detail": detail or {}})
    response.status_code = status
    if status == 401:
        response.headers["WWW-Authenticate"] = 'Bearer realm="srcluster"'
    if status == 503:
        response.headers["Retry-After"] = str(RETRY_AFTER)
    return response


def _status(error: SrclusterError, statuses: Mapping[type[SrclusterError], int]) -> int:
    """``error``'s status: that of its nearest class in ``statuses``, else its own."""
    for kind in type(error).__mro__:
        if kind in statuses:
            return statuses[kind]
    return error.http_status


def _from_http(error: HTTPException) -> Response:
    status = error.code or 500
    code = _HTTP_CODES.get(status) or (error.name or "error").lower().replace(" ", "_")
    message = (error.description or error.name or "error").strip()
    if status == 413:
        limit = current_app.config["SRCLUSTER_MAX_BYTES"]
        message = f"the request is larger than the upload limit of {limit} bytes"
        response = error_response(status, code, message, {"limit": limit})
    else:
        response = error_response(status, code, message)
    for name, value in error.get_headers():
        if name.lower() != "content-type":  # keeps Allow on 405
            response.headers[name] = value
    return response


def _from_unreadable(error: Exception) -> Response:
    current_app.logger.info("unreadable request body: %r", error)
    said = str(error).strip() or error.__class__.__name__
    if isinstance(error, TimeoutError):
        said = "the client stopped sending it"
    return error_response(
        400, "bad_request", f"the request body could not be read: {said}", {"error": said}
    )


def _from_anything(error: Exception) -> Response:
    current_app.logger.exception("unexpected error", exc_info=error)
    return error_response(500, "internal", "internal error; the server log has the details")


def register(app: Flask, statuses: Mapping[type[SrclusterError], int] | None = None) -> None:
    """Make every error of ``app`` a JSON reply; ``statuses`` overrides the HTTP status of
    some error classes (and their subclasses)."""
    overrides = dict(statuses or {})

    def from_srcluster(error: SrclusterError) -> Response:
        status = _status(error, overrides)
        response = error_response(status, error.code, error.message, error.detail)
        if isinstance(error, QuotaExceeded):
            response.headers["Retry-After"] = str(error.detail["retry_after"])
        return response

    def from_redis(error: redis.RedisError) -> Response:
        current_app.logger.warning("redis error: %s", error)
        if isinstance(error, redis.exceptions.OutOfMemoryError | redis.exceptions.ReadOnlyError):
            return from_srcluster(
                Unavailable("the job store (Redis) refuses writes (it is full); try again later")
            )
        return from_srcluster(Unavailable("the job store (Redis) does not answer; try again later"))

    def from_blobs(error: BlobUnavailable) -> Response:
        current_app.logger.warning("blob store error: %s", error)
        return from_srcluster(Unavailable("the blob store does not answer; try again later"))

    app.register_error_handler(SrclusterError, from_srcluster)
    app.register_error_handler(HTTPException, _from_http)
    app.register_error_handler(redis.RedisError, from_redis)
    app.register_error_handler(BlobUnavailable, from_blobs)
    for kind in UNREADABLE_BODY:
        app.register_error_handler(kind, _from_unreadable)
    app.register_error_handler(Exception, _from_anything)
