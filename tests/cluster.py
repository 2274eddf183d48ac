"""Real processes for the cluster tests: Celery workers and the API under a real HTTP server."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import redis

from common.cluster.embedded import EmbeddedRedis, free_port
from common.cluster.store import WORKERS, JobStore
from common.settings import Settings
from srcluster.commands import API_WORKERS, api_command, worker_command

ROOT = Path(__file__).resolve().parents[1]


def wait_for(
    condition: Callable[[], object], timeout: float, what: str, interval: float = 0.1
) -> object:
    """Poll ``condition`` until it returns something truthy; fail the test after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


@contextlib.contextmanager
def redis_for_tests(folder: Path) -> Iterator[str]:
    """``SRCLUSTER_REDIS_URL`` when set, else an embedded Redis in ``folder`` while in use."""
    configured = os.environ.get("SRCLUSTER_REDIS_URL")
    if configured:
        yield configured
        return
    with EmbeddedRedis(folder) as server:
        yield server.url


def with_db(url: str, db: int) -> str:
    """``url`` with Redis database ``db``: a cluster of its own (queues, jobs, heartbeats) on
    the same server."""
    return urlunsplit(urlsplit(url)._replace(path=f"/{db}"))


def child_env(settings: Settings) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SRCLUSTER_")}
    env.update(settings.to_env())
    env["PYTHONPATH"] = str(ROOT)
    env["PYTHONUNBUFFERED"] = "1"
    return env


class WorkerProcess:
    """``celery -A worker worker`` in its own process (and process group).

    ``prefix`` runs the command line through a wrapper that ends by exec-ing it
    (``ip netns exec <ns> taskset -c <core>``, see :mod:`tests.hosts`), so the
    process started is still the worker itself.
    """

    def __init__(
        self,
        settings: Settings,
        name: str,
        log_dir: Path,
        concurrency: int = 1,
        queues: str | None = None,
        prefix: Sequence[str] = (),
    ):
        self.settings = settings
        self.name = name
        self.log = log_dir / f"worker-{name}.log"
        args = [*prefix, *worker_command(f"{name}@test", concurrency, queues=queues, quiet=True)]
        with self.log.open("wb") as out:  # the child keeps its own descriptor
            self.process = subprocess.Popen(
                args,
                cwd=ROOT,
                env=child_env(settings),
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    @property
    def hostname(self) -> str:
        return f"{self.name}@test"

    def wait_ready(self, timeout: float = 60) -> WorkerProcess:
        client = redis.Redis.from_url(self.settings.redis_url)

        def announced() -> bool:
            if self.process.poll() is not None:
                raise AssertionError(f"worker {self.name} exited:\n{self.log.read_text()[-3000:]}")
            return client.zscore(WORKERS, self.hostname) is not None

        wait_for(announced, timeout, f"worker {self.name} to start")
        client.close()
        return self

    def children(self) -> list[int]:
        """Pids of the pool processes."""
        out = subprocess.run(
            ["pgrep", "-P", str(self.process.pid)], capture_output=True, text=True
        ).stdout
        return [int(p) for p in out.split()]

    def kill(self) -> None:
        """SIGKILL the whole worker: main process and pool children."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(20)
        self.kill()


class ApiServer:
    """The API under gunicorn, as deployed."""

    def __init__(self, settings: Settings, log_dir: Path, workers: int = API_WORKERS):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log_dir / "api.log"
        out = self.log.open("wb")
        self.process = subprocess.Popen(
            api_command("127.0.0.1", self.port, workers),
            cwd=ROOT,
            env=child_env(settings),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        out.close()  # the child keeps its own descriptor

    def wait_ready(self, timeout: float = 60) -> ApiServer:
        import requests

        def up() -> bool:
            if self.process.poll() is not None:
                raise AssertionError(f"API exited:\n{self.log.read_text()[-3000:]}")
            try:
                return requests.get(self.url + "/healthz", timeout=2).status_code == 200
            except requests.RequestException:  # not listening yet, or too busy to answer
                return False

        wait_for(up, timeout, "the API to start")
        return self

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


def new_job(store: JobStore, parts: int = 3, timeout: float = 60, pixels: int = 0) -> str:
    """Record a small pending job straight in ``store``: ``parts`` parts, strip ``c``
    holding ``b"in<c>"``, an ICC extra, ``pixels`` input pixels for the owner ``o``'s
    hourly budget; returns its id."""
    job_id = uuid.uuid4().hex
    store.create(
        job_id,
        owner="o",
        owner_name="alice",
        params={"model": "m"},
        plan={},
        parts=parts,
        strips=[(0, c, b"in%d" % c) for c in range(parts)],
        extras={"icc": b"profile"},
        timeout=timeout,
        pixels=pixels,
    )
    return job_id
