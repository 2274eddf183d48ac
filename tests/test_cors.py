"""CORS (``SRCLUSTER_CORS_ORIGINS``): preflights answered for allowed origins only, answers labelled."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator

import pytest
from flask import Flask

from api import create_app
from common.errors import ConfigError
from common.settings import Settings
from tests.tokens import ALICE, TOKENS

PAGE = "https://app.example.com"
OTHER = "https://evil.example"


@pytest.fixture
def make_app(settings: Settings, redis_url: str) -> Iterator[Callable[[str], Flask]]:
    apps: list[Flask] = []

    def build(origins: str) -> Flask:
        app = create_app(
            dataclasses.replace(settings, redis_url=redis_url, tokens=TOKENS, cors_origins=origins)
        )
        apps.append(app)
        return app

    yield build
    for app in apps:
        app.extensions["srcluster"].close()


def preflight(app: Flask, origin: str, path: str = "/sr", method: str = "POST"):  # type: ignore[no-untyped-def]
    return app.test_client().options(
        path,
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": method,
            "Access-Control-Request-Headers": "x-token",
        },
    )


def test_no_origin_is_allowed_by_default(make_app: Callable[[str], Flask]) -> None:
    app = make_app("")
    reply = preflight(app, PAGE)
    assert reply.status_code == 403
    assert reply.json["code"] == "origin_not_allowed" and reply.json["detail"]["origin"] == PAGE
    assert "Access-Control-Allow-Origin" not in reply.headers
    answer = app.test_client().get("/healthz", headers={"Origin": PAGE})
    assert answer.status_code == 200 and "Access-Control-Allow-Origin" not in answer.headers


def test_an_allowed_origin_gets_its_preflight_and_readable_answers(
    make_app: Callable[[str], Flask],
) -> None:
    app = make_app(f"{PAGE}, https://other.example.org:8443")
    reply = preflight(app, PAGE)
    assert reply.status_code == 204
    assert reply.headers["Access-Control-Allow-Origin"] == PAGE
    assert "POST" in reply.headers["Access-Control-Allow-Methods"]
    assert "X-Token" in reply.headers["Access-Control-Allow-Headers"]
    assert int(reply.headers["Access-Control-Max-Age"]) > 0
    delete = preflight(app, PAGE, "/result/" + "0" * 32, "DELETE")
    assert delete.status_code == 204 and "DELETE" in delete.headers["Access-Control-Allow-Methods"]
    # the answers themselves, errors included, are readable by the page
    client = app.test_client()
    for answer in (
        client.get("/healthz", headers={"Origin": PAGE}),
        client.get("/", headers={"Origin": PAGE}),  # 401: no token
        client.get("/result/" + "0" * 32, headers={"Origin": PAGE, "X-Token": ALICE}),  # 404
    ):
        assert answer.headers["Access-Control-Allow-Origin"] == PAGE, answer.status_code
        assert "Location" in answer.headers["Access-Control-Expose-Headers"]
        assert "Origin" in answer.headers["Vary"]
    # another origin still gets nothing
    assert preflight(app, OTHER).status_code == 403
    other = client.get("/healthz", headers={"Origin": OTHER})
    assert "Access-Control-Allow-Origin" not in other.headers


def test_star_allows_any_origin(make_app: Callable[[str], Flask]) -> None:
    reply = preflight(make_app("*"), OTHER)
    assert reply.status_code == 204 and reply.headers["Access-Control-Allow-Origin"] == OTHER


def test_preflight_to_no_route_is_a_404(make_app: Callable[[str], Flask]) -> None:
    assert preflight(make_app(PAGE), PAGE, "/no/such/route").status_code == 404


@pytest.mark.parametrize("bad", ["app.example.com", "https://app.example.com/path", "ftp://a.b"])
def test_a_malformed_origin_fails_at_start(bad: str) -> None:
    with pytest.raises(ConfigError, match="SRCLUSTER_CORS_ORIGINS"):
        Settings.from_env({"SRCLUSTER_CORS_ORIGINS": bad})
    assert Settings.from_env({"SRCLUSTER_CORS_ORIGINS": f"{PAGE}/"}).cors_origin_list() == (PAGE,)
