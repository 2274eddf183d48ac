"""The routes: parse and check, call one function of :mod:`common`, shape the reply."""

from __future__ import annotations

import dataclasses
import difflib
import re
from typing import Any, cast

from flask import Blueprint, Response, current_app, g, jsonify, redirect, request

from api import compat, openapi, waiting
from api.auth import authenticate, token_of, token_required
from api.errors import RETRY_AFTER, Gone, MissingImage, NotFound, NotReady, Unavailable
from api.fetch import fetch
from api.services import Services
from common.cluster import callbacks, jobs
from common.cluster.events import wait_until_ended
from common.cluster.store import JobRecord, JobStatus
from common.errors import BadParameter, UnknownField, UnsupportedImage
from common.estimate import refuse_too_long, refuse_unfit
from common.imageio import FORMATS, extension
from common.models import DEFAULT_MODEL
from common.params import ResizeTo, parse_params

bp = Blueprint("srcluster", __name__)

JOB_ID = re.compile(r"^[0-9a-f]{32}$")
"""What :func:`common.cluster.jobs.prepare` makes (``uuid4().hex``); anything else never reaches Redis."""

PARAM_FIELDS = ("scale", "tile_size", "tile_pad", "skip_alpha", "resize_to", "format")

SUBMIT_FIELDS = frozenset({"file", "url", "model", "timeout", "callback_url", *PARAM_FIELDS})
"""Every field ``POST /sr`` knows: krau/super-resolution-api's own (file, url, model, scale,
tile_size, skip_alpha, resize_to, timeout) and ours (tile_pad, format, callback_url). Any other is refused."""

check_callback = callbacks.check_url
"""The ``callback_url`` check (tests swap in one with an offline resolver)."""


def services() -> Services:
    return cast(Services, current_app.extensions["srcluster"])


def _json(body: dict[str, Any], status: int = 200) -> Response:
    response = jsonify(body)
    response.status_code = status
    return response


# --- service ------------------------------------------------------------------


@bp.get("/healthz")
def healthz() -> Response:
    store = services().store
    try:
        store.ping()
    except Exception as exc:  # any failure to answer is "not healthy", never a 500
        current_app.logger.warning("healthz: redis does not answer: %s", exc)
        return _unhealthy("down")
    try:
        store.check_writable()
    except Exception as exc:  # answers but refuses writes (maxmemory): no job can be taken
        current_app.logger.warning("healthz: redis refuses writes: %s", exc)
        return _unhealthy("refusing writes")
    return _json({"status": "ok"})


def _unhealthy(redis_state: str) -> Response:
    response = _json({"status": "unavailable", "redis": redis_state}, 503)
    response.headers["Retry-After"] = str(RETRY_AFTER)
    return response


@bp.get("/")
def index() -> Response:
    # a browser arriving without a token gets the page rather than a 401
    best = request.accept_mimetypes.best_match(["application/json", "text/html"])
    if token_of(request) is None and best == "text/html":
        return cast(Response, redirect("/ui", code=302))
    authenticate(request, services().tokens)
    svc = services()
    return _json(
        {
            "message": "srcluster is running",
            "version": svc.version,
            "models": svc.registry.names(),
            "model_details": [
                {"name": spec.name, "scale": spec.scale, "description": spec.description}
                for spec in svc.registry.specs()
            ],
            "workers": svc.store.worker_slots(),
            "engines": svc.store.worker_engines(),
        }
    )


@bp.get("/openapi.json")
def openapi_json() -> Response:
    svc = services()
    return _json(openapi.document(svc.version, svc.settings))


# --- jobs ---------------------------------------------------------------------


def _timeout(raw: str | None) -> int:
    limit = services().settings.max_timeout
    if raw is None or raw.strip() == "":
        return services().settings.timeout
    try:
        value = int(raw.strip())
    except ValueError:
        raise BadParameter("timeout must be an integer (seconds)", parameter="timeout") from None
    if not 1 <= value <= limit:
        raise BadParameter(
            f"timeout must be within 1..{limit} seconds", parameter="timeout", value=value
        )
    return value


def _check_fields() -> None:
    """Refuse fields ``POST /sr`` does not know, and any field given more than once.

    Raises:
        UnknownField: a field not in :data:`SUBMIT_FIELDS` (all of them named, with the
            nearest known name when one is close).
        BadParameter: a field given twice (two ``file`` parts too), or a file part
            for a plain field.
    """
    names = set(request.form) | set(request.files)
    if None in names or "" in names:  # a part whose Content-Disposition names nothing
        raise BadParameter(
            "a form part has no name: each part needs Content-Disposition: form-data; name=..."
        )
    unknown = sorted(names - SUBMIT_FIELDS)
    if unknown:
        hints = {n: m[0] for n in unknown if (m := difflib.get_close_matches(n, SUBMIT_FIELDS, 1))}
        said = ", ".join(f"{n!r}" + (f" (did you mean {hints[n]!r}?)" if n in hints else "")
                         for n in unknown)  # fmt: skip
        raise UnknownField(
            f"unknown field{'s' if len(unknown) > 1 else ''} {said}; "
            f"POST /sr takes {', '.join(sorted(SUBMIT_FIELDS))}",
            parameter=unknown[0],
            fields=unknown,
            suggestions=hints,
        )
    for name in sorted(names):
        count = len(request.form.getlist(name)) + len(request.files.getlist(name))
        if count > 1:
            what = "file parts" if name == "file" else "values"
            raise BadParameter(
                f"{count} {what} for {name}; a job takes one of each field "
                "(send one request per image)",
                parameter=name,
                count=count,
            )
        if name != "file" and name in request.files:
            raise BadParameter(f"{name} must be a plain form field, not a file", parameter=name)


def _upload() -> bytes:
    """The image bytes of ``POST /sr``: the ``file`` upload or what ``url`` points to.

    Raises:
        BadParameter: both given (:class:`MissingImage`: neither).
        UnsupportedImage: an empty file.
        ImageTooLarge: over ``max_bytes``.
    """
    settings = services().settings
    upload = request.files.get("file")
    data = b"" if upload is None else upload.stream.read(settings.max_bytes + 1)
    if upload is not None and not upload.filename and not data:
        upload = None  # a browser form with no file chosen sends an empty, unnamed part
    url = request.form.get("url", "").strip()
    if upload is None and "file" in request.form:
        raise BadParameter("file must be an uploaded file (multipart/form-data)", parameter="file")
    if upload is not None and url:
        raise BadParameter("give either file or url, not both", parameter="file")
    if upload is None and not url:
        raise MissingImage(
            "give the image as a multipart file field 'file' or as 'url'", parameter="file"
        )
    if upload is None:
        data = fetch(url, max_bytes=settings.max_bytes)
    if not data:
        raise UnsupportedImage("empty file", parameter="url" if url else "file")
    return data


@bp.post("/sr")
@token_required
def submit() -> Response:
    svc = services()
    form = request.form
    krau = compat.enabled(svc.settings)
    _check_fields()
    fields = {name: form.get(name) for name in PARAM_FIELDS}
    krau_resize = None
    if krau:
        krau_resize = compat.parse_resize_to(fields.pop("resize_to"))
        fields["format"] = fields["format"] or compat.DEFAULT_FORMAT
    params = parse_params(
        model=form.get("model", "").strip() or (compat.DEFAULT_MODEL if krau else DEFAULT_MODEL),
        **fields,
    )
    timeout = _timeout(form.get("timeout"))
    wait = waiting.requested_wait(request.headers)
    raw_callback = form.get("callback_url", "").strip()
    callback_url = check_callback(raw_callback, svc.settings) if raw_callback else None
    data = _upload()
    capacity = svc.store.capacity()
    prepared = jobs.prepare(
        data, params, svc.settings, svc.registry, workers=capacity.slots, limits=capacity.limits
    )
    upload_bytes = len(data)
    del data
    params = dataclasses.replace(params, model=prepared.plan.model)  # an alias's own name
    if krau_resize is not None:
        plan = prepared.plan
        size = compat.final_size(
            krau_resize, plan.width, plan.height, params.scale, plan.model_scale
        )
        prepared = dataclasses.replace(prepared, plan=compat.resized(plan, size, svc.settings))
        params = dataclasses.replace(params, resize_to=ResizeTo(width=size[0], height=size[1]))
    refuse_unfit(
        prepared.plan,
        upload_bytes=upload_bytes,
        input_format=prepared.image.format,
        max_result_bytes=svc.settings.max_result_bytes,
        max_parts=svc.settings.max_parts,
        webp_quality=svc.settings.webp_quality,
        max_side=FORMATS[prepared.plan.format].max_side,
        resized=params.resize_to is not None,
    )
    estimate = jobs.estimate_job(svc.store, svc.registry, prepared.plan, capacity.slots)
    if svc.settings.estimate_check:
        refuse_too_long(estimate, timeout, svc.settings.max_timeout)
    jobs.admit(svc.store, svc.settings, g.caller.owner, prepared)
    backlog = jobs.submit(
        svc.store,
        prepared,
        params,
        owner=g.caller.owner,
        owner_name=g.caller.name,
        timeout=timeout,
        estimate=estimate.seconds,
        callback_url=callback_url,
    )
    try:
        svc.sender.send_job(prepared.job_id, prepared.plan.group_count, backlog)
        svc.store.commit(prepared.job_id)
    except Exception as exc:
        current_app.logger.exception("could not queue job %s", prepared.job_id)
        _unqueued(prepared.job_id)
        raise Unavailable("the task queue does not answer; try again later") from exc
    body: dict[str, Any] = {"task_id": prepared.job_id, "message": "Success"}
    status = 200 if krau else 202
    applied = _hold(prepared.job_id, wait)
    if applied is not None:
        record = svc.store.get(prepared.job_id)
        if record is not None:
            body["result"] = _public(record)
            status = 200 if krau or record.status.finished else 202
    response = _waited(_json(body, status), applied)
    response.headers["Location"] = f"/result/{prepared.job_id}"
    return response


def _unqueued(job_id: str) -> None:
    """Leave nothing of a job whose tasks could not all be queued: the caller is told
    503 and no task id, so the job must not run, nor keep its input until the reaper.
    A group already queued finds its job gone and does nothing."""
    store = services().store
    try:
        store.discard(job_id)
    except Exception:  # Redis is gone altogether: the reaper ends the job at its deadline
        current_app.logger.exception("could not discard unqueued job %s", job_id)


def _hold(job_id: str, seconds: int | None) -> int | None:
    """Wait until the job ends or ``seconds`` pass, if asked and a slot is free;
    returns the seconds applied (``None``: the request did not wait)."""
    if seconds is None:
        return None
    with services().waits.slot() as granted:
        if not granted:
            return None
        if seconds > 0:
            wait_until_ended(services().store, job_id, seconds)
    return seconds


def _waited(response: Response, applied: int | None) -> Response:
    """Say which wait was applied (RFC 7240) and that the answer depends on ``Prefer``."""
    response.vary.add("Prefer")
    if applied is not None:
        response.headers["Preference-Applied"] = f"wait={applied}"
    return response


def _own_job(job_id: str) -> JobRecord:
    """The caller's job ``job_id``.

    Raises:
        NotFound: a malformed id, no such job, or another token's job (all alike).
    """
    record = services().store.get(job_id) if JOB_ID.match(job_id) else None
    if record is None or record.owner != g.caller.owner:
        raise NotFound("no such job")
    return record


@bp.get("/result/<job_id>")
@token_required
def result(job_id: str) -> Response:
    wait = waiting.requested_wait(request.headers)
    record = _own_job(job_id)
    applied = None
    if wait is not None and record.status.finished:
        applied = wait  # nothing left to wait for: the preference is met at once
    elif wait is not None:
        applied = _hold(job_id, wait)
        if applied is not None:
            record = services().store.get(job_id) or record
    return _waited(_json({"result": _public(record)}), applied)


def _public(record: JobRecord) -> dict[str, Any]:
    """The ``result`` object of a job, with krau's ``path`` in its compatibility mode."""
    body = record.public()
    if compat.enabled(services().settings) and record.status is JobStatus.SUCCESS:
        body["path"] = f"output/{_file_name(record)}"  # krau's field; names the download
    return body


def _file_name(record: JobRecord) -> str:
    fmt = record.output.get("format") or record.plan.get("format") or "png"
    return f"{record.id}{extension(fmt)}"


@bp.get("/result/<job_id>/download")
@token_required
def download(job_id: str) -> Response:
    record = _own_job(job_id)
    if record.status is not JobStatus.SUCCESS:
        raise NotReady(
            f"the job is {record.status.value}, not success",
            status=record.status.value,
            progress={"done": record.done, "total": record.parts},
        )
    # from a blob store in chunks, never whole in memory; the owner's token was checked above
    found = services().store.result_stream(job_id)
    if found is None:
        raise Gone("the result was deleted or has expired", status=record.status.value)
    size, chunks = found
    response = Response(chunks, mimetype=record.output.get("content_type", "image/png"))
    response.content_length = size
    response.headers["Content-Disposition"] = f'attachment; filename="{_file_name(record)}"'
    return response


@bp.delete("/result/<job_id>")
@token_required
def delete(job_id: str) -> Response:
    svc = services()
    record = _own_job(job_id)
    if not record.status.finished and svc.store.cancel(job_id):
        svc.sender.revoke(job_id, record.groups)
    else:
        # finished (perhaps just now): keep the record, drop the result and the rest
        svc.store.delete(job_id)
    current = svc.store.get(job_id) or record
    return _json({"result": current.public()})
