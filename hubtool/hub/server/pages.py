"""The HTML pages of what was pushed to `hub serve`: repo pages, the model tree, the login form.

    /{prefix}{ns}/{name}                    the model card (README.md) and its metadata sidebar (?rev=)
    /{prefix}{ns}/{name}/tree/{rev}[/dir]   the files at a revision: sizes, an LFS badge, /resolve links
    /{prefix}{ns}/{name}/commits/{rev}      the commits, each with its changed paths (?p= pages)
    /_/repos                                the repos this caller may read
    /_/tree/{base model id}                 the model tree: the adapters, merges, fine-tunes of a base
    /_/login (GET, POST), /_/logout (POST)  the login form: the token goes into an HttpOnly cookie
    /_/static/hub.css                       the one stylesheet (also the catalog pages' one)

Repo pages share their URLs with the API (`/ns/name` is what huggingface_hub prints), so their rows
answer only requests that accept text/html (a browser); any other client gets the API's answer as before
(routes.py: `html=True` rows). The server knows no catalog: these pages read only its storage.

Reads: a repo page calls the same `hub.require_read` as the API, so with --public-read anyone sees public
repos; otherwise the login cookie (auth.SESSION_COOKIE, read by `HubApp.user` for GET and HEAD) is needed.
Private repos never appear to a caller who can't read them (the repo list and the model tree skip them).
Every POST carrying an Origin from elsewhere is refused by `HubApp.dispatch` (403); the login POST also
needs an Origin or Referer of this server.

Content is hostile until escaped: Jinja autoescape on, the card through markdown-it-py with raw HTML off
(and its link check: no `javascript:` links), and a Content-Security-Policy of `default-src 'self'`.
"""

from __future__ import annotations

import logging
from functools import cache
from importlib import resources
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, quote, urlsplit

from starlette.concurrency import run_in_threadpool
from starlette.responses import HTMLResponse, RedirectResponse, Response

from hubtool.data.metrics import format_metric
from hubtool.fileio import human_bytes
from hubtool.hub.server import auth, http, names
from hubtool.hub.server.errors import ApiError, repo_not_found
from hubtool.hub.server.storage import Commit, RepoRef

if TYPE_CHECKING:
    from starlette.requests import Request

    from hubtool.hub.server.app import HubApp

log = logging.getLogger("hubtool.hub.server")
HEADERS = {
    "Content-Security-Policy": "default-src 'self'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}
STATIC = {"hub.css": "text/css; charset=utf-8"}
COMMITS_PAGE = 20
MAX_TAGS = 50  # of a card's tags shown (oversized metadata stays a page, not a wall)
MAX_TEXT = 200  # characters of one metadata value shown
MAX_EVAL_ROWS = 200
RELATIONS = ("adapter", "merge", "finetune", "quantized")
RELATION_TITLES = {"adapter": "Adapters", "merge": "Merges", "finetune": "Fine-tunes", "quantized": "Quantized"}


def wants_html(request: Request) -> bool:
    """A browser's request: its Accept names text/html (API clients send */* or JSON)."""
    return "text/html" in request.headers.get("accept", "")


@cache
def _env() -> Any:
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.PackageLoader("hubtool.hub.server", "templates"),
        autoescape=True,  # every name, path, tag and commit message is text
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["q"] = lambda value: quote(str(value), safe="")
    env.filters["qpath"] = lambda value: quote(str(value), safe="/")
    env.filters["size"] = human_bytes  # the units of `hub list` and the catalog pages
    return env


@cache
def _markdown() -> Any:
    from markdown_it import MarkdownIt

    # raw HTML off: a <script> in a card is text; validateLink drops javascript:/vbscript:/data: links
    return MarkdownIt("commonmark", {"html": False, "linkify": False}).enable("table")


def render_card(body: str) -> str:
    """The card's markdown as HTML, its headings one level down (the card's "# Title" is an <h2>: a page has
    one <h1>, the repo's name)."""
    md = _markdown()
    tokens = md.parse(body)
    for token in tokens:
        if token.type in ("heading_open", "heading_close"):
            token.tag = f"h{min(6, int(token.tag[1]) + 1)}"
    return md.renderer.render(tokens, md.options, {})


@cache
def static_file(name: str) -> bytes:
    return resources.files("hubtool.hub.server").joinpath("static", name).read_bytes()


def page(hub: HubApp | None, request: Request, template: str, status: int = 200, **context: Any) -> HTMLResponse:
    user = None
    if hub is not None:
        try:
            user = hub.user(request)
        except ApiError:
            user = None
    context.setdefault("nav", None)
    html = _env().get_template(template).render(
        user=user,
        catalog=bool(hub and hub.extra_routes),
        server=True,  # base.html: the Repos link and Log in/out
        public_read=bool(hub and hub.public_read),
        here=_here(request),
        **context,
    )
    response = HTMLResponse(html, status_code=status, headers=HEADERS)
    if hub is not None and user is None and request.cookies.get(auth.SESSION_COOKIE):
        response.delete_cookie(auth.SESSION_COOKIE, path="/")  # a revoked token: drop it
    return response


def _here(request: Request) -> str:
    raw = (request.scope.get("raw_path") or request.scope["path"].encode()).decode("utf-8", "replace")
    query = request.url.query
    return raw + ("?" + query if query else "")


def error_page(hub: HubApp | None, request: Request, err: ApiError) -> HTMLResponse:
    title = {401: "Log in to see this", 403: "Not allowed", 404: "Not found"}.get(err.status, "Error")
    return page(hub, request, "error.html", err.status, title=title, message=" ".join(err.message.split()))


def html_page(handler: Any) -> Any:
    """A page handler: ApiErrors (401, 404, bad revision) become HTML pages; a bug is a 500 page."""

    async def run(hub: HubApp, request: Request, **params: Any) -> Response:
        try:
            return await handler(hub, request, **params)
        except ApiError as err:
            response = error_page(hub, request, err)
            if err.status == 429:
                response.headers.update(err.headers)
            return response
        except Exception:
            log.exception("internal error on page %s", request.scope.get("path", "")[:300])
            return error_page(hub, request, ApiError(500, None, "internal error (the server's log has it)"))

    run.__name__ = handler.__name__
    return run


# -- the model card ----------------------------------------------------------------------------------


def split_card(text: str) -> tuple[dict, str, str | None]:
    """(metadata, body, problem) of a README: its YAML front matter (within the server's limits) and the
    markdown after it."""
    import yaml

    meta: Any = None
    problem = None
    try:
        meta = http.front_matter(text)
    except (yaml.YAMLError, RecursionError, ValueError) as err:
        problem = f"the metadata block is not shown: {str(err).splitlines()[0][:200]}"
    body = text
    if text.startswith("---"):
        lines = text.split("\n")
        for index in range(1, len(lines)):
            if lines[index].strip() == "---":
                body = "\n".join(lines[index + 1 :])
                break
    if meta is not None and not isinstance(meta, dict):
        meta, problem = None, "the metadata block is not a mapping, so it is not shown"
    return meta or {}, body, problem


def _text(value: Any) -> str:
    text = value if isinstance(value, str) else str(value)
    return text if len(text) <= MAX_TEXT else text[:MAX_TEXT] + "…"


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [v for v in value if isinstance(v, str)]
    return []


def base_models(meta: dict) -> list[str]:
    return [b.strip() for b in _strings(meta.get("base_model")) if b.strip()][:20]


def eval_rows(meta: dict) -> list[dict[str, str]]:
    """The model-index results, one row per metric: model, task, dataset, metric, value."""
    rows: list[dict[str, str]] = []
    index = meta.get("model-index")
    for model in index if isinstance(index, list) else []:
        if not isinstance(model, dict):
            continue
        for result in model.get("results") or []:
            if not isinstance(result, dict):
                continue
            task = result.get("task") if isinstance(result.get("task"), dict) else {}
            data = result.get("dataset") if isinstance(result.get("dataset"), dict) else {}
            for metric in result.get("metrics") or []:
                if not isinstance(metric, dict) or len(rows) >= MAX_EVAL_ROWS:
                    continue
                rows.append({
                    "model": _text(model.get("name", "")),
                    "task": _text(task.get("name") or task.get("type") or ""),
                    "dataset": _text(data.get("name") or data.get("type") or ""),
                    "metric": _text(metric.get("name") or metric.get("type") or ""),
                    "value": _metric_value(metric.get("value", "")),
                })  # fmt: skip
    return rows


def _metric_value(value: Any) -> str:
    """A model-index value: a number rounded as every page rounds metrics; anything else as text."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return format_metric(float(value))
    return _text(value)


def relation(meta: dict, tree: dict) -> str:
    """How a repo derives from its base models, as the Hub infers it: base_model_relation if it names one;
    else adapter (an adapter_config.json), merge (several bases), finetune."""
    given = meta.get("base_model_relation")
    if isinstance(given, str) and given in RELATIONS:
        return given
    if "adapter_config.json" in tree:
        return "adapter"
    return "merge" if len(base_models(meta)) > 1 else "finetune"


def read_card(hub: HubApp, commit: Commit) -> str | None:
    entry = commit.tree.get("README.md")
    if entry is None:
        return None
    data = hub.storage.read_small(entry)
    return None if data is None else data.decode("utf-8", "replace")


# -- helpers ----------------------------------------------------------------------------------------------


def repo_path(repo: RepoRef) -> str:
    """The repo's page URL: /ns/name, /datasets/ns/name."""
    return "/" + names.TYPE_PREFIX[repo.type] + "/".join(quote(p, safe="") for p in repo.id.split("/"))


def _readable(hub: HubApp, request: Request, repo: RepoRef) -> dict:
    """The repo's metadata if this caller may read it. Under --public-read the API answers a private repo
    with 401 and a missing one with 404; a page answers both with the same 404, so that it tells nobody who
    can't read a private repo that it exists."""
    try:
        return hub.require_read(request, repo)
    except ApiError as err:
        if err.status == 401 and err.code == "RepoNotFound" and hub.public_read:
            raise repo_not_found(repo.label) from None
        raise


def _default_branch(refs: dict) -> str:
    heads = refs["heads"]
    return "main" if "main" in heads or not heads else min(heads)


def _switch(hub: HubApp, repo: RepoRef, revision: str, view: str) -> dict:
    refs = hub.storage.refs(repo)
    return {"branches": sorted(refs["heads"]), "tags": sorted(refs["tags"]), "rev": revision, "view": view,
            "default": _default_branch(refs)}  # fmt: skip


def can_read(hub: HubApp, user: str | None, meta: dict | None) -> bool:
    return meta is not None and (user is not None or (hub.public_read and not meta.get("private")))


def _user(hub: HubApp, request: Request) -> str | None:
    try:
        return hub.user(request)
    except ApiError:
        return None


# -- repo pages ---------------------------------------------------------------------------------------------


@html_page
async def repo_page(hub: HubApp, request: Request, repo: RepoRef) -> Response:
    meta = await run_in_threadpool(_readable, hub, request, repo)
    params = request.query_params
    rev = params.get("rev")
    if rev and params.get("view") in ("tree", "commits"):  # the branch/tag switch, a plain GET form
        names.check_revision(rev)
        return RedirectResponse(f"{repo_path(repo)}/{params['view']}/{quote(rev, safe='')}", 303)
    switch = await run_in_threadpool(_switch, hub, repo, rev or "", "card")
    revision = rev or switch["default"]
    switch["rev"] = revision
    commit = await run_in_threadpool(hub.commit_of, repo, revision)
    text = await run_in_threadpool(read_card, hub, commit)
    card_meta, body, problem = split_card(text) if text is not None else ({}, "", None)
    card_html = render_card(body) if text is not None else None
    bases = []
    for base in base_models(card_meta):
        here = _local_repo(hub, base)
        bases.append({"id": base, "href": repo_path(here) if here else None, "tree": "/_/tree/" + quote(base, safe="/")})
    tags = [_text(t) for t in _strings(card_meta.get("tags"))[:MAX_TAGS]]
    children = await run_in_threadpool(model_tree, hub, _user(hub, request), repo.id) if repo.type == "model" else {}
    facts = [(k, _text(card_meta[k])) for k in ("license", "library_name", "pipeline_tag", "language")
             if isinstance(card_meta.get(k), (str, int, float))]  # fmt: skip
    return page(hub, request, "repo.html", title=repo.label, repo=repo, path=repo_path(repo), meta=meta,
                commit=commit, switch=switch, card_html=card_html, card_problem=problem, bases=bases, tags=tags,
                more_tags=max(0, len(_strings(card_meta.get("tags"))) - MAX_TAGS), evals=eval_rows(card_meta),
                relation=relation(card_meta, commit.tree) if bases else None, facts=facts,
                children=children, child_count=sum(len(v) for v in children.values()))  # fmt: skip


def _local_repo(hub: HubApp, repo_id: str) -> RepoRef | None:
    parts = repo_id.split("/")
    if len(parts) != 2:
        return None
    try:
        ref = RepoRef("model", names.check_repo_id(parts[0], parts[1]))
    except ApiError:
        return None
    return ref if hub.storage.repo_meta(ref) is not None else None


@html_page
async def files_page(hub: HubApp, request: Request, repo: RepoRef, revision: str, path: str) -> Response:
    await run_in_threadpool(_readable, hub, request, repo)
    names.check_path(path, allow_root=True)
    folder = path.strip("/")
    commit = await run_in_threadpool(hub.commit_of, repo, revision)
    prefix = folder + "/" if folder else ""
    files = [{"path": p, "name": p[len(prefix):], "size": e.size, "lfs": e.lfs}
             for p, e in sorted(commit.tree.items()) if p.startswith(prefix)]  # fmt: skip
    if folder and not files:
        raise ApiError(404, "EntryNotFound", f"no folder {folder} at {revision} in {repo.label}")
    switch = await run_in_threadpool(_switch, hub, repo, revision, "tree")
    return page(hub, request, "files.html", title=f"{repo.label}: files at {revision}", repo=repo,
                path=repo_path(repo), commit=commit, switch=switch, folder=folder, files=files,
                total=sum(f["size"] for f in files))  # fmt: skip


def changes(hub: HubApp, repo: RepoRef, commit: Commit) -> list[tuple[str, str]]:
    """(what, path) for each path the commit changed against its first parent: added, modified, deleted."""
    older = hub.storage.commit(repo, commit.parents[0]).tree if commit.parents else {}
    found = []
    for path in sorted(set(commit.tree) | set(older)):
        new, old = commit.tree.get(path), older.get(path)
        if new != old:
            found.append(("added" if old is None else "deleted" if new is None else "modified", path))
    return found


@html_page
async def commits_page(hub: HubApp, request: Request, repo: RepoRef, revision: str) -> Response:
    await run_in_threadpool(_readable, hub, request, repo)
    number = http.int_param(request.query_params.get("p"), 0, 0, 10**6)
    cid = await run_in_threadpool(hub.storage.resolve, repo, revision)

    def collect() -> tuple[list[dict], bool]:
        items: list[dict] = []
        for index, commit in enumerate(hub.storage.history(repo, cid)):
            if index < number * COMMITS_PAGE:
                continue
            if len(items) == COMMITS_PAGE:
                return items, True
            items.append({"commit": commit, "changes": changes(hub, repo, commit)})
        return items, False

    items, more = await run_in_threadpool(collect)
    switch = await run_in_threadpool(_switch, hub, repo, revision, "commits")
    return page(hub, request, "commits.html", title=f"{repo.label}: commits at {revision}", repo=repo,
                path=repo_path(repo), switch=switch, items=items, page_number=number, more=more)  # fmt: skip


# -- the repo list and the model tree ----------------------------------------------------------------------


def readable_repos(hub: HubApp, user: str | None) -> list[tuple[RepoRef, dict]]:
    found = []
    for repo_type in ("model", "dataset", "space"):
        for repo in hub.storage.list_repos(repo_type):
            meta = hub.storage.repo_meta(repo)
            if can_read(hub, user, meta):
                found.append((repo, meta))
    return found


def model_tree(hub: HubApp, user: str | None, base: str) -> dict[str, list[dict]]:
    """{relation: [{repo, path, tags}]}: the model repos (this caller may read) whose card's base_model
    names `base`, on their default branch. Every repo's card is read: fine for a team's hub."""
    tree: dict[str, list[dict]] = {}
    for repo, _meta in readable_repos(hub, user):
        if repo.type != "model" or repo.id == base:
            continue
        try:
            refs = hub.storage.refs(repo)
            commit = hub.storage.commit(repo, refs["heads"][_default_branch(refs)])
        except (ApiError, KeyError):
            continue
        text = read_card(hub, commit)
        if text is None:
            continue
        meta, _body, _problem = split_card(text)
        if base not in base_models(meta):
            continue
        tree.setdefault(relation(meta, commit.tree), []).append(
            {"repo": repo, "path": repo_path(repo), "tags": [_text(t) for t in _strings(meta.get("tags"))[:8]]}
        )
    return {r: tree[r] for r in RELATIONS if r in tree}


@html_page
async def repos_page(hub: HubApp, request: Request) -> Response:
    found = await run_in_threadpool(readable_repos, hub, _user(hub, request))
    return page(hub, request, "repos.html", title="Repos", nav="repos",
                repos=[{"repo": r, "path": repo_path(r), "private": bool(m.get("private"))} for r, m in found])  # fmt: skip


@html_page
async def tree_page(hub: HubApp, request: Request, revision: str) -> Response:
    base = revision  # the base model's id: ns/name, or any id a card names (a local path is text too)
    if not base or len(base) > 300:
        raise ApiError(404, None, "no base model named")
    user = _user(hub, request)
    if user is None and not hub.public_read:
        raise ApiError(401, None, "the model tree needs a login")
    children = await run_in_threadpool(model_tree, hub, user, base)
    here = await run_in_threadpool(_local_repo, hub, base)
    if here is not None and not can_read(hub, user, hub.storage.repo_meta(here)):
        here = None
    return page(hub, request, "tree.html", title=f"Model tree of {base}", base=base,
                base_path=repo_path(here) if here else None, children=children, titles=RELATION_TITLES)  # fmt: skip


# -- login --------------------------------------------------------------------------------------------------


def _safe_next(value: str | None) -> str:
    """Where to go after logging in: a path on this server only (no //host, no scheme)."""
    if not value or not value.startswith("/") or value.startswith("//") or "\\" in value:
        return "/_/repos"
    if any(ord(c) < 32 for c in value) or len(value) > 2000:
        return "/_/repos"
    return value


def same_origin(request: Request, *, required: bool) -> bool:
    """The request's Origin (else its Referer's origin) is this server's; absent: `not required`."""
    origin = request.headers.get("origin")
    if origin is None:
        referer = request.headers.get("referer")
        if referer:
            parts = urlsplit(referer)
            origin = f"{parts.scheme}://{parts.netloc}"
    if origin is None:
        return not required
    return origin.lower().rstrip("/") == http.base_url(request).lower()


@html_page
async def login_form(hub: HubApp, request: Request) -> Response:
    return page(hub, request, "login.html", title="Log in", nav="login", error=None,
                next=_safe_next(request.query_params.get("next")))  # fmt: skip


@html_page
async def login(hub: HubApp, request: Request) -> Response:
    if not same_origin(request, required=True):
        raise ApiError(403, None, "a login must come from this server's own login form")
    body = await http.read_body(request, 8192)
    form = parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True, max_num_fields=10)
    token = (form.get("token") or [""])[0].strip()
    target = _safe_next((form.get("next") or [""])[0])
    client = request.client.host if request.client else "-"
    wait = hub.limiter.retry_after(client)
    if wait:
        raise ApiError(429, None, f"too many failed logins from {client}: retry in {wait} s",
                       headers={"Retry-After": str(wait)})  # fmt: skip
    user = hub.tokens.user_for(token) if token else None
    if user is None:
        if token:
            hub.limiter.failed(client)
            log.warning("failed login from %s", client)
        return page(hub, request, "login.html", 401, title="Log in", nav="login", next=target,
                    error="That token is not valid on this server." if token else "Enter a token.")  # fmt: skip
    log.info("login of %s from %s", user, client)
    response = RedirectResponse(target, 303, headers={"Cache-Control": "no-store"})
    response.set_cookie(auth.SESSION_COOKIE, token, path="/", httponly=True, samesite="strict",
                        secure=request.url.scheme == "https")  # fmt: skip
    return response


@html_page
async def logout(hub: HubApp, request: Request) -> Response:
    if not same_origin(request, required=True):
        raise ApiError(403, None, "a logout must come from this server's own pages")
    await http.drain(request)
    response = RedirectResponse("/_/login", 303, headers={"Cache-Control": "no-store"})
    response.delete_cookie(auth.SESSION_COOKIE, path="/", httponly=True, samesite="strict")
    return response


async def static(hub: HubApp, request: Request, oid: str) -> Response:
    if oid not in STATIC:
        return error_page(hub, request, ApiError(404, None, f"no static file {oid[:100]!r}"))
    return Response(static_file(oid), media_type=STATIC[oid],
                    headers=HEADERS | {"Cache-Control": "public, max-age=3600"})  # fmt: skip
