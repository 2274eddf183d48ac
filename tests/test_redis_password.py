"""A Redis that requires a password: the worker and the API use it through
``SRCLUSTER_REDIS_URL`` (``redis://:password@host:port/db``) and a job runs end to
end; a client without the password, or with a wrong one, is refused."""

from __future__ import annotations

import dataclasses
import socket
from pathlib import Path

import pytest
import redis

from common.cluster.embedded import EmbeddedRedis
from common.settings import Settings
from tests.bad_requests import PNG
from tests.cluster import ApiServer, WorkerProcess
from tests.test_cluster import download, submit, wait_done

pytestmark = pytest.mark.cluster

PASSWORD = "s3cret-redis-pass-0123456789"


def test_a_job_runs_against_a_redis_with_a_password(
    cluster_settings: Settings, tmp_path: Path
) -> None:
    server = EmbeddedRedis(tmp_path / "redis", password=PASSWORD).start()
    settings = dataclasses.replace(cluster_settings, redis_url=server.url)
    assert f":{PASSWORD}@" in settings.redis_url
    worker: WorkerProcess | None = None
    api: ApiServer | None = None
    try:
        for password in (None, "wrong-password"):
            client = redis.Redis(host="127.0.0.1", port=server.port, password=password)
            with pytest.raises((redis.AuthenticationError, redis.ResponseError)) as refused:
                client.ping()
            if not isinstance(refused.value, redis.AuthenticationError):
                assert "NOAUTH" in str(refused.value)
            client.close()
        # whatever the client library does first (HELLO, AUTH), the protocol itself says no
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as raw:
            raw.sendall(b"PING\r\n")
            assert raw.recv(256).startswith(b"-NOAUTH")

        worker = WorkerProcess(settings, "auth", tmp_path).wait_ready()
        api = ApiServer(settings, tmp_path).wait_ready()
        job_id = submit(api, PNG, tile_size=32)
        body = wait_done(api, job_id)
        assert body["status"] == "success", body
        assert download(api, job_id).content_type == "image/png"

        # the job really lives in the password-protected Redis
        client = redis.Redis.from_url(server.url)
        assert client.exists(f"srcluster:job:{job_id}")
        client.close()
        for log in (worker.log, api.log):
            assert PASSWORD not in log.read_text(errors="replace"), f"{log.name} shows the password"
    finally:
        if api is not None:
            api.stop()
        if worker is not None:
            worker.stop()
        server.stop()
