"""Slow clients against a real server: connections that drip their request head, or
send nothing, while others ask ``/healthz`` and time the answer.

Used by ``tests/test_bad_input.py`` (a bound the API must keep) and
``bench/slowclients.py`` (how many it holds).
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field


@dataclass
class Held:
    """What the slow connections got back."""

    replies: list[bytes] = field(default_factory=list)
    """Whatever each dripping connection received before it was closed."""


@contextlib.contextmanager
def slow_connections(
    port: int, dripping: int, idle: int, interval: float = 1.0, lines: int = 60
) -> Iterator[Held]:
    """Hold ``dripping`` connections that send a request line, then one header line every
    ``interval`` s (``lines`` of them), and ``idle`` connections that send nothing."""
    held = Held()
    stop = threading.Event()
    socks: list[socket.socket] = []
    for _ in range(dripping + idle):
        sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        socks.append(sock)
    drippers = socks[:dripping]
    for sock in drippers:
        sock.sendall(b"POST /sr HTTP/1.1\r\nHost: x\r\n")

    def drip() -> None:
        alive = list(drippers)
        for line in range(lines):
            if stop.wait(interval) or not alive:
                return
            for sock in list(alive):
                try:
                    sock.sendall(b"X-Drip-%d: 1\r\n" % line)
                except OSError:
                    alive.remove(sock)

    thread = threading.Thread(target=drip, daemon=True)
    thread.start()
    try:
        yield held
    finally:
        stop.set()
        thread.join(10)
        for sock in drippers:
            sock.settimeout(0.5)
            reply = b""
            with contextlib.suppress(OSError):
                while chunk := sock.recv(65536):
                    reply += chunk
            held.replies.append(reply)
        for sock in socks:
            sock.close()


def _whole(reply: bytes) -> int:
    """The length of the whole reply, from its head's Content-Length."""
    head, _, _ = reply.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(head) + 4 + int(value)
    return len(reply) + 1  # no length: read until closed


def healthz_seconds(port: int, timeout: float = 30) -> float:
    """Seconds a fresh connection waits for ``GET /healthz``'s whole answer (200 expected)."""
    start = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        reply = b""
        while b"\r\n\r\n" not in reply or len(reply) < _whole(reply):
            chunk = sock.recv(65536)
            if not chunk:
                break
            reply += chunk
    if not reply.startswith(b"HTTP/1.1 200"):
        raise AssertionError(f"/healthz answered {reply[:200]!r}")
    return time.monotonic() - start
