"""A real S3 server for the tests: MinIO's when it is installed, else moto's, in its own process.

MinIO's server is a Go binary that none of the registries this project installs
from carries (PyPI, Debian, npm): it is used when ``minio`` is on ``PATH`` or
``SRCLUSTER_TEST_MINIO`` names it. Otherwise the S3 API of ``moto[server]`` (a
test extra) runs as a separate HTTP server process: real requests over a socket
(PUT, ranged GET, LIST, DELETE), no patched client. :func:`start` says which
one it started; with neither, the tests that need S3 are skipped with the reason.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from common.cluster.embedded import free_port

BUCKET = "srcluster-test"
CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "srcluster-test",
    "AWS_SECRET_ACCESS_KEY": "srcluster-test-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
}
"""What the test server accepts; put in the environment, where boto3 and child processes read it."""


@dataclass
class S3Server:
    """A running S3 server on a free port of 127.0.0.1, with :data:`BUCKET` created."""

    kind: str
    """``minio`` or ``moto``."""
    endpoint_url: str
    process: subprocess.Popen[bytes]
    log: Path
    saved_env: dict[str, str | None] = field(default_factory=dict)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        for name, value in self.saved_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def unavailable() -> str | None:
    """Why no S3 server can run here, or ``None`` when one can."""
    if importlib.util.find_spec("boto3") is None:
        return "boto3 is not installed (pip install '.[s3]')"
    if minio_binary() is None and importlib.util.find_spec("moto") is None:
        return "neither a MinIO server binary nor moto[server] is installed (pip install '.[test]')"
    return None


def minio_binary() -> str | None:
    return os.environ.get("SRCLUSTER_TEST_MINIO") or shutil.which("minio")


def start(folder: Path, timeout: float = 60) -> S3Server:
    """Start MinIO (when installed) or moto's server, wait until it answers, make the bucket."""
    import boto3

    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log = folder / "s3-server.log"
    saved = {name: os.environ.get(name) for name in CREDENTIALS}
    os.environ.update(CREDENTIALS)
    binary = minio_binary()
    env = {**os.environ}
    if binary is not None:
        kind = "minio"
        args = [binary, "server", str(folder / "data"), "--address", f"127.0.0.1:{port}"]
        args += ["--console-address", f"127.0.0.1:{free_port()}"]
        env["MINIO_ROOT_USER"] = CREDENTIALS["AWS_ACCESS_KEY_ID"]
        env["MINIO_ROOT_PASSWORD"] = CREDENTIALS["AWS_SECRET_ACCESS_KEY"]
    else:
        kind = "moto"
        args = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    with log.open("wb") as out:
        process = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=env)
    server = S3Server(kind, f"http://127.0.0.1:{port}", process, log, saved)
    client = boto3.session.Session().client("s3", endpoint_url=server.endpoint_url)
    deadline = time.monotonic() + timeout
    try:
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"the {kind} S3 server exited:\n{log.read_text()[-2000:]}")
            try:
                client.create_bucket(Bucket=BUCKET)
                return server
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
    except BaseException:
        server.stop()
        raise
    finally:
        with contextlib.suppress(Exception):
            client.close()
