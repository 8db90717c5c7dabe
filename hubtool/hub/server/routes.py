"""Every endpoint of `hub serve` in one table: (methods, path pattern, handler), tried in order.

Adding a route
--------------
1. Write the handler in the module of its concern, or in a new module for a new concern (web pages:
   `ui.py`; the Xet CAS: the `xet/` package):

       async def handler(hub: HubApp, request: Request, **params) -> Response

   `hub` holds the storage and the auth checks (`hub.require_read(request, repo)`, `hub.require_write`,
   `hub.require_user`); http.py has the shared helpers (JSON bodies within limits, Range, errors). Raise
   `ApiError` for any refusal: `HubApp.dispatch` turns it into the JSON error the client understands.
2. Add one row to ROUTES below. Rows are tried in order and the first whose pattern matches the path and
   whose methods include the request's wins, so put literal prefixes (`/_ui/...`, `/v1/...`) above the
   catch-all repo rows (`/{prefix}/{repo}/...`). Server-own paths start with `/_`, which no namespace can
   (names.py); a new literal first segment that a namespace could spell (`v1`) also belongs in
   names.RESERVED_NAMESPACES, so that no repo is shadowed by it.

Patterns
--------
A pattern is matched against the raw path (before percent-decoding) split at "/", each segment then
decoded: the client quotes revisions and tree paths with `safe=""` (`refs%2Fpr%2F1`, `a%2Fb`), and a
decoded path could not tell those slashes from the URL's own. One trailing "/" is ignored. A segment is a
literal or a `{parameter}`; what each parameter matches and passes to the handler is in PARAMS:

    {type}          models | datasets | spaces: the repo type of a following {repo} (`repo_type=` alone)
    {prefix}        the optional datasets/ or spaces/ prefix of a repo URL (models have none)
    {repo}          namespace/name (two segments), checked: `repo=RepoRef(type, id)`
    {repo_git}      namespace/name.git, as in the git LFS URLs: `repo=RepoRef(type, id)`
    {oid}           one segment, as is: `oid=`
    {revision}      the rest (one segment or more), joined with "/": `revision=`
    {branch}        the rest, joined with "/": `branch=`
    {revision_path} the rest: revision then path (`refs/heads/x` spans three segments): `revision=, path=`
    {revision_file} the same, with a file path required (two segments or more)
    {rest}          the rest, zero segments or more, dropped
    {cas_path}      the rest, one segment or more, joined with "/": `cas_path=` (the Xet CAS routes itself)

A path that matches no row, or matches a row but not its methods, is a 404 JSON error (the client maps
404s; a 405 it would not read). Checks of the parameters (a bad repo id: 400) run once a row is chosen;
the `no_such_endpoint` rows make any other path under a repo check its id first, then answer 404.

Rows from outside
-----------------
The server knows no catalog; whoever starts it may hand it more rows (`HubApp(extra_routes=[...])`, the
catalog pages of hubtool/ui under `hub serve --catalog`). They are tried before ROUTES, so they must keep
to `/_/...` paths: no API route or repo id starts with a `_` segment of its own. The server's own pages
(PAGE_ROUTES: login, repo list, model tree, the stylesheet; pages.py) are tried before them.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

from hubtool.hub.server import account, commits, downloads, lfs, names, pages, refs, repos, xet
from hubtool.hub.server.errors import ApiError
from hubtool.hub.server.storage import RepoRef

if TYPE_CHECKING:
    from starlette.requests import Request
    from starlette.responses import Response

    from hubtool.hub.server.app import HubApp

ANY = "*"


@dataclass(frozen=True)
class Route:
    methods: str  # space-separated ("GET HEAD"), or "*" for any method
    pattern: str
    handler: Callable[..., Any]
    html: bool = False  # a page row: only for requests that accept text/html (pages.wants_html)
    tokens: tuple[str, ...] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        parts = self.pattern.strip("/").split("/") if self.pattern != "/" else []
        for index, part in enumerate(parts):
            if part.startswith("{"):
                name = part[1:-1]
                if name not in PARAMS:
                    raise ValueError(f"route {self.pattern}: unknown parameter {{{name}}}")
                if PARAMS[name].rest and index != len(parts) - 1:
                    raise ValueError(f"route {self.pattern}: {{{name}}} takes the rest, so it comes last")
        object.__setattr__(self, "tokens", tuple(parts))

    def allows(self, method: str) -> bool:
        return self.methods == ANY or method in self.methods.split()

    def match(self, segments: list[str]) -> list[tuple[str, list[str]]] | None:
        """[(parameter, its segments)] if the path has this pattern's shape, else None (nothing checked)."""
        found: list[tuple[str, list[str]]] = []
        i = 0
        for token in self.tokens:
            if not token.startswith("{"):
                if i >= len(segments) or segments[i] != token:
                    return None
                i += 1
                continue
            name = token[1:-1]
            taken = PARAMS[name].take(segments, i)
            if taken is None:
                return None
            found.append((name, segments[i : i + taken]))
            i += taken
        return found if i == len(segments) else None


@dataclass(frozen=True)
class Param:
    """take(segments, i) -> how many segments from i this parameter matches (None: no match);
    bind(parts, kwargs) puts what the handler gets into kwargs (and may raise ApiError)."""

    take: Callable[[list[str], int], int | None]
    bind: Callable[[list[str], dict], None]
    rest: bool = False


def _rest(minimum: int) -> Callable[[list[str], int], int | None]:
    return lambda seg, i: len(seg) - i if len(seg) - i >= minimum else None


def _one(accept: Callable[[str], bool] = lambda s: True) -> Callable[[list[str], int], int | None]:
    return lambda seg, i: 1 if i < len(seg) and accept(seg[i]) else None


def _take_prefix(seg: list[str], i: int) -> int:
    # `/datasets/ns/name/...`: the prefix, when a repo can follow it (a model repo in a namespace called
    # `datasets` cannot exist: names.RESERVED_NAMESPACES)
    return 1 if i < len(seg) and seg[i] in ("datasets", "spaces") and len(seg) - i >= 3 else 0


def _take_repo(seg: list[str], i: int) -> int | None:
    return 2 if len(seg) - i >= 2 else None


def _take_repo_git(seg: list[str], i: int) -> int | None:
    return 2 if len(seg) - i >= 2 and seg[i + 1].endswith(".git") else None


def _bind_repo(parts: list[str], kw: dict) -> None:
    kw["repo"] = RepoRef(kw.pop("repo_type", "model"), names.check_repo_id(parts[0], parts[1]))


def _bind_repo_git(parts: list[str], kw: dict) -> None:
    kw["repo"] = RepoRef(kw.pop("repo_type", "model"), names.check_repo_id(parts[0], parts[1][:-4]))


def _bind_revision_path(parts: list[str], kw: dict) -> None:
    kw["revision"], kw["path"] = split_revision(parts)


def _bind_joined(key: str) -> Callable[[list[str], dict], None]:
    def bind(parts: list[str], kw: dict) -> None:
        kw[key] = "/".join(parts)

    return bind


def _bind_type(parts: list[str], kw: dict) -> None:
    if parts:
        kw["repo_type"] = names.REPO_TYPES[parts[0]]


PARAMS: dict[str, Param] = {
    "type": Param(_one(lambda s: s in names.REPO_TYPES), _bind_type),
    "prefix": Param(_take_prefix, _bind_type),
    "repo": Param(_take_repo, _bind_repo),
    "repo_git": Param(_take_repo_git, _bind_repo_git),
    "oid": Param(_one(), lambda parts, kw: kw.update(oid=parts[0])),
    "revision": Param(_rest(1), _bind_joined("revision"), rest=True),
    "branch": Param(_rest(1), _bind_joined("branch"), rest=True),
    "revision_path": Param(_rest(1), _bind_revision_path, rest=True),
    "revision_file": Param(_rest(2), _bind_revision_path, rest=True),
    "rest": Param(_rest(0), lambda parts, kw: None, rest=True),
    "cas_path": Param(_rest(1), _bind_joined("cas_path"), rest=True),
}


def split_revision(args: list[str]) -> tuple[str, str]:
    """(revision, path) of a /resolve or /tree URL's rest; an unquoted `refs/heads/x`-style revision spans
    three segments."""
    if len(args) >= 3 and args[0] == "refs" and args[1] in ("heads", "tags", "pr", "convert"):
        return "/".join(args[:3]), "/".join(args[3:])
    return args[0], "/".join(args[1:])


def no_such_endpoint(hub: HubApp, request: Request, **_: Any) -> Response:
    """The handler of rows that only check their parameters (a path under an invalid repo id is a 400,
    whatever follows it) before the 404 that `find` answers for them."""
    raise _not_found(request.method, request.scope.get("path", ""))


def _not_found(method: str, path: str) -> ApiError:
    return ApiError(404, None, f"no such endpoint: {method} {path[:200]}")


ROUTES: list[Route] = [
    Route(ANY, "/", account.index),
    # -- /api: the account, repos, their trees, refs and commits -----------------------------------
    Route("GET", "/api/whoami-v2", account.whoami),
    Route("GET", "/api/agent-harnesses", account.agent_harnesses),
    Route("POST", "/api/validate-yaml", repos.validate_yaml),
    Route("POST", "/api/repos/create", repos.create),
    Route("DELETE", "/api/repos/delete", repos.delete),
    Route("POST", "/api/repos/move", repos.move),
    Route("GET", "/api/{type}", repos.list_repos),
    Route("GET", "/api/{type}/{repo}", repos.info),
    Route("GET", "/api/{type}/{repo}/revision/{revision}", repos.info),
    Route("PUT", "/api/{type}/{repo}/settings", repos.settings),
    Route("GET", "/api/{type}/{repo}/tree/{revision_path}", refs.tree),
    Route("POST", "/api/{type}/{repo}/paths-info/{revision}", refs.paths_info),
    Route("GET", "/api/{type}/{repo}/refs", refs.refs),
    Route("GET", "/api/{type}/{repo}/commits/{revision}", refs.commits),
    Route("POST DELETE", "/api/{type}/{repo}/branch/{branch}", refs.branch),
    Route("POST DELETE", "/api/{type}/{repo}/tag/{revision}", refs.tag),
    Route("POST", "/api/{type}/{repo}/preupload/{revision}", commits.preupload),
    Route("POST", "/api/{type}/{repo}/commit/{revision}", commits.commit),
    Route(ANY, "/api/{type}/{repo}/xet-write-token/{rest}", xet.write_token),
    Route(ANY, "/api/{type}/{repo}/xet-read-token/{rest}", xet.read_token),
    Route(ANY, "/api/{type}/{repo}/{rest}", no_such_endpoint),  # any other: the repo id is checked first
    # -- git LFS: the batch API and the signed URLs it hands out -----------------------------------
    Route("PUT", "/_lfs/upload/{oid}", lfs.upload),
    Route("GET HEAD", "/_lfs/download/{oid}", lfs.download),
    Route("POST", "/{prefix}/{repo_git}/info/lfs/objects/batch", lfs.batch),
    Route("POST", "/{prefix}/{repo_git}/info/lfs/objects/verify", lfs.verify),
    Route(ANY, "/{prefix}/{repo_git}/info/lfs/{rest}", no_such_endpoint),
    # -- the Xet CAS (xet/cas.py): casUrl is <server>/_xet/s-<store id> ---------------------------------
    Route(ANY, "/_xet/{cas_path}", xet.cas),
    # -- downloads (its pattern starts with a repo id) ----------------------------------------------
    Route("GET HEAD", "/{prefix}/{repo}/resolve/{revision_file}", downloads.resolve),
    # -- repo pages, for browsers only (pages.py): any other client gets the 404 it got before ----------
    Route("GET HEAD", "/{prefix}/{repo}", pages.repo_page, html=True),
    Route("GET HEAD", "/{prefix}/{repo}/tree/{revision_path}", pages.files_page, html=True),
    Route("GET HEAD", "/{prefix}/{repo}/commits/{revision}", pages.commits_page, html=True),
]

# The server's own pages under /_/ (pages.py): tried first, before the rows from outside (whose catch-all
# `/_/{rest}` would answer these paths otherwise). The stylesheet is the catalog pages' too.
PAGE_ROUTES: list[Route] = [
    Route("GET HEAD", "/_/static/{oid}", pages.static),
    Route("GET HEAD", "/_/login", pages.login_form),
    Route("POST", "/_/login", pages.login),
    Route("POST", "/_/logout", pages.logout),
    Route("GET HEAD", "/_/repos", pages.repos_page),
    Route("GET HEAD", "/_/tree/{revision}", pages.tree_page),
]


def path_segments(raw: bytes) -> list[str]:
    """The raw path (no query) split at "/" and percent-decoded segment by segment (UnicodeDecodeError if
    a segment is not UTF-8); one trailing "/" dropped."""
    segments = [unquote(s.decode("utf-8"), errors="strict") for s in raw.split(b"?")[0].split(b"/")[1:]]
    if len(segments) > 1 and segments[-1] == "":
        segments = segments[:-1]
    return [] if segments == [""] else segments


def find(
    method: str, segments: list[str], extra: Sequence[Route] = (), *, html: bool = False
) -> tuple[Route, dict[str, Any]]:
    """The first row (of PAGE_ROUTES, `extra`, then ROUTES) that serves `method` on the path, and the
    handler's keyword arguments (parameters checked: ApiError if one is invalid); a 404 ApiError if no row
    does. `html` rows are skipped unless `html` (the request accepts text/html), and a page row whose
    parameters are invalid is skipped too, so they never change what an API client gets."""
    for route in (*PAGE_ROUTES, *extra, *ROUTES):
        found = route.match(segments)
        if found is None or not route.allows(method) or (route.html and not html):
            continue
        kwargs: dict[str, Any] = {}
        try:
            for name, parts in found:
                PARAMS[name].bind(parts, kwargs)
        except ApiError:
            if route.html:
                continue
            raise
        if route.handler is no_such_endpoint:
            break
        return route, kwargs
    raise _not_found(method, "/" + "/".join(segments))


async def call(hub: HubApp, request: Request, segments: list[str]) -> Response:
    """Run the handler that serves the request."""
    route, kwargs = find(request.method, segments, hub.extra_routes, html=pages.wants_html(request))
    result = route.handler(hub, request, **kwargs)
    return await result if inspect.isawaitable(result) else result
