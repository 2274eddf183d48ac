"""``srcluster up``: one command brings up Redis, a worker, the API and Flower; Ctrl-C stops them all."""

from __future__ import annotations

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
