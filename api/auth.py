"""Who is calling: a token from ``X-Token`` or ``Authorization: Bearer``, checked in constant time."""

from __future__ import annotations

import functools
import hashlib
import hmac
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from flask import Request, current_app, g, request

from api.errors import Forbidden, TokenMissing, Unauthorized
from common.cluster.store import token_hash

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class Caller:
    """The authenticated caller: ``owner`` is what jobs record (sha256 of the token)."""

    owner: str
    name: str


class TokenTable:
    """The configured tokens, kept only as sha256 digests."""

    def __init__(self, tokens: Mapping[str, str]) -> None:
        self._entries = [(hashlib.sha256(t.encode()).digest(), name) for t, name in tokens.items()]

    def __len__(self) -> int:
        return len(self._entries)

    def check(self, token: str) -> str | None:
        """The token's name, or ``None``.

        Digests have one length whatever the token's, and every entry is compared
        (no early exit), so timing tells neither the length nor which entry matched.
        """
        digest = hashlib.sha256(token.encode()).digest()
        found: str | None = None
        for expected, name in self._entries:
            if hmac.compare_digest(digest, expected):
                found = name
        return found


def token_of(req: Request) -> str | None:
    """The token the request carries, or ``None``."""
    token = req.headers.get("X-Token", "").strip()
    if token:
        return token
    scheme, _, value = req.headers.get("Authorization", "").strip().partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return None


def authenticate(req: Request, table: TokenTable) -> Caller:
    """The caller of ``req``.

    Raises:
        Unauthorized: an unknown token (:class:`TokenMissing`: none).
    """
    token = token_of(req)
    if token is None:
        raise TokenMissing("a token is required: send X-Token or Authorization: Bearer")
    name = table.check(token)
    if name is None:
        raise Unauthorized("the token is not valid")
    return Caller(owner=token_hash(token), name=name)


def token_required(view: F) -> F:
    """Authenticate before ``view``; the caller is ``g.caller``."""

    @functools.wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        g.caller = authenticate(request, current_app.extensions["srcluster"].tokens)
        return view(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def authenticate_admin(req: Request, admins: TokenTable, users: TokenTable) -> Caller:
    """The admin calling ``req``: its ``name`` is the admin token's.

    Raises:
        Unauthorized: no token (:class:`TokenMissing`), or one that is neither an admin's
            nor a user's.
        Forbidden: a user's token (valid, but not an admin's).
    """
    token = token_of(req)
    if token is None:
        raise TokenMissing("an admin token is required: send X-Token or Authorization: Bearer")
    name = admins.check(token)
    if name is not None:
        return Caller(owner=token_hash(token), name=name)
    if users.check(token) is not None:
        detail = "" if admins else " (none is configured: SRCLUSTER_ADMIN_TOKENS is empty)"
        raise Forbidden(f"this route needs an admin token{detail}")
    raise Unauthorized("the token is not valid")


def admin_required(view: F) -> F:
    """Authenticate an admin before ``view``; the caller is ``g.caller``."""

    @functools.wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        services = current_app.extensions["srcluster"]
        g.caller = authenticate_admin(request, services.admins, services.tokens)
        return view(*args, **kwargs)

    return wrapper  # type: ignore[return-value]
