"""Every web page through Starlette's TestClient, in process: the ASGI app of `hub serve --catalog` (HubApp
with the catalog pages' rows, as hubtool/cli/serve.py builds it) and the ASGI app of `hub ui`
(hubtool/ui/app.py), over a real SQLite catalog of packed experts and repos committed through the real Hub
API (the NDJSON commit endpoint huggingface_hub uses).

Each page and each error page: its status, its Content-Security-Policy and the text a person reads; hostile
content (a model card, a task, a tag, a config value, a commit message, a file name made to run script,
oversized values) rendered as text; private repos absent for whoever can't read them; a foreign Origin
refused; and the accessibility basics of every page, parsed with the stdlib's html.parser (a label for each
form control, one <main>, one <h1>, <th scope>, alt/title on images and SVG, a skip link and landmarks).
"""

from __future__ import annotations

import base64
import html
import json
import re
import urllib.parse
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
import test_ui_repos
from hubserver import ALICE, BOB, write_tokens

from hubtool.fileio import human_bytes

HOSTILE = "<script>alert('x')</script>"
CSP = "default-src 'self'"
HTML = {"Accept": "text/html,application/xhtml+xml"}
LONG = "L" * 20_000
SECRET_FILE = "launch-codes.txt"
SVG = '<svg onload="alert(1)"><circle r="9"/></svg>'

CARD = f"""---
license: apache-2.0
base_model: org/base
base_model_relation: adapter
tags:
- sparse
- "{HOSTILE}"
- "{LONG}"
model-index:
- name: org/model
  results:
  - task: {{type: text-generation}}
    dataset: {{name: squad, type: squad}}
    metrics:
    - {{type: exact_match, value: 55.5}}
    - {{type: rougeL, value: 41.23456}}
---
# Sparse expert for squad

Trained on **squad**. {HOSTILE}

[click me](javascript:alert(1)) and <img src=x onerror=alert(1)> and {SVG}
"""


# -- reading a page ------------------------------------------------------------------------------------------


class Tags(HTMLParser):
    """Every start tag of a page, with its attributes, and the text inside <h1>."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str]]] = []
        self.stack: list[str] = []
        self.labels: set[str] = set()  # ids named by <label for>
        self.wrapped: set[int] = set()  # indexes (in tags) of controls inside a <label>
        self.in_label = 0
        self.svg_titled: list[bool] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        self.tags.append((tag, a | {"_parents": " ".join(self.stack)}))
        if tag == "label":
            self.in_label += 1
            if a.get("for"):
                self.labels.add(a["for"])
        if tag in ("input", "select", "textarea") and self.in_label:
            self.wrapped.add(len(self.tags) - 1)
        if tag == "svg":
            self.svg_titled.append(bool(a.get("aria-label") or a.get("aria-labelledby")))
        if tag == "title" and "svg" in self.stack:
            self.svg_titled[-1] = True
        if tag not in ("input", "img", "meta", "link", "br", "hr", "circle", "rect", "line", "path"):
            self.stack.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if tag == "label":
            self.in_label -= 1
        if tag in self.stack:
            while self.stack and self.stack.pop() != tag:
                pass

    def of(self, name: str) -> list[dict[str, str]]:
        return [a for t, a in self.tags if t == name]


class Page(test_ui_repos.Page):
    """test_ui_repos's page (text(), part()) made from a TestClient response."""

    def __init__(self, response: Any) -> None:
        super().__init__(response.status_code, response.headers, response.text)

    def header(self) -> str:
        """The page's <header>, minus which link is the current one and where Log in comes back to."""
        found = re.search(r"<header.*?</header>", self.body, re.DOTALL)
        assert found, "no <header>"
        return re.sub(r' aria-current="page"|\?next=[^"]*', "", found.group(0))

    def tags(self) -> Tags:
        parser = Tags()
        parser.feed(self.body)
        parser.close()
        return parser


def check(page: Page, status: int = 200, *, text: str | None = None) -> Page:
    assert page.status == status, (page.status, page.text()[:600])
    assert page.headers["content-security-policy"] == CSP
    assert page.headers["content-type"].startswith("text/html")
    assert page.headers["x-content-type-options"] == "nosniff"
    if text is not None:
        assert text in page.text(), page.text()[:1500]
    inert(page)
    accessible(page)
    return page


def inert(page: Page) -> None:
    """Nothing on the page runs: no <script>, no event handler attribute, no javascript: URL, no <img> or
    <iframe> (the pages draw SVG themselves: its attributes pass the same checks), no inline style (the CSP
    would block it; it must not be needed)."""
    tags = page.tags()
    for tag, attrs in tags.tags:
        assert tag not in ("script", "iframe", "object", "embed", "img", "foreignobject"), (tag, attrs)
        for name, value in attrs.items():
            assert not name.startswith("on"), (tag, name, value)
            assert not value.strip().lower().startswith(("javascript:", "vbscript:", "data:")), (tag, name, value)
        assert "style" not in attrs or tag == "link", (tag, attrs)
    assert "<script" not in page.body.lower()


def accessible(page: Page) -> None:
    """Accessibility basics: each form control labelled, one <main> and one <h1>, a skip link to the main
    content and a <nav>, every <th> scoped, images and SVG with a text alternative, buttons with text."""
    tags = page.tags()
    for index, (tag, attrs) in enumerate(tags.tags):
        if tag in ("input", "select", "textarea") and attrs.get("type") not in ("hidden", "submit", "button"):
            labelled = attrs.get("id") in tags.labels or index in tags.wrapped or attrs.get("aria-label")
            assert labelled, f"<{tag} name={attrs.get('name')!r}> has no label: {page.body[:200]}"
        if tag == "th":
            assert attrs.get("scope") in ("col", "row", "colgroup", "rowgroup"), ("th without scope", attrs)
        if tag == "img":
            assert "alt" in attrs, attrs
    assert all(tags.svg_titled), "an <svg> without <title> or aria-label"
    assert len(tags.of("main")) == 1 and tags.of("main")[0].get("id") == "main"
    assert len(tags.of("h1")) == 1, "one <h1> per page"
    assert any(a.get("href") == "#main" for a in tags.of("a")), "no skip link"
    assert tags.of("nav") and tags.of("header") and tags.of("footer")
    buttons = re.findall(r"<button[^>]*>(.*?)</button>", page.body, re.DOTALL)
    assert all(re.sub(r"<[^>]+>", "", b).strip() for b in buttons), buttons


# -- the apps --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def catalog(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A catalog with hostile text everywhere a person can write it: qa@1 (config values: a script, a very
    long one; pushed to org/model), qa@2 (alias best), sum@1 (a child of qa@1; hostile description and tag),
    cls@1 on another base; qa-sum@1, a real `hub compose --as-expert` merge of qa@2 and sum@1 (its recipe,
    the merges an expert went into); the base model's scores; a task whose description is a script.
    HUB_HOME is this catalog's home for the module, so the pages find its blobs (overlap, compose, density)."""
    from conftest import write_sparse_expert

    from hubtool.merge.compose import compose
    from hubtool.registry import Catalog

    home = tmp_path_factory.mktemp("pages") / "hub"
    files = home.parent / "packed"
    files.mkdir()
    url = f"sqlite:///{home / 'registry.db'}"
    with pytest.MonkeyPatch.context() as env:
        env.setenv("HUB_HOME", str(home))
        env.delenv("HUB_CATALOG", raising=False)
        with Catalog(url, blobs=home / "blobs") as cat:

            def packed(name: str, task: str, seed: int, **meta: Any) -> Path:
                return write_sparse_expert(files / f"{name}-{seed}.safetensors", name=name, task=task, seed=seed,
                                           **meta)  # fmt: skip

            cat.register(packed("qa", "squad", 1, metrics={"squad": {"exact_match": 40.0, "rougeL": 41.23456}}),
                         config={"note": HOSTILE, "long": LONG, "lr": 0.001}, tags=["demo"])  # fmt: skip
            cat.register(packed("qa", "squad", 2, metrics={"squad": {"exact_match": 55.5}}), tags=["demo"])
            cat.alias("qa", "best", 2)
            cat.register(packed("sum", "xsum", 3, metrics={"xsum": {"rougeL": 31.25}}), parents=["qa@1"],
                         tags=[HOSTILE], description=HOSTILE + " " + LONG)  # fmt: skip
            cat.register(packed("cls", "sst2", 4, base_model="other-base", kind="merged", keep_ratio=None,
                                metrics={"sst2": {"accuracy": 81.0}}))  # fmt: skip
            cat.set_base_metrics("tiny-llama", "squad", {"exact_match": 30.0})
            cat.add_task("evil", description=HOSTILE, category="qa")
            cat.set_hub("qa@1", "org/model", "0" * 40)
            compose(experts="qa@2,sum@1", method="ties", density=0.5, weights=[1.0, 0.5], as_expert="qa-sum",
                    catalog=cat)  # fmt: skip
        yield url


def _commit(client: Any, repo: str, files: dict[str, bytes], message: str, branch: str = "main") -> str:
    lines = [{"key": "header", "value": {"summary": message, "description": ""}}]
    lines += [{"key": "file", "value": {"path": path, "content": base64.b64encode(data).decode(),
                                        "encoding": "base64"}} for path, data in files.items()]  # fmt: skip
    answer = client.post(f"/api/models/{repo}/commit/{branch}", content="\n".join(map(json.dumps, lines)),
                         headers={"Authorization": f"Bearer {ALICE}", "Content-Type": "application/x-ndjson"})  # fmt: skip
    assert answer.status_code == 200, answer.text
    return answer.json()["commitOid"]


def _create(client: Any, repo: str, *, private: bool = False) -> None:
    ns, name = repo.split("/")
    answer = client.post("/api/repos/create", json={"organization": ns, "name": name, "private": private},
                         headers={"Authorization": f"Bearer {ALICE}"})  # fmt: skip
    assert answer.status_code == 200, answer.text


def _hub(root: Path, tokens: Path, catalog: str, *, public_read: bool) -> Any:
    from hubtool.hub.server.app import HubApp
    from hubtool.ui.pages import CatalogPages
    from hubtool.ui.view import CatalogView

    return HubApp(root, tokens, public_read=public_read, extra_routes=CatalogPages(CatalogView(catalog)).routes())


@pytest.fixture(scope="module")
def apps(tmp_path_factory: pytest.TempPathFactory, catalog: str) -> Iterator[dict[str, Any]]:
    """TestClients: "public" (hub serve --public-read --catalog), "private" (the same storage, login needed),
    "alice" (private, logged in through the form), "ui" (hub ui on the same catalog)."""
    from starlette.testclient import TestClient

    from hubtool.ui.app import make_app
    from hubtool.ui.view import CatalogView

    tmp = tmp_path_factory.mktemp("serve")
    tokens = write_tokens(tmp / "tokens.txt")
    root = tmp / "root"
    public = TestClient(_hub(root, tokens, catalog, public_read=True).asgi())
    private = TestClient(_hub(root, tokens, catalog, public_read=False).asgi())
    alice = TestClient(_hub(root, tokens, catalog, public_read=False).asgi())
    view = CatalogView(catalog)
    ui = TestClient(make_app(view))
    _create(public, "org/base")
    _commit(public, "org/base", {"README.md": b"---\ntags: [base]\n---\n# The base\n"}, "the base")
    _create(public, "org/model")
    _commit(public, "org/model", {"README.md": CARD.encode(), "adapter_config.json": b'{"r": 4}',
                                  "weights.bin": bytes(3000), "notes/<b>x</b>.txt": b"x"},
            f"add the expert {HOSTILE}")  # fmt: skip
    _create(public, "org/secret", private=True)
    _commit(public, "org/secret", {"README.md": b"---\nbase_model: org/base\n---\nsecret card\n",
                                   SECRET_FILE: b"0000"}, "secret commit")  # fmt: skip
    login = alice.post("/_/login", data={"token": ALICE, "next": "/_/repos"}, follow_redirects=False,
                       headers={"Origin": "http://testserver"})  # fmt: skip
    assert login.status_code == 303, login.text  # the client keeps the cookie: alice is logged in
    yield {"public": public, "private": private, "alice": alice, "ui": ui}
    view.close()
    for client in (public, private, alice, ui):
        client.close()


def get(client: Any, path: str, **headers: str) -> Page:
    return Page(client.get(path, headers=HTML | headers, follow_redirects=False))


# -- the catalog pages, under hub ui and hub serve -----------------------------------------------------------


CATALOG_PAGES = [
    ("/_/", 200, "qa@1"),
    ("/_/?task=squad&sort=-exact_match", 200, "hub list --task squad --sort -exact_match"),
    ("/_/?limit=1", 200, "Rows 1–1"),
    ("/_/?limit=1&offset=2", 200, "Rows 3–3"),
    ("/_/?offset=99", 200, "No experts after row 99"),
    ("/_/?where=exact_match%3E%3D", 400, "Error: --where 'exact_match>=':"),
    ("/_/?limit=0", 400, "Error: limit '0': expected a whole number in [1, 10000]"),
    ("/_/?offset=-1", 400, "Error: offset '-1': expected a whole number in [0, 100000000]"),
    ("/_/?category=nope", 400, "Error:"),
    ("/_/tasks", 200, "Tasks"),
    ("/_/experts/qa@1", 200, "sparse expert for task squad"),
    ("/_/experts/qa@best", 200, "qa@2 (this one)"),
    ("/_/experts/sum@1", 200, "parent: qa@1"),
    ("/_/experts/cls@1", 200, "merged expert for task sst2"),
    ("/_/experts/nope", 404, "Not found"),
    ("/_/experts/%3Cscript%3E", 404, "Not found"),
    ("/_/nothing/here", 404, "no page at /_/nothing/here"),
    ("/_/static/nope.js", 404, "no static file 'nope.js'"),
]


@pytest.mark.parametrize(("path", "status", "text"), CATALOG_PAGES)
@pytest.mark.parametrize("app", ["ui", "public", "alice"])
def test_every_catalog_page(apps: dict, app: str, path: str, status: int, text: str) -> None:
    check(get(apps[app], path), status, text=text)


# the lineage graph, the overlap heatmap, the compare view and the compose dry run (hubtool/ui/analysis.py), and
# the expert-page sections they feed (recipe, composes well with, budget), each filled and empty
ANALYSIS_PAGES = [
    ("/_/lineage", 200, "Choose a base model: other-base tiny-llama"),
    ("/_/lineage?base=tiny-llama", 200, "The graph as a list (4 experts)"),
    ("/_/lineage?base=tiny-llama&task=xsum", 200, "Lineage of base model tiny-llama , task xsum"),
    ("/_/lineage?base=nope", 404, "no expert has base model 'nope'"),
    ("/_/overlap", 200, "Name 2 to 16 experts, or tasks"),
    ("/_/overlap?experts=qa@1,qa@2,sum@1", 200, "qa@1 × sum@1 9 143"),
    ("/_/overlap?tasks=squad,xsum", 200, "Same numbers as: hub overlap --tasks squad,xsum"),
    ("/_/overlap?with=qa@1", 200, "Overlap of qa@1 with the other experts of tiny-llama"),
    ("/_/overlap?with=cls@1", 200, "No other expert of this base model."),
    ("/_/overlap?experts=qa@1", 400, "Error: experts: 1 expert given; expected 2 to 16"),
    ("/_/overlap?experts=qa@1,nope", 400, "Error:"),
    ("/_/compare", 200, "Experts (2 to 4, comma-separated)"),
    ("/_/compare?experts=qa@1,sum@1", 200, "Overlap between them"),
    ("/_/compare?expert=qa@1&expert=qa@2&expert=qa-sum@1", 200, "parents - - qa@2 (merge:ties) sum@1 (merge:ties)"),
    ("/_/compare?experts=qa@1", 400, "Error: experts: 1 expert given; expected 2 to 4"),
    ("/_/compose", 200, "Methods and their parameters"),
    ("/_/compose?tasks=squad,xsum", 200, "Nothing was written (dry run)."),
    ("/_/compose?experts=qa@1,sum@1&method=ties&density=0.5&output=model", 200, "Plan: ties on tiny-llama"),
    ("/_/compose?tasks=nope", 400, "Error:"),
    ("/_/compose?experts=qa@1,sum@1&density=2", 400, "Error:"),
    ("/_/experts/qa-sum@1", 200, "hub compose --experts qa@2,sum@1 --method ties --weights 1.0,0.5 --density 0.5"),
    ("/_/experts/qa@2", 200, "Composes well with"),
    ("/_/experts/cls@1", 200, "merged expert for task sst2"),
]


@pytest.mark.parametrize(("path", "status", "text"), ANALYSIS_PAGES)
@pytest.mark.parametrize("app", ["ui", "public", "alice"])
def test_every_analysis_page(apps: dict, app: str, path: str, status: int, text: str) -> None:
    check(get(apps[app], path), status, text=text)


def test_the_analysis_pages_need_a_login_without_public_read(apps: dict) -> None:
    for path in ("/_/lineage?base=tiny-llama", "/_/overlap?with=qa@1", "/_/compare?experts=qa@1,qa@2",
                 "/_/compose?tasks=squad"):  # fmt: skip
        page = check(get(apps["private"], path), 401, text="the catalog pages need a login")
        assert "qa@" not in page.text().replace("/_/login", "")


def test_hostile_text_on_the_analysis_pages_is_text(apps: dict) -> None:
    """A hostile tag and description (sum@1), and a script typed into every box of the forms: text."""
    quoted = urllib.parse.quote(HOSTILE)
    compare = check(get(apps["public"], "/_/compare?experts=qa@1,sum@1"))
    assert HOSTILE in compare.part("compare")  # sum@1's tag
    for path in (f"/_/overlap?experts={quoted},qa@1", f"/_/overlap?with={quoted}", f"/_/compare?experts={quoted},qa@1",
                 f"/_/compose?experts=qa@1,sum@1&name={quoted}", f"/_/compose?tasks={quoted}",
                 f"/_/compose?tasks=squad&where={quoted}", f"/_/compose?tasks=squad&method={quoted}"):  # fmt: skip
        page = check(get(apps["public"], path), 400)
        assert HOSTILE in page.part("analysis-error"), (path, page.part("analysis-error"))
    for path in (f"/_/lineage?base={quoted}", f"/_/lineage?base=tiny-llama&task={quoted}"):
        assert HOSTILE in check(get(apps["public"], path), 404).text()


def test_the_list_pages_through_every_expert_with_a_bounded_page(apps: dict) -> None:
    seen, path = [], "/_/?limit=1"
    for _ in range(10):
        page = check(get(apps["ui"], path))
        seen += re.findall(r'<td><a href="/_/experts/[^"]+">([^<]+)</a></td>', page.body)
        found = re.search(r'<a href="(/_/\?[^"]+)" rel="next"', page.body)
        if not found:
            break
        path = html.unescape(found.group(1))
        assert "limit=1" in path  # the page size stays; only the offset moves
    assert seen == ["cls@1", "qa@1", "qa@2", "qa-sum@1", "sum@1"]
    back = check(get(apps["ui"], "/_/?limit=1&offset=2"))
    assert 'href="/_/?limit=1&amp;offset=1" rel="prev"' in back.body
    assert back.part("command") == "hub list --limit 3"  # the command that lists these rows among its first


def test_hostile_catalog_text_is_text(apps: dict) -> None:
    expert = check(get(apps["public"], "/_/experts/qa@1"))
    config = expert.part("config")
    assert HOSTILE in config and LONG in config  # the values, whole, as text
    assert html.escape(HOSTILE, quote=False) in expert.body or "&lt;script&gt;" in expert.body
    child = check(get(apps["public"], "/_/experts/sum@1"))
    assert HOSTILE in child.text()
    tasks = check(get(apps["public"], "/_/tasks"))
    assert HOSTILE in tasks.part("task-evil")  # its description
    listed = check(get(apps["public"], "/_/?tag=" + HOSTILE))
    assert listed.part("experts").count("sum@1") == 1


def test_metrics_are_rounded_alike_on_every_page(apps: dict) -> None:
    """rougeL 41.23456: 41.23 on the list, the expert page, its versions table and the pushed card's table."""
    listed = check(get(apps["public"], "/_/?task=squad"))
    assert "rougeL 41.23" in listed.part("experts") and "41.2346" not in listed.body
    expert = check(get(apps["public"], "/_/experts/qa@1"))
    assert "squad rougeL 41.23" in expert.part("metrics")
    assert "exact_match 40 30 +10" in expert.part("metrics")
    repo = check(get(apps["public"], "/org/model"))
    assert "squad rougeL 41.23" in repo.part("evals") and "55.5" in repo.part("evals")
    assert "task: text-generation" in repo.part("evals")  # one task: said once, not a column of repeats


def test_one_header_on_the_catalog_and_the_repo_pages(apps: dict) -> None:
    """hub serve --catalog: the catalog pages carry the header the repo pages do (Experts, Tasks, Repos,
    Log in); hub ui, which has no repos and no login, has Experts and Tasks only."""
    public = apps["public"]
    headers = {get(public, p).header() for p in ("/_/", "/_/tasks", "/_/experts/qa@1", "/_/repos", "/org/model",
                                                  "/org/model/tree/main", "/_/login", "/_/nope")}  # fmt: skip
    assert len(headers) == 2, headers  # the login page alone drops its own "Log in" link
    catalog = get(public, "/_/")
    assert [a.get("href") for a in catalog.tags().of("a")][:8] == ["#main", "/_/", "/_/", "/_/tasks", "/_/lineage",
                                                                   "/_/overlap", "/_/compose", "/_/repos"]  # fmt: skip
    assert 'id="login-link" href="/_/login?next=/_/"' in catalog.body.replace("%2F", "/")
    logged = get(apps["alice"], "/_/tasks")
    assert "Logged in as alice" in logged.part("user") and 'id="logout"' in logged.body
    ui = get(apps["ui"], "/_/")
    hrefs = [a.get("href") for a in ui.tags().of("a")]
    assert "/_/repos" not in hrefs and "Log in" not in ui.text() and "/_/tasks" in hrefs
    assert {"/_/lineage", "/_/overlap", "/_/compose"} <= set(hrefs)


@pytest.mark.parametrize(("path", "current"), [("/_/", "Experts"), ("/_/tasks", "Tasks"),
                                               ("/_/lineage?base=tiny-llama", "Lineage"), ("/_/overlap", "Overlap"),
                                               ("/_/overlap?experts=qa@1", "Overlap"), ("/_/compose", "Compose"),
                                               ("/_/compare", None), ("/_/repos", "Repos")])  # fmt: skip
def test_the_header_links_every_page_and_marks_the_current_one(apps: dict, path: str, current: str | None) -> None:
    """A person finds the lineage graph, the overlap heatmap and the compose form from any page's header (the
    compare view is reached from the list's checkboxes); the link of the page shown is marked."""
    page = get(apps["public"], path)
    found = re.search(r"<header.*?</header>", page.body, re.DOTALL)
    assert found
    marked = re.findall(r'<a href="[^"]+" aria-current="page">([^<]+)</a>', found.group(0))
    assert marked == ([current] if current else []), marked


def test_the_list_of_one_base_links_its_lineage(apps: dict) -> None:
    one_base = check(get(apps["public"], "/_/?base=tiny-llama"))
    assert '<a href="/_/lineage?base=tiny-llama" id="base-lineage">its lineage</a>' in one_base.body


def test_the_expert_links_the_repo_it_was_pushed_to(apps: dict) -> None:
    expert = check(get(apps["public"], "/_/experts/qa@1"))
    assert '<a id="hub-repo" href="/org/model">org/model</a>@' + "0" * 40 in expert.body
    assert check(get(apps["public"], "/org/model")).part("repo-id") == "org/model"
    local = check(get(apps["ui"], "/_/experts/qa@1"))  # hub ui serves no repo pages: the name, as text
    assert 'id="hub-repo"' not in local.body and "org/model@" + "0" * 40 in local.text()


# -- hub serve's own pages: repos, files, commits, model tree, login ----------------------------------------


REPO_PAGES = [
    ("/_/repos", 200, "org/model"),
    ("/_/tree/org/base", 200, "Adapters (1)"),
    ("/_/tree/nobody/nothing", 200, "No repo you can read names nobody/nothing as its base model."),
    ("/org/model", 200, "Sparse expert for squad"),
    ("/org/model?rev=main", 200, "Sparse expert for squad"),
    ("/org/model/tree/main", 200, "adapter_config.json"),
    ("/org/model/tree/main/notes", 200, "<b>x</b>.txt"),
    ("/org/model/commits/main", 200, f"add the expert {HOSTILE}"),
    ("/org/model/tree/nope", 404, "Not found"),
    ("/org/model/tree/main/no-such-folder", 404, "no folder no-such-folder"),
    ("/org/model/commits/nope", 404, "Not found"),
    ("/org/none", 404, "Not found"),
    ("/_/login", 200, "Access token"),
    ("/_/static/hub.js", 404, "no static file 'hub.js'"),
]


@pytest.mark.parametrize(("path", "status", "text"), REPO_PAGES)
@pytest.mark.parametrize("app", ["public", "alice"])
def test_every_repo_page(apps: dict, app: str, path: str, status: int, text: str) -> None:
    check(get(apps[app], path), status, text=text)


def test_the_card_and_its_metadata_are_text(apps: dict) -> None:
    repo = check(get(apps["public"], "/org/model"))
    card = repo.part("card")
    assert HOSTILE in card and "<img src=x onerror=alert(1)>" in card and SVG in card  # raw HTML off: text
    assert "click me" in card and "javascript:" not in repo.body.split('id="card"')[1].split("</article>")[0] \
        .replace("(javascript:alert(1))", "")  # fmt: skip
    tags = repo.part("tags")
    assert HOSTILE in tags and LONG not in tags and "L" * 200 + "…" in tags  # oversized metadata: cut
    files = check(get(apps["public"], "/org/model/tree/main"))
    rows = dict(re.findall(r"<td><code>([^<]+)</code></td>\s*<td class=\"num\"[^>]*>([^<]+)</td>", files.body))
    assert rows["weights.bin"] == human_bytes(3000) == "2.9 KB"  # the units of hub list and the catalog pages


def test_a_page_with_a_failing_check_is_still_an_html_page(apps: dict) -> None:
    """A path or a revision that is not one: a 4xx page, never the API's JSON."""
    for path in ("/org/model/tree/main/a%2F..%2F..%2Fb", "/org/model?rev=a%0Ab&view=tree", "/org/model?rev=nope"):
        page = get(apps["public"], path)
        assert 400 <= page.status < 500, page.status
        check(page, page.status)


# -- private repos and login -----------------------------------------------------------------------------------


PRIVATE_PATHS = ["/org/secret", "/org/secret?rev=main", "/org/secret/tree/main", "/org/secret/commits/main"]


@pytest.mark.parametrize("path", PRIVATE_PATHS)
def test_a_private_repo_is_a_page_like_any_missing_one_without_a_login(apps: dict, path: str) -> None:
    page = check(get(apps["public"], path), 404)
    ghost = check(get(apps["public"], path.replace("secret", "ghost")), 404)
    assert page.text().replace("secret", "ghost") == ghost.text()  # nothing tells it apart from none at all
    assert SECRET_FILE not in page.body and "secret card" not in page.body
    refused = check(get(apps["private"], path), 401)  # no --public-read: every repo page needs a login
    assert SECRET_FILE not in refused.body and "Log in" in refused.text()
    seen = check(get(apps["alice"], path))
    assert "secret" in seen.text()


def test_private_repos_appear_nowhere_without_a_login(apps: dict) -> None:
    for app in ("public", "private"):
        for path in ("/_/repos", "/_/tree/org/base", "/org/base", "/_/", "/_/tasks"):
            page = get(apps[app], path)
            check(page, page.status)
            assert "org/secret" not in page.body and SECRET_FILE not in page.body, (app, path)
    check(get(apps["private"], "/_/tree/org/base"), 401)
    assert "org/secret" in check(get(apps["alice"], "/_/repos")).part("repos")
    assert "org/secret" in check(get(apps["alice"], "/_/tree/org/base")).text()
    assert check(get(apps["alice"], "/org/secret/tree/main"), text=SECRET_FILE)


def test_the_catalog_pages_need_a_login_without_public_read(apps: dict) -> None:
    for path in ("/_/", "/_/tasks", "/_/experts/qa@1"):
        page = check(get(apps["private"], path), 401, text="the catalog pages need a login")
        assert "qa@1" not in page.text()
        assert 'id="login-link"' in page.body
    check(get(apps["alice"], "/_/experts/qa@1"), text="qa@1")


def test_a_revoked_or_wrong_cookie_reads_as_no_login(apps: dict) -> None:
    page = get(apps["private"], "/_/repos", Cookie="hub_session=not-a-token")
    check(page, page.status)
    assert "org/secret" not in page.body and "Logged in" not in page.text()


@pytest.mark.parametrize(("method", "path"), [
    ("POST", "/_/login"), ("POST", "/_/logout"), ("POST", "/api/repos/create"), ("PUT", "/_/"),
    ("DELETE", "/org/model"), ("POST", "/_/experts/qa@1"), ("POST", "/api/models/org/model/commit/main"),
])  # fmt: skip
def test_an_unsafe_method_from_a_foreign_origin_is_refused(apps: dict, method: str, path: str) -> None:
    for origin in ("https://evil.example", "null"):
        answer = apps["alice"].request(method, path, headers={"Origin": origin, "Authorization": f"Bearer {BOB}"},
                                       content=b"token=" + ALICE.encode(), follow_redirects=False)  # fmt: skip
        assert answer.status_code == 403, (method, path, origin, answer.status_code, answer.text[:300])
        assert "set-cookie" not in answer.headers
    assert "org/model" in check(get(apps["public"], "/_/repos")).text()  # nothing was done


def test_the_login_form_round_trip(apps: dict) -> None:
    from starlette.testclient import TestClient

    client = TestClient(apps["private"].app)
    wrong = client.post("/_/login", data={"token": "nope-" * 4, "next": "/_/"}, headers={"Origin": "http://testserver"})
    check(Page(wrong), 401, text="That token is not valid on this server.")
    right = client.post("/_/login", data={"token": BOB, "next": "https://evil.example/"},
                        headers={"Origin": "http://testserver"}, follow_redirects=False)  # fmt: skip
    assert right.status_code == 303 and right.headers["location"] == "/_/repos"  # never off this server
    cookie = right.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie
    check(get(client, "/_/"), text="Logged in as bob")
    out = client.post("/_/logout", headers={"Origin": "http://testserver"}, follow_redirects=False)
    assert out.status_code == 303
    check(get(client, "/_/"), 401)


def test_a_lineage_edge_that_skips_a_column_passes_no_box() -> None:
    """qa@2 (column 1) -> qa-sum@1 (column 3) skips column 2, where sum@1's box sits in its row band: the
    edge runs in the channel between two rows across that column, never behind a box."""
    from hubtool.ui.lineage import Item, lineage_graph

    items = [Item("qa@1"), Item("qa@2"), Item("sum@1", ("qa@1",)), Item("qa-sum@1", ("qa@2", "sum@1"), "merged"),
             Item("x@1"), Item("y@1", ("x@1",)), Item("z@1", ("y@1",)), Item("w@1", ("x@1", "z@1"), "merged")]  # fmt: skip
    graph = lineage_graph("tiny-llama", items)
    nodes = {n.key: n for n in graph.nodes}
    skipping = [e for e in graph.edges if nodes[e.dst].column - nodes[e.src].column > 1]
    assert {(e.src, e.dst) for e in skipping} == {("qa@2", "qa-sum@1"), ("x@1", "w@1")}
    for edge in skipping:
        runs = re.findall(r"L(-?\d+),(-?\d+)", edge.path)
        assert len(runs) == 1, edge.path  # one straight run along a channel
        a, b = nodes[edge.src], nodes[edge.dst]
        start = re.search(r"C[^C]*? (-?\d+),(-?\d+) L", edge.path)
        assert start and start.group(2) == runs[0][1]  # level: the run starts and ends at the channel's height
        y = int(runs[0][1])
        for n in graph.nodes:
            if a.column < n.column < b.column:  # the columns it passes
                assert not n.y <= y <= n.y + n.height, (edge.src, edge.dst, n.key, y)
        assert 0 < y < graph.height
