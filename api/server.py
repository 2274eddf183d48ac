"""The API's gunicorn worker: gthread, with every answer in the service's JSON shape
and deadlines on slow clients.

gunicorn refuses some requests before the app sees them (a request line over
``limit_request_line``: 414, too many or too long headers: 431, a malformed
request line, header or ``Content-Length``, bare LF, an HTTP version it does not
speak: 400, an ``Expect`` it cannot meet: 417) and writes an HTML page.
:class:`JsonErrorWorker` keeps gunicorn's status and reason and writes
:func:`api.errors.error_body` instead.

Slow clients: gthread hands a connection to a thread once its first bytes
arrive, and the thread then blocks until the request head is complete. A
client dripping a header a second would hold it for good, and 2 x 16 of them
would take the API away. So a thread here only collects what has arrived,
without waiting, and gives the connection back to gunicorn's poller until the
head is whole (:meth:`JsonErrorWorker.handle`): a slow head holds no thread.
The head must be whole within :data:`HEAD_SECONDS` of its first byte (else
``408`` and the connection is closed), and the body may pause at most
:data:`BODY_IDLE_SECONDS` between two reads (else the request is a ``400``:
:mod:`api.errors` maps the read's timeout). A slow *body* still holds its
thread for as long as it keeps coming.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import functools
import socket
import threading
import time
from typing import Any

from gunicorn.workers.gthread import _DEFER, ThreadWorker  # _DEFER: "back to the poller"

from api.errors import error_body

HEAD_SECONDS = 10.0
"""Seconds from a connection's first byte (or a kept-alive connection's next request)
to the end of its headers."""

HEAD_COLLECT_LIMIT = 64 * 1024
"""Bytes of an unfinished head collected without a thread; past them (a head that large
is near gunicorn's limits anyway) the parser reads the rest, under the same deadline."""

BODY_IDLE_SECONDS = 20.0
"""Seconds the body of a request may pause between two reads before the request fails."""

CLOSERS = 8
"""Threads per process that close connections gracefully (see :func:`_close_elsewhere`)."""

CODES = {
    400: "bad_request",
    403: "forbidden",
    408: "request_timeout",
    414: "uri_too_long",
    417: "expectation_failed",
    431: "headers_too_large",
    500: "internal",
    501: "not_implemented",
}
"""Our ``code`` for each status gunicorn answers by itself."""


def raw_error(status: int, reason: str, message: str) -> bytes:
    """A whole HTTP/1.1 reply (connection closed after it) with our JSON error body."""
    body = error_body(CODES.get(status, "bad_request"), message)
    head = (
        f"HTTP/1.1 {status} {reason}\r\nConnection: close\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode("latin-1") + body


class _Captured:
    """A client socket whose ``sendall`` is kept, not sent: gunicorn's HTML error page
    goes here, so that its status line can be answered in JSON instead."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self.sent = b""

    def sendall(self, data: bytes) -> None:
        self.sent += data

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


def _status_line(reply: bytes) -> tuple[int, str]:
    """Status and reason of gunicorn's reply (``HTTP/1.1 414 URI Too Long``)."""
    line = reply.split(b"\r\n", 1)[0].decode("latin-1").split(" ", 2)
    try:
        return int(line[1]), line[2] if len(line) > 2 else ""
    except (IndexError, ValueError):
        return 400, "Bad Request"


def _message(status: int, exc: BaseException) -> str:
    if status == 500:
        return "internal error; the server log has the details"
    what = {
        414: "the request line (method and path) is too long",
        431: "the request's headers are too many or too long",
        417: "the request's Expect header cannot be met",
    }.get(status)
    said = str(exc).strip()
    if what:
        return f"{what}: {said}" if said else what
    return f"malformed HTTP request: {said}" if said else "malformed HTTP request"


class _Deadline:
    """Closes ``sock`` with a ``408`` unless :meth:`cancel` comes within ``seconds``."""

    def __init__(self, sock: socket.socket, seconds: float) -> None:
        self._sock = sock
        self._lock = threading.Lock()
        self._done = False
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True
        self._timer.start()

    def _expire(self) -> None:
        with self._lock:
            if self._done:
                return
            self._done = True
        message = f"the request's headers did not arrive within {HEAD_SECONDS:g} s"
        with contextlib.suppress(OSError):
            # a few hundred bytes: they fit the socket's buffer, the thread never waits
            self._sock.send(raw_error(408, "Request Timeout", message), socket.MSG_DONTWAIT)
        with contextlib.suppress(OSError):
            # the thread blocked reading the head sees end-of-file and lets go
            self._sock.shutdown(socket.SHUT_RDWR)

    def cancel(self) -> bool:
        """Stop the clock; ``False`` when it had already run out."""
        self._timer.cancel()
        with self._lock:
            expired = self._done
            self._done = True
        return not expired


_CLOSERS = concurrent.futures.ThreadPoolExecutor(CLOSERS, thread_name_prefix="close")


def _close_elsewhere(conn: Any, close: Any, graceful: bool = False) -> None:
    """Close ``conn``, a graceful close off the main loop.

    gunicorn closes a connection gracefully (half-close, then up to 2 s reading what the
    client still sends) in the worker's main loop, which also accepts and dispatches
    every connection: 200 clients that do not close after a ``Connection: close``
    answer (or keep dripping headers after their 408) would stop it for 400 s.
    """
    if graceful:
        _CLOSERS.submit(close, conn, True)
    else:
        close(conn)


def _reads_with_idle_limit(app: Any) -> Any:
    """``app`` with its client socket's reads timing out after :data:`BODY_IDLE_SECONDS`.

    The body is read while the app runs; the reply is written after it returns, with
    no timeout again (``sendall``'s timeout would bound a whole download).
    """

    def wrapped(environ: dict[str, Any], start_response: Any) -> Any:
        sock = environ.get("gunicorn.socket")
        if sock is None:
            return app(environ, start_response)
        sock.settimeout(BODY_IDLE_SECONDS)
        try:
            return app(environ, start_response)
        finally:
            with contextlib.suppress(OSError):
                sock.settimeout(None)

    return wrapped


class JsonErrorWorker(ThreadWorker):  # type: ignore[misc]  # gunicorn is untyped
    """gunicorn's gthread worker with JSON refusals and the deadlines above."""

    def handle(self, conn: Any) -> Any:
        if not self.cfg.is_ssl and not conn.is_http2:
            ready = self._collect_head(conn)
            if ready is not True:
                return ready
        since = getattr(conn, "srcluster_since", 0.0)
        left = HEAD_SECONDS - (time.monotonic() - since) if since else HEAD_SECONDS
        deadline = _Deadline(conn.sock, max(0.5, left))
        conn.srcluster_deadline = deadline
        try:
            return super().handle(conn)
        finally:
            deadline.cancel()
            conn.srcluster_since = 0.0

    def _collect_head(self, conn: Any) -> Any:
        """Read what the client has sent of its request head, without waiting.

        Returns ``True`` when the head is whole (handed to gunicorn's parser) or the
        client closed, ``_DEFER`` to wait for more in the poller, ``False`` when its
        time ran out (answered ``408``; the connection is closed).
        """
        if conn.parser is not None and conn.parser.unreader.buf.getvalue():
            return True  # a kept-alive connection read ahead: its bytes are the parser's
        try:
            data = conn.sock.recv(HEAD_COLLECT_LIMIT, socket.MSG_DONTWAIT)
        except BlockingIOError:
            data = None
        except OSError:
            return True  # let the parser meet the broken connection
        head = getattr(conn, "srcluster_head", b"")
        if data:
            if not head:
                conn.srcluster_since = time.monotonic()
            head += data
        whole = b"\r\n\r\n" in head or b"\n\n" in head or len(head) >= HEAD_COLLECT_LIMIT
        if whole or data == b"":
            conn.srcluster_head = b""
            conn.init()  # the parser, once; it reads our bytes before the socket's
            if head:
                conn.parser.unreader.unread(head)
            return True
        conn.srcluster_head = head
        if head and time.monotonic() - conn.srcluster_since > HEAD_SECONDS:
            message = f"the request's headers did not arrive within {HEAD_SECONDS:g} s"
            with contextlib.suppress(OSError):
                conn.sock.send(raw_error(408, "Request Timeout", message), socket.MSG_DONTWAIT)
            with contextlib.suppress(OSError):
                # nothing more is read from a client this late: no lingering close for it
                conn.sock.shutdown(socket.SHUT_RDWR)
            return False
        return _DEFER

    def enqueue_req(self, conn: Any) -> None:
        if "close" not in vars(conn):
            conn.close = functools.partial(_close_elsewhere, conn, type(conn).close)
        super().enqueue_req(conn)

    def handle_request(self, req: Any, conn: Any) -> Any:
        deadline = getattr(conn, "srcluster_deadline", None)
        if deadline is not None and not deadline.cancel():
            return False  # answered 408 already
        return super().handle_request(req, conn)

    def load_wsgi(self) -> None:
        super().load_wsgi()
        self.wsgi = _reads_with_idle_limit(self.wsgi)  # type: ignore[has-type]

    def handle_error(self, req: Any, client: Any, addr: Any, exc: BaseException) -> None:
        captured = _Captured(client)
        super().handle_error(req, captured, addr, exc)
        if not captured.sent:
            return
        status, reason = _status_line(captured.sent)
        with contextlib.suppress(OSError):
            client.sendall(raw_error(status, reason, _message(status, exc)))
