"""The Xet handlers of `hub serve`: the token endpoints (Hub side) and the CAS under /_xet (docs/hub.md, "Xet").

CAS routes (casUrl = <server>/_xet/s-<store id>, and each route also answers without the s-<id> part; `_xet`
is no namespace a repo can take, names.py):

    GET  /_xet/v1/chunks/{prefix}/{chunk}      dedup: 404, or a shard (footer, fresh HMAC key) of xorbs the
                                               token's repo may read that hold the chunk
    POST /_xet/v1/xorbs/{prefix}/{xorb}        a xorb (<= 64 MiB of data), checked, stored: {"was_inserted"}
    POST /_xet/v1/shards                       a shard, checked file by file, recorded for the repo: {"result"}
    GET  /_xet/v1/reconstructions/{file}       terms + fetch_info (signed URLs), with Range
    GET  /_xet/fetch/{xorb}?exp=&sig=          a signed xorb URL (no Authorization), with Range
    GET  /_xet/file/{file}?size=&exp=&sig=     a signed URL of a whole Xet file, reconstructed on the server
                                               (the LFS batch API's download href for a Xet-stored file)
    POST /_xet/v1/telemetry                    200, dropped
    GET  /_xet/stats                           (a Hub user's token) what the store holds and what xorb
                                               uploads sent since the server started, in bytes
Anything else (xorb-grants, /v2/shards, /v2/reconstructions: today's client falls back) is logged and 404.

Limits: a xorb <= 64 MiB of chunk data in <= 8,192 chunks, its body <= 65 MiB (+ 1 MiB of footer); a shard
<= 64 MiB with at most MAX_SHARD_FILES files and MAX_SHARD_SEGMENTS segments in all; MAX_CONCURRENT_UPLOADS
xorb/shard uploads at once per client (its token's user, else its repo): 429 with Retry-After beyond, which
hf_xet retries.
"""

from __future__ import annotations

import logging
import secrets
import time
from typing import TYPE_CHECKING

from starlette.concurrency import iterate_in_threadpool, run_in_threadpool
from starlette.responses import JSONResponse, Response, StreamingResponse

from hubtool.hub.server import http, names
from hubtool.hub.server.errors import ApiError, bad_request
from hubtool.hub.server.storage import Entry
from hubtool.hub.server.xet import tokens
from hubtool.hub.server.xet.store import ShardRejected, XetStore, is_hex64
from hubtool.hub.xet.errors import XetFormatError
from hubtool.hub.xet.hashing import from_hex, hex_of
from hubtool.hub.xet.shard import (
    MAX_SHARD_BYTES,
    ChunkEntry,
    Shard,
    XorbEntry,
    keyed_chunk_hash,
    parse_shard,
    write_shard,
)
from hubtool.hub.xet.xorb import MAX_XORB_BODY, read_xorb

if TYPE_CHECKING:
    from starlette.requests import Request

    from hubtool.hub.server.app import HubApp
    from hubtool.hub.server.storage import RepoRef

log = logging.getLogger("hubtool.hub.server")
CAS_PREFIX = "/_xet"
FETCH_TTL = 3600
MAX_XORB_UPLOAD = MAX_XORB_BODY + (1 << 20)  # a storage footer, if a client sends one
DEDUP_SHARD_TTL = 7 * 24 * 3600
MAX_CONCURRENT_UPLOADS = 8
MAX_SHARD_FILES = 100_000
MAX_SHARD_SEGMENTS = 1_000_000


def store_of(hub: HubApp) -> XetStore:
    store = getattr(hub, "_xet_store", None)
    if store is None:
        store = XetStore(hub.storage)
        hub._xet_store = store  # type: ignore[attr-defined]
    return store


def cas_url(request: Request, store: XetStore) -> str:
    """<server>/_xet/s-<store id>: the store id keeps a client's cache of one store from another's (see
    XetStore._store_id); the CAS answers under /_xet with or without it."""
    return f"{http.base_url(request)}{CAS_PREFIX}/s-{store.id}"


# -- Hub side ---------------------------------------------------------------------------------------------


def _token_response(hub: HubApp, request: Request, repo: RepoRef, write: bool) -> Response:
    token, exp = tokens.make(hub.signer, repo, write, hub.user(request))
    url = cas_url(request, store_of(hub))
    headers = {"X-Xet-Cas-Url": url, "X-Xet-Access-Token": token, "X-Xet-Token-Expiration": str(exp)}
    return JSONResponse({"accessToken": token, "exp": exp, "casUrl": url}, headers=headers)


def write_token(hub: HubApp, request: Request, repo: RepoRef) -> Response:
    if request.method not in ("GET", "HEAD"):
        raise ApiError(404, None, f"no such endpoint: {request.method} {request.url.path[:200]}")
    hub.require_write(request, repo)
    store_of(hub)
    return _token_response(hub, request, repo, True)


def read_token(hub: HubApp, request: Request, repo: RepoRef) -> Response:
    if request.method not in ("GET", "HEAD"):
        raise ApiError(404, None, f"no such endpoint: {request.method} {request.url.path[:200]}")
    hub.require_read(request, repo)
    return _token_response(hub, request, repo, False)


def resolve_headers(request: Request, repo: RepoRef, commit_id: str, entry: Entry) -> dict[str, str]:
    """What HEAD/GET /resolve adds for a Xet-stored file, so a Xet client downloads it through the CAS."""
    url = f"{http.base_url(request)}/api/{repo.type}s/{repo.id}/xet-read-token/{commit_id}"
    return {"X-Xet-Hash": entry.xet or "", "Link": f'<{url}>; rel="xet-auth"'}


def file_response(hub: HubApp, request: Request, entry: Entry, headers: dict) -> Response:
    """A Xet-stored file for a plain GET (with Range) or HEAD: reconstructed on the server, streamed."""
    planned = http.range_of(request, entry.size, headers)
    if isinstance(planned, Response):
        return planned
    start, end, status = planned
    length = max(0, end - start + 1)
    if request.method == "HEAD" or length == 0:
        return Response(status_code=status, headers=headers)
    store = store_of(hub)
    return StreamingResponse(
        iterate_in_threadpool(store.stream(entry.xet or "", start, end)), status_code=status, headers=headers
    )


# -- the CAS ----------------------------------------------------------------------------------------------


async def cas(hub: HubApp, request: Request, cas_path: str) -> Response:
    try:
        return await _cas(hub, request, cas_path)
    except FileNotFoundError:
        # A repo deleted while this request ran (the churn tests do it on purpose): its records and what only
        # it held were freed between our checks and the read or write, so the answer is the repo's absence.
        raise ApiError(404, "EntryNotFound", "no longer stored: its repo was deleted meanwhile") from None


async def _cas(hub: HubApp, request: Request, cas_path: str) -> Response:
    parts = cas_path.split("/")
    method = request.method
    store = store_of(hub)
    if parts[0] == f"s-{store.id}":  # the casUrl's store id (cas_url); older tokens name /_xet alone
        parts = parts[1:] or [""]
    if parts[:2] == ["v1", "chunks"] and len(parts) == 4 and method == "GET":
        return await _dedup(hub, store, request, parts[3])
    if parts[:2] == ["v1", "xorbs"] and len(parts) == 4 and method == "POST":
        return await _upload_xorb(hub, store, request, parts[3])
    if parts == ["v1", "shards"] and method == "POST":
        return await _upload_shard(hub, store, request)
    if parts[:2] == ["v1", "reconstructions"] and len(parts) == 3 and method == "GET":
        return await _reconstruction(hub, store, request, parts[2])
    if parts[0] == "fetch" and len(parts) == 2 and method in ("GET", "HEAD"):
        return _fetch(hub, store, request, parts[1])
    if parts[0] == "file" and len(parts) == 2 and method in ("GET", "HEAD"):
        return _signed_file(hub, store, request, parts[1])
    if parts == ["stats"] and method == "GET":
        hub.require_user(request, what="the Xet store's stats")
        counts = hub.__dict__.setdefault("_xet_received", {"xorbs": 0, "bytes": 0, "data_bytes": 0})
        held = await run_in_threadpool(store.stats)
        return JSONResponse({**held, "received_xorbs": counts["xorbs"], "received_bytes": counts["bytes"],
                             "received_data_bytes": counts["data_bytes"]})  # fmt: skip
    if parts == ["v1", "telemetry"] and method == "POST":
        await http.drain(request, 1 << 20)
        return Response(status_code=200)
    log.info("xet: no such CAS route %s %s", method, http.header_safe(cas_path, 200))
    raise ApiError(404, None, f"no such CAS endpoint: {method} {CAS_PREFIX}/{cas_path[:200]}")


def _hash_param(text: str, what: str) -> str:
    if not is_hex64(text):
        raise bad_request("InvalidHash", f"{what}: expected a Xet hash (64 lowercase hex digits)")
    return text


def _readable(hub: HubApp, grant: tokens.Grant):
    """Which other repos' xorbs the token may use: those its user may read (HubApp.require_read's rule)."""

    def readable(repo: RepoRef) -> bool:
        meta = hub.storage.repo_meta(repo)
        return meta is not None and (grant.user is not None or (hub.public_read and not meta.get("private")))

    return readable


def _repo_alive(hub: HubApp, grant: tokens.Grant) -> None:
    if hub.storage.repo_meta(grant.repo) is None:
        raise ApiError(401, "Unauthorized", f"{grant.repo.label} no longer exists")


async def _dedup(hub: HubApp, store: XetStore, request: Request, chunk: str) -> Response:
    grant = tokens.check(hub.signer, request.headers.get("authorization"))
    chunk = _hash_param(chunk, "chunk")
    _repo_alive(hub, grant)

    def build() -> bytes | None:
        xorbs = store.xorbs_with_chunk(grant.repo, chunk, _readable(hub, grant))
        if not xorbs:
            return None
        key = secrets.token_bytes(32)
        entries = []
        for xorb in xorbs:
            chunks, offset, listed = store.chunks(xorb), 0, []
            for c in chunks:
                listed.append(ChunkEntry(keyed_chunk_hash(c.hash, key), offset, c.size))
                offset += c.size
            stored = chunks[-1].end if chunks else 0
            entries.append(XorbEntry(from_hex(xorb), listed, offset, stored))
        now = int(time.time())
        return write_shard(Shard([], entries, True, key, now, now + DEDUP_SHARD_TTL))

    body = await run_in_threadpool(build)
    if body is None:
        raise ApiError(404, None, "no stored xorb holds this chunk")
    return Response(body, media_type="application/octet-stream")


async def _read_bounded(request: Request, limit: int, what: str):
    declared = names.ascii_int(request.headers.get("content-length"))
    if declared is not None and declared > limit:
        raise ApiError(413, "PayloadTooLarge", f"{what} larger than {limit} bytes")
    received = 0
    async for piece in request.stream():
        received += len(piece)
        if received > limit:
            raise ApiError(413, "PayloadTooLarge", f"{what} larger than {limit} bytes")
        yield piece


class _UploadSlot:
    """One of a client's MAX_CONCURRENT_UPLOADS upload slots (429 when it has none left)."""

    def __init__(self, hub: HubApp, grant: tokens.Grant) -> None:
        self.counts: dict[str, int] = hub.__dict__.setdefault("_xet_uploads", {})
        self.key = grant.user or f"repo:{grant.repo.label}"

    def __enter__(self) -> None:
        if self.counts.get(self.key, 0) >= MAX_CONCURRENT_UPLOADS:
            raise ApiError(
                429,
                "TooManyRequests",
                f"more than {MAX_CONCURRENT_UPLOADS} Xet uploads at once from one client; retry",
                headers={"Retry-After": "1"},
            )
        self.counts[self.key] = self.counts.get(self.key, 0) + 1

    def __exit__(self, *exc) -> None:
        left = self.counts.get(self.key, 1) - 1
        if left > 0:
            self.counts[self.key] = left
        else:
            self.counts.pop(self.key, None)


async def _upload_xorb(hub: HubApp, store: XetStore, request: Request, xorb: str) -> Response:
    grant = tokens.check(hub.signer, request.headers.get("authorization"), write=True)
    xorb = _hash_param(xorb, "xorb")
    _repo_alive(hub, grant)
    with _UploadSlot(hub, grant):
        return await _receive_xorb(hub, store, request, xorb, grant)


async def _receive_xorb(hub: HubApp, store: XetStore, request: Request, xorb: str, grant) -> Response:
    # Received whole into a temp file, then checked in one worker-thread call. Checking each piece as it
    # arrives, keeping the received pieces, or one preallocated buffer instead of this one measured no
    # faster in a running server (docs/xet.md, "Performance").
    temp = hub.storage.temp_path("xorb")
    try:
        f = await run_in_threadpool(open, temp, "wb")
        try:
            buffer = bytearray()
            async for piece in _read_bounded(request, MAX_XORB_UPLOAD, "a xorb"):
                buffer += piece
                if len(buffer) >= 1 << 20:
                    await run_in_threadpool(f.write, bytes(buffer))
                    buffer.clear()
            await run_in_threadpool(f.write, bytes(buffer))
        finally:
            f.close()

        def check_and_store() -> tuple[bool, int, int]:
            with open(temp, "rb") as f:
                info = read_xorb(f, from_hex(xorb))
            size = temp.stat().st_size
            return store.store_xorb(temp, info, grant.repo), size, sum(c.size for c in info.chunks)

        try:
            inserted, size, data = await run_in_threadpool(check_and_store)
        except XetFormatError as err:
            log.warning("xet: refused xorb %s for %s: %s", xorb, grant.repo.label, err)
            raise bad_request("InvalidXorb", f"xorb {xorb}: {err}") from None
        counts = hub.__dict__.setdefault("_xet_received", {"xorbs": 0, "bytes": 0, "data_bytes": 0})
        counts["xorbs"] += 1
        counts["bytes"] += size
        counts["data_bytes"] += data
    finally:
        temp.unlink(missing_ok=True)
    return JSONResponse({"was_inserted": inserted})


async def _upload_shard(hub: HubApp, store: XetStore, request: Request) -> Response:
    grant = tokens.check(hub.signer, request.headers.get("authorization"), write=True)
    _repo_alive(hub, grant)
    with _UploadSlot(hub, grant):
        return await _receive_shard(hub, store, request, grant)


async def _receive_shard(hub: HubApp, store: XetStore, request: Request, grant) -> Response:
    body = bytearray()
    async for piece in _read_bounded(request, MAX_SHARD_BYTES, "a shard"):
        body += piece

    def record() -> int:
        shard = parse_shard(bytes(body))
        if len(shard.files) > MAX_SHARD_FILES:
            raise ShardRejected(f"{len(shard.files)} files, more than {MAX_SHARD_FILES}")
        segments = sum(len(entry.segments) for entry in shard.files)
        if segments > MAX_SHARD_SEGMENTS:
            raise ShardRejected(f"{segments} segments, more than {MAX_SHARD_SEGMENTS}")
        readable = _readable(hub, grant)
        with store.lock:  # a repo deleted meanwhile frees nothing this shard is being granted
            checked = [(entry, store.check_file(grant.repo, entry, readable)) for entry in shard.files]
            for entry, terms in checked:  # all files checked before any is recorded
                store.add_file(
                    grant.repo, hex_of(entry.hash), terms, hex_of(entry.sha256) if entry.sha256 else None
                )
        return len(checked)

    try:
        count = await run_in_threadpool(record)
    except (XetFormatError, ShardRejected) as err:
        log.warning("xet: refused a shard for %s: %s", grant.repo.label, err)
        raise bad_request("InvalidShard", f"shard: {err}") from None
    log.info("xet: shard with %d file(s) recorded for %s", count, grant.repo.label)
    return JSONResponse({"result": 1})


async def _reconstruction(hub: HubApp, store: XetStore, request: Request, fhash: str) -> Response:
    grant = tokens.check(hub.signer, request.headers.get("authorization"))
    fhash = _hash_param(fhash, "file")
    _repo_alive(hub, grant)
    if not store.may_read_file(grant.repo, fhash):
        raise ApiError(404, None, f"no Xet file {fhash} in {grant.repo.label}")
    size, _ = await run_in_threadpool(store.terms, fhash)
    start, end = 0, size - 1
    header = request.headers.get("range")
    if header:
        parsed = http.parse_range(header, size)
        if parsed == "unsatisfiable":
            raise ApiError(416, None, f"range {header[:80]} is outside the file's {size} bytes")
        if parsed is not None:
            start, end = parsed
    if size == 0:
        return JSONResponse({"offset_into_first_range": 0, "terms": [], "fetch_info": {}})
    skip, terms = await run_in_threadpool(store.plan, fhash, start, end)
    base = http.base_url(request) + CAS_PREFIX
    exp = str(int(time.time()) + FETCH_TTL)
    fetch_info: dict[str, list[dict]] = {}
    out_terms = []
    for term in terms:
        out_terms.append(
            {"hash": term.xorb, "unpacked_length": term.size, "range": {"start": term.start, "end": term.end}}
        )
        ranges = fetch_info.setdefault(term.xorb, [])
        if any(r["range"] == {"start": term.start, "end": term.end} for r in ranges):
            continue
        chunks = await run_in_threadpool(store.chunks, term.xorb)
        sig = hub.signer.sign("xet-fetch", term.xorb, exp)
        ranges.append(
            {
                "range": {"start": term.start, "end": term.end},
                "url": f"{base}/fetch/{term.xorb}?exp={exp}&sig={sig}",
                "url_range": {"start": chunks[term.start].offset, "end": chunks[term.end - 1].end - 1},
            }
        )
    return JSONResponse({"offset_into_first_range": skip, "terms": out_terms, "fetch_info": fetch_info})


def _fetch(hub: HubApp, store: XetStore, request: Request, xorb: str) -> Response:
    params = request.query_params
    if not is_hex64(xorb) or not hub.signer.check(params.get("sig"), params.get("exp"), "xet-fetch", xorb):
        raise ApiError(403, "InvalidSignature", "the xorb URL is invalid or has expired; ask for a new one")
    path = store.xorb_path(xorb)
    if not store.has_xorb(xorb):
        raise ApiError(404, None, "no such xorb")
    headers = {"Accept-Ranges": "bytes", "Content-Type": "application/octet-stream"}
    return http.file_response(request, path, path.stat().st_size, headers)


def signed_file_url(hub: HubApp, request: Request, fhash: str, size: int) -> str:
    """A URL that serves a whole Xet file without Authorization (the LFS batch API hands it out)."""
    exp = str(int(time.time()) + FETCH_TTL)
    sig = hub.signer.sign("xet-file", fhash, str(size), exp)
    return f"{http.base_url(request)}{CAS_PREFIX}/file/{fhash}?size={size}&exp={exp}&sig={sig}"


def _signed_file(hub: HubApp, store: XetStore, request: Request, fhash: str) -> Response:
    params = request.query_params
    size_text = params.get("size", "")
    size = names.ascii_int(size_text)
    if (
        not is_hex64(fhash)
        or size is None
        or not hub.signer.check(params.get("sig"), params.get("exp"), "xet-file", fhash, size_text)
    ):
        raise ApiError(403, "InvalidSignature", "the file URL is invalid or has expired; ask for a new one")
    if not store.has_file(fhash):
        raise ApiError(404, None, "no such Xet file")
    entry = Entry("", size, "", True, fhash)
    headers = {"Accept-Ranges": "bytes", "Content-Type": "application/octet-stream"}
    return file_response(hub, request, entry, headers)
