"""``srcluster models``: list the models; add or delete the cluster's, straight in its Redis.

With ``SRCLUSTER_REDIS_URL`` set, ``add`` checks the file here (the same checks as the
admin route ``PUT /models/<name>``) and records it for the whole cluster, ``added_by``
being ``cli:<user>@<host>``; every API process and worker sees it at once. Without it,
``add`` registers the model on this host only (:meth:`common.models.Registry.add`).
"""

from __future__ import annotations

import argparse
import getpass
import socket

from common.cluster.models import ClusterModels, cluster_registry
from common.cluster.store import JobStore
from common.errors import BadParameter
from common.models import Registry
from common.settings import Settings


def who() -> str:
    """``cli:<user>@<host>``: who adds a model from the command line."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no name for this uid (a container)
        user = "unknown"
    return f"cli:{user}@{socket.gethostname()}"


def cluster_models(args: argparse.Namespace, settings: Settings) -> int:
    """``srcluster models [add|rm]`` against the cluster's Redis."""
    store = JobStore.from_settings(settings)
    try:
        shared = ClusterModels.from_store(store)
        if args.models_command == "add":
            path = args.path
            if not path.is_file():
                raise BadParameter(f"no such file: {path}", parameter="path", value=str(path))
            entry, replaced = shared.add(
                args.name,
                path.read_bytes(),
                added_by=who(),
                max_bytes=settings.model_max_bytes,
                label=path.name,
                description=args.description,
                replace=args.replace,
            )
            verb = "replaced" if replaced else "added"
            print(
                f"{verb} cluster model {entry.name}: x{entry.scale}, {entry.size} bytes, sha256 {entry.sha256[:12]}"
            )
            return 0
        if args.models_command == "rm":
            if shared.remove(args.name) is None:
                raise BadParameter(f"no cluster model named {args.name!r}", parameter="name")
            print(f"deleted cluster model {args.name}")
            return 0
        return print_models(cluster_registry(settings, store))
    finally:
        store.close()


def print_models(registry: Registry) -> int:
    """The table of ``srcluster models``."""
    print(f"{'name':28} {'scale':>5} {'source':8} {'pad':>4} {'tile':>5}  onnx")
    for spec in registry.specs():
        if registry.is_cached(spec.name):
            cached = "cached"
        elif spec.source == "cluster":
            cached = f"fetched on first use ({spec.size} bytes, added by {spec.added_by})"
        else:
            cached = "converted on first use"
        print(
            f"{spec.name:28} {spec.scale:>5} {spec.source:8} {spec.default_pad:>4} "
            f"{spec.max_tile:>5}  {cached}"
        )
    return 0
