"""``srcluster up``: one command brings up Redis, a worker, the API and Flower; Ctrl-C stops them all."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from common.cluster.embedded import free_port
from common.settings import Settings
from srcluster.client import Client
from tests.cluster import ROOT, child_env, wait_for

pytestmark = pytest.mark.cluster


def listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_up_serves_an_upload_and_stops_cleanly(settings: Settings, tmp_path: Path) -> None:
    api_port, flower_port = free_port(), free_port()
    env = child_env(settings)
    env.update(
        SRCLUSTER_DATA_DIR=str(tmp_path / "data"),
        SRCLUSTER_MODELS_DIR=str(settings.model_cache),
        SRCLUSTER_API_PORT=str(api_port),
        SRCLUSTER_FLOWER_PORT=str(flower_port),
    )
    out = tmp_path / "up.out"
    with out.open("wb") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "srcluster", "up"],
            cwd=ROOT,
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for(
            lambda: "curl" in out.read_text() or process.poll() is not None, 120, "srcluster up"
        )
        text = out.read_text()
        assert process.poll() is None, text
        token = next(
            line.split()[1] for line in text.splitlines() if line.strip().startswith("token:")
        )
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
    finally:
        process.send_signal(signal.SIGINT)
        assert process.wait(60) == 0
    time.sleep(0.5)
    assert not listening(api_port) and not listening(flower_port), "everything stopped"


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
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[0] != "Z":
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
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
    out = tmp_path / "up.out"
    with out.open("wb") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "srcluster", "up"],
            cwd=folder,
            env=up_env(settings, tmp_path / "data", api_port, flower_port),
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # a terminal's foreground process group of its own
        )
    try:
        wait_for(
            lambda: "curl" in out.read_text() or process.poll() is not None, 120, "srcluster up"
        )
        text = out.read_text()
        assert process.poll() is None, text
        token = next(
            line.split()[1] for line in text.splitlines() if line.strip().startswith("token:")
        )
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
