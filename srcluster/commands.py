"""The command lines of the cluster's processes, written once.

``srcluster up`` and the test suite start the same processes with the same
arguments, so a test that passes also vouches for what ``up`` runs.

Where a child imports from: gunicorn puts its working folder first on
``sys.path`` (its ``--chdir``, by default the current folder), Celery adds the
current folder while it imports ``-A worker``, and ``python -m`` adds it too. So
a file ``api.py`` or ``worker.py`` where the user stands would be imported
instead of ours. :func:`child_environment` and :func:`safe_folder` close that:
children run in a folder of ours that holds no code, with ``PYTHONSAFEPATH``
set, and find our packages where this process found them.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import signal
import site
import sys
from collections.abc import Mapping
from pathlib import Path

import srcluster

API_WORKERS = 2
"""gunicorn worker processes of the API, as ``api/gunicorn_conf.py`` says too (threads,
timeouts and limits are there, not here: compose and Kubernetes read the same file)."""

API_CONFIG = "python:api.gunicorn_conf"
"""gunicorn's ``-c`` for the API: the one configuration every place that starts it uses."""


def worker_command(
    hostname: str,
    concurrency: int = 1,
    *,
    queues: str | None = None,
    loglevel: str = "INFO",
    quiet: bool = False,
) -> list[str]:
    """``celery -A worker worker`` with a prefork pool of ``concurrency`` processes.

    ``quiet`` turns off gossip and mingle (peer chatter a test cluster does not need).
    """
    args = [
        sys.executable, "-m", "celery", "-A", "worker", "worker",
        "--pool", "prefork", "--concurrency", str(concurrency),
        "--hostname", hostname, "--loglevel", loglevel,
    ]  # fmt: skip
    if quiet:
        args += ["--without-gossip", "--without-mingle"]
    if queues:
        args += ["--queues", queues]
    return args


def api_command(host: str, port: int, workers: int = API_WORKERS) -> list[str]:
    """The API under gunicorn, as deployed (``api:create_app()`` reads ``SRCLUSTER_*``)."""
    return [
        sys.executable, "-m", "gunicorn", "-c", API_CONFIG, "--bind", f"{host}:{port}",
        "--workers", str(workers), "api:create_app()",
    ]  # fmt: skip


def flower_command(host: str, port: int) -> list[str]:
    """Flower on the cluster's broker with every route behind basic auth (:mod:`srcluster.flower`);
    its password goes in ``FLOWER_BASIC_AUTH``, never here."""
    return [sys.executable, "-m", "srcluster.flower", f"--port={port}", f"--address={host}"]


def code_root() -> Path:
    """The folder our packages (``api``, ``worker``, ``common``, ``srcluster``) are imported from."""
    return Path(srcluster.__file__).resolve().parents[1]


def safe_folder(data_dir: Path) -> Path:
    """An empty folder of ours for children to run in (made if missing): nothing there to import."""
    folder = data_dir.resolve() / "run"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def child_environment(base: Mapping[str, str]) -> dict[str, str]:
    """``base`` for a child process: no current folder on its ``sys.path`` (``PYTHONSAFEPATH``),
    and our code root on ``PYTHONPATH`` unless it is an installed site-packages folder (which
    is on the path already; put first it could shadow the standard library)."""
    env = dict(base)
    env["PYTHONSAFEPATH"] = "1"
    root = str(code_root())
    installed = {
        str(Path(p).resolve()) for p in [*site.getsitepackages(), site.getusersitepackages()]
    }
    if root not in installed:
        paths = [p for p in env.get("PYTHONPATH", "").split(":") if p and p != root]
        env["PYTHONPATH"] = ":".join([root, *paths])
    return env


_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """In a child before it runs (``preexec_fn``): have Linux send it SIGTERM when its parent
    dies, even by SIGKILL, so no child of ``srcluster up`` outlives it. Elsewhere: nothing."""
    name = ctypes.util.find_library("c")
    if sys.platform.startswith("linux") and name:
        ctypes.CDLL(name, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
