"""Xet storage: not implemented by this server, so its token endpoints answer 501 with a message that
says what to do instead. Uploads work without Xet: preupload answers `regular` (commits.py).

The Xet issue replaces this module (the token endpoints, the `/v1/...` CAS endpoints) and adds its rows to
routes.ROUTES.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from hubtool.hub.server.errors import ApiError

if TYPE_CHECKING:
    from starlette.requests import Request
    from starlette.responses import Response

    from hubtool.hub.server.app import HubApp
    from hubtool.hub.server.storage import RepoRef

XET_MESSAGE = (
    "This Hub server does not implement Xet storage; uploads work without it (preupload answers 'regular'). "
    "For LFS uploads set HF_HUB_DISABLE_XET=1 on the client."
)


def not_supported(hub: HubApp, request: Request, repo: RepoRef) -> Response:
    raise ApiError(501, "XetNotSupported", XET_MESSAGE)
