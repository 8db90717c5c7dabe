"""Upload handlers: preupload (how each file should travel) and commit (the NDJSON body, streamed).

Preupload answers `lfs` for large files (the repo's .gitattributes rules) to huggingface_hub clients, which
all have a streamed path for them: huggingface_hub >= 1.20 with hf_xet goes to Xet (this server's CAS,
xet/), without hf_xet or with HF_HUB_DISABLE_XET=1 to the LFS batch API (lfs.py), as older clients do. Any
other client (no `hf_hub/` in its user-agent: nothing says what it does with `lfs`) gets `regular`: the file
bytes arrive base64 inline in the NDJSON commit body, which `ndjson.NDJSONParser` streams to temp files.
"""

from __future__ import annotations

import hashlib
import logging
import re
from typing import TYPE_CHECKING, Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect
from starlette.responses import JSONResponse, Response

from hubtool.hub.server import http, names, patterns, xet
from hubtool.hub.server.defaults import CHUNK, EARLY_SYNC, MAX_BATCH, MAX_COMMIT_OPS, MAX_FILE_SIZE
from hubtool.hub.server.errors import ApiError, bad_request
from hubtool.hub.server.ndjson import NDJSONParser, ParseError, Spilled
from hubtool.hub.server.storage import (
    AddOp,
    CopyOp,
    DeleteOp,
    Storage,
    Upload,
    git_blob_prefix,
    git_oid_of_file,
    lfs_pointer,
)

if TYPE_CHECKING:
    from starlette.requests import Request

    from hubtool.hub.server.app import HubApp
    from hubtool.hub.server.storage import RepoRef
    from hubtool.hub.server.xet.store import XetStore

log = logging.getLogger("hubtool.hub.server")

_BASE64 = re.compile(rb"[A-Za-z0-9+/]*={0,2}")
_HF_HUB_UA = re.compile(r"(?:^|[;\s])hf_hub/(\d+)\.(\d+)")


def legacy_lfs_client(user_agent: str) -> bool:
    """huggingface_hub < 1.20 never goes to Xet by itself (it asks the server, which answers LFS)."""
    m = _HF_HUB_UA.search(user_agent or "")
    return m is not None and (int(m.group(1)), int(m.group(2))) < (1, 20)


def takes_lfs(user_agent: str) -> bool:
    """Whether preupload may answer `lfs`: any huggingface_hub (< 1.20: LFS batch; >= 1.20: Xet when hf_xet
    is importable and HF_HUB_DISABLE_XET is unset, else the LFS batch), never an unknown client."""
    return _HF_HUB_UA.search(user_agent or "") is not None


async def preupload(hub: HubApp, request: Request, repo: RepoRef, revision: str) -> Response:
    hub.require_write(request, repo)
    body = await http.read_json(request)
    files = body.get("files") if isinstance(body, dict) else None
    if not isinstance(files, list) or len(files) > MAX_BATCH:
        raise bad_request(
            "InvalidJson", f"expected 'files': a list of at most {MAX_BATCH} {{path, size, sample}}"
        )
    commit = await run_in_threadpool(hub.commit_of, repo, revision)
    legacy = takes_lfs(request.headers.get("user-agent", ""))
    rules = await run_in_threadpool(hub.storage.lfs_rules, commit.tree) if legacy else []
    ignore_text = body.get("gitIgnore")
    if not isinstance(ignore_text, str):
        entry = commit.tree.get(".gitignore")
        content = await run_in_threadpool(hub.storage.read_small, entry) if entry else None
        ignore_text = content.decode("utf-8", "replace") if content else ""
    for item in files:
        if not isinstance(item, dict):
            raise bad_request("InvalidJson", "each file must be an object {path, size, sample}")
        path = names.check_path(item.get("path"))
        size = item.get("size")
        if isinstance(size, bool) or not isinstance(size, int) or not 0 <= size <= MAX_FILE_SIZE:
            raise bad_request("InvalidJson", f"invalid size for {path[:200]!r}")

    def answers() -> list[dict]:  # in a worker thread: patterns cost CPU (bounded by a budget)
        ignore_rules = patterns.gitignore_rules(ignore_text)
        budget = patterns.Budget()
        out = []
        for item in files:
            path, size = item["path"], item["size"]
            mode = "lfs" if legacy and size > 0 and patterns.is_lfs(path, size, rules, budget) else "regular"
            answer: dict[str, Any] = {
                "path": path,
                "uploadMode": mode,
                "shouldIgnore": patterns.is_ignored(path, ignore_rules, budget),
            }
            existing = commit.tree.get(path)
            if existing is not None:
                answer["oid"] = existing.sha256 if mode == "lfs" else existing.oid
            out.append(answer)
        return out

    try:
        out = await run_in_threadpool(answers)
    except patterns.PatternsTooCostly as err:
        raise bad_request("InvalidGitIgnore", f"gitIgnore: {err}") from None
    return JSONResponse({"files": out, "commitOid": commit.id})


async def commit(hub: HubApp, request: Request, repo: RepoRef, revision: str) -> Response:
    user, _ = hub.require_write(request, repo)
    names.check_revision(revision)
    if http.true(request.query_params.get("create_pr")):
        raise ApiError(400, "NotSupported", "pull requests are not supported by hub serve")
    storage = hub.storage
    branch = storage.branch_name(revision)
    if branch not in storage.refs(repo)["heads"]:
        if names.COMMIT_ID.fullmatch(branch) or branch in storage.refs(repo)["tags"]:
            raise bad_request("InvalidRevision", f"can only commit to a branch, not {branch}")
        raise ApiError(404, "RevisionNotFound", f"Invalid rev id: {branch} (repository {repo.label})")
    body = CommitBody(storage, repo, xet.store_of(hub))
    limit = hub.max_commit_bytes
    declared = names.ascii_int(request.headers.get("content-length"))
    if declared is not None and declared > limit:
        raise ApiError(413, "PayloadTooLarge", f"commit body larger than the server's {limit} bytes")
    received = 0
    try:
        buffer = bytearray()
        async for chunk in request.stream():
            received += len(chunk)
            if received > limit:
                raise ApiError(413, "PayloadTooLarge", f"commit body larger than the server's {limit} bytes")
            buffer += chunk
            if len(buffer) >= CHUNK:
                await run_in_threadpool(body.feed, bytes(buffer))
                buffer.clear()
        await run_in_threadpool(body.feed, bytes(buffer), True)
        header = body.header or {}
        done = await run_in_threadpool(
            lambda: storage.apply_commit(
                repo,
                branch,
                body.ops,
                author=user,
                title=header.get("summary") or "Upload files with hub serve",
                message=header.get("description") or "",
                parent_commit=header.get("parentCommit"),
            )
        )
    except ParseError as err:
        await http.drain(request)
        raise bad_request("InvalidCommitBody", f"commit body: {err}") from None
    except ClientDisconnect:
        log.info("%s: commit to %s abandoned by the client (nothing committed)", user, repo.label)
        raise
    except ApiError as err:
        if err.status != 413:  # a body over the cap is not read to its end: the connection closes
            await http.drain(request)
        raise
    finally:
        body.discard()  # temp files that did not make it into the blob store (a failed or abandoned commit)
    log.info("%s committed %s to %s@%s (%d ops)", user, done.id[:12], repo.label, branch, len(body.ops))
    prefix = names.TYPE_PREFIX[repo.type]
    return JSONResponse(
        {
            "success": True,
            "commitOid": done.id,
            "commitUrl": f"{http.base_url(request)}/{prefix}{repo.id}/commit/{done.id}",
            "hookOutput": "",
        }
    )


class CommitBody:
    """The operations of one NDJSON commit body, fed piece by piece (in a worker thread): a header line,
    then file / lfsFile / deletedFile / deletedFolder / copyFile lines. File contents go to temp files as
    they arrive; `discard` removes those that did not make it into the blob store."""

    def __init__(self, storage: Storage, repo: RepoRef | None = None, xet: XetStore | None = None) -> None:
        self.storage = storage
        self.repo, self.xet = repo, xet  # lfsFile lines may name this repo's Xet files
        self.parser = NDJSONParser(storage.temp_path, max_file_size=MAX_FILE_SIZE)
        self.header: dict | None = None
        self.ops: list = []
        self.extra_temps: list = []

    def feed(self, data: bytes, last: bool = False) -> None:
        items = self.parser.feed(data) if data else []
        if last:
            self.parser.close()
        for item in items:
            self._line(item)
            if len(self.ops) > MAX_COMMIT_OPS:
                raise ParseError(f"more than {MAX_COMMIT_OPS} operations in one commit")

    def discard(self) -> None:
        self.parser.discard_all()
        for temp in self.extra_temps:
            temp.unlink(missing_ok=True)

    def _line(self, item: dict) -> None:
        key, value = item.get("key"), item.get("value")
        if not isinstance(value, dict):
            raise ParseError(f"line {key!r}: 'value' must be an object")
        content = value.get("content")
        if isinstance(content, Spilled) and key != "file":
            content.discard()  # a `content` where none belongs: nothing of it is kept
        if key == "header":
            if self.header is not None or self.ops:
                raise ParseError("the header must be the first line, and only one")
            summary, description = value.get("summary", ""), value.get("description", "")
            parent = value.get("parentCommit")
            if not isinstance(summary, str) or not isinstance(description, str) or len(summary) > 10_000:
                raise ParseError("header: summary and description must be strings")
            if parent is not None and (not isinstance(parent, str) or not names.COMMIT_ID.fullmatch(parent)):
                raise ParseError("header: parentCommit must be a 40-hex commit id")
            self.header = {"summary": summary, "description": description, "parentCommit": parent}
            return
        path = names.check_path(value.get("path"))
        if key == "file":
            self.ops.append(AddOp(path, self._inline_upload(value, path)))
        elif key == "lfsFile":
            oid = names.check_sha256(value.get("oid"))
            if value.get("algo", "sha256") != "sha256":
                raise ParseError(f"lfsFile {path}: only algo sha256 is supported")
            info = self.storage.blob_info(oid)
            if info is None and self.xet is not None:
                self._xet_file(path, oid, value.get("size"))
                return
            if info is None:
                raise ApiError(
                    400,
                    "LfsObjectNotFound",
                    f"lfsFile {path}: LFS object {oid} was not uploaded to this server",
                )
            size = value.get("size")
            if size is not None and size != info[0]:
                raise ParseError(f"lfsFile {path}: size {size} does not match the stored object ({info[0]})")
            self.ops.append(AddOp(path, Upload(None, oid, info[0], info[1]), via_lfs=True))
        elif key in ("deletedFile", "deletedFolder"):
            self.ops.append(DeleteOp(path, folder=key == "deletedFolder"))
        elif key == "copyFile":
            src = names.check_path(value.get("srcPath") or value.get("src_path"))
            src_rev = value.get("srcRevision")
            if src_rev is not None:
                names.check_revision(src_rev)
            self.ops.append(CopyOp(path, src, src_rev))
        else:
            raise ParseError(f"unknown line key {str(key)[:50]!r}")

    def _xet_file(self, path: str, oid: str, size: Any) -> None:
        """An lfsFile whose sha256 this repo's Xet uploads claimed (per repo: xet/store.py)."""
        found = self.xet.file_for_sha256(self.repo, oid)
        if found is None:
            raise ApiError(
                400, "LfsObjectNotFound", f"lfsFile {path}: object {oid} was not uploaded to this server"
            )
        xet_hash, stored = found
        if size is not None and size != stored:
            raise ParseError(f"lfsFile {path}: size {size} does not match the stored Xet file ({stored})")
        pointer = lfs_pointer(oid, stored)
        pointer_oid = hashlib.sha1(git_blob_prefix(len(pointer)) + pointer).hexdigest()
        self.ops.append(AddOp(path, Upload(None, oid, stored, pointer_oid, xet=xet_hash), via_lfs=True))

    def _inline_upload(self, value: dict, path: str) -> Upload:
        content = value.get("content")
        encoding = value.get("encoding", "base64")
        if isinstance(content, Spilled):
            raw, content.raw = content.raw, None  # a commit of many files must not keep their text around
            if encoding == "base64":
                if not content.base64_ok:
                    raise ParseError(f"file {path}: content is not valid base64")
                temp, size, sha = content.path, content.size, content.sha256
            else:
                if raw is None:
                    raise ParseError(f"file {path}: non-base64 content larger than 1 MiB; send it base64")
                temp, size, sha = self._write_temp(raw)
                content.discard()
        elif isinstance(content, str):
            data = content.encode("utf-8")
            if encoding == "base64":
                import binascii

                if len(data) % 4 or not _BASE64.fullmatch(data):
                    raise ParseError(f"file {path}: content is not valid base64")
                data = binascii.a2b_base64(data)
            temp, size, sha = self._write_temp(data)
        else:
            raise ParseError(f"file {path}: 'content' must be a string")
        if encoding not in ("base64", "utf-8", "utf8"):
            raise ParseError(f"file {path}: unknown encoding {str(encoding)[:20]!r}")
        if self.storage.blob_info(sha) is not None:
            temp.unlink(missing_ok=True)
            size, oid = self.storage.blob_info(sha)  # type: ignore[misc]
            return Upload(None, sha, size, oid)
        # A large file's fsync (the disk) starts now and runs while its git oid is hashed (the CPU) and later
        # lines are parsed; apply_commit waits for it. Small files are fsynced together at commit time (one
        # journal commit for many of them).
        syncing = self.storage.start_sync(temp) if size >= EARLY_SYNC else None
        return Upload(temp, sha, size, git_oid_of_file(temp, size), syncing=syncing)

    def _write_temp(self, data: bytes):
        temp = self.storage.temp_path()
        self.extra_temps.append(temp)
        temp.write_bytes(data)
        return temp, len(data), hashlib.sha256(data).hexdigest()
