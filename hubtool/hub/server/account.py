"""Handlers of the server itself and of the caller's account: `/`, whoami, agent harnesses."""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

from starlette.responses import JSONResponse, Response

if TYPE_CHECKING:
    from starlette.requests import Request

    from hubtool.hub.server.app import HubApp


def index(hub: HubApp, request: Request) -> Response:
    return JSONResponse({"hub": "hubtool hub serve", "api": "/api"})


def whoami(hub: HubApp, request: Request) -> Response:
    user = hub.require_user(request, what="whoami")
    return JSONResponse(
        {
            "type": "user",
            "id": hashlib.sha1(f"user:{user}".encode()).hexdigest()[:24],
            "name": user,
            "fullname": user,
            "email": None,
            "emailVerified": False,
            "isPro": False,
            "canPay": False,
            "avatarUrl": "",
            "orgs": [],
            "auth": {
                "type": "access_token",
                "accessToken": {"displayName": "hub serve", "role": "write"},
            },
        }
    )


def agent_harnesses(hub: HubApp, request: Request) -> Response:
    return JSONResponse({"standardEnvVars": [], "harnesses": {}})
