"""The Starlette application of `hub serve`: the part of the Hub API that huggingface_hub and transformers use.

Routing is done here on the raw request path, segment by segment, because the client quotes revisions
and tree paths with `safe=""` (`refs%2Fpr%2F1`, `a%2Fb`) and a decoded path could not tell those slashes
from the URL's own. See docs/hub.md for the list of endpoints and /work-independent notes on Xet.

Uploads: preupload answers `regular` for every file to current clients (huggingface_hub >= 1.20 goes to
Xet unconditionally for `lfs` files, and this server does not speak Xet), so file bytes arrive base64
inline in the NDJSON commit body, which `ndjson.NDJSONParser` streams to temp files. Older clients get
`lfs` for large files and use the LFS batch API (basic transfer, signed PUT URLs).
"""

from __future__ import annotations

import asyncio
import hashlib
import html
import json
import logging
import re
import time
from typing import Any
from urllib.parse import parse_qs, quote, unquote

import anyio
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from hubtool.hub.server import names, patterns
from hubtool.hub.server.auth import FailedAuthLimiter, Signer, TokenStore, bearer_token
from hubtool.hub.server.errors import ApiError, bad_request, entry_not_found, repo_not_found
from hubtool.hub.server.ndjson import NDJSONParser, ParseError, Spilled
from hubtool.hub.server.storage import (
    AddOp,
    Commit,
    CopyOp,
    DeleteOp,
    Entry,
    RepoRef,
    Storage,
    Upload,
    folder_oid,
    git_oid_of_file,
)

log = logging.getLogger("hubtool.hub.server")

CHUNK = 1 << 20
MAX_JSON_BODY = 8 << 20
EARLY_SYNC = 8 << 20  # files at least this large start their fsync as soon as they are received
MAX_FILE_SIZE = 50 * 10**9  # the client cannot download a larger file over plain HTTP anyway
MAX_COMMIT_OPS = 100_000  # lines of one commit body (each an operation)
MAX_COMMIT_BODY = 64 << 30  # bytes of one commit body (files travel inside it, base64); `--max-commit-gib`
MAX_JSON_DEPTH = 64  # nesting of a JSON request body (json.loads would recurse until RecursionError)
AUTH_BURST, AUTH_RATE = 20, 0.5  # failed authentications per client: a burst, then per second
LFS_URL_TTL = 3600
TREE_PAGE = 1000
TREE_PAGE_EXPANDED = 50
COMMITS_PAGE = 50
LFS_JSON = "application/vnd.git-lfs+json"
_BASE64 = re.compile(rb"[A-Za-z0-9+/]*={0,2}")
_HF_HUB_UA = re.compile(r"(?:^|[;\s])hf_hub/(\d+)\.(\d+)")
XET_MESSAGE = (
    "This Hub server does not implement Xet storage; uploads work without it (preupload answers 'regular'). "
    "For LFS uploads set HF_HUB_DISABLE_XET=1 on the client."
)


def _true(value: str | None) -> bool:
    return value is not None and value.lower() in ("1", "true", "yes", "on")


def _header_safe(text: str, limit: int = 400) -> str:
    text = text.encode("ascii", "backslashreplace").decode("ascii")
    # h11 refuses a header value with leading or trailing whitespace (a message ending in a space would
    # turn a clean 404 into a dropped connection)
    return "".join(c if 32 <= ord(c) < 127 else " " for c in text)[:limit].strip()


def error_response(err: ApiError, *, head: bool = False) -> Response:
    headers = dict(err.headers)
    if err.code:
        headers["X-Error-Code"] = err.code
    headers["X-Error-Message"] = _header_safe(err.message)
    if head:
        return Response(status_code=err.status, headers=headers)
    return JSONResponse({"error": err.message, **err.body}, status_code=err.status, headers=headers)


def _legacy_lfs_client(user_agent: str) -> bool:
    """huggingface_hub < 1.20 never goes to Xet by itself (it asks the server), so it may get `lfs`."""
    m = _HF_HUB_UA.search(user_agent or "")
    return m is not None and (int(m.group(1)), int(m.group(2))) < (1, 20)


class HubApp:
    def __init__(
        self,
        root,
        token_file=None,
        *,
        public_read: bool = False,
        auth_burst: int = AUTH_BURST,
        auth_rate: float = AUTH_RATE,
        max_commit_bytes: int = MAX_COMMIT_BODY,
    ) -> None:
        self.storage = Storage(root)
        self.tokens = TokenStore(token_file)
        self.limiter = FailedAuthLimiter(auth_burst, auth_rate)
        self.max_commit_bytes = max_commit_bytes
        self.public_read = public_read
        self.signer = Signer.from_file(self.storage.root / ".secret")

    # -- the ASGI app -------------------------------------------------------------------------------

    def asgi(self):
        """The ASGI callable: every HTTP request goes to `dispatch`, whatever its path or method. (Starlette's
        router matched `/{path:path}` with a regex that stops at a newline, so `/a%0Ab` got a plain-text
        404 that no client could parse; its 405s were plain text too.)"""

        async def app(scope, receive, send) -> None:
            if scope["type"] == "lifespan":
                while True:
                    message = await receive()
                    if message["type"] == "lifespan.startup":
                        await send({"type": "lifespan.startup.complete"})
                    elif message["type"] == "lifespan.shutdown":
                        await send({"type": "lifespan.shutdown.complete"})
                        return
            if scope["type"] != "http":
                return
            response = await self.dispatch(Request(scope, receive))
            await response(scope, receive, send)

        return app

    async def dispatch(self, request: Request) -> Response:
        head = request.method == "HEAD"
        try:
            raw = request.scope.get("raw_path") or request.scope["path"].encode()
            segments = [
                unquote(s.decode("utf-8"), errors="strict") for s in raw.split(b"?")[0].split(b"/")[1:]
            ]
            return await self.route(request, segments)
        except ApiError as err:
            return error_response(err, head=head)
        except ClientDisconnect:
            return Response(status_code=400)
        except UnicodeDecodeError:
            return error_response(bad_request("InvalidPath", "the URL is not valid UTF-8"), head=head)
        except Exception:  # a bug: log it (no request headers in the log), answer a plain 500
            log.exception("internal error on %s %s", request.method, request.scope.get("path", "")[:300])
            return error_response(ApiError(500, None, "internal server error"), head=head)

    async def route(self, request: Request, seg: list[str]) -> Response:
        method = request.method
        if seg and seg[-1] == "" and len(seg) > 1:
            seg = seg[:-1]
        if not seg or seg == [""]:
            return JSONResponse({"hub": "hubtool hub serve", "api": "/api"})
        if seg[0] == "api":
            return await self.route_api(request, method, seg[1:])
        if seg[0] == "_lfs" and len(seg) == 3:
            if seg[1] == "upload" and method == "PUT":
                return await self.lfs_put(request, seg[2])
            if seg[1] == "download" and method in ("GET", "HEAD"):
                return await self.lfs_download(request, seg[2])
        # /{datasets|spaces/}ns/name/...
        repo_type = "model"
        if seg[0] in ("datasets", "spaces") and len(seg) >= 3:
            repo_type = names.REPO_TYPES[seg[0]]
            seg = seg[1:]
        if len(seg) >= 5 and seg[1].endswith(".git") and seg[2:4] == ["info", "lfs"]:
            repo = RepoRef(repo_type, names.check_repo_id(seg[0], seg[1][:-4]))
            if seg[4:] == ["objects", "batch"] and method == "POST":
                return await self.lfs_batch(request, repo)
            if seg[4:] == ["objects", "verify"] and method == "POST":
                return await self.lfs_verify(request, repo)
        if len(seg) >= 5 and seg[2] == "resolve" and method in ("GET", "HEAD"):
            repo = RepoRef(repo_type, names.check_repo_id(seg[0], seg[1]))
            rev, rest = _split_revision(seg[3:])
            return await self.resolve(request, repo, rev, "/".join(rest))
        raise ApiError(404, None, f"no such endpoint: {method} /{'/'.join(seg)[:200]}")

    async def route_api(self, request: Request, method: str, seg: list[str]) -> Response:
        if seg == ["whoami-v2"] and method == "GET":
            return self.whoami(request)
        if seg == ["agent-harnesses"] and method == "GET":
            return JSONResponse({"standardEnvVars": [], "harnesses": {}})
        if seg == ["validate-yaml"] and method == "POST":
            return await self.validate_yaml(request)
        if len(seg) == 2 and seg[0] == "repos":
            if seg[1] == "create" and method == "POST":
                return await self.create_repo(request)
            if seg[1] == "delete" and method == "DELETE":
                return await self.delete_repo(request)
            if seg[1] == "move" and method == "POST":
                return await self.move_repo(request)
        if not seg or seg[0] not in names.REPO_TYPES:
            raise ApiError(404, None, f"no such endpoint: {method} /api/{'/'.join(seg)[:200]}")
        repo_type = names.repo_type(seg[0])
        if len(seg) == 1 and method == "GET":
            return self.list_repos(request, repo_type)
        if len(seg) < 3:
            raise ApiError(404, None, "no such endpoint")
        repo = RepoRef(repo_type, names.check_repo_id(seg[1], seg[2]))
        action, args = (seg[3], seg[4:]) if len(seg) > 3 else ("", [])
        if action == "" and method == "GET":
            return await self.repo_info(request, repo, None)
        if action == "revision" and args and method == "GET":
            return await self.repo_info(request, repo, "/".join(args))
        if action == "tree" and args and method == "GET":
            rev, rest = _split_revision(args)
            return await self.tree(request, repo, rev, "/".join(rest))
        if action == "paths-info" and args and method == "POST":
            return await self.paths_info(request, repo, "/".join(args))
        if action == "refs" and not args and method == "GET":
            return self.refs(request, repo)
        if action == "commits" and args and method == "GET":
            return await self.commits(request, repo, "/".join(args))
        if action == "branch" and args and method in ("POST", "DELETE"):
            return await self.branch(request, repo, "/".join(args))
        if action == "tag" and args and method in ("POST", "DELETE"):
            return await self.tag(request, repo, "/".join(args))
        if action == "preupload" and args and method == "POST":
            return await self.preupload(request, repo, "/".join(args))
        if action == "commit" and args and method == "POST":
            return await self.commit(request, repo, "/".join(args))
        if action == "settings" and not args and method == "PUT":
            return await self.settings(request, repo)
        if action in ("xet-write-token", "xet-read-token"):
            raise ApiError(501, "XetNotSupported", XET_MESSAGE)
        raise ApiError(404, None, f"no such endpoint: {method} /api/{'/'.join(seg)[:200]}")

    # -- auth ---------------------------------------------------------------------------------------

    def _user(self, request: Request) -> str | None:
        """The authenticated user; None without credentials; 401 for credentials that match no one."""
        header = request.headers.get("authorization")
        if not header:
            return None
        client = request.client.host if request.client else "-"
        wait = self.limiter.retry_after(client)
        if wait:
            raise ApiError(
                429,
                "TooManyRequests",
                f"too many failed authentications from {client}: retry in {wait} s",
                headers={"Retry-After": str(wait)},
            )
        user = self.tokens.user_for(bearer_token(header))
        if user is None:
            self.limiter.failed(client)
            log.warning("failed authentication from %s", client)
            raise ApiError(401, "Unauthorized", "Invalid credentials in Authorization header")
        return user

    def require_user(self, request: Request, *, what: str = "this operation") -> str:
        user = self._user(request)
        if user is None:
            raise ApiError(
                401, "Unauthorized", f"Authentication required for {what}: send a token (set HF_TOKEN)"
            )
        return user

    def require_read(self, request: Request, repo: RepoRef) -> dict:
        """The repo's metadata, if the caller may read it (401 RepoNotFound otherwise, as the Hub does)."""
        user = self._user(request)
        meta = self.storage.repo_meta(repo)
        if meta is None and (user is not None or self.public_read):
            raise self._missing(request, repo)
        if user is None and not (self.public_read and meta is not None and not meta.get("private")):
            raise ApiError(
                401,
                "RepoNotFound",
                f"Authentication required to read {repo.label}: send a token (set HF_TOKEN)",
            )
        if meta is None:
            raise self._missing(request, repo)
        return meta

    def _missing(self, request: Request, repo: RepoRef) -> ApiError:
        """RepoNotFound, or a 307 to the new URL of a repo that was moved (renamed or transferred)."""
        moved = self.storage.moved_to(repo)
        if moved is None:
            return repo_not_found(repo.label)
        raw = (request.scope.get("raw_path") or request.scope["path"].encode()).decode("utf-8")
        old = f"/{repo.id}"
        at = raw.find(old + "/") if raw.find(old + "/") >= 0 else raw.find(old + ".git/")
        if at < 0 and raw.endswith(old):
            at = len(raw) - len(old)
        if at < 0:
            return repo_not_found(repo.label)
        location = self.base(request) + raw[:at] + f"/{moved}" + raw[at + len(old) :]
        if request.url.query:
            location += "?" + request.url.query
        return ApiError(307, None, f"{repo.label} moved to {moved}", headers={"Location": location})

    def require_write(self, request: Request, repo: RepoRef) -> tuple[str, dict]:
        user = self.require_user(request, what=f"writing to {repo.label}")
        meta = self.storage.repo_meta(repo)
        if meta is None:
            raise self._missing(request, repo)
        return user, meta

    # -- helpers ------------------------------------------------------------------------------------

    @staticmethod
    def base(request: Request) -> str:
        return str(request.base_url).rstrip("/")

    def repo_url(self, request: Request, repo: RepoRef) -> str:
        return f"{self.base(request)}/{names.TYPE_PREFIX[repo.type]}{repo.id}"

    @staticmethod
    async def read_body(request: Request, limit: int = MAX_JSON_BODY) -> bytes:
        declared = names.ascii_int(request.headers.get("content-length"))
        if declared is not None and declared > limit:
            raise ApiError(413, "PayloadTooLarge", f"request body larger than {limit} bytes")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise ApiError(413, "PayloadTooLarge", f"request body larger than {limit} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    async def read_json(self, request: Request, *, default: Any = None) -> Any:
        body = await self.read_body(request)
        if not body.strip():
            if default is not None:
                return default
            raise bad_request("InvalidJson", "expected a JSON body")
        return _loads(body)

    def _commit_of(self, repo: RepoRef, revision: str) -> Commit:
        return self.storage.commit(repo, self.storage.resolve(repo, revision))

    # -- account ------------------------------------------------------------------------------------

    def whoami(self, request: Request) -> Response:
        user = self.require_user(request, what="whoami")
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

    async def validate_yaml(self, request: Request) -> Response:
        if not self.public_read:
            self.require_user(request, what="validate-yaml")
        body = await self.read_json(request)
        content = body.get("content") if isinstance(body, dict) else None
        if not isinstance(content, str):
            return JSONResponse({"errors": [{"message": "expected a string 'content'"}], "warnings": []}, 400)
        error = await run_in_threadpool(_front_matter_error, content)  # YAML parsing is slow Python
        if error:
            return JSONResponse({"errors": [{"message": error}], "warnings": []}, 400)
        return JSONResponse({"errors": [], "warnings": []})

    # -- repos --------------------------------------------------------------------------------------

    def _body_repo(self, body: Any, user: str | None) -> RepoRef:
        if not isinstance(body, dict):
            raise bad_request("InvalidJson", "expected a JSON object")
        name, organization = body.get("name"), body.get("organization")
        if isinstance(name, str) and "/" in name and organization is None:
            organization, name = name.split("/", 1)
        if organization is None:
            if user is None:
                raise bad_request("InvalidRepoId", "no organization given and no user to default to")
            organization = user
        return RepoRef(names.body_repo_type(body.get("type")), names.check_repo_id(organization, name))

    async def create_repo(self, request: Request) -> Response:
        user = self.require_user(request, what="creating a repo")
        body = await self.read_json(request)
        repo = self._body_repo(body, user)
        private = bool(body.get("private")) or body.get("visibility") in ("private", "protected")
        url = self.repo_url(request, repo)
        try:
            await run_in_threadpool(self.storage.create_repo, repo, user=user, private=private)
        except ApiError as err:
            if err.status == 409:
                err.body["url"] = url  # the client reads it on 409 with exist_ok
            raise
        log.info("%s created %s", user, repo.label)
        return JSONResponse({"url": url, "name": repo.id, "id": repo.id})

    async def delete_repo(self, request: Request) -> Response:
        user = self.require_user(request, what="deleting a repo")
        repo = self._body_repo(await self.read_json(request), user)
        await run_in_threadpool(self.storage.delete_repo, repo)
        log.info("%s deleted %s", user, repo.label)
        return JSONResponse({"success": True})

    async def move_repo(self, request: Request) -> Response:
        user = self.require_user(request, what="moving a repo")
        body = await self.read_json(request)
        if not isinstance(body, dict) or not all(
            isinstance(body.get(k), str) for k in ("fromRepo", "toRepo")
        ):
            raise bad_request("InvalidJson", "expected fromRepo and toRepo")
        repo_type = names.body_repo_type(body.get("type"))
        src = RepoRef(repo_type, names.check_repo_id(*_two(body["fromRepo"])))
        dst = RepoRef(repo_type, names.check_repo_id(*_two(body["toRepo"])))
        await run_in_threadpool(self.storage.move_repo, src, dst)
        log.info("%s moved %s to %s", user, src.label, dst.label)
        return JSONResponse({"success": True, "url": self.repo_url(request, dst)})

    async def settings(self, request: Request, repo: RepoRef) -> Response:
        self.require_write(request, repo)
        body = await self.read_json(request)
        if not isinstance(body, dict):
            raise bad_request("InvalidJson", "expected a JSON object")
        changes = {}
        if "private" in body:
            changes["private"] = bool(body["private"])
        if body.get("visibility") in ("private", "public", "protected"):
            changes["private"] = body["visibility"] != "public"
        meta = await run_in_threadpool(self.storage.update_repo, repo, **changes)
        return JSONResponse({"private": bool(meta.get("private")), "gated": False})

    def list_repos(self, request: Request, repo_type: str) -> Response:
        user = self._user(request)
        if user is None and not self.public_read:
            raise ApiError(401, "Unauthorized", "Authentication required to list repos: send a token")
        author = request.query_params.get("author")
        search = (request.query_params.get("search") or "").lower()
        limit = _int(request.query_params.get("limit"), 1000, 1, 10_000)
        out = []
        for repo in self.storage.list_repos(repo_type):
            meta = self.storage.repo_meta(repo)
            if meta is None or (user is None and meta.get("private")):
                continue
            if author and repo.id.split("/")[0] != author:
                continue
            if search and search not in repo.id.lower():
                continue
            item = {
                "_id": _object_id(repo),
                "id": repo.id,
                "private": bool(meta.get("private")),
                "createdAt": meta.get("createdAt"),
                "author": repo.id.split("/")[0],
            }
            if repo_type == "model":
                item["modelId"] = repo.id
            out.append(item)
            if len(out) >= limit:
                break
        return JSONResponse(out)

    async def repo_info(self, request: Request, repo: RepoRef, revision: str | None) -> Response:
        meta = self.require_read(request, repo)
        commit = await run_in_threadpool(self._commit_of, repo, revision or "main")
        blobs = _true(request.query_params.get("blobs"))
        siblings = []
        used = 0
        for path in sorted(commit.tree):
            entry = commit.tree[path]
            used += entry.size
            sibling: dict[str, Any] = {"rfilename": path}
            if blobs:
                sibling["size"] = entry.size
                sibling["blobId"] = entry.tree_oid
                if entry.lfs:
                    sibling["lfs"] = {
                        "size": entry.size,
                        "sha256": entry.sha256,
                        "pointerSize": len(_pointer(entry)),
                    }
            siblings.append(sibling)
        info: dict[str, Any] = {
            "_id": _object_id(repo),
            "id": repo.id,
            "author": repo.id.split("/")[0],
            "sha": commit.id,
            "lastModified": commit.date,
            "createdAt": meta.get("createdAt"),
            "private": bool(meta.get("private")),
            "gated": False,
            "disabled": False,
            "downloads": 0,
            "likes": 0,
            "tags": [],
            "siblings": siblings,
            "usedStorage": used,
        }
        if repo.type == "model":
            info["modelId"] = repo.id
            info["spaces"] = []
        card = await run_in_threadpool(self._card_data, commit)
        if card:
            info["cardData"] = card
            tags = card.get("tags")
            if isinstance(tags, list):
                info["tags"] = [str(t) for t in tags]
            for key in ("library_name", "pipeline_tag"):
                if isinstance(card.get(key), str):
                    info[key] = card[key]
        if repo.type == "model":
            config = await run_in_threadpool(self._model_config, commit)
            if config:
                info["config"] = config
        if repo.type == "space":
            info["sdk"] = (card or {}).get("sdk")
        return JSONResponse(info)

    def _card_data(self, commit: Commit) -> dict | None:
        entry = commit.tree.get("README.md")
        content = self.storage.read_small(entry) if entry is not None else None
        if not content:
            return None
        import yaml

        try:
            data = _front_matter(content.decode("utf-8", "replace"))
        except (yaml.YAMLError, RecursionError, ValueError):
            return None  # a README committed without validate-yaml: the repo still answers, without cardData
        data = _jsonable(data)
        return data if isinstance(data, dict) else None

    def _model_config(self, commit: Commit) -> dict | None:
        entry = commit.tree.get("config.json")
        content = self.storage.read_small(entry) if entry is not None else None
        try:
            data = json.loads(content) if content else None
        except (ValueError, RecursionError):
            return None
        if not isinstance(data, dict):
            return None
        return _jsonable({k: data[k] for k in ("architectures", "model_type") if k in data})

    # -- tree, paths-info, refs, commits ----------------------------------------------------------

    def _file_json(self, path: str, entry: Entry) -> dict:
        item: dict[str, Any] = {"type": "file", "oid": entry.tree_oid, "size": entry.size, "path": path}
        if entry.lfs:
            item["lfs"] = {"oid": entry.sha256, "size": entry.size, "pointerSize": len(_pointer(entry))}
        return item

    @staticmethod
    def _folder_json(path: str, tree: dict[str, Entry]) -> dict:
        return {"type": "directory", "oid": folder_oid(tree, path), "size": 0, "path": path}

    def _listing(self, tree: dict[str, Entry], folder: str, recursive: bool) -> list[dict]:
        prefix = folder + "/" if folder else ""
        files: list[str] = []
        folders: set[str] = set()
        for path in tree:
            if not path.startswith(prefix):
                continue
            rest = path[len(prefix) :]
            parts = rest.split("/")
            if recursive:
                files.append(path)
                for i in range(1, len(parts)):
                    folders.add(prefix + "/".join(parts[:i]))
            elif len(parts) == 1:
                files.append(path)
            else:
                folders.add(prefix + parts[0])
        if folder and not files and not folders:
            return None  # type: ignore[return-value]
        items = [(p, True) for p in folders] + [(p, False) for p in files]
        items.sort(key=lambda item: item[0])
        return [self._folder_json(p, tree) if is_dir else self._file_json(p, tree[p]) for p, is_dir in items]

    async def tree(self, request: Request, repo: RepoRef, revision: str, folder: str) -> Response:
        self.require_read(request, repo)
        names.check_path(folder, allow_root=True)
        folder = folder.rstrip("/")
        params = request.query_params
        recursive, expand = _true(params.get("recursive")), _true(params.get("expand"))
        commit = await run_in_threadpool(self._commit_of, repo, revision)
        listing = await run_in_threadpool(self._listing, commit.tree, folder, recursive)
        if listing is None:
            raise entry_not_found(folder, commit.id, f"Folder not found: {folder} at {commit.id}")
        page_size = TREE_PAGE_EXPANDED if expand else TREE_PAGE
        page_size = _int(params.get("limit"), page_size, 1, page_size)
        start = _int(params.get("cursor"), 0, 0, len(listing))
        page = listing[start : start + page_size]
        if expand:
            await run_in_threadpool(self._add_last_commits, repo, commit, page)
        headers = {}
        if start + page_size < len(listing):
            quoted = "/" + quote(folder, safe="") if folder else ""
            query = (
                f"recursive={str(recursive).lower()}&expand={str(expand).lower()}"
                f"&limit={page_size}&cursor={start + page_size}"
            )
            url = f"{self.base(request)}/api/{repo.type}s/{repo.id}/tree/{commit.id}{quoted}?{query}"
            headers["Link"] = f'<{url}>; rel="next"'
        return JSONResponse(page, headers=headers)

    def _add_last_commits(self, repo: RepoRef, commit: Commit, items: list[dict]) -> None:
        """lastCommit {id, title, date} of each item: the newest commit that changed it (first-parent walk)."""
        pending = {item["path"]: item for item in items}
        previous: Commit | None = None
        for depth, current in enumerate(self.storage.history(repo, commit.id)):
            if previous is not None:
                for path in list(pending):
                    if _changed(previous.tree, current.tree, path):
                        pending.pop(path)["lastCommit"] = _commit_ref(previous)
            if not pending or depth > 2000:
                break
            previous = current
        for item in pending.values():
            item["lastCommit"] = _commit_ref(previous or commit)

    async def paths_info(self, request: Request, repo: RepoRef, revision: str) -> Response:
        self.require_read(request, repo)
        body = await self.read_body(request)
        ctype = request.headers.get("content-type", "")
        if "json" in ctype:
            data = _loads(body or b"{}")
            paths = data.get("paths", []) if isinstance(data, dict) else []
            paths = [paths] if isinstance(paths, str) else paths
            expand = bool(data.get("expand")) if isinstance(data, dict) else False
        else:
            form = parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True)
            paths, expand = form.get("paths", []), _true((form.get("expand") or ["false"])[0])
        if not isinstance(paths, list) or len(paths) > 10_000:
            raise bad_request("InvalidPath", "expected at most 10000 paths")
        commit = await run_in_threadpool(self._commit_of, repo, revision)
        out = []
        for path in paths:
            path = names.check_path(path).rstrip("/")
            if path in commit.tree:
                out.append(self._file_json(path, commit.tree[path]))
            elif any(p.startswith(path + "/") for p in commit.tree):
                out.append(self._folder_json(path, commit.tree))
        if expand:
            await run_in_threadpool(self._add_last_commits, repo, commit, out)
        return JSONResponse(out)

    def refs(self, request: Request, repo: RepoRef) -> Response:
        self.require_read(request, repo)
        refs = self.storage.refs(repo)
        data: dict[str, Any] = {
            "branches": [
                {"name": n, "ref": f"refs/heads/{n}", "targetCommit": c}
                for n, c in sorted(refs["heads"].items())
            ],
            "converts": [],
            "tags": [
                {"name": n, "ref": f"refs/tags/{n}", "targetCommit": c}
                for n, c in sorted(refs["tags"].items())
            ],
        }
        if _true(request.query_params.get("include_prs")):
            data["pullRequests"] = []
        return JSONResponse(data)

    async def commits(self, request: Request, repo: RepoRef, revision: str) -> Response:
        self.require_read(request, repo)
        params = request.query_params
        limit = _int(params.get("limit"), COMMITS_PAGE, 1, 1000)
        page = _int(params.get("p"), 0, 0, 10**7)
        formatted = "formatted" in params.getlist("expand[]") or "formatted" in params.getlist("expand")
        cid = await run_in_threadpool(self.storage.resolve, repo, revision)

        def collect() -> tuple[list[dict], bool]:
            items, more = [], False
            for index, commit in enumerate(self.storage.history(repo, cid)):
                if index < page * limit:
                    continue
                if len(items) == limit:
                    more = True
                    break
                item = {
                    "id": commit.id,
                    "title": commit.title,
                    "message": commit.message,
                    "authors": [{"user": commit.author, "avatar": None}],
                    "date": commit.date,
                }
                if formatted:
                    item["formatted"] = {
                        "title": html.escape(commit.title),
                        "message": html.escape(commit.message),
                    }
                items.append(item)
            return items, more

        items, more = await run_in_threadpool(collect)
        headers = {}
        if more:
            extra = "&expand[]=formatted" if formatted else ""
            url = f"{self.base(request)}/api/{repo.type}s/{repo.id}/commits/{cid}?p={page + 1}&limit={limit}{extra}"
            headers["Link"] = f'<{url}>; rel="next"'
        return JSONResponse(items, headers=headers)

    async def branch(self, request: Request, repo: RepoRef, branch: str) -> Response:
        user, _ = self.require_write(request, repo)
        names.check_branch_name(branch)
        if request.method == "DELETE":
            if branch == "main":
                raise ApiError(403, "DefaultBranch", "the default branch main cannot be deleted")
            await run_in_threadpool(self.storage.delete_ref, repo, "heads", branch)
            return JSONResponse({"success": True})
        body = await self.read_json(request, default={})
        if not isinstance(body, dict):
            raise bad_request("InvalidJson", "expected a JSON object")
        if body.get("emptyBranch"):
            target = await run_in_threadpool(self.storage.empty_commit, repo, user)
        else:
            start = body.get("startingPoint") or "main"
            target = await run_in_threadpool(self.storage.resolve, repo, names.check_revision(start))
        await run_in_threadpool(self.storage.create_ref, repo, "heads", branch, target)
        return JSONResponse({"success": True})

    async def tag(self, request: Request, repo: RepoRef, revision: str) -> Response:
        self.require_write(request, repo)
        if request.method == "DELETE":
            names.check_revision(revision)
            await run_in_threadpool(self.storage.delete_ref, repo, "tags", revision)
            return JSONResponse({"success": True})
        body = await self.read_json(request)
        if not isinstance(body, dict):
            raise bad_request("InvalidJson", "expected a JSON object")
        tag = names.check_branch_name(body.get("tag"))
        target = await run_in_threadpool(self.storage.resolve, repo, revision)
        await run_in_threadpool(self.storage.create_ref, repo, "tags", tag, target)
        return JSONResponse({"success": True})

    # -- downloads ----------------------------------------------------------------------------------

    async def resolve(self, request: Request, repo: RepoRef, revision: str, path: str) -> Response:
        self.require_read(request, repo)
        names.check_path(path)
        commit = await run_in_threadpool(self._commit_of, repo, revision)
        entry = commit.tree.get(path)
        if entry is None:
            raise entry_not_found(path, commit.id, f"Entry not found: {path} at {commit.id}")
        headers = {
            "X-Repo-Commit": commit.id,
            "ETag": f'"{entry.etag}"',
            "Accept-Ranges": "bytes",
            "Content-Type": "application/octet-stream",
            "Content-Disposition": _content_disposition(path),
            "Cache-Control": "private, max-age=0, must-revalidate",
        }
        if entry.lfs:
            headers["X-Linked-Etag"] = f'"{entry.sha256}"'
            headers["X-Linked-Size"] = str(entry.size)
        inm = request.headers.get("if-none-match")
        if inm and entry.etag in [v.strip().lstrip("W/").strip('"') for v in inm.split(",")]:
            return Response(status_code=304, headers=headers)
        return self._file_response(request, self.storage.blob_path(entry.sha256), entry.size, headers)

    def _file_response(self, request: Request, path, size: int, headers: dict) -> Response:
        start, end, status = 0, size - 1, 200
        header = request.headers.get("range")
        if header:
            parsed = _parse_range(header, size)
            if parsed == "unsatisfiable":
                return Response(
                    status_code=416,
                    headers={**headers, "Content-Range": f"bytes */{size}", "Content-Length": "0"},
                )
            if parsed is not None:
                start, end = parsed
                status = 206
                headers["Content-Range"] = f"bytes {start}-{end}/{size}"
        length = max(0, end - start + 1)
        headers["Content-Length"] = str(length)
        if request.method == "HEAD":
            return Response(status_code=status, headers=headers)
        # Opened before the status line goes out: a blob that cannot be read is a clean error response,
        # never a 200 whose body stops short.
        try:
            f = open(path, "rb")  # noqa: SIM115 (closed by _read_range when the body is sent or dropped)
        except OSError:
            log.error("blob %s cannot be read", path.name if hasattr(path, "name") else path)
            raise ApiError(500, "BlobUnreadable", "a stored file cannot be read; try again later") from None
        return StreamingResponse(_read_range(f, start, length), status_code=status, headers=headers)

    # -- uploads: preupload and commit ---------------------------------------------------------------

    async def preupload(self, request: Request, repo: RepoRef, revision: str) -> Response:
        self.require_write(request, repo)
        body = await self.read_json(request)
        files = body.get("files") if isinstance(body, dict) else None
        if not isinstance(files, list) or len(files) > 1000:
            raise bad_request("InvalidJson", "expected 'files': a list of at most 1000 {path, size, sample}")
        commit = await run_in_threadpool(self._commit_of, repo, revision)
        legacy = _legacy_lfs_client(request.headers.get("user-agent", ""))
        rules = await run_in_threadpool(self.storage.lfs_rules, commit.tree) if legacy else []
        ignore_text = body.get("gitIgnore")
        if not isinstance(ignore_text, str):
            entry = commit.tree.get(".gitignore")
            content = await run_in_threadpool(self.storage.read_small, entry) if entry else None
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
                mode = (
                    "lfs" if legacy and size > 0 and patterns.is_lfs(path, size, rules, budget) else "regular"
                )
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

    async def commit(self, request: Request, repo: RepoRef, revision: str) -> Response:
        user, _ = self.require_write(request, repo)
        names.check_revision(revision)
        if _true(request.query_params.get("create_pr")):
            raise ApiError(400, "NotSupported", "pull requests are not supported by hub serve")
        branch = self.storage.branch_name(revision)
        if branch not in self.storage.refs(repo)["heads"]:
            if names.COMMIT_ID.fullmatch(branch) or branch in self.storage.refs(repo)["tags"]:
                raise bad_request("InvalidRevision", f"can only commit to a branch, not {branch}")
            raise ApiError(404, "RevisionNotFound", f"Invalid rev id: {branch} (repository {repo.label})")
        parser = NDJSONParser(self.storage.temp_path, max_file_size=MAX_FILE_SIZE)
        extra_temps: list = []
        state: dict[str, Any] = {"header": None, "ops": []}
        limit = self.max_commit_bytes
        declared = names.ascii_int(request.headers.get("content-length"))
        if declared is not None and declared > limit:
            raise ApiError(413, "PayloadTooLarge", f"commit body larger than the server's {limit} bytes")
        received = 0
        try:
            buffer = bytearray()
            async for chunk in request.stream():
                received += len(chunk)
                if received > limit:
                    raise ApiError(
                        413, "PayloadTooLarge", f"commit body larger than the server's {limit} bytes"
                    )
                buffer += chunk
                if len(buffer) >= CHUNK:
                    await run_in_threadpool(self._feed, parser, bytes(buffer), state, extra_temps)
                    buffer.clear()
            await run_in_threadpool(self._feed, parser, bytes(buffer), state, extra_temps, True)
            header = state["header"] or {}
            commit = await run_in_threadpool(
                lambda: self.storage.apply_commit(
                    repo,
                    branch,
                    state["ops"],
                    author=user,
                    title=header.get("summary") or "Upload files with hub serve",
                    message=header.get("description") or "",
                    parent_commit=header.get("parentCommit"),
                )
            )
        except ParseError as err:
            await _drain(request)
            raise bad_request("InvalidCommitBody", f"commit body: {err}") from None
        except ClientDisconnect:
            log.info("%s: commit to %s abandoned by the client (nothing committed)", user, repo.label)
            raise
        except ApiError as err:
            if err.status != 413:  # a body over the cap is not read to its end: the connection closes
                await _drain(request)
            raise
        finally:
            # Temp files that did not make it into the blob store (a failed or abandoned commit) go now.
            parser.discard_all()
            for temp in extra_temps:
                temp.unlink(missing_ok=True)
        log.info(
            "%s committed %s to %s@%s (%d ops)", user, commit.id[:12], repo.label, branch, len(state["ops"])
        )
        prefix = names.TYPE_PREFIX[repo.type]
        return JSONResponse(
            {
                "success": True,
                "commitOid": commit.id,
                "commitUrl": f"{self.base(request)}/{prefix}{repo.id}/commit/{commit.id}",
                "hookOutput": "",
            }
        )

    def _feed(
        self, parser: NDJSONParser, data: bytes, state: dict, extra_temps: list, last: bool = False
    ) -> None:
        items = parser.feed(data) if data else []
        if last:
            parser.close()
        for item in items:
            self._line(item, state, extra_temps)
            if len(state["ops"]) > MAX_COMMIT_OPS:
                raise ParseError(f"more than {MAX_COMMIT_OPS} operations in one commit")

    def _line(self, item: dict, state: dict, extra_temps: list) -> None:
        key, value = item.get("key"), item.get("value")
        if not isinstance(value, dict):
            raise ParseError(f"line {key!r}: 'value' must be an object")
        content = value.get("content")
        if isinstance(content, Spilled) and key != "file":
            content.discard()  # a `content` where none belongs: nothing of it is kept
        if key == "header":
            if state["header"] is not None or state["ops"]:
                raise ParseError("the header must be the first line, and only one")
            summary, description = value.get("summary", ""), value.get("description", "")
            parent = value.get("parentCommit")
            if not isinstance(summary, str) or not isinstance(description, str) or len(summary) > 10_000:
                raise ParseError("header: summary and description must be strings")
            if parent is not None and (not isinstance(parent, str) or not names.COMMIT_ID.fullmatch(parent)):
                raise ParseError("header: parentCommit must be a 40-hex commit id")
            state["header"] = {"summary": summary, "description": description, "parentCommit": parent}
            return
        path = names.check_path(value.get("path"))
        if key == "file":
            state["ops"].append(AddOp(path, self._inline_upload(value, path, extra_temps)))
        elif key == "lfsFile":
            oid = names.check_sha256(value.get("oid"))
            if value.get("algo", "sha256") != "sha256":
                raise ParseError(f"lfsFile {path}: only algo sha256 is supported")
            info = self.storage.blob_info(oid)
            if info is None:
                raise ApiError(
                    400,
                    "LfsObjectNotFound",
                    f"lfsFile {path}: LFS object {oid} was not uploaded to this server",
                )
            size = value.get("size")
            if size is not None and size != info[0]:
                raise ParseError(f"lfsFile {path}: size {size} does not match the stored object ({info[0]})")
            state["ops"].append(AddOp(path, Upload(None, oid, info[0], info[1]), via_lfs=True))
        elif key in ("deletedFile", "deletedFolder"):
            state["ops"].append(DeleteOp(path, folder=key == "deletedFolder"))
        elif key == "copyFile":
            src = names.check_path(value.get("srcPath") or value.get("src_path"))
            src_rev = value.get("srcRevision")
            if src_rev is not None:
                names.check_revision(src_rev)
            state["ops"].append(CopyOp(path, src, src_rev))
        else:
            raise ParseError(f"unknown line key {str(key)[:50]!r}")

    def _inline_upload(self, value: dict, path: str, extra_temps: list) -> Upload:
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
                temp, size, sha = self._write_temp(raw, extra_temps)
                content.discard()
        elif isinstance(content, str):
            data = content.encode("utf-8")
            if encoding == "base64":
                import binascii

                if len(data) % 4 or not _BASE64.fullmatch(data):
                    raise ParseError(f"file {path}: content is not valid base64")
                data = binascii.a2b_base64(data)
            temp, size, sha = self._write_temp(data, extra_temps)
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

    def _write_temp(self, data: bytes, extra_temps: list):
        temp = self.storage.temp_path()
        extra_temps.append(temp)
        temp.write_bytes(data)
        return temp, len(data), hashlib.sha256(data).hexdigest()

    # -- LFS batch API (basic transfer) ----------------------------------------------------------------

    async def lfs_batch(self, request: Request, repo: RepoRef) -> Response:
        if not self.public_read:
            self.require_user(request, what=f"the LFS API of {repo.label}")
        body = await self.read_json(request)
        operation = body.get("operation") if isinstance(body, dict) else None
        if operation == "upload":
            self.require_write(request, repo)
        elif operation == "download":
            self.require_read(request, repo)
        else:
            raise bad_request("InvalidJson", "operation must be 'upload' or 'download'")
        objects = body.get("objects")
        if not isinstance(objects, list) or len(objects) > 1000:
            raise bad_request("InvalidJson", "expected 'objects': a list of at most 1000 {oid, size}")
        if body.get("hash_algo", "sha256") != "sha256":
            raise bad_request("InvalidJson", "only hash_algo sha256 is supported")
        base = self.base(request)
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
            info = self.storage.blob_info(oid)
            if operation == "upload":
                if info is not None and info[0] == size:
                    out.append({"oid": oid, "size": size})  # already stored: no actions, nothing to send
                    continue
                sig = self.signer.sign("upload", oid, str(size), expires)
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
                if info is None or not self._referenced(repo, oid):
                    out.append(
                        {"oid": oid, "size": size, "error": {"code": 404, "message": "object not found"}}
                    )
                    continue
                sig = self.signer.sign("download", oid, expires)
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

    def _referenced(self, repo: RepoRef, oid: str) -> bool:
        refs = self.storage.refs(repo)
        for cid in list(refs["heads"].values()) + list(refs["tags"].values()):
            if any(e.sha256 == oid for e in self.storage.commit(repo, cid).tree.values()):
                return True
        return False

    async def lfs_put(self, request: Request, oid: str) -> Response:
        params = request.query_params
        size_text = params.get("size", "")
        size = names.ascii_int(size_text)
        if not names.SHA256.fullmatch(oid) or size is None:
            raise bad_request("InvalidOid", "invalid LFS upload URL")
        if not self.signer.check(params.get("sig"), params.get("exp"), "upload", oid, size_text):
            raise ApiError(
                403, "InvalidSignature", "the upload URL is invalid or has expired; ask the batch API again"
            )
        temp = self.storage.temp_path("lfs")
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
                await _settle(pending)  # the file is closed only when no thread writes to it
                f.close()
            if received != size:
                raise bad_request("SizeMismatch", f"received {received} bytes, expected {size}")
            if sha.hexdigest() != oid:
                raise bad_request("OidMismatch", "the uploaded content does not match its sha256 oid")
            await run_in_threadpool(self.storage.store_upload, Upload(temp, oid, size, git.hexdigest()))
        finally:
            temp.unlink(missing_ok=True)
        return Response(status_code=200, headers={"ETag": f'"{oid}"'})

    async def lfs_verify(self, request: Request, repo: RepoRef) -> Response:
        self.require_write(request, repo)
        body = await self.read_json(request)
        oid = names.check_sha256(body.get("oid") if isinstance(body, dict) else None)
        info = self.storage.blob_info(oid)
        if info is None or info[0] != body.get("size"):
            return JSONResponse({"message": f"object {oid} not found"}, 404, media_type=LFS_JSON)
        return JSONResponse({"message": "ok"}, media_type=LFS_JSON)

    async def lfs_download(self, request: Request, oid: str) -> Response:
        params = request.query_params
        if not names.SHA256.fullmatch(oid) or not self.signer.check(
            params.get("sig"), params.get("exp"), "download", oid
        ):
            raise ApiError(403, "InvalidSignature", "the download URL is invalid or has expired")
        info = self.storage.blob_info(oid)
        if info is None:
            raise ApiError(404, "EntryNotFound", "object not found")
        headers = {"ETag": f'"{oid}"', "Accept-Ranges": "bytes", "Content-Type": "application/octet-stream"}
        return self._file_response(request, self.storage.blob_path(oid), info[0], headers)


# -- small helpers ----------------------------------------------------------------------------------


async def _settle(task) -> None:
    """Wait until a background step (a worker thread using a request's files) is over, whatever it raised."""
    if task is None:
        return
    try:
        await asyncio.shield(task)
    except BaseException:  # noqa: BLE001, S110 (its error, if any, was or will be raised by the request itself)
        pass


async def _drain(request: Request, limit: int = 256 << 20) -> None:
    """Read (and drop) what is left of a refused request body, so that the client, still sending, gets the
    error response instead of a reset connection; past `limit` bytes the connection is dropped instead."""
    try:
        async for chunk in request.stream():
            limit -= len(chunk)
            if limit < 0:
                return
    except (ClientDisconnect, RuntimeError):  # gone, or the body was already read to the end
        pass


def _loads(body: bytes) -> Any:
    """json.loads of a request body, nesting at most MAX_JSON_DEPTH; anything else than JSON is a 400.
    (The C decoder itself stops at Python's recursion limit with RecursionError; the walk after it is
    iterative, so neither can exhaust the stack.)"""
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        raise bad_request("InvalidJson", "the request body is not valid JSON") from None
    # Strings must be real Unicode: JSON's "\ud800" decodes to a lone surrogate, which no response (and no
    # file name) can encode; refused here once instead of failing later as a 500.
    stack = [(data, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, str):
            _check_unicode(value)
        elif isinstance(value, (dict, list)):
            if depth > MAX_JSON_DEPTH:
                raise bad_request("InvalidJson", f"the request body nests JSON deeper than {MAX_JSON_DEPTH}")
            if isinstance(value, dict):
                for key in value:
                    _check_unicode(key)
            children = value.values() if isinstance(value, dict) else value
            stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list, str)))
    return data


def _jsonable(data: Any) -> Any:
    """What a repo's own files (README front matter, config.json) put into repo_info, as strict JSON: dates
    become strings; NaN, lone surrogates (YAML's "\\ud83d\\ude00" escapes stay two surrogates) or anything
    else a response cannot encode make it None, so a hostile file cannot turn repo_info into a 500."""
    try:
        text = json.dumps(data, default=str, ensure_ascii=False, allow_nan=False)
        text.encode("utf-8")
        return json.loads(text)
    except (TypeError, ValueError, RecursionError):  # UnicodeEncodeError is a ValueError
        return None


def _check_unicode(text: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise bad_request(
            "InvalidJson", "the request body holds an unpaired surrogate (\\ud800-\\udfff)"
        ) from None


def _two(repo_id: str) -> tuple[str, str]:
    if repo_id.count("/") != 1:
        raise bad_request("InvalidRepoId", "expected a repo id namespace/name")
    ns, name = repo_id.split("/")
    return ns, name


def _split_revision(args: list[str]) -> tuple[str, list[str]]:
    """[rev, *path] of a /resolve or /tree URL; an unquoted `refs/heads/x`-style revision spans 3 parts."""
    if len(args) >= 3 and args[0] == "refs" and args[1] in ("heads", "tags", "pr", "convert"):
        return "/".join(args[:3]), args[3:]
    return args[0], args[1:]


def _int(value: str | None, default: int, low: int, high: int) -> int:
    number = names.ascii_int(value)
    return default if number is None else max(low, min(high, number))


def _object_id(repo: RepoRef) -> str:
    return hashlib.sha1(f"{repo.type}:{repo.id}".encode()).hexdigest()[:24]


def _pointer(entry: Entry) -> bytes:
    from hubtool.hub.server.storage import lfs_pointer

    return lfs_pointer(entry.sha256, entry.size)


def _changed(newer: dict[str, Entry], older: dict[str, Entry], path: str) -> bool:
    if path in newer or path in older:
        return newer.get(path) != older.get(path)
    prefix = path + "/"
    a = {p: e for p, e in newer.items() if p.startswith(prefix)}
    b = {p: e for p, e in older.items() if p.startswith(prefix)}
    return a != b


def _commit_ref(commit: Commit) -> dict:
    return {"id": commit.id, "title": commit.title, "date": commit.date}


def _content_disposition(path: str) -> str:
    name = path.rsplit("/", 1)[-1]
    ascii_name = "".join(c if 32 <= ord(c) < 127 and c not in '"\\' else "_" for c in name)
    return f"inline; filename*=UTF-8''{quote(name, safe='')}; filename=\"{ascii_name}\""


def _parse_range(header: str, size: int):
    """`bytes=a-b` / `bytes=a-` / `bytes=-n` -> (start, end) inclusive; "unsatisfiable"; None to ignore
    (several ranges or a malformed header: the whole file is sent, as RFC 9110 allows)."""
    unit, _, spec = header.partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    first, dash, last = spec.strip().partition("-")
    if not dash:
        return None
    first, last = first.strip(), last.strip()
    a, b = names.ascii_int(first), names.ascii_int(last)
    if first == "":
        if not b:
            return "unsatisfiable" if b == 0 else None
        return max(0, size - b), size - 1
    if a is None or (last and b is None):
        return None
    end = min(b, size - 1) if b is not None else size - 1
    if a >= size or (b is not None and b < a):
        return "unsatisfiable"
    return a, end


async def _read_range(raw, start: int, length: int):
    f = anyio.wrap_file(raw)
    try:
        await f.seek(start)
        remaining = length
        while remaining > 0:
            chunk = await f.read(min(CHUNK, remaining))
            if not chunk:
                break
            remaining -= len(chunk)
            yield chunk
    finally:
        await f.aclose()


def _front_matter(text: str):
    if not text.startswith("---"):
        return None
    lines = text.split("\n")
    if lines[0].strip() != "---":
        return None
    for index in range(1, len(lines)):
        if lines[index].strip() == "---":
            import yaml

            block = "\n".join(lines[1:index])
            _check_yaml_shape(block)
            return yaml.safe_load(block)
    return None


MAX_CARD_YAML = 1 << 20


def _check_yaml_shape(block: str) -> None:
    """Refuse, before composing it, card metadata that is too big, nested deeper than MAX_JSON_DEPTH (the
    composer recurses: RecursionError) or uses aliases (`&a [x, x]`, `[*a, *a]`, nine levels: 9**9 items
    once the card is written as JSON for repo_info). yaml.parse is a non-recursive event stream."""
    import yaml

    if len(block) > MAX_CARD_YAML:
        raise yaml.YAMLError(f"the metadata block is larger than {MAX_CARD_YAML} characters")
    depth = 0
    for event in yaml.parse(block, Loader=yaml.SafeLoader):
        if isinstance(event, yaml.AliasEvent):
            raise yaml.YAMLError("aliases (*name) are not allowed in model card metadata")
        if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
            depth += 1
            if depth > MAX_JSON_DEPTH:
                raise yaml.YAMLError(f"the metadata nests deeper than {MAX_JSON_DEPTH}")
        elif isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
            depth -= 1


def _front_matter_error(text: str) -> str | None:
    import yaml

    try:
        data = _front_matter(text)
    except (yaml.YAMLError, RecursionError, ValueError) as err:
        return f"Invalid YAML in the model card metadata: {str(err).splitlines()[0][:200]}"
    if data is not None and not isinstance(data, dict):
        return "The model card metadata must be a YAML mapping"
    return None


# -- running it -------------------------------------------------------------------------------------


class AccessLog:
    """ASGI middleware: one log line per request with client, method, path (no query string: signed URLs
    carry signatures there), status and time. Headers (Authorization) are never logged."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        status = [0]

        async def send_status(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            client = scope.get("client") or ("-", 0)
            path = scope.get("path", "")
            if len(path) > 300:
                path = path[:300] + "..."
            log.info(
                "%s %s %s %s %.0fms",
                client[0],
                scope.get("method", "-"),
                _header_safe(path, 400),
                status[0] or "-",
                (time.perf_counter() - started) * 1000,
            )


def make_app(root, token_file=None, *, public_read: bool = False, **limits):
    hub = HubApp(root, token_file, public_read=public_read, **limits)
    return AccessLog(hub.asgi()), hub


def serve(
    *,
    root,
    host: str = "127.0.0.1",
    port: int = 8910,
    token_file=None,
    public_read: bool = False,
    log_level: str = "info",
    auth_burst: int = AUTH_BURST,
    auth_rate: float = AUTH_RATE,
    max_commit_bytes: int = MAX_COMMIT_BODY,
) -> None:
    import fcntl
    import os
    import sys
    from pathlib import Path

    import uvicorn

    from hubtool.errors import HubError

    root = Path(root).expanduser().absolute()
    root.mkdir(parents=True, exist_ok=True)
    lock_fd = os.open(root / ".serve.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise HubError(f"{root} is already served by another `hub serve` process") from None
    if token_file is None and not public_read:
        raise HubError("no --token-file and no --public-read: nobody could read or write; give one of them")
    app, hub = make_app(
        root,
        token_file,
        public_read=public_read,
        auth_burst=auth_burst,
        auth_rate=auth_rate,
        max_commit_bytes=max_commit_bytes,
    )
    logging.basicConfig(
        level=getattr(logging, log_level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    log.setLevel(getattr(logging, log_level.upper(), logging.INFO))
    shown_host = f"[{host}]" if ":" in host else host
    log.info(
        "hub serve: root %s, %d user(s) from %s, reads %s",
        root,
        len(hub.tokens),
        token_file or "(no token file)",
        "public" if public_read else "need a token",
    )
    log.info("point the HF tools at it: HF_ENDPOINT=http://%s:%d HF_TOKEN=<your token>", shown_host, port)
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        access_log=False,  # AccessLog above logs requests without headers or query strings
        log_level=log_level,
        server_header=False,
        proxy_headers=False,
        timeout_keep_alive=30,
        timeout_graceful_shutdown=10,  # a stuck download must not keep a stopping server alive
        h11_max_incomplete_event_size=64 * 1024,
    )
    try:
        uvicorn.Server(config).run()
    finally:
        os.close(lock_fd)
