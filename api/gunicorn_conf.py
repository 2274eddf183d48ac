"""gunicorn's configuration for the API, one module for every place that starts it.

``gunicorn -c python:api.gunicorn_conf 'api:create_app()' --bind HOST:PORT``
(:func:`srcluster.commands.api_command`, compose.yaml, deploy/k8s/api.yaml).
The command line may still set ``--workers``; the rest is here.

Why these values: uploads wait on the network and on Redis, not the CPU, so
each process runs :data:`threads` threads (gthread); a slow client holds one of
them for at most :data:`~api.server.HEAD_SECONDS` while its request line and
headers arrive and :data:`~api.server.BODY_IDLE_SECONDS` between two reads of
its body (:mod:`api.server`), so a handful of slow connections cannot take the
API away from everyone else.
"""

from __future__ import annotations

worker_class = "api.server.JsonErrorWorker"
"""gthread, answering gunicorn's own refusals (414, 431, 400...) in our JSON error shape."""

workers = 2
threads = 16
"""Per process. Four times the default ``SRCLUSTER_WAIT_SLOTS``: requests held by
``Prefer: wait`` never take them all, nor do a few slow clients."""

timeout = 120
"""Seconds a process may stop answering gunicorn's arbiter before it is restarted."""

keepalive = 5
"""Seconds an idle kept-alive connection stays open (held by the poller, not a thread)."""

worker_connections = 1000
"""Connections one process holds at most (idle ones cost no thread)."""

limit_request_line = 4094
limit_request_fields = 100
limit_request_field_size = 8190

control_socket_disable = True
"""No ``gunicornc`` control socket: gunicorn 27 puts one at ``$HOME/.gunicorn/gunicorn.ctl``
by default, a path every gunicorn of this user shares (tests and ``srcluster up`` run
several), and nothing here needs to resize or stop the API through it."""
