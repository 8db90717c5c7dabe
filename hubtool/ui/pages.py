"""The catalog pages: handlers, as rows for hub serve's route table (hubtool/hub/server/routes.py).

    /_/                          the catalog list (filters and where/sort in the query string)
    /_/experts/NAME[@VERSION]    one expert: all of `hub show`, versions, provenance, density map
    /_/lineage?base=B[&task=T]   the base model's experts and merges as a graph (SVG, at most 200 nodes)
    /_/tasks                     tasks by category, a leaderboard per task with the base model's score
    /_/static/FILE               the stylesheet (package data; nothing is fetched from anywhere else)

Handlers take (hub, request, **params) like the server's own. `hub` is the HubApp under `hub serve
--catalog` (its auth decides who may read: the pages need --public-read or a token until the login form
arrives), None under `hub ui` (local, read-only, no auth). Catalog reads run in a worker thread. Every
answer is HTML (or the CSS file) and carries the Content-Security-Policy; errors are pages too, never the
API's JSON.
"""

from __future__ import annotations

import logging
from contextvars import ContextVar
from dataclasses import replace
from functools import cache
from importlib import resources
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlencode

from starlette.concurrency import run_in_threadpool
from starlette.responses import HTMLResponse, Response

from hubtool.errors import HubError, NotFoundError
from hubtool.hub.server.errors import ApiError
from hubtool.hub.server.routes import ANY, Route
from hubtool.ui.view import CatalogView, ListQuery

if TYPE_CHECKING:
    from starlette.requests import Request

log = logging.getLogger("hubtool.ui")
CSP = "default-src 'self'"
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
}
STATIC = {"hub.css": "text/css; charset=utf-8"}  # the only files /_/static serves
# The header's state for the page being answered (who is logged in, where to come back after logging in),
# set by `_guarded` under hub serve; under hub ui (or for a page answered outside it) the defaults: no
# Repos link, no Log in.
HEADER: ContextVar[dict[str, Any] | None] = ContextVar("hubtool_ui_header", default=None)
_NO_SERVER = {"server": False, "user": None, "here": "/_/", "public_read": False}


@cache
def _env() -> Any:
    import jinja2

    env = jinja2.Environment(
        # the catalog pages' own templates; "hub/..." are hub serve's (base.html: the one page frame)
        loader=jinja2.ChoiceLoader([
            jinja2.PackageLoader("hubtool.ui", "templates"),
            jinja2.PrefixLoader({"hub": jinja2.PackageLoader("hubtool.hub.server", "templates")}),
        ]),
        autoescape=True,  # every value is text; nothing from the catalog becomes markup
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["qs"] = lambda params: urlencode(params)
    env.filters["q"] = lambda value: quote(str(value), safe="")
    env.filters["qpath"] = lambda value: quote(str(value), safe="/")
    return env


@cache
def _static(name: str) -> bytes:
    # the one stylesheet lives with hub serve's own pages (hubtool/hub/server/static), which use it too
    return resources.files("hubtool.hub.server").joinpath("static", name).read_bytes()


def page(template: str, status: int = 200, **context: Any) -> HTMLResponse:
    header = {"catalog": True} | (HEADER.get() or _NO_SERVER)
    html = _env().get_template(template).render(**(header | context))
    return HTMLResponse(html, status_code=status, headers=HEADERS)


def one_line(message: str) -> str:
    """An error message as the pages show it: one line, and the server's own folders not spelt out (a blob
    path says which expert; where $HUB_HOME is on the serving machine is nobody else's business)."""
    from hubtool.paths import hub_home

    return " ".join(message.split()).replace(str(hub_home()), "$HUB_HOME")


def error_page(status: int, title: str, message: str) -> HTMLResponse:
    return page("error.html", status, title=title, message=one_line(message), nav=None)


def _header(hub: Any, request: Request, user: str | None) -> dict[str, Any]:
    """The header's state under hub serve: the Repos link, and who is logged in (else a Log in link back here)."""
    raw = (request.scope.get("raw_path") or request.scope["path"].encode()).decode("utf-8", "replace")
    here = raw + ("?" + request.url.query if request.url.query else "")
    return {"server": True, "user": user, "here": here, "public_read": bool(hub.public_read)}


class CatalogPages:
    """The pages of one catalog. `routes()` gives the rows for `hub serve`; hubtool.ui.app serves them alone."""

    def __init__(self, view: CatalogView, *, read_only: bool = True) -> None:
        self.view = view
        self.read_only = read_only

    def routes(self) -> list[Route]:
        return [
            Route("GET HEAD", "/_", self._guarded(self.catalog_list)),
            Route("GET HEAD", "/_/tasks", self._guarded(self.tasks)),
            Route("GET HEAD", "/_/experts/{oid}", self._guarded(self.expert)),
            Route("GET HEAD", "/_/lineage", self._guarded(self.lineage)),
            Route("GET HEAD", "/_/overlap", self._guarded(self.overlap)),  # analysis.py: overlap, compare, compose
            Route("GET HEAD", "/_/compare", self._guarded(self.compare)),
            Route("GET HEAD", "/_/compose", self._guarded(self.compose)),
            Route("GET HEAD", "/_/static/{oid}", self.static),  # the stylesheet needs no login
            Route(ANY, "/_/{rest}", self._guarded(self.not_found)),
        ]

    def _guarded(self, handler: Any) -> Any:
        """The handler, behind the server's read check and turning any failure into an HTML page."""

        async def run(hub: Any, request: Request, **params: Any) -> Response:
            user, refused, reset = None, None, None
            if hub is not None:
                try:
                    user = hub.user(request)  # once: a bad token counts once against the client
                except ApiError as err:
                    refused = err
                reset = HEADER.set(_header(hub, request, user))
            try:
                if refused is not None:
                    raise refused
                if hub is not None and user is None and not hub.public_read:
                    return error_page(401, "Not allowed", "the catalog pages need a login: log in at /_/login "
                                      "(or start hub serve with --public-read to show them to anyone)")  # fmt: skip
                return await handler(request, **params)
            except ApiError as err:
                return error_page(err.status, "Not allowed" if err.status in (401, 403) else "Error", err.message)
            except NotFoundError as err:
                return error_page(404, "Not found", str(err))
            except HubError as err:
                return error_page(400, "Bad request", str(err))
            except Exception:  # a bug: logged (no headers), a plain 500 page
                log.exception("internal error on %s %s", request.method, request.scope.get("path", "")[:300])
                return error_page(500, "Internal error", "internal error (the server's log has the details)")
            finally:
                if reset is not None:
                    HEADER.reset(reset)

        run.__name__ = handler.__name__
        return run

    # -- pages -------------------------------------------------------------------------------------------

    async def catalog_list(self, request: Request) -> Response:
        try:
            query = ListQuery.from_params(request.query_params)
        except HubError as err:
            query = ListQuery()
            return await self._list_page(query, 400, str(err))
        try:  # one row more than the page shows: whether there is a next page
            found = await run_in_threadpool(self.view.list_page, replace(query, limit=query.limit + 1))
        except NotFoundError as err:  # an unknown category or task in --tasks: a bad filter, not a 404
            return await self._list_page(query, 400, str(err))
        except HubError as err:  # a bad --where or --sort: the line `hub list` prints
            return await self._list_page(query, 400, str(err))
        choices = await run_in_threadpool(self.view.choices, query)
        # pages of a bounded size (at 100,000 experts no page grows): the next and the previous one
        more = query.params(offset=query.offset + query.limit) if len(found["rows"]) > query.limit else None
        found["rows"] = found["rows"][: query.limit]
        back = query.params(offset=max(0, query.offset - query.limit)) if query.offset else None
        return page("list.html", nav="catalog", title="Experts", query=query, command=query.command(),
                    choices=choices, error=None, more=more, back=back, **found)  # fmt: skip

    async def _list_page(self, query: ListQuery, status: int, message: str) -> Response:
        choices = await run_in_threadpool(self.view.choices, query)
        return page("list.html", status, nav="catalog", title="Experts", query=query, command=query.command(),
                    choices=choices, error=" ".join(message.split()), more=None, back=None, rows=[],
                    one_base=None)  # fmt: skip

    async def expert(self, request: Request, oid: str) -> Response:
        try:
            found = await run_in_threadpool(self.view.expert_page, oid)
        except HubError as err:  # no such expert, or a name no expert can have: either way nothing is here
            return error_page(404, "Not found", str(err))
        return page("expert.html", nav="catalog", **found)

    async def lineage(self, request: Request) -> Response:
        """/_/lineage?base=BASE[&task=TASK]: the base's experts and merges as a graph (no base: the bases)."""
        base, task = ((request.query_params.get(k) or "").strip()[:1000] or None for k in ("base", "task"))
        try:
            found = await run_in_threadpool(self.view.lineage_page, base, task)
        except NotFoundError as err:
            return error_page(404, "Not found", str(err))
        return page("lineage.html", nav="lineage", title=f"Lineage of {base}" if base else "Lineage", **found)

    async def tasks(self, request: Request) -> Response:
        found = await run_in_threadpool(self.view.tasks_page)
        return page("tasks.html", nav="tasks", title="Tasks", **found)

    # -- analysis (hubtool/ui/analysis.py): bad input is the same page, a 400 with one line -----------------

    async def _analysis(self, template: str, title: str, form: dict[str, Any], build: Any, **context: Any) -> Response:
        """build(catalog) -> the page's data, in a worker thread; a HubError (NotFoundError too: a name in
        the query string that is not here) answers the page with its form, 400 and the one line."""
        nav = template.removesuffix(".html")  # the header's link to this page is the current one
        try:
            found = await run_in_threadpool(lambda: build(self.view.catalog()))
        except HubError as err:
            return page(template, 400, nav=nav, title=title, form=form, error=one_line(str(err)), **context)
        return page(template, nav=nav, title=title, error=None, **({"form": form} | context | found))

    async def overlap(self, request: Request) -> Response:
        from hubtool.ui import analysis

        params = request.query_params
        form = {k: params.get(k, "")[: analysis.MAX_FIELD] for k in ("experts", "tasks", "base", "where", "pick", "with")}
        context = {"low": analysis.MIN_OVERLAP, "high": analysis.MAX_OVERLAP, "report": None, "with": None,
                   "command": None}  # fmt: skip

        def build(cat: Any) -> dict[str, Any]:
            query = analysis.OverlapQuery.from_params(params)
            return {"command": query.command(), "form": query.form()} | analysis.overlap_page(cat, query)

        return await self._analysis("overlap.html", "Overlap", form, build, **context)

    async def compare(self, request: Request) -> Response:
        from hubtool.ui import analysis

        params = request.query_params
        asked = ", ".join(v for v in [params.get("experts", ""), *params.getlist("expert")] if v.strip())
        context = {"low": analysis.MIN_COMPARE, "high": analysis.MAX_COMPARE, "asked": asked[: analysis.MAX_FIELD],
                   "columns": []}  # fmt: skip
        if not asked:
            return page("compare.html", nav=None, title="Compare", form={}, error=None, **context)
        return await self._analysis("compare.html", "Compare", {},
                                    lambda cat: analysis.compare_page(cat, analysis.compare_refs(params)), **context)

    async def compose(self, request: Request) -> Response:
        from hubtool.ui import analysis

        params = request.query_params
        form = {k: params.get(k, "")[: analysis.MAX_FIELD] for k in ("tasks", "experts", "method", "where", "pick",
                "weights", "density", "lambda", "seed", "normalize", "output", "name")}  # fmt: skip
        context = {"methods": analysis.methods(), "plan": None, "command": None}

        def build(cat: Any) -> dict[str, Any]:
            query = analysis.ComposeQuery.from_params(params)
            found = {"form": query.form(), "command": query.command() if query.asked else None}
            return found | analysis.compose_page(cat, query)

        return await self._analysis("compose.html", "Compose", form, build, **context)

    async def not_found(self, request: Request, **_: Any) -> Response:
        return error_page(404, "Not found", f"no page at {request.url.path[:200]}")

    async def static(self, hub: Any, request: Request, oid: str) -> Response:
        if oid not in STATIC:
            return error_page(404, "Not found", f"no static file {oid[:100]!r}")
        return Response(_static(oid), media_type=STATIC[oid],
                        headers=HEADERS | {"Cache-Control": "public, max-age=3600"})  # fmt: skip
