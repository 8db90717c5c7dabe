"""Xet access tokens: what `/api/{type}s/{repo}/xet-{read,write}-token/{rev}` hands out and the CAS checks.

A token is `xet1.<payload>.<signature>`: the payload (base64url) is `type:ns/name:mode:expiry:user` (user
empty for an anonymous read token under --public-read), the signature
the server's HMAC (auth.Signer, key in <root>/.secret, created 0600 on first start) over it. It is scoped to
one repo and to `read` or `write` (write includes read), and valid TOKEN_TTL seconds.
"""

from __future__ import annotations

import base64
import time
from dataclasses import dataclass

from hubtool.hub.server.auth import Signer, bearer_token
from hubtool.hub.server.errors import ApiError
from hubtool.hub.server.storage import RepoRef

TOKEN_TTL = 3600
PREFIX = "xet1"


@dataclass(frozen=True)
class Grant:
    repo: RepoRef
    write: bool
    user: str | None = None  # who asked for it: xorbs of other repos this user may read are usable too


def make(
    signer: Signer, repo: RepoRef, write: bool, user: str | None, now: float | None = None
) -> tuple[str, int]:
    exp = int(now if now is not None else time.time()) + TOKEN_TTL
    payload = f"{repo.type}:{repo.id}:{'write' if write else 'read'}:{exp}:{user or ''}"
    body = base64.urlsafe_b64encode(payload.encode()).decode().rstrip("=")
    return f"{PREFIX}.{body}.{signer.sign('xet-token', body, str(exp))}", exp


def check(signer: Signer, authorization: str | None, *, write: bool = False) -> Grant:
    """The grant of a request's Bearer token; 401 for a missing, forged or expired token, 403 for a read
    token where a write is asked."""
    token = bearer_token(authorization) or ""
    parts = token.split(".")
    grant = None
    if len(parts) == 3 and parts[0] == PREFIX and len(parts[1]) <= 400:
        body, signature = parts[1], parts[2]
        try:
            payload = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)).decode()
            rtype, rid, mode, exp, user = payload.split(":")
        except ValueError:
            payload = None
        if payload is not None and signer.check(signature, exp, "xet-token", body) is False:
            payload = None
        if payload is not None and mode in ("read", "write") and rid.count("/") == 1:
            grant = Grant(RepoRef(rtype, rid), mode == "write", user or None)
    if grant is None:
        raise ApiError(
            401, "Unauthorized", "a valid Xet token is required (ask the Hub's xet-*-token endpoint)"
        )
    if write and not grant.write:
        raise ApiError(403, "Forbidden", f"this Xet token may only read {grant.repo.label}")
    return grant
