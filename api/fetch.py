"""Fetching an image from a caller's ``url`` without becoming a proxy into our network.

Rules: those of :mod:`common.cluster.egress` (http(s) only, no credentials,
every address the host resolves to public, the connection pinned to the
checked address); redirects are followed by hand, each hop checked the same
way, at most :data:`MAX_REDIRECTS`; the body is read in chunks up to
``max_bytes``; the whole fetch has one deadline, which covers connecting, the
status line and headers (a server dripping a header a second is cut off at it,
by a watchdog that shuts the socket) and the body.

Every refusal is a :class:`~common.errors.BadParameter` naming ``url`` (422),
or :class:`~common.errors.ImageTooLarge` (413) for a body over the limit.
"""

from __future__ import annotations

import contextlib
import http.client
import socket
import threading
import time
from typing import Any
from urllib.parse import urljoin

from common.cluster.egress import (
    AddressCheck,
    Refused,
    Resolver,
    check,
    connect,
    is_public,
    resolve,
)
from common.errors import BadParameter, ImageTooLarge

MAX_REDIRECTS = 3
DEFAULT_TIME_LIMIT = 10.0
CHUNK = 64 * 1024
USER_AGENT = "srcluster-fetch/1"

_REDIRECTS = (301, 302, 303, 307, 308)


def _refuse(message: str, url: str) -> BadParameter:
    return BadParameter(message, parameter="url", value=url[:200])


def fetch(
    url: str,
    *,
    max_bytes: int,
    time_limit: float = DEFAULT_TIME_LIMIT,
    resolver: Resolver = resolve,
    allowed: AddressCheck = is_public,
) -> bytes:
    """The body of ``url`` after at most :data:`MAX_REDIRECTS` redirects.

    Raises:
        BadParameter: a refused scheme, host, address or redirect, an HTTP error
            status, a network failure or the time limit (``detail["parameter"] == "url"``).
        ImageTooLarge: the body is over ``max_bytes``.
    """
    deadline = time.monotonic() + time_limit
    current = url
    for _ in range(MAX_REDIRECTS + 1):
        try:
            status, location, body = _get(current, max_bytes, deadline, resolver, allowed)
        except (OSError, http.client.HTTPException) as exc:
            if isinstance(exc, TimeoutError):
                raise _refuse(f"fetching the url took over {time_limit:g} s", url) from None
            raise _refuse(f"could not fetch the url: {exc.__class__.__name__}", url) from None
        if status in _REDIRECTS:
            if not location:
                raise _refuse(f"the url answered HTTP {status} without a Location", url)
            try:
                current = urljoin(current, location)
            except ValueError:  # e.g. "Invalid IPv6 URL"
                raise _refuse("the url redirected to a malformed address", url) from None
            continue
        if status != 200:
            raise _refuse(f"the url answered HTTP {status}", url)
        return body
    raise _refuse(f"the url redirected more than {MAX_REDIRECTS} times", url)


def _get(
    url: str, max_bytes: int, deadline: float, resolver: Resolver, allowed: AddressCheck
) -> tuple[int, str | None, bytes]:
    try:
        target = check(url, resolver=resolver, allowed=allowed)
    except Refused as refused:
        raise _refuse(refused.message, url) from None
    conn = connect(target, timeout=_remaining(deadline, url))
    watchdog = _Watchdog(conn, _remaining(deadline, url))
    try:
        conn.request("GET", target.path, headers={"User-Agent": USER_AGENT, "Accept": "image/*"})
        response = conn.getresponse()
        if response.status != 200:
            found = response.status, response.getheader("Location"), b""
        else:
            found = 200, None, _read_body(response, max_bytes, deadline, conn, url)
    except (OSError, http.client.HTTPException):
        if watchdog.fired:
            raise TimeoutError from None
        raise
    finally:
        watchdog.cancel()
        conn.close()
    if watchdog.fired:  # the body may have ended at the shutdown: it is cut short
        raise TimeoutError
    return found


class _Watchdog:
    """Shuts ``conn``'s socket down after ``seconds``: socket timeouts bound each read,
    not a status line and headers that arrive a byte at a time."""

    def __init__(self, conn: http.client.HTTPConnection, seconds: float) -> None:
        self._conn = conn
        self.fired = False
        self._timer = threading.Timer(seconds, self._fire)
        self._timer.daemon = True
        self._timer.start()

    def _fire(self) -> None:
        self.fired = True
        sock = self._conn.sock
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def cancel(self) -> None:
        self._timer.cancel()


def _remaining(deadline: float, url: str) -> float:
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise _refuse("fetching the url took too long", url)
    return remaining


def _read_body(
    response: http.client.HTTPResponse, max_bytes: int, deadline: float, conn: Any, url: str
) -> bytes:
    length = response.getheader("Content-Length")
    if length is not None and length.isdigit() and int(length) > max_bytes:
        raise ImageTooLarge(
            f"the url's file is {length} bytes, over the limit of {max_bytes}",
            bytes=int(length),
            limit=max_bytes,
        )
    chunks: list[bytes] = []
    total = 0
    while True:
        if conn.sock is not None:
            conn.sock.settimeout(_remaining(deadline, url))
        chunk = response.read1(CHUNK)
        if not chunk:
            break
        total += len(chunk)
        if total > max_bytes:
            raise ImageTooLarge(
                f"the url's file is over the limit of {max_bytes} bytes", limit=max_bytes
            )
        chunks.append(chunk)
    return b"".join(chunks)


__all__ = ["fetch", "is_public", "resolve"]
