"""The catalog's web pages (hubtool/ui): a real `hub ui` and a real `hub serve --catalog` in subprocesses on
free ports, over a real SQLite catalog of packed experts, read over real HTTP; the list page against the
real `hub list --json` for the same filters (run as the command the page shows); hostile text rendered as
text; and a real headless chromium (Playwright) filtering the list and following a link to an expert, and
clicking through from the catalog to a pushed repo and a download (screenshots into $HUB_SCREENSHOTS).

The browser test is marked `browser` (`pytest -m browser` runs it alone); it is skipped only where
chromium is missing and CI is not set.
"""

from __future__ import annotations

import html
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

HOSTILE = "<script>alert('x')</script>"
CSP = "default-src 'self'"


class Page:
    def __init__(self, status: int, headers: Any, body: str) -> None:
        self.status, self.headers, self.body = status, headers, body

    def text(self) -> str:
        """The page as a person reads it: tags dropped, entities decoded, whitespace folded."""
        return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", self.body)).split())

    def table(self, table_id: str) -> str:
        found = re.search(rf'<table[^>]*id="{table_id}"[^>]*>(.*?)</table>', self.body, re.DOTALL)
        assert found, f"no table {table_id!r} on the page"
        return found.group(1)

    def refs(self) -> list[str]:
        """The experts the list shows, in order (none when it shows no table)."""
        if 'id="experts"' not in self.body:
            return []
        return [html.unescape(r) for r in re.findall(r'<td><a href="/_/experts/[^"]+">([^<]+)</a></td>',
                                                     self.table("experts"))]  # fmt: skip

    def form(self) -> dict[str, str]:
        """The filter form's state: each select's selected value, each input's value."""
        state: dict[str, str] = {}

        class Form(HTMLParser):
            select: str | None = None

            def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
                a = dict(attrs)
                if tag == "select":
                    self.select = a["name"]
                    state[a["name"] or ""] = ""
                elif tag == "option" and "selected" in a and self.select:
                    state[self.select] = a["value"] or ""
                elif tag == "input" and a.get("type") != "checkbox":  # not the compare boxes
                    state[a["name"] or ""] = a.get("value") or ""

        Form().feed(self.body)
        return state

    def command(self) -> str:
        found = re.search(r'<code id="command">(.*?)</code>', self.body, re.DOTALL)
        assert found
        return html.unescape(found.group(1))


def get(url: str, *, method: str = "GET", headers: dict | None = None) -> Page:
    request = urllib.request.Request(url, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return Page(response.status, response.headers, response.read().decode())
    except urllib.error.HTTPError as err:
        return Page(err.code, err.headers, err.read().decode())


def _env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUB_"))}
    return env | {"HUB_HOME": str(home), "COLUMNS": "300"}


def hub(*args: str, home: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "hubtool", *args], capture_output=True, text=True, timeout=120,
                          env=_env(home), check=False)  # fmt: skip


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A HUB_HOME whose catalog holds qa@1, qa@2 (alias best), sum@1 (a child of qa@1, hostile tag and
    description), cls@1 on another base; base scores for qa; a task whose description is a script."""
    from conftest import write_sparse_expert

    from hubtool.registry import Catalog

    home = tmp_path_factory.mktemp("ui") / "hub"
    files = home.parent / "packed"
    files.mkdir()
    with Catalog(f"sqlite:///{home / 'registry.db'}", blobs=home / "blobs") as cat:

        def packed(name: str, task: str, seed: int, **meta: Any) -> Path:
            return write_sparse_expert(files / f"{name}-{seed}.safetensors", name=name, task=task, seed=seed,
                                       **meta)  # fmt: skip

        cat.register(packed("qa", "squad", 1, metrics={"squad": {"exact_match": 40.0}}),
                     config={"lr": 0.001, "steps": 200}, tags=["demo"])  # fmt: skip
        cat.register(packed("qa", "squad", 2, metrics={"squad": {"exact_match": 55.5}}), tags=["demo"])
        cat.alias("qa", "best", 2)
        cat.register(packed("sum", "xsum", 3, metrics={"xsum": {"rougeL": 31.25}}), parents=["qa@1"],
                     tags=[HOSTILE], description=HOSTILE)  # fmt: skip
        cat.register(packed("cls", "sst2", 4, base_model="other-base", kind="merged", keep_ratio=None,
                            metrics={"sst2": {"accuracy": 81.0}}))  # fmt: skip
        cat.set_base_metrics("tiny-llama", "squad", {"exact_match": 30.0})
        cat.add_task("evil", description=HOSTILE, category="qa")
    return home


def _wait_address(proc: subprocess.Popen, log: Path) -> str:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        found = re.search(r"http://127\.0\.0\.1:\d+/_/", log.read_text())
        if found:
            return found.group(0)
        if proc.poll() is not None:
            raise RuntimeError(f"hub ui exited ({proc.returncode}):\n{log.read_text()}")
        time.sleep(0.05)
    raise RuntimeError(f"hub ui printed no address within 60 s:\n{log.read_text()}")


@pytest.fixture(scope="module")
def ui(home: Path) -> Iterator[str]:
    """A real `hub ui --port 0`: the address it prints (http://127.0.0.1:PORT/_/)."""
    log = home.parent / "ui.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "hubtool", "ui", "--port", "0"], stdout=out,
                                stderr=subprocess.STDOUT, env=_env(home))  # fmt: skip
    try:
        yield _wait_address(proc, log)
    finally:
        proc.terminate()
        proc.wait(timeout=15)


def _check_page(page: Page, status: int = 200) -> None:
    assert page.status == status, page.text()[:500]
    assert page.headers["Content-Security-Policy"] == CSP
    assert page.headers["Content-Type"].startswith("text/html")


# -- the catalog list -------------------------------------------------------------------------------------


def test_hub_ui_prints_its_address_and_lists_what_hub_list_lists(ui: str, home: Path) -> None:
    page = get(ui)
    _check_page(page)
    listed = [row["ref"] for row in json.loads(hub("list", "--json", home=home).stdout)]
    assert page.refs() == listed == ["cls@1", "qa@1", "qa@2", "sum@1"]
    assert page.command() == "hub list"
    text = page.text()
    for column in ("expert", "task", "kind", "keep", "size", "base", "metrics"):
        assert f" {column} " in text
    assert "exact_match 55.5" in text and "other-base" in text
    assert get(ui.removesuffix("_/")).status == 200  # / redirects to the list


@pytest.mark.parametrize("params", [
    {"task": "squad"},
    {"category": "summarize"},
    {"kind": "merged"},
    {"base": "tiny-llama"},
    {"tag": HOSTILE},
    {"where": "exact_match>=50"},
    {"where": "kind=sparse, nnz>10", "sort": "-exact_match", "limit": "2"},
    {"sort": "-created"},
    {"task": "squad", "tag": "demo", "where": "version>=2"},
    {"where": "exact_match>99"},
])  # fmt: skip
def test_filters_give_the_rows_of_the_command_the_page_shows(ui: str, home: Path, params: dict) -> None:
    page = get(ui + "?" + urllib.parse.urlencode(params))
    _check_page(page)
    command = shlex.split(page.command())
    assert command[:2] == ["hub", "list"]
    for key, value in params.items():
        assert value in command, (key, command)
    result = hub(*command[1:], "--json", home=home)
    assert result.returncode == 0, result.stderr
    assert page.refs() == [row["ref"] for row in json.loads(result.stdout)]
    if params.get("where") == "exact_match>99":
        assert page.refs() == [] and "No experts match." in page.text()
    else:
        assert page.refs()
    state = page.form()  # the form shows what the URL asks (a bookmark reopens the search)
    assert state == {key: params.get(key, "25" if key == "limit" else "") for key in state}
    assert set(state) == {"task", "category", "kind", "base", "tag", "where", "sort", "limit"}


@pytest.mark.parametrize("params", [
    {"where": "exact_match>="},
    {"where": "kind>sparse"},
    {"sort": "-(x)"},
    {"category": "no-such-category"},
])  # fmt: skip
def test_a_bad_filter_is_a_400_with_hub_lists_one_line(ui: str, home: Path, params: dict) -> None:
    page = get(ui + "?" + urllib.parse.urlencode(params))
    _check_page(page, 400)
    option = {"where": "--where", "sort": "--sort", "category": "--tasks"}
    args = [arg for key, value in params.items() for arg in (option[key], value)]
    result = hub("list", *args, home=home)
    assert result.returncode == 1
    line = result.stderr.strip()
    assert "\n" not in line and line.startswith("Error: ")
    shown = re.search(r'<p class="error" role="alert" id="list-error">(.*?)</p>', page.body, re.DOTALL)
    assert shown and html.unescape(shown.group(1)) == line
    assert page.refs() == []


def test_a_bad_limit_is_a_400_naming_it(ui: str) -> None:
    for limit in ("0", "x", "99999999"):
        page = get(ui + "?limit=" + limit)
        _check_page(page, 400)
        assert f"Error: limit '{limit}': expected a whole number in [1, 10000]" in page.text()


# -- one expert -------------------------------------------------------------------------------------------


def test_expert_page_shows_all_of_hub_show(ui: str, home: Path) -> None:
    page = get(ui + "experts/qa@1")
    _check_page(page)
    text = page.text()
    shown = json.loads(hub("show", "qa@1", "--json", home=home).stdout)
    assert f"sha256 {shown['sha256']}" in text
    assert "encoding golomb" in text and "value dtype bfloat16" in text
    assert re.search(r"bits per entry [0-9.]+ \(information bound [0-9.]+: [0-9.]+×\)", text)
    # the metric against the base, with the gain
    assert "squad exact_match 40 30 +10" in " ".join(re.sub(r"<[^>]+>", " ", page.table("metrics")).split())
    # versions and aliases, each metric across versions
    versions = " ".join(html.unescape(re.sub(r"<[^>]+>", " ", page.table("versions"))).split())
    assert "qa@1 (this one)" in versions and "qa@2 best" in versions and "squad exact_match" in versions
    assert "40" in versions and "55.5" in versions
    assert 'href="/_/experts/qa%402"' in page.table("versions")
    # provenance: the train config, the base revision
    assert "lr 0.001" in " ".join(re.sub(r"<[^>]+>", " ", page.table("config")).split())
    assert "base revision" in text
    # children as links
    assert re.search(r'child: <a href="/_/experts/sum%401">sum@1</a>', page.body)
    # the density map: layer 0 x q_proj/k_proj, the numbers shown
    density = page.table("density")
    assert ">q_proj<" in density and ">k_proj<" in density
    q = shown["weights"]["model.layers.0.self_attn.q_proj.weight"]
    assert f"{q['nnz'] / (q['shape'][0] * q['shape'][1]):.4f}" in density
    # copyable snippets
    assert "hub export qa@1 --out qa-1-peft" in text and "PeftModel.from_pretrained(base, 'qa-1-peft')" in text
    assert "hubtool.Catalog().load('qa@1')" in text and "hub push qa@1" in text


def test_expert_page_follows_aliases_and_parents(ui: str) -> None:
    page = get(ui + "experts/qa@best")
    _check_page(page)
    assert '<span id="expert-ref">qa@2</span>' in page.body
    child = get(ui + "experts/sum")
    _check_page(child)
    assert re.search(r'parent: <a href="/_/experts/qa%401">qa@1</a>', child.body)
    assert get(ui + "experts/qa%401").status == 200  # the links' percent-encoded form


@pytest.mark.parametrize("ref", ["nope", "qa@9", "qa@nosuchalias", "a@b@c", "%3Cscript%3E"])
def test_an_unknown_expert_is_a_404_page(ui: str, ref: str) -> None:
    page = get(ui + "experts/" + ref)
    _check_page(page, 404)
    assert "Not found" in page.text() and "<script>" not in page.body


def test_hostile_text_renders_as_text(ui: str) -> None:
    for path in ("", "experts/sum@1", "tasks", "?tag=" + urllib.parse.quote(HOSTILE)):
        page = get(ui + path)
        _check_page(page)
        assert "<script" not in page.body, path
        assert HOSTILE in page.text(), path  # shown, as text


# -- tasks, static files, other paths -----------------------------------------------------------------------


def test_tasks_page_groups_by_category_with_leaderboards(ui: str) -> None:
    page = get(ui + "tasks")
    _check_page(page)
    body = page.body
    sections = re.findall(r'<h2 id="c-\d+">([^<]+)</h2>', body)
    assert sections == sorted(sections) or sections[:-1] == sorted(sections[:-1])
    assert {"qa", "summarize", "classify"} <= set(sections)
    squad = re.search(r'<article class="task" id="task-squad">(.*?)</article>', body, re.DOTALL)
    assert squad
    rows = [" ".join(re.sub(r"<[^>]+>", " ", row).split()) for row in re.findall(r"<tr[^>]*>(.*?)</tr>",
                                                                                   squad.group(1), re.DOTALL)]  # fmt: skip
    assert rows[1:] == ["1 qa@2 tiny-llama 55.5 +25.5", "2 qa@1 tiny-llama 40 +10",
                        "base (base model itself) tiny-llama 30"]  # fmt: skip
    # squad is under qa, with the catalog's own task `evil`
    qa = body.split('<h2 id="c-')[[s for s in sections].index("qa") + 1]
    assert 'id="task-squad"' in qa and 'id="task-evil"' in qa


def test_static_and_unknown_paths(ui: str) -> None:
    css = get(ui + "static/hub.css")
    assert css.status == 200 and css.headers["Content-Type"].startswith("text/css")
    assert css.headers["Content-Security-Policy"] == CSP and ".density" in css.body
    for path in ("static/../pyproject.toml", "static/nope.js", "nothing-here", "experts"):
        _check_page(get(ui + path), 404)
    _check_page(get(ui, method="POST"), 404)  # read-only: nothing takes a POST


def test_hub_ui_refuses_a_taken_port_in_one_line(ui: str, home: Path) -> None:
    port = urllib.parse.urlsplit(ui).port
    result = hub("ui", "--port", str(port), home=home)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"Error: --port {port}: can't listen on 127.0.0.1:{port} (Address already in use)"
    ]


# -- hub serve --catalog --------------------------------------------------------------------------------------


def test_hub_serve_adds_the_pages_beside_the_api(home: Path, tmp_path: Path) -> None:
    from hubserver import ALICE, Server, write_tokens

    catalog = f"sqlite:///{home / 'registry.db'}"
    public = Server(tmp_path / "public", None, "--public-read", "--catalog", catalog)
    try:
        page = get(public.url + "/_/?task=squad")
        _check_page(page)
        assert page.refs() == ["qa@1", "qa@2"]
        expert = get(public.url + "/_/experts/sum@1")  # its HUB_HOME is another: the blob is not there
        _check_page(expert)
        assert "The blob is not on this disk, so its per-weight entries are not shown" in expert.text()
        assert "xsum rougeL 31.25" in expert.text() and 'id="density"' not in expert.body
        _check_page(get(public.url + "/_/tasks"))
        _check_page(get(public.url + "/_/experts/nope"), 404)
        api = get(public.url + "/api/models")  # the Hub API as before: JSON
        assert api.status == 200 and api.headers["Content-Type"].startswith("application/json")
        missing = get(public.url + "/api/models/org/none")
        assert missing.status in (401, 404) and missing.headers["Content-Type"].startswith("application/json")
    finally:
        public.stop()
    private = Server(tmp_path / "private", write_tokens(tmp_path / "tokens.txt"), "--catalog", catalog)
    try:
        refused = get(private.url + "/_/")
        _check_page(refused, 401)
        assert "--public-read" in refused.text() and "qa@1" not in refused.body
        with_token = get(private.url + "/_/", headers={"Authorization": f"Bearer {ALICE}"})
        _check_page(with_token)
        assert with_token.refs() == ["cls@1", "qa@1", "qa@2", "sum@1"]
        _check_page(get(private.url + "/_/", headers={"Authorization": "Bearer wrong"}), 401)
    finally:
        private.stop()


# -- a real browser -------------------------------------------------------------------------------------------

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"]  # fmt: skip
SHOTS = os.environ.get("HUB_SCREENSHOTS")  # a folder: the browser tests save the main pages there (docs/web)


@pytest.fixture
def browser() -> Iterator[Any]:
    """A Playwright page in Debian's headless chromium (executable_path: no `playwright install`)."""
    if not CHROMIUM:
        if os.environ.get("CI"):
            pytest.fail("chromium is needed under CI (.ci/run installs it)")
        pytest.skip("chromium not installed (apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        if os.environ.get("CI"):
            raise
        pytest.skip("playwright not installed (pip install -e '.[dev]')")
    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        context = chromium.new_context(viewport={"width": 1200, "height": 800}, accept_downloads=True)
        context.set_default_timeout(30_000)
        try:
            yield context.new_page()
        finally:
            context.close()
            chromium.close()


def shot(page: Any, name: str) -> None:
    """Save what the browser shows as $HUB_SCREENSHOTS/<name>.png (when that is set)."""
    if SHOTS:
        from PIL import Image

        path = Path(SHOTS) / f"{name}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        size = page.viewport_size
        page.set_viewport_size({"width": size["width"], "height": 300})  # full_page: the page's height, no blank
        page.screenshot(path=str(path), full_page=True)
        page.set_viewport_size(size)
        with Image.open(path) as image:  # 256 colours: a page of text stays sharp at a third of the bytes
            small = image.convert("RGB").quantize(256, method=Image.Quantize.MEDIANCUT)
        small.save(path, optimize=True)


def style(page: Any, selector: str, prop: str) -> str:
    return page.eval_on_selector(selector, f"e => getComputedStyle(e).getPropertyValue({prop!r})")


def words(text: str) -> str:
    return " ".join(text.split())


@pytest.mark.browser
def test_in_a_browser_filter_the_list_then_open_an_expert(ui: str, browser: Any) -> None:
    page = browser
    page.goto(ui)
    assert page.title() == "Experts · hubtool"
    assert page.locator("#experts tbody tr td:first-child a").all_inner_texts() == ["cls@1", "qa@1", "qa@2", "sum@1"]
    # the stylesheet loaded under the CSP (its rules apply), and no script ran from the hostile tag
    assert style(page, "#experts th.num", "text-align") == "right"
    assert HOSTILE in page.inner_text("#f-tag")

    page.select_option("#f-task", label="squad")
    page.fill("#f-where", "exact_match>=50")
    page.click("#f-submit")
    page.wait_for_url(re.compile(r"task=squad.*where=exact_match"))
    assert page.locator("#experts tbody tr td:first-child a").all_inner_texts() == ["qa@2"]
    assert page.inner_text("#command") == "hub list --task squad --where 'exact_match>=50'"

    page.click("#experts >> text=qa@2")
    page.wait_for_url(re.compile(r"/_/experts/"))
    assert page.inner_text("#expert-ref") == "qa@2"
    assert "sparse expert for task squad" in page.inner_text("h1")
    assert "exact_match 55.5 30 +25.5" in words(page.inner_text("#metrics"))
    versions = page.inner_text("#versions")
    assert "qa@2 (this one)" in versions and "best" in versions

    # a bad where, typed into the form: the one-line error, on the page
    page.goto(ui + "?where=" + urllib.parse.quote("exact_match>="))
    assert page.inner_text("#list-error").startswith("Error: --where 'exact_match>=':")


@pytest.mark.browser
def test_with_the_keyboard_alone_filter_the_list_and_submit_with_enter(ui: str, browser: Any) -> None:
    """Tab from the top of the page: the skip link first (visible when focused), then the header's links,
    then the filter form's controls in reading order, each with a visible focus outline; type into them and
    submit the search with Enter, no mouse."""
    page = browser
    page.goto(ui)
    focus = "() => document.activeElement.id || document.activeElement.textContent.trim()"
    page.keyboard.press("Tab")
    assert page.evaluate(focus) == "Skip to content"
    assert page.eval_on_selector("a.skip", "e => e.getBoundingClientRect().left") >= 0  # on screen
    order = []
    for _ in range(20):
        page.keyboard.press("Tab")
        order.append(page.evaluate(focus))
        if order[-1] == "f-submit":
            break
    assert order == ["hubtool", "Experts", "Tasks", "Lineage", "Overlap", "Compose", "f-task", "f-category", "f-kind",
                     "f-base", "f-tag", "f-where", "f-sort", "f-limit", "f-submit"]  # fmt: skip
    page.focus("#f-task")
    assert style(page, "#f-task", "outline-style") == "solid"  # where the focus is, is visible
    page.keyboard.type("sq")  # a closed select's type-ahead picks "squad"
    assert page.eval_on_selector("#f-task", "e => e.value") == "squad"
    page.keyboard.press("Tab")
    for _ in range(4):  # category, kind, base, tag: left at "any"
        page.keyboard.press("Tab")
    assert page.evaluate(focus) == "f-where"
    page.keyboard.type("exact_match>=50")
    page.keyboard.press("Enter")  # submits the form
    page.wait_for_url(re.compile(r"task=squad.*where=exact_match"))
    assert page.locator("#experts tbody tr td:first-child a").all_inner_texts() == ["qa@2"]
    assert page.inner_text("#command") == "hub list --task squad --where 'exact_match>=50'"


@pytest.mark.slow
@pytest.mark.browser
def test_click_through_catalog_expert_parent_pushed_repo_download(home: Path, browser: Any, tmp_path: Path) -> None:
    """A person's path, in a browser, on one `hub serve --catalog`: filter the list, open an expert, follow
    its lineage to a parent, open the repo that parent was pushed to (`hub push` to this server), download a
    file. A copy of the catalog, so the pushes (they record the repo) leave the module's catalog as it was."""
    from hubserver import ALICE, Server, write_tokens

    mine = tmp_path / "hub-home"  # the server's HUB_HOME too (Server: root's parent / "hub-home"): blobs there
    shutil.copytree(home, mine)
    srv = Server(tmp_path / "root", write_tokens(tmp_path / "tokens.txt"), "--public-read", "--catalog",
                 f"sqlite:///{mine / 'registry.db'}")  # fmt: skip
    try:
        for ref, repo in (("qa@1", "org/qa"), ("sum@1", "org/sum")):
            pushed = hub("push", ref, "--repo", repo, "--endpoint", srv.url, "--token", ALICE, home=mine)
            assert pushed.returncode == 0, pushed.stderr
        page = browser
        page.goto(srv.url + "/_/")
        assert page.locator("#experts tbody tr td:first-child a").all_inner_texts() == ["cls@1", "qa@1", "qa@2", "sum@1"]
        shot(page, "catalog")

        page.select_option("#f-task", label="xsum")  # filter: the summarize expert
        page.click("#f-submit")
        page.wait_for_url(re.compile(r"task=xsum"))
        assert page.locator("#experts tbody tr td:first-child a").all_inner_texts() == ["sum@1"]
        assert page.inner_text("#command") == "hub list --task xsum"

        page.click("#experts >> text=sum@1")  # open the expert
        page.wait_for_url(srv.url + "/_/experts/sum%401")
        assert page.inner_text("#expert-ref") == "sum@1"
        assert "xsum rougeL 31.25" in words(page.inner_text("#metrics"))
        assert "parent: qa@1" in words(page.inner_text("#lineage"))

        page.click("#lineage >> text=qa@1")  # its lineage, to the parent
        page.wait_for_url(srv.url + "/_/experts/qa%401")
        assert page.inner_text("#expert-ref") == "qa@1"
        assert "child: sum@1" in words(page.inner_text("#lineage"))
        assert page.locator("#density").is_visible()  # the blob is on this server's disk: the density map
        facts = words(page.inner_text("#h-facts + dl"))
        found = re.search(r"hub (org/qa)@([0-9a-f]{40})", facts)
        assert found, facts  # the repo it was pushed to, at the commit
        assert "hub pull org/qa@" in page.inner_text("body")
        shot(page, "expert")

        page.goto(srv.url + "/" + found.group(1))  # open that repo, as the page names it
        assert page.inner_text("h1") == "model org/qa"
        card = words(page.inner_text("#card"))
        assert "A hubtool sparse expert for the task squad (category qa), a sparse delta over tiny-llama" in card
        assert "expert qa@1" in card and "hub pull org/qa" in card
        assert "squad exact_match 40" in words(page.inner_text("#evals"))  # the model-index, in the sidebar
        shot(page, "repo")

        page.get_by_role("link", name="Files", exact=True).click()
        page.wait_for_url(re.compile(r"/org/qa/tree/"))
        names = page.locator("#files tbody td:first-child").all_inner_texts()
        assert "hubtool.json" in names and "adapter_config.json" in names
        shot(page, "files")
        with page.expect_download() as download:  # the download, through /resolve
            page.locator("xpath=//tr[td/code='hubtool.json']//a[@class='download']").click()
        assert download.value.url.startswith(srv.url + "/org/qa/resolve/")
        record = json.loads(Path(download.value.path()).read_text())
        assert record["name"] == "qa" and record["version"] == 1

        page.get_by_role("link", name="Tasks", exact=True).click()
        page.wait_for_url(srv.url + "/_/tasks")
        assert "1 qa@2 tiny-llama 55.5 +25.5" in words(page.inner_text("#task-squad"))
        shot(page, "tasks")
    finally:
        srv.stop()


@pytest.fixture
def merged_ui(home: Path, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A real `hub ui` over a copy of the module's catalog plus qa-sum@1: a real `hub compose --as-expert`
    (ties) of qa@2 and sum@1, so the lineage has a merge, and the merged expert a recipe."""
    mine = tmp_path / "hub"
    shutil.copytree(home, mine)
    made = hub("compose", "--experts", "qa@2,sum@1", "--method", "ties", "--density", "0.5", "--weights", "1,0.5",
               "--as-expert", "qa-sum", home=mine)  # fmt: skip
    assert made.returncode == 0, made.stderr
    log = tmp_path / "ui.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "hubtool", "ui", "--port", "0"], stdout=out,
                                stderr=subprocess.STDOUT, env=_env(mine))  # fmt: skip
    try:
        yield _wait_address(proc, log), mine
    finally:
        proc.terminate()
        proc.wait(timeout=15)


def _rows(page: Any, table: str) -> list[str]:
    return [words(t) for t in page.locator(f"#{table} tbody tr").all_inner_texts()]


@pytest.mark.browser
def test_in_a_browser_compare_from_the_list_then_plan_a_compose(merged_ui: tuple[str, Path], browser: Any) -> None:
    """From the list, check three experts and compare them; from the header, open the compose form, fill it in,
    submit it and read the plan on the page (the dry run writes nothing); then the overlap heatmap, the lineage
    graph and the merged expert's page (its recipe, neighbourhood, budget): what a person sees, screenshots."""
    ui, mine = merged_ui
    page = browser
    page.goto(ui)
    for ref in ("qa@1", "qa@2", "sum@1"):
        page.get_by_label(f"Compare {ref}", exact=True).check()
    page.click("#compare-submit")
    page.wait_for_url(re.compile(r"/_/compare\?expert=qa%401&expert=qa%402&expert=sum%401$"))
    assert page.locator("#compare thead th a").all_inner_texts() == ["qa@1", "qa@2", "sum@1"]
    assert "task squad squad xsum" in _rows(page, "compare")
    assert "squad exact_match 40 ★ 55.5 - 30" in _rows(page, "compare-metrics")  # the best marked, in words too
    assert page.locator("#compare-overlap tbody tr").count() == 3
    shot(page, "compare")

    page.get_by_role("link", name="per layer", exact=True).click()  # the overlap page of the same experts
    page.wait_for_url(re.compile(r"/_/overlap\?experts="))
    assert page.inner_text("#command") == "hub overlap --experts qa@1,qa@2,sum@1"
    assert [r.split()[0] for r in _rows(page, "overlap")] == ["qa@1", "qa@2", "sum@1"]
    shot(page, "overlap")

    page.get_by_role("link", name="Compose", exact=True).click()
    page.wait_for_url(ui + "compose")
    page.fill("#m-tasks", "squad, xsum")
    page.select_option("#m-method", "ties")
    page.fill("#m-density", "0.5")
    page.fill("#m-name", "qa-sum")
    page.click("#m-submit")
    page.wait_for_url(re.compile(r"/_/compose\?tasks=squad%2C\+xsum&.*method=ties"))
    assert page.inner_text("#h-plan") == "Plan: ties on tiny-llama"
    plan = _rows(page, "plan")
    assert [r.split()[:2] for r in plan] == [["squad", "qa@2"], ["xsum", "sum@1"]]
    assert "best exact_match 55.5 of 2" in plan[0]  # why qa@2 was chosen
    assert "Nothing was written (dry run)." in page.inner_text("#output-size")
    assert page.inner_text("#command").startswith("hub compose --tasks 'squad, xsum' --method ties --density 0.5")
    assert "expert: qa@2" in page.inner_text("#recipe")
    assert page.eval_on_selector("#m-density", "e => e.value") == "0.5"  # the form keeps what was asked
    listed = json.loads(hub("list", "--json", home=mine).stdout)
    assert [r["ref"] for r in listed] == ["cls@1", "qa@1", "qa@2", "qa-sum@1", "sum@1"]  # nothing new written
    shot(page, "compose")

    page.get_by_role("link", name="Lineage", exact=True).click()
    page.wait_for_url(ui + "lineage")
    page.click("#bases >> text=tiny-llama")
    page.wait_for_url(re.compile(r"/_/lineage\?base=tiny-llama"))
    titles = page.locator("svg.lineage-graph text.column-title").all_text_contents()
    assert titles[0] == "base model" and len(titles) == 4
    shot(page, "lineage")

    page.locator("svg.lineage-graph a", has_text="qa-sum@1").click()  # a box of the graph: its expert
    page.wait_for_url(re.compile(r"/_/experts/qa-sum(@|%40)1$"))
    assert page.inner_text("#recipe-method").startswith("ties")
    assert page.inner_text("#recipe-command") == ("hub compose --experts qa@2,sum@1 --method ties --weights 1.0,0.5 "
                                                  "--density 0.5 --as-expert qa-sum")  # fmt: skip
    assert "qa@2" in page.inner_text("#recipe-parents") and page.locator("#budget-layers").is_visible()
    shot(page, "expert-merged")
