"""CORS: which web origins' pages may call the API from a browser (``SRCLUSTER_CORS_ORIGINS``).

Empty by default: no page of another origin may read an answer, and every
preflight from one is refused. For an allowed origin:

- a preflight (``OPTIONS`` with ``Origin`` and ``Access-Control-Request-Method``)
  to a route gets ``204`` naming the methods of that route, the request headers
  a client needs (the token headers, ``Content-Type``, ``Prefer``) and how long
  the browser may cache that; one from any other origin gets ``403`` JSON
  (``origin_not_allowed``) and no CORS headers;
- every answer, errors included, carries ``Access-Control-Allow-Origin`` with
  that origin (never ``*`` with credentials: the API uses tokens, not cookies)
  and exposes ``Location`` and ``Content-Disposition``.

Authentication is unchanged: a preflight needs no token (browsers send none),
the request after it does.
"""

from __future__ import annotations

from flask import Flask, Response, request

from api.errors import error_response

ALLOWED_HEADERS = ("X-Token", "Authorization", "Content-Type", "Prefer")
"""Request headers a page may send: the two token headers, multipart uploads and ``Prefer``."""

EXPOSED_HEADERS = ("Location", "Content-Disposition")
"""Answer headers a page may read: the job's address and the download's file name."""

PREFLIGHT_MAX_AGE = 600
"""Seconds a browser may reuse a preflight's answer."""


def register(app: Flask, origins: tuple[str, ...]) -> None:
    """Answer preflights and label answers for ``origins`` (``*``: any)."""
    allowed = frozenset(origins)

    def allows(origin: str | None) -> bool:
        return origin is not None and ("*" in allowed or origin in allowed)

    @app.before_request
    def preflight() -> Response | None:
        if request.method != "OPTIONS" or "Access-Control-Request-Method" not in request.headers:
            return None
        if request.url_rule is None:
            return None  # no such route: the usual 404
        origin = request.headers.get("Origin")
        if not allows(origin):
            return error_response(
                403,
                "origin_not_allowed",
                f"the origin {origin or '(none)'} may not call this API from a browser; "
                "its operator can allow it with SRCLUSTER_CORS_ORIGINS",
                {"origin": origin},
            )
        # every method of the path, whichever rule the OPTIONS matched (GET and DELETE of
        # /result/<id> are two rules)
        adapter = app.create_url_adapter(request)
        methods = sorted(set(adapter.allowed_methods() if adapter else []) - {"HEAD"})
        response = Response(status=204)
        response.headers["Access-Control-Allow-Methods"] = ", ".join(methods)
        response.headers["Access-Control-Allow-Headers"] = ", ".join(ALLOWED_HEADERS)
        response.headers["Access-Control-Max-Age"] = str(PREFLIGHT_MAX_AGE)
        return response

    @app.after_request
    def label(response: Response) -> Response:
        origin = request.headers.get("Origin")
        response.vary.add("Origin")
        if allows(origin):
            response.headers["Access-Control-Allow-Origin"] = str(origin)
            response.headers["Access-Control-Expose-Headers"] = ", ".join(EXPOSED_HEADERS)
        return response
