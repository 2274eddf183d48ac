"""``srcluster up``: one command brings up Redis, a worker, the API and Flower; Ctrl-C stops
them all, in order, and a restart finishes the jobs; a child that dies is restarted alone;
other users of the machine get nothing from its Redis, files or Flower."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import cv2
import pytest
import redis
import requests

from common.cluster.embedded import free_port
from common.settings import Settings
from srcluster import up
from srcluster.client import Client, ServiceError
from tests.cluster import ROOT, child_env, wait_for

pytestmark = pytest.mark.cluster


def listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


class Up:
    """One ``srcluster up`` in a process group of its own, as a terminal's foreground job."""

    def __init__(self, env: dict[str, str], out: Path, cwd: Path = ROOT):
        self.out = out
        self.start_at = out.stat().st_size if out.exists() else 0
        with out.open("ab") as sink:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "srcluster", "up"],
                cwd=cwd,
                env=env,
                stdout=sink,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def text(self) -> str:
        return self.out.read_text(errors="replace")[self.start_at :]

    def wait_up(self) -> str:
        wait_for(lambda: "curl" in self.text() or self.process.poll() is not None, 180, "up")
        assert self.process.poll() is None, self.text()
        return self.text()

    def token(self) -> str:
        return next(
            line.split()[1]
            for line in self.text().splitlines()
            if line.strip().startswith("token:")
        )

    def children(self) -> dict[str, int]:
        """PID of each child ``up`` started itself (redis, worker, api, flower)."""
        found: dict[str, int] = {}
        for pid in descendants(self.process.pid):
            try:
                parent = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
                words = Path(f"/proc/{pid}/cmdline").read_text().split("\0")
            except OSError:
                continue
            if parent != self.process.pid:
                continue
            line = " ".join(words)
            for name, mark in (
                ("redis", "redis-server"),
                ("worker", "celery -A worker worker"),
                ("api", "gunicorn"),
                ("flower", "srcluster.flower"),
            ):
                if mark in line:
                    found[name] = pid
        return found

    def ctrl_c(self) -> None:
        """What a terminal does on Ctrl-C: SIGINT to the whole foreground process group."""
        os.killpg(self.process.pid, signal.SIGINT)

    def kill(self) -> None:
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


def test_up_serves_an_upload_and_stops_cleanly(settings: Settings, tmp_path: Path) -> None:
    api_port, flower_port = free_port(), free_port()
    env = child_env(settings)
    env.update(
        SRCLUSTER_DATA_DIR=str(tmp_path / "data"),
        SRCLUSTER_MODELS_DIR=str(settings.model_cache),
        SRCLUSTER_API_PORT=str(api_port),
        SRCLUSTER_FLOWER_PORT=str(flower_port),
    )
    up = Up(env, tmp_path / "up.out")
    process = up.process
    try:
        text = up.wait_up()
        token = up.token()
        photo = (ROOT / "tests" / "data" / "photo.png").read_bytes()
        with Client(f"http://127.0.0.1:{api_port}", token) as client:
            job = client.submit(photo, filename="photo.png", model="realesr-animevideov3")
            assert client.wait(job, timeout=120)["status"] == "success"
            assert client.download(job).startswith(b"\x89PNG")
        assert requests.get(f"http://127.0.0.1:{flower_port}/", timeout=10).status_code == 401
        password = (tmp_path / "data" / "flower-password").read_text().strip()
        wait_for(
            lambda: (
                requests.get(
                    f"http://127.0.0.1:{flower_port}/", auth=("admin", password), timeout=10
                ).ok
            ),
            30,
            "Flower with basic auth",
        )
        flower = f"http://127.0.0.1:{flower_port}"
        for path in ("/metrics", "/healthcheck", "/api/workers", "/static/css/flower.css"):
            refused = requests.get(flower + path, timeout=10)
            assert refused.status_code == 401, (path, refused.text)
            assert refused.headers["WWW-Authenticate"].startswith("Basic")
            wrong = requests.get(flower + path, auth=("admin", "not-the-password"), timeout=10)
            assert wrong.status_code == 401, path
        metrics = requests.get(flower + "/metrics", auth=("admin", password), timeout=10)
        assert metrics.status_code == 200 and "flower_" in metrics.text
        assert_locked_down(tmp_path / "data", text, process.pid)
    finally:
        process.send_signal(signal.SIGINT)
        assert process.wait(60) == 0
    time.sleep(0.5)
    assert not listening(api_port) and not listening(flower_port), "everything stopped"


def assert_locked_down(data: Path, text: str, up_pid: int) -> None:
    """The embedded Redis of a running ``up`` refuses a client without its password, and no
    file or folder of its data is readable by other users, nor the password on a command line."""
    found = re.search(r"Redis: +127\.0\.0\.1:(\d+)/0 \(embedded, password in (\S+),", text)
    assert found is not None, text
    port, password_file = int(found[1]), Path(found[2])
    assert password_file == data / "redis-password"
    password = password_file.read_text().strip()
    assert len(password) >= 24
    for attempt in (None, "wrong-password"):
        stranger = redis.Redis(host="127.0.0.1", port=port, password=attempt)
        with pytest.raises((redis.AuthenticationError, redis.ResponseError)) as refused:
            stranger.keys("*")
        assert isinstance(refused.value, redis.AuthenticationError) or "NOAUTH" in str(
            refused.value
        )
        stranger.close()
    owner = redis.Redis(host="127.0.0.1", port=port, password=password)
    assert owner.keys("srcluster:job:*"), "the jobs are in this Redis"
    assert owner.config_get("bind")["bind"] == "127.0.0.1"
    owner.close()
    for pid in descendants(up_pid):
        with contextlib.suppress(OSError):
            assert password not in Path(f"/proc/{pid}/cmdline").read_text(), pid
    folder = data / "redis"
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert (folder / "appendonly.aof").stat().st_size > 0
    for path in [*folder.iterdir(), *(data / name for name in SECRETS)]:
        assert stat.S_IMODE(path.stat().st_mode) & 0o077 == 0, (path, oct(path.stat().st_mode))


SECRETS = ("token", "flower-password", "redis-password")
"""The secrets ``up`` generates in its data folder."""


def up_env(settings: Settings, data: Path, api_port: int, flower_port: int) -> dict[str, str]:
    env = child_env(settings)
    env.update(
        SRCLUSTER_DATA_DIR=str(data),
        SRCLUSTER_MODELS_DIR=str(settings.model_cache),
        SRCLUSTER_API_PORT=str(api_port),
        SRCLUSTER_FLOWER_PORT=str(flower_port),
    )
    return env


@pytest.mark.parametrize("busy", ["API", "Flower"])
def test_up_on_a_busy_port_says_so_and_starts_nothing(
    settings: Settings, tmp_path: Path, busy: str
) -> None:
    api_port, flower_port = free_port(), free_port()
    data = tmp_path / "data"
    with socket.socket() as other:  # another program, listening where up wants to
        other.bind(("127.0.0.1", api_port if busy == "API" else flower_port))
        other.listen()
        result = subprocess.run(
            [sys.executable, "-m", "srcluster", "up"],
            cwd=ROOT,
            env=up_env(settings, data, api_port, flower_port),
            capture_output=True,
            text=True,
            timeout=120,
        )
    port = api_port if busy == "API" else flower_port
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.startswith(f"srcluster: error: the {busy} port {port} on 127.0.0.1 is")
    assert "not free" in result.stderr and len(result.stderr.splitlines()) == 1
    assert "srcluster is up" not in result.stdout
    assert not data.exists(), "nothing was started, not even Redis or a log folder"


def descendants(pid: int) -> set[int]:
    """Every live process below ``pid`` (children, their children...), from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = entry.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[0] != "Z":
            children.setdefault(int(fields[1]), []).append(int(entry.parent.name))
    found: set[int] = set()
    stack = [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            found.add(child)
            stack.append(child)
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


SHADOW = """import pathlib
pathlib.Path(__file__).with_name("SHADOWED").write_text(__name__)
raise SystemExit("the {name}.py of the current folder was imported")
"""


@pytest.mark.parametrize("signum", [signal.SIGHUP, signal.SIGTERM], ids=["SIGHUP", "SIGTERM"])
def test_up_ignores_the_current_folder_and_a_signal_leaves_no_process(
    settings: Settings, tmp_path: Path, signum: signal.Signals
) -> None:
    """Started where an ``api.py`` and a ``worker.py`` lie, ``up`` still runs ours; closing
    the terminal (SIGHUP to its process group) or SIGTERM stops every process it started."""
    folder = tmp_path / "where-the-user-stands"
    folder.mkdir()
    for name in ("api", "worker"):
        (folder / f"{name}.py").write_text(SHADOW.format(name=name))
    api_port, flower_port = free_port(), free_port()
    up = Up(up_env(settings, tmp_path / "data", api_port, flower_port), tmp_path / "up.out", folder)
    process = up.process
    try:
        text = up.wait_up()
        token = up.token()
        found = re.search(r"Redis: .*127\.0\.0\.1:(\d+)", text)
        assert found is not None, text
        redis_port = int(found[1])
        reply = requests.get(
            f"http://127.0.0.1:{api_port}/", headers={"X-Token": token}, timeout=10
        )
        assert reply.status_code == 200 and reply.json()["message"] == "srcluster is running"
        wait_for(lambda: listening(flower_port), 60, "Flower")
        started = descendants(process.pid)
        # redis, the worker and its pool process, gunicorn and its 2 workers, Flower
        assert len(started) >= 6, started
        if signum == signal.SIGHUP:
            os.killpg(process.pid, signal.SIGHUP)
        else:
            process.send_signal(signal.SIGTERM)
        assert process.wait(90) == 0
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    wait_for(lambda: not any(alive(pid) for pid in started), 30, "every child to exit")
    for port in (api_port, flower_port, redis_port):
        assert not listening(port), f"port {port} is still served"
    assert not (folder / "SHADOWED").exists(), (folder / "SHADOWED").read_text()


# --- stopping in order, supervising, one up per data folder -----------------------------


PHOTO = ROOT / "tests" / "data" / "photo.png"


@pytest.mark.parametrize("hand_back", [False, True], ids=["tiles-finish", "ctrl-c-twice"])
def test_ctrl_c_mid_job_then_a_restart_completes_the_job(
    settings: Settings, tmp_path: Path, hand_back: bool
) -> None:
    """Ctrl-C (SIGINT to up's process group) mid-job stops the API, lets the worker finish
    its tiles, or with a second Ctrl-C hand them back to the queue, and stops Redis last;
    the next ``up`` on the folder finishes the job, long before a visibility timeout."""
    api_port, flower_port = free_port(), free_port()
    env = up_env(settings, tmp_path / "data", api_port, flower_port)
    env["SRCLUSTER_PARTS_PER_GROUP"] = "2"  # three tasks, so the job can be caught mid-way
    out = tmp_path / "up.out"
    corner = cv2.imread(str(PHOTO), cv2.IMREAD_COLOR)[:64, :96]
    image = cv2.imencode(".png", corner)[1].tobytes()
    first = Up(env, out)
    try:
        first.wait_up()
        with Client(f"http://127.0.0.1:{api_port}", first.token()) as client:
            # realesrgan-x4plus (the default) at tile 32, two parts a task: tasks of seconds
            job = client.submit(image, filename="corner.png", tile_size=32)
            progress = wait_for(
                lambda: 0 < client.result(job)["progress"]["done"] and client.result(job),
                300,
                "the first tiles",
                interval=0.2,
            )
        assert isinstance(progress, dict) and progress["status"] == "processing", progress
        first.ctrl_c()
        if hand_back:
            wait_for(lambda: "stopping" in first.text(), 30, "up to start stopping")
            time.sleep(1)  # the worker has its SIGTERM
            first.ctrl_c()
        assert first.process.wait(300) == 0, first.text()
    finally:
        first.kill()
    said = first.text()
    assert "stopping" in said
    assert ("go back to the queue (Ctrl-C again)" in said) == hand_back, said
    second = Up(env, out)
    try:
        second.wait_up()
        started = time.monotonic()
        with Client(f"http://127.0.0.1:{api_port}", second.token()) as client:
            body = client.wait(job, timeout=400)
            assert body["status"] == "success", body
            assert body["progress"]["done"] == body["progress"]["total"] > 1
            assert client.download(job).startswith(b"\x89PNG")
        # a message lost with its worker would wait SRCLUSTER_VISIBILITY_TIMEOUT (1200 s)
        assert time.monotonic() - started < 400
        second.ctrl_c()
        assert second.process.wait(300) == 0, second.text()
    finally:
        second.kill()


def test_a_dead_child_is_restarted_and_nothing_else_stops(
    settings: Settings, tmp_path: Path
) -> None:
    """The worker SIGKILLed, then Redis SIGKILLed: ``up`` restarts each (Redis on its port and
    AOF), the other processes keep their PIDs and serve, and jobs run. A second ``up`` on the
    same data folder refuses to start and names the first one's PID."""
    api_port, flower_port = free_port(), free_port()
    data = tmp_path / "data"
    env = up_env(settings, data, api_port, flower_port)
    cluster = Up(env, tmp_path / "up.out")
    try:
        text = cluster.wait_up()
        found = re.search(r"Redis: +127\.0\.0\.1:(\d+)", text)
        assert found is not None, text
        redis_port = int(found[1])

        second = subprocess.run(
            [sys.executable, "-m", "srcluster", "up"],
            cwd=ROOT,
            env=up_env(settings, data, free_port(), free_port()),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert second.returncode == 2, second.stdout + second.stderr
        assert second.stderr.startswith(
            f"srcluster: error: another srcluster up (PID {cluster.process.pid}) runs on the "
            f"data folder {data}"
        ), second.stderr
        assert "srcluster is up" not in second.stdout

        before = wait_for(lambda: len(c := cluster.children()) == 4 and c, 60, "four children")
        assert isinstance(before, dict)
        photo = PHOTO.read_bytes()
        with Client(f"http://127.0.0.1:{api_port}", cluster.token()) as client:
            done = client.submit(photo, filename="photo.png", model="realesr-animevideov3")
            assert client.wait(done, timeout=180)["status"] == "success"

            os.kill(before["worker"], signal.SIGKILL)
            wait_for(lambda: "worker restarted" in cluster.text(), 60, "the worker's restart")
            assert "worker was killed by SIGKILL; restarting it in 1 s" in cluster.text()
            after = cluster.children()
            assert after["worker"] != before["worker"]
            worker_line = Path(f"/proc/{after['worker']}/cmdline").read_text().split("\0")
            assert worker_line[worker_line.index("--hostname") + 1] == "local-2@%h", (
                "a new name: the dead worker's heartbeat expires and its tiles are re-queued"
            )
            for name in ("redis", "api", "flower"):
                assert after[name] == before[name], f"the {name} was restarted too"
            job = client.submit(photo, filename="photo.png", model="realesr-animevideov3")
            assert client.wait(job, timeout=180)["status"] == "success"

            time.sleep(1.5)  # the AOF is written every second
            os.kill(before["redis"], signal.SIGKILL)
            wait_for(lambda: "redis restarted" in cluster.text(), 60, "Redis's restart")
            assert listening(redis_port), "the same port"
            after = cluster.children()
            assert after["redis"] != before["redis"]
            for name in ("api", "flower"):
                assert after[name] == before[name], f"the {name} was restarted too"
            assert client.result(done)["status"] == "success", "the AOF kept the jobs"
            job = wait_for(lambda: _submitted(client, photo), 60, "the API to reach Redis again")
            assert isinstance(job, str)
            assert client.wait(job, timeout=180)["status"] == "success"
            assert client.download(job).startswith(b"\x89PNG")
        assert cluster.process.poll() is None
        cluster.ctrl_c()
        assert cluster.process.wait(300) == 0, cluster.text()
    finally:
        cluster.kill()


def _submitted(client: Client, photo: bytes) -> str | None:
    """A job id, or ``None`` while the service cannot take it (Redis coming back)."""
    try:
        return client.submit(photo, filename="photo.png", model="realesr-animevideov3")
    except ServiceError as error:
        assert error.status >= 500, error.describe()
        return None


def test_a_crash_loop_stops_up_and_says_why(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A child that keeps dying is restarted with a backoff until its fifth death within a
    minute; then supervision gives up, naming it and its log, and the others were left alone."""
    monkeypatch.setattr(up, "BACKOFF_FIRST", 0.05)
    cluster = up.Cluster(Settings(data_dir=tmp_path), processes=1)
    log = tmp_path / "crash.log"
    starts: list[int] = []

    def crashing(_before: int) -> subprocess.Popen[bytes]:
        with log.open("ab") as sink:
            child = subprocess.Popen(
                [sys.executable, "-c", "import sys; print('boom', flush=True); sys.exit(3)"],
                stdout=sink,
                start_new_session=True,
            )
        starts.append(child.pid)
        return child

    def steady(_before: int) -> subprocess.Popen[bytes]:
        return subprocess.Popen(["sleep", "120"], start_new_session=True)

    cluster.children = {
        "worker": up.Child("worker", crashing, log),
        "api": up.Child("api", steady, tmp_path / "api.log"),
    }
    for child in cluster.children.values():
        child.start()
    api = cluster.children["api"].process
    assert api is not None
    try:
        with pytest.raises(RuntimeError) as gave_up:
            wait_for(lambda: cluster.supervise(), 60, "a crash loop", interval=0.05)
        message = str(gave_up.value)
        assert message.startswith("worker exited with status 3, its 5th death within 60 s")
        assert "crash loop" in message and str(log) in message and "boom" in message
        assert len(starts) == 5
        assert api.poll() is None, "the other child was left running"
    finally:
        api.kill()
        api.wait()


def test_flower_refuses_to_start_without_a_password(settings: Settings) -> None:
    env = child_env(settings)
    env.pop("FLOWER_BASIC_AUTH", None)
    result = subprocess.run(
        [sys.executable, "-m", "srcluster.flower", "--port=1"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert "set FLOWER_BASIC_AUTH=user:password" in result.stderr
