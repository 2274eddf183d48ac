"""Fuzz the API from its own OpenAPI description: no 5xx, every 4xx is ``{code, message, detail}``.

Schemathesis reads ``GET /openapi.json`` from the Flask app in process (WSGI)
and generates requests for every operation, both valid ones (positive) and ones
that break the schema (negative). Bounded: a fixed number of examples, each with
a deadline. ``url`` and ``callback_url`` values are never connected to: the
resolver is replaced by one that answers a documentation address (192.0.2.1),
which both refuse as non-public, so no request leaves the machine whatever
host is generated.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
import schemathesis
from flask import Flask
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from api import create_app, routes
from api.fetch import fetch
from common.cluster.callbacks import check_url
from common.settings import Settings
from tests.tokens import ALICE

pytestmark = pytest.mark.cluster

EXAMPLES = 150
URL_EXAMPLES = 50


def _offline(host: str, port: int) -> list[str]:
    return ["192.0.2.1"]  # TEST-NET-1: refused as non-public, never connected to


@pytest.fixture(scope="module")
def fuzz_app(cluster_settings: Settings) -> Iterator[Flask]:
    # the default SSRF rules for callback_url, resolved offline too; no request is held
    # for Prefer: wait (a generated wait=59 would outlast the deadline), but each is parsed
    strict = dataclasses.replace(cluster_settings, webhook_allow_private=False, wait_slots=0)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(routes, "fetch", functools.partial(fetch, resolver=_offline))
        patch.setattr(routes, "check_callback", functools.partial(check_url, resolver=_offline))
        app = create_app(strict)
        app.config["TESTING"] = True
        yield app
        app.extensions["srcluster"].close()


@pytest.fixture(scope="module")
def requests_from_schema(fuzz_app: Flask) -> st.SearchStrategy[Any]:
    schema = schemathesis.openapi.from_wsgi("/openapi.json", fuzz_app)
    operations = {op.ok().label for op in schema.get_all_operations()}
    assert {"POST /sr", "GET /result/{task_id}", "GET /result/{task_id}/download"} <= operations
    modes = (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE)
    # every operation, and POST /sr (the one with a body) as often again
    return st.one_of(
        *(schema.as_strategy(mode) for mode in modes),
        *(schema["/sr"]["POST"].as_strategy(mode) for mode in modes),
    )


SEEN: dict[str, set[int]] = {}


@settings(
    max_examples=EXAMPLES,
    deadline=timedelta(seconds=5),
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
@given(data=st.data())
def test_no_request_gets_a_5xx(requests_from_schema: st.SearchStrategy[Any], data: Any) -> None:
    case = data.draw(requests_from_schema, label="case")
    token = data.draw(st.sampled_from([{"X-Token": ALICE}, {}]), label="auth")
    response = case.call(headers=token)
    status = response.status_code
    SEEN.setdefault(case.operation.label, set()).add(status)
    assert status < 500, (case.as_curl_command(), response.text[:500])
    if 400 <= status < 500:
        assert response.headers["content-type"][0].split(";")[0] == "application/json"
        body = json.loads(response.content)
        assert set(body) == {"code", "message", "detail"}, body
        assert isinstance(body["message"], str) and body["message"], body
        assert isinstance(body["detail"], dict), body


def test_the_fuzzer_reached_the_routes() -> None:
    """Run after the fuzzer: it asked ``POST /sr`` and got past authentication."""
    if not SEEN:
        pytest.skip("the fuzz test did not run")
    assert "POST /sr" in SEEN, SEEN
    assert SEEN["POST /sr"] - {401}, SEEN


URL_TEXT = st.builds(
    str.__add__,
    st.sampled_from(["http://", "https://", "HTTP://", "http:", "ftp://", "//", ""]),
    st.text(alphabet="[]:@/%.?#\\ 019afx\u2100\uff0e\u3002\x00", max_size=24),
)
"""URL-ish text: the characters that urlsplit, IDNA and the address checks treat specially."""


@settings(max_examples=URL_EXAMPLES, deadline=timedelta(seconds=5), database=None)
@given(url=URL_TEXT)
def test_odd_urls_are_refused_not_500(fuzz_app: Flask, url: str) -> None:
    reply = fuzz_app.test_client().post(
        "/sr", data={"model": "realesr-animevideov3", "url": url}, headers={"X-Token": ALICE}
    )
    assert reply.status_code == 422, (url, reply.status_code, reply.data[:300])
    assert reply.json["detail"]["parameter"] in ("url", "file"), reply.json
