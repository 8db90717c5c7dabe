"""The download handler: `/{prefix}{repo}/resolve/{revision}/{path}`, GET and HEAD, with Range and
If-None-Match (what hf_hub_download and from_pretrained ask for)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from hubtool.hub.server import http, names, xet
from hubtool.hub.server.errors import entry_not_found

if TYPE_CHECKING:
    from starlette.requests import Request

    from hubtool.hub.server.app import HubApp
    from hubtool.hub.server.storage import RepoRef


async def resolve(hub: HubApp, request: Request, repo: RepoRef, revision: str, path: str) -> Response:
    hub.require_read(request, repo)
    names.check_path(path)
    commit = await run_in_threadpool(hub.commit_of, repo, revision)
    entry = commit.tree.get(path)
    if entry is None:
        raise entry_not_found(path, commit.id, f"Entry not found: {path} at {commit.id}")
    headers = {
        "X-Repo-Commit": commit.id,
        "ETag": f'"{entry.etag}"',
        "Accept-Ranges": "bytes",
        "Content-Type": "application/octet-stream",
        "Content-Disposition": http.content_disposition(path),
        "Cache-Control": "private, max-age=0, must-revalidate",
    }
    if entry.lfs:
        headers["X-Linked-Etag"] = f'"{entry.sha256}"'
        headers["X-Linked-Size"] = str(entry.size)
    if entry.xet is not None:  # stored as Xet: a Xet client downloads it through the CAS
        headers.update(xet.resolve_headers(request, repo, commit.id, entry))
    inm = request.headers.get("if-none-match")
    if inm and entry.etag in [v.strip().lstrip("W/").strip('"') for v in inm.split(",")]:
        return Response(status_code=304, headers=headers)
    if entry.xet is not None:
        return xet.file_response(hub, request, entry, headers)
    return http.file_response(request, hub.storage.blob_path(entry.sha256), entry.size, headers)
