"""The ASGI application of `hub serve`: the part of the Hub API that huggingface_hub and transformers use.

`HubApp` holds the server's state (storage, tokens, the failed-authentication limiter, the URL signer,
limits) and the auth checks every handler calls; `dispatch` splits the raw path and runs the handler that
routes.ROUTES names for it, turning any ApiError into the JSON error the client maps. The handlers live per
concern: account.py, repos.py, refs.py (tree, refs, commits list, branches, tags), downloads.py, commits.py
(preupload, the NDJSON commit), lfs.py, xet.py; http.py has their shared helpers. To add an endpoint, see
routes.py. docs/hub.md lists the endpoints.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from hubtool.hub.server import defaults, routes, xet
from hubtool.hub.server.auth import SESSION_COOKIE, FailedAuthLimiter, Signer, TokenStore, bearer_token
from hubtool.hub.server.errors import ApiError, bad_request, repo_not_found
from hubtool.hub.server.http import base_url, error_response, header_safe, lifespan
from hubtool.hub.server.storage import Commit, RepoRef, Storage

log = logging.getLogger("hubtool.hub.server")
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")


def same_origin(request: Request) -> bool:
    """No Origin header (API clients send none), or this server's own: a browser's POST, PUT or DELETE
    from another site's page is refused before any handler runs."""
    origin = request.headers.get("origin")
    return origin is None or origin.lower().rstrip("/") == base_url(request).lower()


class HubApp:
    def __init__(
        self,
        root,
        token_file=None,
        *,
        public_read: bool = False,
        auth_burst: int = defaults.AUTH_BURST,
        auth_rate: float = defaults.AUTH_RATE,
        max_commit_bytes: int = defaults.MAX_COMMIT_BODY,
        extra_routes: Sequence[routes.Route] = (),
    ) -> None:
        self.storage = Storage(root)
        self.extra_routes = tuple(extra_routes)  # tried before routes.ROUTES (routes.py: "Rows from outside")
        self.tokens = TokenStore(token_file)
        self.limiter = FailedAuthLimiter(auth_burst, auth_rate)
        self.max_commit_bytes = max_commit_bytes
        self.public_read = public_read
        self.signer = Signer.from_file(self.storage.root / ".secret")
        xet.store_of(self)  # the Xet store (server/xet): its folders, and small Xet files for read_small

    # -- the ASGI app -------------------------------------------------------------------------------

    def asgi(self):
        """The ASGI callable: every HTTP request goes to `dispatch`, whatever its path or method. (Starlette's
        router matched `/{path:path}` with a regex that stops at a newline, so `/a%0Ab` got a plain-text
        404 that no client could parse; its 405s were plain text too.)"""

        async def app(scope, receive, send) -> None:
            if scope["type"] == "lifespan":
                return await lifespan(receive, send)
            if scope["type"] != "http":
                return
            response = await self.dispatch(Request(scope, receive))
            await response(scope, receive, send)

        return app

    async def dispatch(self, request: Request) -> Response:
        head = request.method == "HEAD"
        try:
            if request.method not in SAFE_METHODS and not same_origin(request):
                raise ApiError(403, "Forbidden", "a request from another origin (its Origin header) is refused")
            raw = request.scope.get("raw_path") or request.scope["path"].encode()
            return await routes.call(self, request, routes.path_segments(raw))
        except ApiError as err:
            return error_response(err, head=head)
        except ClientDisconnect:
            return Response(status_code=400)
        except UnicodeDecodeError:
            return error_response(bad_request("InvalidPath", "the URL is not valid UTF-8"), head=head)
        except Exception:  # a bug: log it (no request headers in the log), answer a plain 500
            log.exception("internal error on %s %s", request.method, request.scope.get("path", "")[:300])
            return error_response(ApiError(500, None, "internal server error"), head=head)

    # -- auth: what handlers call before they read or write -------------------------------------------

    def user(self, request: Request) -> str | None:
        """The authenticated user; None without credentials; 401 for credentials that match no one."""
        header = request.headers.get("authorization")
        if not header:
            return self._cookie_user(request)
        client = self._not_throttled(request)
        user = self.tokens.user_for(bearer_token(header))
        if user is None:
            self.limiter.failed(client)
            log.warning("failed authentication from %s", client)
            raise ApiError(401, "Unauthorized", "Invalid credentials in Authorization header")
        return user

    def _not_throttled(self, request: Request) -> str:
        """The client's address; a 429 while it is paying for failed authentications (token or cookie)."""
        client = request.client.host if request.client else "-"
        wait = self.limiter.retry_after(client)
        if wait:
            raise ApiError(429, "TooManyRequests", f"too many failed authentications from {client}: retry in {wait} s",
                           headers={"Retry-After": str(wait)})  # fmt: skip
        return client

    def _cookie_user(self, request: Request) -> str | None:
        """The user of the login form's cookie (pages.py), for GET and HEAD only: a write needs the
        Authorization header, so no cross-site form can act with a browser's login. A cookie whose token
        no longer matches anyone counts as a failed authentication and reads as no login."""
        token = request.cookies.get(SESSION_COOKIE) if request.method in ("GET", "HEAD") else None
        if not token:
            return None
        client = self._not_throttled(request)
        user = self.tokens.user_for(token)
        if user is None:
            self.limiter.failed(client)
            log.warning("failed authentication (login cookie) from %s", client)
        return user

    def require_user(self, request: Request, *, what: str = "this operation") -> str:
        user = self.user(request)
        if user is None:
            raise ApiError(
                401, "Unauthorized", f"Authentication required for {what}: send a token (set HF_TOKEN)"
            )
        return user

    def require_read(self, request: Request, repo: RepoRef) -> dict:
        """The repo's metadata, if the caller may read it (401 RepoNotFound otherwise, as the Hub does)."""
        user = self.user(request)
        meta = self.storage.repo_meta(repo)
        if meta is None and (user is not None or self.public_read):
            raise self.missing(request, repo)
        if user is None and not (self.public_read and meta is not None and not meta.get("private")):
            raise ApiError(
                401,
                "RepoNotFound",
                f"Authentication required to read {repo.label}: send a token (set HF_TOKEN)",
            )
        if meta is None:
            raise self.missing(request, repo)
        return meta

    def require_write(self, request: Request, repo: RepoRef) -> tuple[str, dict]:
        """(user, the repo's metadata): any valid token may write any repo that exists."""
        user = self.require_user(request, what=f"writing to {repo.label}")
        meta = self.storage.repo_meta(repo)
        if meta is None:
            raise self.missing(request, repo)
        return user, meta

    def missing(self, request: Request, repo: RepoRef) -> ApiError:
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
        location = base_url(request) + raw[:at] + f"/{moved}" + raw[at + len(old) :]
        if request.url.query:
            location += "?" + request.url.query
        return ApiError(307, None, f"{repo.label} moved to {moved}", headers={"Location": location})

    def commit_of(self, repo: RepoRef, revision: str) -> Commit:
        """The commit a revision (branch, tag, commit id) names: 404 RevisionNotFound if none."""
        return self.storage.commit(repo, self.storage.resolve(repo, revision))


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
                header_safe(path, 400),
                status[0] or "-",
                (time.perf_counter() - started) * 1000,
            )


def make_app(root, token_file=None, *, public_read: bool = False, extra_routes=(), **limits):
    hub = HubApp(root, token_file, public_read=public_read, extra_routes=extra_routes, **limits)
    return AccessLog(hub.asgi()), hub


def serve(
    *,
    root,
    host: str = defaults.HOST,
    port: int = defaults.PORT,
    token_file=None,
    public_read: bool = False,
    log_level: str = defaults.LOG_LEVEL,
    auth_burst: int = defaults.AUTH_BURST,
    auth_rate: float = defaults.AUTH_RATE,
    max_commit_bytes: int = defaults.MAX_COMMIT_BODY,
    extra_routes=(),
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
        extra_routes=extra_routes,
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
