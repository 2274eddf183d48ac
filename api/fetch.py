"""Fetching an image from a caller's ``url`` without becoming a proxy into our network.

Rules: http and https only; no credentials in the URL; the host is resolved
once per hop and *every* address it resolves to must be public (no loopback,
private, link-local, shared, reserved, multicast, including their IPv6 forms
and IPv4 addresses wrapped in IPv6); the connection goes to the address that
was checked (so a DNS answer cannot change between check and connect);
redirects are followed by hand, each one checked the same way, at most
:data:`MAX_REDIRECTS`; the body is read in chunks up to ``max_bytes``; the
whole fetch has one deadline.

Every refusal is a :class:`~common.errors.BadParameter` naming ``url`` (422),
or :class:`~common.errors.ImageTooLarge` (413) for a body over the limit.
"""

from __future__ import annotations

import http.client
import ipaddress
import socket
import ssl
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urljoin, urlsplit

from common.errors import BadParameter, ImageTooLarge

MAX_REDIRECTS = 3
DEFAULT_TIME_LIMIT = 10.0
CHUNK = 64 * 1024
USER_AGENT = "srcluster-fetch/1"

_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_NAT64_LOCAL = ipaddress.ip_network("64:ff9b:1::/48")
_REDIRECTS = (301, 302, 303, 307, 308)

Resolver = Callable[[str, int], list[str]]
AddressCheck = Callable[[str], bool]


def is_public(address: str) -> bool:
    """Whether ``address`` (an IP literal) is a globally routable unicast address."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address):
        if ip in _NAT64_LOCAL or ip.teredo is not None:
            return False
        embedded = ip.ipv4_mapped or ip.sixtofour
        if ip in _NAT64:
            embedded = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if embedded is not None:
            return is_public(str(embedded))
    return ip.is_global and not ip.is_multicast


def resolve(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to (TCP)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


class _PinnedHTTP(http.client.HTTPConnection):
    """An HTTP connection that names ``host`` but connects to the checked ``address``."""

    def __init__(self, host: str, port: int, address: str, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout)
        self._address = address

    def connect(self) -> None:
        self.sock = socket.create_connection((self._address, self.port), self.timeout)


class _PinnedHTTPS(_PinnedHTTP):
    def __init__(self, host: str, port: int, address: str, timeout: float) -> None:
        super().__init__(host, port, address, timeout)
        self._context = ssl.create_default_context()

    def connect(self) -> None:
        super().connect()
        self.sock = self._context.wrap_socket(self.sock, server_hostname=self.host)


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
        parts = urlsplit(url)
    except ValueError:  # "Invalid IPv6 URL", a netloc that NFKC normalization changes
        raise _refuse("the url is malformed", url) from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise _refuse("the url must be http or https", url)
    if parts.username is not None or parts.password is not None:
        raise _refuse("the url must not carry credentials", url)
    host = parts.hostname
    if not host:
        raise _refuse("the url has no host", url)
    try:
        port = parts.port or (443 if scheme == "https" else 80)
    except ValueError:
        raise _refuse("the url's port is malformed", url) from None
    try:
        addresses = resolver(host, port)
    except (OSError, UnicodeError):
        raise _refuse(f"cannot resolve the url's host {host!r}", url) from None
    if not addresses:
        raise _refuse(f"cannot resolve the url's host {host!r}", url)
    refused = [a for a in addresses if not allowed(a)]
    if refused:
        raise _refuse(f"the url's host {host!r} resolves to a non-public address", url)
    remaining = _remaining(deadline, url)
    kind = _PinnedHTTPS if scheme == "https" else _PinnedHTTP
    conn = kind(host, port, addresses[0], timeout=remaining)
    try:
        path = parts.path or "/"
        if parts.query:
            path += "?" + parts.query
        conn.request("GET", path, headers={"User-Agent": USER_AGENT, "Accept": "image/*"})
        response = conn.getresponse()
        if response.status != 200:
            return response.status, response.getheader("Location"), b""
        return 200, None, _read_body(response, max_bytes, deadline, conn, url)
    finally:
        conn.close()


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
