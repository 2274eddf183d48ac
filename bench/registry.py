"""What a cluster model costs: adding it (checks and storing) and a worker's first fetch.

    .venv/bin/python bench/registry.py [realesrgan-x4plus realesr-animevideov3 ...]

Each built-in named is converted to ONNX (in a temporary folder), then added to a
fresh embedded Redis as a cluster model (:meth:`ClusterModels.add`: ONNX Runtime
loads it and runs two small probes, then 32 MiB chunks are written), fetched as a
worker does on first use (:func:`common.catalog.cached_copy`: read the chunks, check
the sha256, write the file and fsync it) and looked up once more from the cache.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from common.catalog import cached_copy
from common.cluster.embedded import EmbeddedRedis
from common.cluster.models import ClusterModels
from common.cluster.store import JobStore
from common.models import Registry
from common.settings import Settings


def measure(name: str, folder: Path) -> str:
    data = Registry(Settings(data_dir=folder / "convert")).onnx_path(name).read_bytes()
    with EmbeddedRedis(folder / "redis") as server:
        store = JobStore.from_url(server.url, 60)
        shared = ClusterModels.from_store(store)
        began = time.perf_counter()
        entry, _ = shared.add(f"my-{name}", data, added_by="bench", max_bytes=1 << 30)
        added = time.perf_counter()
        cached_copy(entry, shared, folder / "worker")
        fetched = time.perf_counter()
        cached_copy(entry, shared, folder / "worker")
        again = time.perf_counter()
        store.close()
    return (
        f"{name}: {len(data) / 1e6:.1f} MB; add (checks + store) {added - began:.2f} s; "
        f"first fetch (+ sha256, write) {fetched - added:.2f} s; "
        f"cached {1e3 * (again - fetched):.2f} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", default=["realesr-animevideov3", "realesrgan-x4plus"])
    for name in parser.parse_args().models:
        with tempfile.TemporaryDirectory() as folder:
            print(measure(name, Path(folder)), flush=True)


if __name__ == "__main__":
    main()
