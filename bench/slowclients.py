"""How many slow connections the API holds while /healthz still answers.

Starts an embedded Redis and the API under gunicorn (as deployed, ``api/gunicorn_conf.py``),
then for each ``DRIPPING,IDLE`` pair holds that many connections dripping one header line
a second (and that many sending nothing), times /healthz from fresh connections while they
are held and after their heads are overdue, and counts the 408s they got::

    python bench/slowclients.py 800,0 500,500 1500,0
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from api.server import HEAD_SECONDS  # noqa: E402
from common.cluster.embedded import EmbeddedRedis  # noqa: E402
from common.settings import Settings  # noqa: E402
from tests.cluster import ApiServer  # noqa: E402
from tests.slow_clients import healthz_seconds, slow_connections  # noqa: E402
from tests.tokens import TOKENS  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("rounds", nargs="+", help="DRIPPING,IDLE connection counts")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder, EmbeddedRedis(Path(folder)) as redis_server:
        settings = Settings(data_dir=Path(folder), redis_url=redis_server.url, tokens=TOKENS)
        api = ApiServer(settings, Path(folder)).wait_ready()
        try:
            for spec in args.rounds:
                dripping, idle = (int(n) for n in spec.split(","))
                lines = int(HEAD_SECONDS) + 4
                with slow_connections(api.port, dripping, idle, lines=lines) as held:
                    time.sleep(1.5)
                    during = [healthz_seconds(api.port, 30) for _ in range(5)]
                    time.sleep(HEAD_SECONDS + 1.5)
                    after = [healthz_seconds(api.port, 30) for _ in range(3)]
                timed_out = sum(r.startswith(b"HTTP/1.1 408") for r in held.replies)
                print(
                    f"{dripping} dripping + {idle} idle: /healthz max {max(during) * 1000:.0f} ms "
                    f"while held, {max(after) * 1000:.0f} ms after; {timed_out} of {dripping} "
                    "got a 408",
                    flush=True,
                )
        finally:
            api.stop()


if __name__ == "__main__":
    main()
