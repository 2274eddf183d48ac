"""Fair shares measured: token B's one-tile job behind token A's 1024-tile job, one
worker process, a stand-in engine, one task per tile; FIFO (``fair_share`` off) and
fair-share priorities side by side.

    python bench/fairness.py
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common.cluster.embedded import EmbeddedRedis
from common.cluster.store import JobStore
from common.settings import Settings
from tests.cluster import ApiServer, WorkerProcess
from tests.fairness_scenario import fair_settings, head_start, photo
from tests.tokens import TOKENS


def main() -> None:
    folder = Path(tempfile.mkdtemp(prefix="srcluster-fairness-"))
    large = photo(1024, 1000)
    try:
        for fair in (False, True):
            run = folder / ("fair" if fair else "fifo")
            run.mkdir()
            with EmbeddedRedis(run / "redis") as server:
                base = Settings.from_env(tokens=TOKENS)
                settings = fair_settings(base, run, server.url, fair=fair)
                api = ApiServer(settings, run).wait_ready()
                worker = WorkerProcess(settings, "bench", run).wait_ready()
                store = JobStore.from_settings(settings)
                try:
                    seen = head_start(api.url, store, large)
                finally:
                    worker.stop()
                    api.stop()
                    store.close()
            tile = seen.a_seconds / seen.a_parts
            print(
                f"{'fair share' if fair else 'FIFO':>10}: B waited {seen.b_wait:6.2f} s "
                f"({seen.b_wait / tile:5.0f} of A's tiles, {seen.a_tiles_ahead} ran meanwhile); "
                f"A: {seen.a_parts} tiles in {seen.a_seconds:.1f} s ({tile * 1000:.0f} ms a tile)"
            )
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
