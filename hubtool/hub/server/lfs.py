"""Git LFS handlers (basic transfer), for clients older than huggingface_hub 1.20: the batch API hands out
signed upload and download URLs (auth.Signer, valid LFS_URL_TTL seconds), which `upload` and `download`
serve without a token; `verify` confirms an upload."""

from __future__ import annotations

import asyncio
import hashlib
import time
from typing import TYPE_CHECKING

from starlette.concurrency import run_in_threadpool
from starlette.responses import JSONResponse, Response

from hubtool.hub.server import http, names
from hubtool.hub.server.defaults import CHUNK, LFS_URL_TTL, MAX_BATCH, MAX_FILE_SIZE
from hubtool.hub.server.errors import ApiError, bad_request
from hubtool.hub.server.storage import Upload

if TYPE_CHECKING:
    from starlette.requests import Request

    from hubtool.hub.server.app import HubApp
    from hubtool.hub.server.storage import RepoRef

LFS_JSON = "application/vnd.git-lfs+json"


async def batch(hub: HubApp, request: Request, repo: RepoRef) -> Response:
    if not hub.public_read:
        hub.require_user(request, what=f"the LFS API of {repo.label}")
    body = await http.read_json(request)
    operation = body.get("operation") if isinstance(body, dict) else None
    if operation == "upload":
        hub.require_write(request, repo)
    elif operation == "download":
        hub.require_read(request, repo)
    else:
        raise bad_request("InvalidJson", "operation must be 'upload' or 'download'")
    objects = body.get("objects")
    if not isinstance(objects, list) or len(objects) > MAX_BATCH:
        raise bad_request("InvalidJson", f"expected 'objects': a list of at most {MAX_BATCH} {{oid, size}}")
    if body.get("hash_algo", "sha256") != "sha256":
        raise bad_request("InvalidJson", "only hash_algo sha256 is supported")
    base = http.base_url(request)
    expires = str(int(time.time()) + LFS_URL_TTL)
    out = []
    for obj in objects:
        oid = obj.get("oid") if isinstance(obj, dict) else None
        size = obj.get("size") if isinstance(obj, dict) else None
        if not isinstance(oid, str) or not names.SHA256.fullmatch(oid) or not isinstance(size, int):
            out.append(
                {
                    "oid": str(oid)[:64],
                    "size": size if isinstance(size, int) else 0,
                    "error": {"code": 422, "message": "invalid oid or size"},
                }
            )
            continue
        if not 0 <= size <= MAX_FILE_SIZE:
            out.append({"oid": oid, "size": size, "error": {"code": 422, "message": "size out of range"}})
            continue
        info = hub.storage.blob_info(oid)
        if operation == "upload":
            if info is not None and info[0] == size:
                out.append({"oid": oid, "size": size})  # already stored: no actions, nothing to send
                continue
            sig = hub.signer.sign("upload", oid, str(size), expires)
            prefix = names.TYPE_PREFIX[repo.type]
            out.append(
                {
                    "oid": oid,
                    "size": size,
                    "authenticated": True,
                    "actions": {
                        "upload": {
                            "href": f"{base}/_lfs/upload/{oid}?size={size}&exp={expires}&sig={sig}",
                            "expires_in": LFS_URL_TTL,
                        },
                        "verify": {"href": f"{base}/{prefix}{repo.id}.git/info/lfs/objects/verify"},
                    },
                }
            )
        else:
            entry = _referenced(hub, repo, oid)
            if entry is not None and entry.xet is not None and info is None:  # Xet-stored: reconstructed
                from hubtool.hub.server.xet.cas import signed_file_url

                href = signed_file_url(hub, request, entry.xet, entry.size)
                out.append({"oid": oid, "size": entry.size, "authenticated": True,
                            "actions": {"download": {"href": href, "expires_in": LFS_URL_TTL}}})  # fmt: skip
                continue
            if info is None or entry is None:
                out.append({"oid": oid, "size": size, "error": {"code": 404, "message": "object not found"}})
                continue
            sig = hub.signer.sign("download", oid, expires)
            out.append(
                {
                    "oid": oid,
                    "size": info[0],
                    "authenticated": True,
                    "actions": {
                        "download": {
                            "href": f"{base}/_lfs/download/{oid}?exp={expires}&sig={sig}",
                            "expires_in": LFS_URL_TTL,
                        }
                    },
                }
            )
    return JSONResponse({"transfer": "basic", "objects": out, "hash_algo": "sha256"}, media_type=LFS_JSON)


def _referenced(hub: HubApp, repo: RepoRef, oid: str):
    """The entry of a branch or tag of `repo` that holds the object (a download URL is only given for
    those), or None."""
    refs = hub.storage.refs(repo)
    for cid in list(refs["heads"].values()) + list(refs["tags"].values()):
        for e in hub.storage.commit(repo, cid).tree.values():
            if e.sha256 == oid:
                return e
    return None


async def upload(hub: HubApp, request: Request, oid: str) -> Response:
    """PUT of one object to a signed URL: hashed as it arrives, stored only if it is the announced oid."""
    params = request.query_params
    size_text = params.get("size", "")
    size = names.ascii_int(size_text)
    if not names.SHA256.fullmatch(oid) or size is None:
        raise bad_request("InvalidOid", "invalid LFS upload URL")
    if not hub.signer.check(params.get("sig"), params.get("exp"), "upload", oid, size_text):
        raise ApiError(
            403, "InvalidSignature", "the upload URL is invalid or has expired; ask the batch API again"
        )
    temp = hub.storage.temp_path("lfs")
    sha = hashlib.sha256()
    git = hashlib.sha1(b"blob %d\0" % size)
    received = 0

    def absorb(f, data: bytes) -> None:  # in a worker thread: hashlib and write release the GIL
        sha.update(data)
        git.update(data)
        view = memoryview(data)
        while view:
            view = view[f.write(view) :]

    # The body arrives in pieces of <= 64 KiB; they are hashed and written 1 MiB at a time in a worker
    # thread, one MiB in flight while the next is received (not one thread hop per piece on the loop).
    pending = None
    try:
        f = await run_in_threadpool(open, temp, "wb", 0)  # unbuffered: whole MiB writes
        try:
            buffer = bytearray()
            async for chunk in request.stream():
                received += len(chunk)
                if received > size:
                    raise bad_request("SizeMismatch", f"more than the announced {size} bytes")
                buffer += chunk
                if len(buffer) >= CHUNK:
                    data = bytes(buffer)
                    buffer.clear()
                    if pending is not None:
                        await pending
                    pending = asyncio.ensure_future(run_in_threadpool(absorb, f, data))
            if pending is not None:
                await pending
            pending = None
            if buffer:
                await run_in_threadpool(absorb, f, bytes(buffer))
        finally:
            await http.settle(pending)  # the file is closed only when no thread writes to it
            f.close()
        if received != size:
            raise bad_request("SizeMismatch", f"received {received} bytes, expected {size}")
        if sha.hexdigest() != oid:
            raise bad_request("OidMismatch", "the uploaded content does not match its sha256 oid")
        await run_in_threadpool(hub.storage.store_upload, Upload(temp, oid, size, git.hexdigest()))
    finally:
        temp.unlink(missing_ok=True)
    return Response(status_code=200, headers={"ETag": f'"{oid}"'})


async def verify(hub: HubApp, request: Request, repo: RepoRef) -> Response:
    hub.require_write(request, repo)
    body = await http.read_json(request)
    oid = names.check_sha256(body.get("oid") if isinstance(body, dict) else None)
    info = hub.storage.blob_info(oid)
    if info is None or info[0] != body.get("size"):
        return JSONResponse({"message": f"object {oid} not found"}, 404, media_type=LFS_JSON)
    return JSONResponse({"message": "ok"}, media_type=LFS_JSON)


async def download(hub: HubApp, request: Request, oid: str) -> Response:
    """GET or HEAD of one object by a signed URL (with Range)."""
    params = request.query_params
    if not names.SHA256.fullmatch(oid) or not hub.signer.check(
        params.get("sig"), params.get("exp"), "download", oid
    ):
        raise ApiError(403, "InvalidSignature", "the download URL is invalid or has expired")
    info = hub.storage.blob_info(oid)
    if info is None:
        raise ApiError(404, "EntryNotFound", "object not found")
    headers = {"ETag": f'"{oid}"', "Accept-Ranges": "bytes", "Content-Type": "application/octet-stream"}
    return http.file_response(request, hub.storage.blob_path(oid), info[0], headers)
