"""A webhook receiver on loopback for the callback tests: records every POST, answers as scripted."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from tests.cluster import wait_for


@dataclass
class Delivery:
    """One POST the receiver got."""

    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    """Where callbacks land: ``url`` to give as ``callback_url``; ``answers`` are the
    statuses of the first POSTs (then 200)."""

    url: str
    answers: list[int] = field(default_factory=list)
    got: list[Delivery] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def for_job(self, job_id: str) -> list[Delivery]:
        with self.lock:
            return [d for d in self.got if d.headers.get("webhook-id") == job_id]

    def wait_for(self, job_id: str, count: int = 1, timeout: float = 60) -> list[Delivery]:
        """The job's deliveries once there are ``count`` of them."""
        wait_for(lambda: len(self.for_job(job_id)) >= count, timeout, f"{count} callback(s)")
        return self.for_job(job_id)


@contextmanager
def receiver(answers: list[int] | None = None) -> Iterator[Receiver]:
    """A receiver on 127.0.0.1 (a free port) while in use."""
    state = Receiver(url="", answers=list(answers or []))

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", 0))
            body = self.rfile.read(length)
            with state.lock:
                state.got.append(
                    Delivery(self.path, {k.lower(): v for k, v in self.headers.items()}, body)
                )
                status = state.answers.pop(0) if state.answers else 200
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
