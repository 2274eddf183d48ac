"""``srcluster submit`` as a user runs it, against the real cluster (gunicorn, Celery, Redis).

Real processes throughout: the command runs as a subprocess, and its results
are checked against ``srcluster upscale`` run the same way, byte for byte.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from common.cluster.embedded import free_port
from common.imageio import decode, encode
from common.settings import Settings
from srcluster.client import Client
from tests.cluster import ROOT, ApiServer, WorkerProcess, child_env, wait_for
from tests.tokens import ALICE

pytestmark = pytest.mark.cluster

COMPACT = "realesr-animevideov3"
JOB_LINE = re.compile(r"job ([0-9a-f]{32})")


def env_for(settings: Settings, token: str | None = ALICE) -> dict[str, str]:
    env = child_env(settings)
    env.pop("SRCLUSTER_TOKEN", None)
    if token is not None:
        env["SRCLUSTER_TOKEN"] = token
    return env


def srcluster(
    settings: Settings, *args: str | Path, token: str | None = ALICE
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "srcluster", *map(str, args)],
        cwd=ROOT,
        env=env_for(settings, token),
        capture_output=True,
        text=True,
        timeout=300,
    )


def image(photo: np.ndarray, height: int, width: int, alpha: bool = False) -> bytes:
    pixels = np.resize(photo, (height, width, 3)).astype(np.uint8)
    if alpha:
        ramp = np.tile(np.linspace(0, 255, width, dtype=np.uint8), (height, 1))[..., None]
        pixels = np.dstack([pixels, ramp])
    return encode(pixels, "png")


@pytest.mark.parametrize(
    "options",
    [
        ["-n", COMPACT, "-s", "2", "-t", "32"],
        ["-n", COMPACT, "-s", "3", "-t", "48", "--skip-alpha", "-f", "webp"],
    ],
)
def test_submit_gives_the_bytes_upscale_writes(
    api: ApiServer, worker: WorkerProcess, cluster_settings: Settings, photo, tmp_path, options
) -> None:
    source = tmp_path / "in.png"
    source.write_bytes(image(photo, 70, 90, alpha=True))
    ext = ".webp" if "webp" in options else ".png"
    local, remote = tmp_path / f"local{ext}", tmp_path / f"remote{ext}"
    made = srcluster(cluster_settings, "upscale", source, "-o", local, "-q", *options)
    assert made.returncode == 0, made.stderr
    sent = srcluster(
        cluster_settings, "submit", source, "-o", remote, "--url", api.url, "-q", *options
    )
    assert sent.returncode == 0, sent.stderr
    assert sent.stdout.strip() == str(remote)
    assert remote.read_bytes() == local.read_bytes()


def test_submit_shows_progress_of_tiles(
    api: ApiServer, worker: WorkerProcess, cluster_settings: Settings, photo, tmp_path
) -> None:
    source = tmp_path / "big.png"
    source.write_bytes(image(photo, 256, 256))
    sent = srcluster(
        cluster_settings, "submit", "-i", source, "--url", api.url, "--progress",
        "-n", COMPACT, "-t", "32", "-s", "2",
    )  # fmt: skip
    assert sent.returncode == 0, sent.stderr
    written = tmp_path / "big_x2.png"
    assert sent.stdout.strip() == str(written), "upscale's naming rule"
    assert decode(written.read_bytes(), 1 << 30).pixels.shape == (512, 512, 3)
    assert JOB_LINE.search(sent.stderr), sent.stderr
    counts = [(int(d), int(t)) for d, t in re.findall(r"(\d+)/(\d+) \[", sent.stderr)]
    assert counts and counts[-1] == (64, 64), sent.stderr
    assert any(0 < done < 64 for done, _ in counts), f"the bar moved: {counts}"
    assert [d for d, _ in counts] == sorted(d for d, _ in counts), "never backwards"


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_cancels_the_jobs_it_started(
    api: ApiServer, worker: WorkerProcess, cluster_settings: Settings, photo, tmp_path, signum
) -> None:
    source = tmp_path / "large.png"
    source.write_bytes(image(photo, 1024, 1024))  # about 1000 tiles: still running at the signal
    err = tmp_path / "stderr"
    with err.open("w") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "srcluster", "submit", str(source), "--url", api.url,
             "-n", COMPACT, "-t", "32"],
            cwd=ROOT, env=env_for(cluster_settings), stdout=subprocess.DEVNULL, stderr=sink,
        )  # fmt: skip
    client = Client(api.url, ALICE)
    try:
        found = wait_for(lambda: JOB_LINE.search(err.read_text()), 60, "the job id")
        job_id = found.group(1)  # type: ignore[attr-defined]
        wait_for(lambda: client.result(job_id)["progress"]["done"] >= 1, 60, "a tile done")
        assert client.result(job_id)["status"] == "processing"
        process.send_signal(signum)
        assert process.wait(30) == 130, err.read_text()
        assert client.result(job_id)["status"] == "cancelled"
        assert "cancelled 1 job" in err.read_text()
        assert not (tmp_path / "large_x4.png").exists()
    finally:
        if process.poll() is None:
            process.kill()
        client.close()


def test_a_folder_runs_several_jobs_at_once(
    api: ApiServer, worker: WorkerProcess, cluster_settings: Settings, photo, tmp_path
) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    for i, name in enumerate(("a.png", "b.png", "c.png")):
        (folder / name).write_bytes(image(np.roll(photo, i * 7, axis=1), 24, 32))
    (folder / "notes.txt").write_text("not an image")
    out = tmp_path / "out"
    sent = srcluster(
        cluster_settings, "submit", folder, "-o", out, "--url", api.url, "--jobs", "2",
        "-n", COMPACT, "-q",
    )  # fmt: skip
    assert sent.returncode == 0, sent.stderr
    assert "3 of 3 images written" in sent.stdout
    assert sorted(p.name for p in out.iterdir()) == ["a_x4.png", "b_x4.png", "c_x4.png"]
    assert sent.stderr == "", "quiet: no bar, no job lines"
    shapes = {decode(p.read_bytes(), 1 << 30).pixels.shape for p in out.iterdir()}
    assert shapes == {(96, 128, 3)}


@pytest.mark.parametrize(
    ("args", "token", "status", "words"),
    [
        ([], "wrong-token-0123456789abcdefghij", 2, ["token is not valid", "HTTP 401"]),
        (["-n", "no-such-model"], ALICE, 2, ["no-such-model", "HTTP 422"]),
        (["--timeout", "0"], ALICE, 2, ["timeout", "HTTP 422", "parameter timeout"]),
        (["-o", "x.png", "-f", "webp"], ALICE, 2, ["-f asks for webp"]),
        (["-o", "/proc/no-such-folder/x.png"], ALICE, 2, ["cannot write"]),
        ([], None, 2, ["SRCLUSTER_TOKEN"]),
        (["--url", "unreachable"], ALICE, 1, ["does not answer"]),
    ],
)
def test_mistakes_are_one_line(
    api: ApiServer, cluster_settings: Settings, photo, tmp_path, args, token, status, words
) -> None:
    source = tmp_path / "in.png"
    source.write_bytes(image(photo, 20, 20))
    url = f"http://127.0.0.1:{free_port()}" if "unreachable" in args else api.url
    args = [a for a in args if a != "unreachable"]
    if "--url" in args:
        args.remove("--url")
    sent = srcluster(
        cluster_settings, "submit", source, "--url", url, "-n", COMPACT, *args, token=token
    )
    assert sent.returncode == status, (sent.stdout, sent.stderr)
    lines = sent.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("srcluster: error:"), sent.stderr
    for word in words:
        assert word in lines[0], lines[0]
