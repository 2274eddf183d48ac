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
        api = f"http://127.0.0.1:{api_port}"
        photo = (ROOT / "tests" / "data" / "photo.png").read_bytes()
        reply = requests.post(
            api + "/sr",
            headers={"X-Token": token},
            files={"file": ("photo.png", photo)},
            data={"model": "realesr-animevideov3"},
            timeout=60,
        )
        assert reply.status_code == 202, reply.text
        job = reply.json()["task_id"]

        def status() -> str | None:
            body = requests.get(
                f"{api}/result/{job}", headers={"X-Token": token}, timeout=10
            ).json()
            return body["result"]["status"] if body["result"]["status"] != "pending" else None

        wait_for(lambda: status() in ("success", "failed"), 120, "the job")
        download = requests.get(
            f"{api}/result/{job}/download", headers={"X-Token": token}, timeout=30
        )
        assert download.status_code == 200 and download.content.startswith(b"\x89PNG")
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
