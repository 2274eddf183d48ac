"""Where the cluster may connect on a caller's behalf: the SSRF rules, written once.

Two features make the service open a connection to an address a caller chose:
``url`` uploads (the API fetches the image, :mod:`api.fetch`) and
``callback_url`` webhooks (a worker posts the job's status,
:mod:`common.cluster.callbacks`). Both go through :func:`check` and
:func:`connect`, so they refuse the same things:

- schemes other than http and https, credentials in the URL, no host;
- a host any of whose addresses is not public (loopback, private, link-local,
  shared, reserved, multicast, including their IPv6 forms and IPv4 addresses
  wrapped in IPv6): every address the name resolves to is checked, not one;
- and the connection goes to the address that was checked, so a DNS answer
  cannot change between the check and the connect (DNS rebinding).

Every refusal is a :class:`Refused` whose message names the field
(``the url ...``, ``the callback_url ...``); the callers turn it into their
own error.
"""

from __future__ import annotations

import http.client
import ipaddress
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

Resolver = Callable[[str, int], list[str]]
"""``(host, port) -> addresses``; tests replace DNS with one of these."""

AddressCheck = Callable[[str], bool]
"""Whether a connection to an address (an IP literal) is allowed."""

_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_NAT64_LOCAL = ipaddress.ip_network("64:ff9b:1::/48")


class Refused(Exception):
    """The URL may not be connected to; ``message`` says why, naming the field."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


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


def any_address(address: str) -> bool:
    """Allows every address: only for tests that run a receiver on loopback."""
    return True


def resolve(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to (TCP)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


@dataclass(frozen=True)
class Target:
    """A checked URL: where to connect (``addresses[0]``) and what to ask for."""

    scheme: str
    host: str
    port: int
    path: str
    """Path and query, as sent in the request line."""
    addresses: list[str]


def check(
    url: str, *, name: str = "url", resolver: Resolver = resolve, allowed: AddressCheck = is_public
) -> Target:
    """Parse ``url``, resolve its host and check every address.

    Raises:
        Refused: a malformed URL, a refused scheme, credentials, an unresolvable
            host or a non-public address (the message names ``name``).
    """
    try:
        parts = urlsplit(url)
    except ValueError:  # "Invalid IPv6 URL", a netloc that NFKC normalization changes
        raise Refused(f"the {name} is malformed") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise Refused(f"the {name} must be http or https")
    if parts.username is not None or parts.password is not None:
        raise Refused(f"the {name} must not carry credentials")
    host = parts.hostname
    if not host:
        raise Refused(f"the {name} has no host")
    try:
        port = parts.port or (443 if scheme == "https" else 80)
    except ValueError:
        raise Refused(f"the {name}'s port is malformed") from None
    try:
        addresses = resolver(host, port)
    except (OSError, UnicodeError):
        raise Refused(f"cannot resolve the {name}'s host {host!r}") from None
    if not addresses:
        raise Refused(f"cannot resolve the {name}'s host {host!r}")
    if not all(allowed(a) for a in addresses):
        raise Refused(f"the {name}'s host {host!r} resolves to a non-public address")
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    return Target(scheme, host, port, path, addresses)


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


def connect(target: Target, timeout: float) -> http.client.HTTPConnection:
    """A connection to ``target``'s checked address (TLS verified against its host name)."""
    kind = _PinnedHTTPS if target.scheme == "https" else _PinnedHTTP
    return kind(target.host, target.port, target.addresses[0], timeout=timeout)
