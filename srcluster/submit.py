"""``srcluster submit``: upscale on a remote cluster, with ``srcluster upscale``'s options.

One image or a folder of them goes to the cluster at ``--url`` as the holder of
``--token`` (default ``$SRCLUSTER_TOKEN``), at most ``--jobs`` at a time. A
progress bar follows the tiles done (on a terminal, or always with
``--progress``); the results are written under the names ``upscale`` gives.

Ctrl-C (or SIGTERM, or SIGHUP) cancels every job this run started and has not
seen end, including one whose ``POST /sr`` was still in flight (its thread
cancels it as soon as the id comes back), then exits 130.

Exit status: 0 all written; 2 a usage mistake or the service refused a request
(a 4xx: the line says what and why); 1 a job failed, the service did not answer
or answered 5xx (for a folder: any image not written).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from common.errors import BadParameter, InputError, SrclusterError
from common.imageio import probe
from common.params import UpscaleParams, parse_params
from common.settings import Settings
from srcluster.client import Client, ServiceError, Unreachable, job_error
from srcluster.options import check_writable, output_name, read_upscale_options

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

DEFAULT_JOBS = 4
POLL = 0.25
"""Seconds between progress reads of a running job."""

CANCEL_TIMEOUT = 10.0
"""Seconds each cancel request may take after Ctrl-C."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``submit`` that ``upscale`` lacks (:func:`srcluster.options.add_upscale_options`
    adds the shared ones)."""
    parser.description = "Upscale an image or a folder of images on a remote srcluster cluster."
    parser.epilog = (
        "Exit status: 0 all written; 2 a usage mistake or a request the service refused (4xx); "
        "1 a job failed, or the service did not answer or answered 5xx; 130 Ctrl-C "
        "(the jobs started are cancelled)."
    )
    parser.add_argument(
        "--url",
        default=None,
        help="the cluster's API (default $SRCLUSTER_URL, else http://$SRCLUSTER_API_HOST:PORT)",
    )
    parser.add_argument("--token", help="API token (default $SRCLUSTER_TOKEN)")
    parser.add_argument(
        "-j",
        "--jobs",
        type=int,
        default=DEFAULT_JOBS,
        help=f"jobs in flight at once for a folder (default {DEFAULT_JOBS})",
    )
    parser.add_argument("--timeout", help="seconds the cluster may spend on each job")
    parser.add_argument(
        "--progress", action="store_true", help="show progress even when stderr is no terminal"
    )


@dataclass
class Tracker:
    """The jobs this run started and has not seen end, so Ctrl-C can cancel them."""

    running: set[str] = field(default_factory=set)
    stopping: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def started(self, job_id: str) -> bool:
        """Note a new job; ``False`` once stopping (then the caller cancels it itself)."""
        with self.lock:
            if self.stopping.is_set():
                return False
            self.running.add(job_id)
            return True

    def ended(self, job_id: str) -> None:
        with self.lock:
            self.running.discard(job_id)

    def stop(self) -> list[str]:
        """Stop: no job starts after this; returns the jobs to cancel."""
        with self.lock:
            self.stopping.set()
            return sorted(self.running)


class Progress:
    """One bar of tiles done over every job in flight (its total grows as jobs start)."""

    def __init__(self, label: str, images: int, disable: bool | None) -> None:
        self.images = images
        self.written = 0
        self.lock = threading.Lock()
        self.jobs: dict[str, tuple[int, int]] = {}
        self.bar = tqdm(total=0, unit="tile", desc=label, disable=disable, mininterval=0.1)
        if images > 1:
            self.bar.set_postfix_str(f"0/{images} images", refresh=False)

    def update(self, job_id: str, done: int, total: int) -> None:
        with self.lock:
            self.jobs[job_id] = (done, total)
            self.bar.total = sum(t for _, t in self.jobs.values())
            self.bar.update(sum(d for d, _ in self.jobs.values()) - self.bar.n)

    def image_written(self) -> None:
        with self.lock:
            self.written += 1
            if self.images > 1:
                self.bar.set_postfix_str(f"{self.written}/{self.images} images")

    def say(self, line: str) -> None:
        with self.lock:
            self.bar.write(line, file=sys.stderr)

    def close(self) -> None:
        self.bar.close()


class Interrupted(Exception):
    """Ctrl-C arrived while this job ran; it was (or is being) cancelled."""


@dataclass
class Run:
    """What every job of one ``submit`` shares."""

    url: str
    token: str
    fields: dict[str, object]
    into_folder: bool
    """Whether results go into a folder under upscale's names (else to the file given)."""
    resized: bool
    progress: Progress
    tracker: Tracker
    quiet: bool
    timeout: float
    local: threading.local = field(default_factory=threading.local)

    def client(self) -> Client:
        """This thread's client (a ``requests.Session`` is not shared across threads)."""
        found: Client | None = getattr(self.local, "client", None)
        if found is None:
            found = self.local.client = Client(self.url, self.token)
        return found

    def one(self, source: Path, target: Path) -> Path:
        """Upscale ``source`` on the cluster and write it to the file ``target`` (or into
        the folder ``target``, see :attr:`into_folder`); returns the path written."""
        client = self.client()
        data = source.read_bytes()
        job_id = client.submit(data, filename=source.name, **self.fields)
        if not self.tracker.started(job_id):
            client.cancel(job_id)  # Ctrl-C came while this POST was in flight
            raise Interrupted(job_id)
        if not self.quiet:
            self.progress.say(f"{source.name}: job {job_id}")
        try:
            for body in client.follow(job_id, timeout=self.timeout, interval=POLL):
                if self.tracker.stopping.is_set():
                    raise Interrupted(job_id)
                progress = body["progress"]
                self.progress.update(job_id, int(progress["done"]), int(progress["total"]))
        except BaseException:
            if not self.tracker.stopping.is_set():
                self.tracker.ended(job_id)  # nothing to cancel on our way out but on Ctrl-C
            raise
        self.tracker.ended(job_id)
        if body["status"] != "success":
            raise job_error(body)
        image = client.image(job_id)
        for note in body.get("notes") or []:
            self.progress.say(f"srcluster: note: {source.name}: {note}")
        path = target
        if self.into_folder:
            scale = round(float(body["width"]) / probe(data, 1 << 62).width, 3)
            path = target / output_name(source, scale, self.resized, str(body["format"]))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(image.data)
        self.progress.image_written()
        return path


def run(
    args: argparse.Namespace,
    settings: Settings,
    *,
    images_in: Callable[[Path], list[Path]],
    check_names: Callable[[list[Path], UpscaleParams, float | None], None],
) -> int:
    """``srcluster submit`` with parsed ``args``; returns the exit status.

    ``images_in`` and ``check_names`` are ``upscale``'s own folder rules (which
    files a folder run takes; that no two of them get one name), so both
    commands write the same names.

    Raises:
        SrclusterError: a usage mistake found before anything is sent (exit 2).
    """
    request = read_upscale_options(args)
    params = parse_params(**request.fields)  # the service checks again; this fails sooner
    token = args.token or os.environ.get("SRCLUSTER_TOKEN", "")
    if not token:
        raise BadParameter("no token: set SRCLUSTER_TOKEN or pass --token", parameter="token")
    url = args.url or os.environ.get("SRCLUSTER_URL") or _local_url(settings)
    if args.jobs < 1:
        raise BadParameter("--jobs must be at least 1", parameter="jobs")
    source = request.source
    if not source.exists():
        raise InputError(f"{source} does not exist")
    fields: dict[str, object] = {
        **request.fields,
        "skip_alpha": "true" if request.fields["skip_alpha"] else None,
        "timeout": args.timeout,
    }
    folder = source.is_dir()
    if folder:
        files = images_in(source)
        target = (
            Path(request.output) if request.output else source.with_name(source.name + "_upscaled")
        )
        if target.exists() and not target.is_dir():
            raise BadParameter(
                f"{target} is a file; a folder input needs a folder output", parameter="output"
            )
        check_writable(target, folder=True)
        check_names(files, params, params.scale)
        work = [(path, target) for path in files]
        into_folder = True
    else:
        into_folder = request.output is None or request.folder_output
        target = source.parent if request.output is None else Path(request.output)
        check_writable(target, folder=into_folder)
        work = [(source, target)]

    with Client(url, token) as probe_client:
        try:
            probe_client.info()  # the URL and the token, before any upload
        except (ServiceError, Unreachable) as error:
            return _report(None, error)
    if into_folder:
        target.mkdir(parents=True, exist_ok=True)

    disable = True if args.quiet else False if args.progress else None
    label = source.name if not folder else "tiles"
    progress = Progress(label, len(work), disable)
    job_timeout = float(args.timeout) if args.timeout else settings.max_timeout
    job_run = Run(
        url,
        token,
        fields,
        into_folder,
        params.resize_to is not None,
        progress,
        Tracker(),
        args.quiet,
        job_timeout + 60,
    )
    _stop_on_hangup_and_term()
    with _pool(min(args.jobs, len(work))) as pool:
        futures = {pool.submit(job_run.one, path, out): path for path, out in work}
        try:
            statuses = _collect(futures, progress, folder)
        except KeyboardInterrupt:
            progress.close()
            cancelled = _cancel(job_run, job_run.tracker.stop())
            pool.shutdown(wait=False, cancel_futures=True)
            print(f"srcluster: interrupted: cancelled {cancelled} job(s)", file=sys.stderr)
            return EXIT_INTERRUPTED
        finally:
            progress.close()
    if folder:
        written = statuses.count(0)
        print(f"{written} of {len(work)} images written to {target}")
        return 0 if written == len(work) else EXIT_FAILED
    return statuses[0]


@contextmanager
def _pool(size: int) -> Iterator[ThreadPoolExecutor]:
    pool = ThreadPoolExecutor(max_workers=size, thread_name_prefix="submit")
    try:
        yield pool
    finally:
        pool.shutdown(wait=False)  # on Ctrl-C the threads cancel their own jobs and end


def _collect(futures: dict[Future[Path], Path], progress: Progress, folder: bool) -> list[int]:
    """Each job's exit status, in submission order, as they finish (prints what happened)."""
    statuses: dict[Future[Path], int] = {}
    pending = set(futures)
    while pending:
        # short waits: the main thread must stay where Ctrl-C can reach it
        done, pending = wait(pending, timeout=0.2, return_when=FIRST_COMPLETED)
        for future in done:
            error = future.exception()
            if error is None:
                if not folder:
                    progress.close()  # the bar's last line, then the path on its own
                    print(future.result())
                statuses[future] = 0
            else:
                statuses[future] = _report(futures[future].name, error, progress)
    return [statuses[f] for f in futures]


def _report(name: str | None, error: BaseException, progress: Progress | None = None) -> int:
    """Print one line for ``error``; returns the exit status it means."""
    prefix = f"{name}: " if name else ""
    if isinstance(error, ServiceError) and error.status == 0:
        line, status = f"the job {error.code}: {error.describe()}", EXIT_FAILED
    elif isinstance(error, ServiceError):
        line = error.describe()
        status = EXIT_USAGE if 400 <= error.status < 500 else EXIT_FAILED
    elif isinstance(error, Unreachable):
        line, status = f"the service does not answer: {error}", EXIT_FAILED
    elif isinstance(error, SrclusterError):
        line, status = error.message, EXIT_USAGE
    elif isinstance(error, OSError):
        line, status = f"{error.strerror or error}: {error.filename or ''}".rstrip(": "), EXIT_USAGE
    elif isinstance(error, TimeoutError):
        line, status = str(error), EXIT_FAILED
    else:
        raise error
    text = f"srcluster: error: {prefix}{line}"
    if progress is not None:
        progress.say(text)
    else:
        print(text, file=sys.stderr)
    return status


def _cancel(job_run: Run, job_ids: list[str]) -> int:
    """Cancel ``job_ids``; returns how many the service took (a finished one is left alone)."""
    cancelled = 0
    with Client(job_run.url, job_run.token, timeout=CANCEL_TIMEOUT) as client:
        for job_id in job_ids:
            try:
                client.cancel(job_id)
                cancelled += 1
            except (ServiceError, Unreachable) as error:
                print(f"srcluster: could not cancel job {job_id}: {error}", file=sys.stderr)
    return cancelled


def _stop_on_hangup_and_term() -> None:
    """SIGTERM and SIGHUP (a closed terminal) cancel the jobs as Ctrl-C does."""

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    for name in ("SIGTERM", "SIGHUP"):
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), interrupt)


def _local_url(settings: Settings) -> str:
    return f"http://{settings.api_host}:{settings.api_port}"
