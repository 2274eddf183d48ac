"""Flower with every route behind its basic auth: ``python -m srcluster.flower [flower options]``.

Flower checks ``FLOWER_BASIC_AUTH`` only in the handlers that ask for the
user, and its ``/metrics``, ``/healthcheck`` and ``/static/`` do not: anyone
who reaches the port reads the workers, queues and task names there. This
launcher runs ``celery -A worker flower`` with one change: the application
checks the credentials before it picks a handler, so every path answers 401
without them (Prometheus scrapes ``/metrics`` with ``basic_auth``). It refuses
to start without ``FLOWER_BASIC_AUTH`` (``user:password``, in the environment:
a command line is readable by every user). ``srcluster up``, compose and the
Kubernetes manifest all start Flower this way.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import os
import sys
from typing import Any

import flower.command
import tornado.httputil
import tornado.web
from flower.app import Flower

AUTH_VARIABLE = "FLOWER_BASIC_AUTH"


def credentials(header: str) -> str | None:
    """``user:password`` from an ``Authorization: Basic ...`` header, or ``None``."""
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        return base64.b64decode(encoded.strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None


class Unauthorized(tornado.web.RequestHandler):
    """Every method of every path, without the right credentials: 401 and a Basic challenge."""

    def check_xsrf_cookie(self) -> None:  # a 401, not Flower's 403, for a POST
        pass

    def prepare(self) -> None:
        self.set_status(401)
        self.set_header("WWW-Authenticate", 'Basic realm="flower"')
        self.set_header("Content-Type", "text/plain")
        self.finish("Access denied: Flower needs its basic-auth user and password\n")


class LockedFlower(Flower):  # type: ignore[misc]
    """Flower whose every route, ``/metrics`` and ``/healthcheck`` included, needs basic auth."""

    def find_handler(
        self, request: tornado.httputil.HTTPServerRequest, **kwargs: Any
    ) -> tornado.web._HandlerDelegate:
        given = credentials(request.headers.get("Authorization", ""))
        allowed = self.options.basic_auth or []
        handler: tornado.web._HandlerDelegate
        if given is None or not any(hmac.compare_digest(given, pair) for pair in allowed):
            handler = self.get_handler_delegate(request, Unauthorized)
        else:
            handler = super().find_handler(request, **kwargs)
        return handler


def main(argv: list[str] | None = None) -> None:
    pairs = os.environ.get(AUTH_VARIABLE, "")
    if not all(":" in pair and pair.split(":", 1)[1] for pair in pairs.split(",")):
        sys.exit(
            f"srcluster flower: set {AUTH_VARIABLE}=user:password (in the environment, "
            "never on the command line); Flower does not run without a password"
        )
    flower.command.Flower = LockedFlower  # the class ``celery flower`` instantiates
    from celery.bin.celery import main as celery

    sys.argv = ["celery", "-A", "worker", "flower", *(sys.argv[1:] if argv is None else argv)]
    celery()


if __name__ == "__main__":
    main()
