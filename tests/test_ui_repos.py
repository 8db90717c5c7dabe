"""hub serve's own pages for what was pushed to it (issue 16, second slice): repo pages (model card and its
metadata sidebar, files with sizes and LFS badges, commits with their changed paths, the branch/tag switch),
the model tree of a base model, and the login form.

Everything runs against a real `hub serve` (tests/hubserver.py) holding repos pushed by the real
huggingface_hub client, over real HTTP; the browser test drives a real headless chromium (Playwright), as
tests/test_ui.py does: `pytest tests/test_ui_repos.py -m browser` runs it alone.
"""

from __future__ import annotations

import html
import json
import re
import shutil
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hubserver import ALICE, Server, write_tokens
from test_ui import browser, shot, style  # noqa: F401  (the browser fixture)

from hubtool.fileio import human_bytes

HOSTILE = "<script>alert('x')</script>"
NOTE = "notes/<script>alert('x').txt"  # a file name can't hold the closing tag's "/"
CSP = "default-src 'self'"
HTML = {"Accept": "text/html,application/xhtml+xml"}

CARD = f"""---
license: apache-2.0
base_model: org/base
base_model_relation: adapter
tags:
- sparse
- "{HOSTILE}"
model-index:
- name: org/model
  results:
  - task: {{type: question-answering, name: Question answering}}
    dataset: {{name: squad, type: squad}}
    metrics:
    - {{type: exact_match, value: 55.5, name: Exact match}}
    - {{type: f1, value: 61.25}}
---
# Sparse expert for squad

Trained on **squad**. {HOSTILE}

[click me](javascript:alert(1)) and <img src=x onerror=alert(1)>
"""


class Page:
    def __init__(self, status: int, headers: dict[str, str], body: str) -> None:
        self.status, self.headers, self.body = status, headers, body

    def text(self) -> str:
        return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", self.body)).split())

    def part(self, element_id: str) -> str:
        """The text of the element with this id (up to its closing tag of the same name)."""
        found = re.search(rf'<(\w+)[^>]*id="{element_id}"[^>]*>(.*?)</\1>', self.body, re.DOTALL)
        assert found, f"no element {element_id!r} on the page"
        return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", found.group(2))).split())


def fetch(srv: Server, path: str, *, method: str = "GET", cookie: str | None = None, body: bytes | None = None,
          headers: dict | None = None, accept_html: bool = True) -> Page:  # fmt: skip
    hdrs = dict(HTML if accept_html else {}) | (headers or {})
    if cookie:
        hdrs["Cookie"] = cookie
    status, got, data = srv.raw(method, path, token=None, body=body, headers=hdrs)
    return Page(status, got, data.decode("utf-8", "replace"))


def check(page: Page, status: int = 200) -> Page:
    assert page.status == status, page.text()[:600]
    assert page.headers["content-security-policy"] == CSP
    assert page.headers["content-type"].startswith("text/html")
    return page


def login(srv: Server, token: str = ALICE, *, origin: str | None = "self", next_page: str = "/_/repos") -> Page:
    body = urllib.parse.urlencode({"token": token, "next": next_page}).encode()
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    if origin:
        headers["Origin"] = srv.url if origin == "self" else origin
    return fetch(srv, "/_/login", method="POST", body=body, headers=headers)


def session(srv: Server) -> str:
    answer = login(srv)
    assert answer.status == 303, answer.text()[:300]
    return answer.headers["set-cookie"].split(";")[0]


# -- the hub: repos pushed by huggingface_hub --------------------------------------------------------------


def _push(srv: Server, tmp: Path) -> dict[str, str]:
    from safetensors.numpy import save_file

    api = srv.api()
    api.create_repo("org/base")
    api.upload_file(path_or_fileobj=b"---\ntags: [base]\n---\n# The base\n", path_in_repo="README.md",
                    repo_id="org/base")  # fmt: skip
    folder = tmp / "model"
    (folder / "notes").mkdir(parents=True)
    (folder / "README.md").write_text(CARD)
    rng = np.random.default_rng(0)
    save_file({"w": rng.standard_normal((64, 256)).astype(np.float32)}, str(folder / "adapter_model.safetensors"))
    (folder / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 4}))
    (folder / NOTE).write_text("hostile name\n")
    api.create_repo("org/model")
    first = api.upload_folder(folder_path=folder, repo_id="org/model", commit_message=f"add the expert {HOSTILE}")
    api.create_tag("org/model", tag="v1", revision=first.oid)
    api.create_branch("org/model", branch="dev", revision=first.oid)
    api.upload_file(path_or_fileobj=b"only on dev\n", path_in_repo="DEV.txt", repo_id="org/model", revision="dev",
                    commit_message="a dev file")  # fmt: skip
    api.upload_file(path_or_fileobj=b"second\n", path_in_repo="CHANGES.txt", repo_id="org/model",
                    commit_message="second commit")  # fmt: skip
    api.delete_file(NOTE, repo_id="org/model", commit_message="third: drop the note")
    for name, card, private in (
        ("org/merged", "---\nbase_model: [org/base, org/other]\n---\nmerged\n", False),
        ("org/secret", "---\nbase_model: org/base\nbase_model_relation: finetune\n---\nsecret\n", True),
    ):
        api.create_repo(name, private=private)
        api.upload_file(path_or_fileobj=card.encode(), path_in_repo="README.md", repo_id=name)
    return {"first": first.oid, "weights": (folder / "adapter_model.safetensors").read_bytes().hex()}


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Server, dict[str, str]]]:
    """(a server that needs a login, the same repos behind --public-read, what was pushed)."""
    tmp = tmp_path_factory.mktemp("repos")
    tokens = write_tokens(tmp / "tokens.txt")
    srv = Server(tmp / "root", tokens)
    try:
        pushed = _push(srv, tmp)
        shutil.copytree(tmp / "root", tmp / "public", ignore=shutil.ignore_patterns(".serve.lock"))
        public = Server(tmp / "public", tokens, "--public-read")
        try:
            yield srv, public, pushed
        finally:
            public.stop()
    finally:
        srv.stop()


# -- API clients keep their answers ---------------------------------------------------------------------------


def test_api_clients_get_what_they_got_before(hub: Any, tmp_path: Path) -> None:
    _, public, pushed = hub
    for path in ("/org/model", "/org/model/tree/main", "/org/model/commits/main", "/api/nope"):
        answer = fetch(public, path, accept_html=False)
        assert answer.status == 404 and answer.headers["content-type"].startswith("application/json"), path
    # a path that is no repo id: still the API's 404, for a browser too (the page rows skip it)
    bad = fetch(public, "/api/x", accept_html=True)
    assert bad.status == 404 and bad.headers["content-type"].startswith("application/json")
    from huggingface_hub import hf_hub_download

    got = hf_hub_download("org/model", "adapter_model.safetensors", revision="v1", endpoint=public.url,
                          token=ALICE, cache_dir=tmp_path)  # fmt: skip
    assert Path(got).read_bytes().hex() == pushed["weights"]
    assert public.api().model_info("org/model").card_data.base_model == "org/base"


# -- auth: the login form and its cookie ----------------------------------------------------------------------


def test_without_public_read_pages_need_a_login(hub: Any) -> None:
    srv, _, _ = hub
    refused = check(fetch(srv, "/org/model"), 401)
    assert "Sparse expert" not in refused.body and "/_/login?next=" in refused.body
    assert "org/model" not in check(fetch(srv, "/_/repos")).part("main")
    catalog = check(fetch(srv, "/_/"), 401)  # slice 1's catalog pages
    assert "/_/login" in catalog.text()
    form = check(fetch(srv, "/_/login?next=/org/model"))
    assert 'type="password"' in form.body and 'value="/org/model"' in form.body
    assert 'for="token"' in form.body  # a labelled control


def test_login_sets_a_strict_httponly_cookie_that_the_pages_read(hub: Any) -> None:
    srv, _, _ = hub
    answer = login(srv, next_page="/org/model")
    assert answer.status == 303 and answer.headers["location"] == "/org/model"
    cookie = answer.headers["set-cookie"]
    assert "HttpOnly" in cookie and "samesite=strict" in cookie.lower() and "Path=/" in cookie
    jar = cookie.split(";")[0]
    page = check(fetch(srv, "/org/model", cookie=jar))
    assert "Logged in as alice" in page.text() and "Sparse expert for squad" in page.text()
    assert check(fetch(srv, "/_/", cookie=jar)).status == 200  # the catalog pages work after login
    assert "org/secret" in check(fetch(srv, "/_/repos", cookie=jar)).part("repos")
    # the cookie never authorizes a write: the API still wants the Authorization header
    create = fetch(srv, "/api/repos/create", method="POST", cookie=jar, accept_html=False,
                   body=json.dumps({"name": "evil", "organization": "org"}).encode(),
                   headers={"Content-Type": "application/json"})  # fmt: skip
    assert create.status == 401
    # logging out clears it
    out = fetch(srv, "/_/logout", method="POST", cookie=jar, headers={"Origin": srv.url}, body=b"")
    assert out.status == 303 and re.search(r"hub_session=(\"\")?;", out.headers["set-cookie"])


def test_a_bad_token_or_a_foreign_origin_is_refused(hub: Any) -> None:
    srv, _, _ = hub
    wrong = check(login(srv, "not-a-token-of-anyone"), 401)
    assert "That token is not valid" in wrong.part("login-error") and "set-cookie" not in wrong.headers
    foreign = login(srv, origin="http://evil.example")
    assert foreign.status == 403 and "set-cookie" not in foreign.headers
    assert login(srv, origin=None).status == 403  # a login with neither Origin nor Referer
    # any POST from another origin, API ones included, is refused before its handler runs
    api = srv.raw("POST", "/api/repos/create", body=b"{}", headers={"Origin": "http://evil.example"})
    assert api[0] == 403
    # after a login, only a path on this server: never another host
    assert login(srv, next_page="//evil.example/x").headers["location"] == "/_/repos"


# -- repo pages -----------------------------------------------------------------------------------------------


def test_repo_page_renders_the_card_as_text_with_its_metadata(hub: Any) -> None:
    _, public, pushed = hub
    page = check(fetch(public, "/org/model"))
    card = page.part("card")
    assert "Sparse expert for squad" in card and "<h2>Sparse expert for squad</h2>" in page.body  # one <h1>
    assert "<strong>squad</strong>" in page.body
    # hostile content stays text: no script, no img, no javascript: link
    assert "<script>" not in page.body and "<img" not in page.body and 'href="javascript:' not in page.body
    assert HOSTILE in card and "<img src=x onerror=alert(1)>" in card
    assert 'href="/org/base"' in page.body and "org/base" in page.part("base-models")
    assert "adapter" in page.part("base-models")
    assert page.part("tags") == f"sparse {HOSTILE}"
    evals = page.part("evals")
    assert evals.startswith("task: Question answering")  # every row's task: said once, above the table
    assert "squad Exact match 55.5" in evals and "squad f1 61.25" in evals
    base = check(fetch(public, "/org/base"))
    assert "The base" in base.part("card")
    assert "1 adapter" in base.part("model-tree") and "1 merge" in base.part("model-tree")
    assert 'href="/_/tree/org/base"' in base.body
    assert check(fetch(public, "/org/nope"), 404).part("page-error") == "Repository not found: org/nope"
    # private: to the anonymous, a page like a missing repo's (the API's 401 would say that it exists)
    assert check(fetch(public, "/org/secret"), 404).part("page-error") == "Repository not found: org/secret"
    assert pushed


def test_files_page_lists_sizes_and_lfs_and_downloads_through_resolve(hub: Any) -> None:
    _, public, pushed = hub
    page = check(fetch(public, "/org/model/tree/v1"))
    row = r"<tr>\s*<td><code>(.*?)</code></td>\s*<td[^>]*>(.*?)</td>\s*<td>(.*?)</td>"
    rows = re.findall(row, page.body, re.DOTALL)
    files = {html.unescape(name): (size, "LFS" in store) for name, size, store in rows}
    assert set(files) == {".gitattributes", "README.md", "adapter_config.json", "adapter_model.safetensors",
                          NOTE}  # fmt: skip
    assert files["adapter_model.safetensors"][1] and not files["README.md"][1]
    assert files["adapter_model.safetensors"][0] == human_bytes(len(pushed["weights"]) // 2)  # hub list's units
    assert "<script>" not in page.body
    links = dict(zip(map(html.unescape, re.findall(r"<td><code>(.*?)</code></td>", page.body)),
                     re.findall(r'class="download" href="([^"]+)"', page.body), strict=True))  # fmt: skip
    weights = links["adapter_model.safetensors"]
    assert weights == f"/org/model/resolve/{pushed['first']}/adapter_model.safetensors"
    status, _, data = public.raw("GET", weights, token=None)
    assert status == 200 and data.hex() == pushed["weights"]
    hostile = html.unescape(links[NOTE])
    status, _, data = public.raw("GET", hostile, token=None)
    assert status == 200 and data == b"hostile name\n"
    folder = check(fetch(public, "/org/model/tree/v1/notes"))
    assert "1 file" in folder.text() and "README.md" not in folder.body
    main = check(fetch(public, "/org/model/tree/main")).text()
    assert "CHANGES.txt" in main and "DEV.txt" not in main and NOTE not in main
    assert "DEV.txt" in check(fetch(public, "/org/model/tree/dev")).text()
    assert check(fetch(public, "/org/model/tree/nope"), 404).status == 404


def test_commits_page_shows_each_commits_changed_paths(hub: Any) -> None:
    _, public, _ = hub
    page = check(fetch(public, "/org/model/commits/main"))
    commits = [" ".join(html.unescape(re.sub(r"<[^>]+>", " ", c)).split())
               for c in re.findall(r'<li class="commit">(.*?)</li>\s*(?=<li class="commit">|</ol>)', page.body, re.DOTALL)]  # fmt: skip
    assert len(commits) == 4  # initial, the folder, CHANGES.txt, the deletion: newest first
    assert commits[0].startswith("third: drop the note") and f"deleted {NOTE}" in commits[0]
    assert commits[1].startswith("second commit") and "added CHANGES.txt" in commits[1]
    assert commits[2].startswith(f"add the expert {HOSTILE}") and "added adapter_model.safetensors" in commits[2]
    assert "modified" not in commits[2] and "<script>" not in page.body
    dev = check(fetch(public, "/org/model/commits/dev")).text()
    assert "a dev file" in dev and "second commit" not in dev
    assert "second commit" not in check(fetch(public, "/org/model/commits/v1")).text()


def test_the_branch_and_tag_switch_is_a_plain_form(hub: Any) -> None:
    _, public, _ = hub
    page = check(fetch(public, "/org/model/tree/main"))
    options = re.findall(r'<option value="([^"]+)"( selected)?>', page.body)
    assert options == [("dev", ""), ("main", " selected"), ("v1", "")]
    moved = fetch(public, "/org/model?rev=dev&view=tree")
    assert moved.status == 303 and moved.headers["location"] == "/org/model/tree/dev"
    moved = fetch(public, "/org/model?rev=v1&view=commits")
    assert moved.status == 303 and moved.headers["location"] == "/org/model/commits/v1"
    assert "Sparse expert" in check(fetch(public, "/org/model?rev=v1&view=card")).text()
    assert check(fetch(public, "/org/model?rev=..%2Fx&view=tree"), 400).status == 400


def test_model_tree_groups_adapters_and_merges_and_hides_private_repos(hub: Any) -> None:
    srv, public, _ = hub
    page = check(fetch(public, "/_/tree/org/base"))
    assert page.part("base") == "org/base" and 'href="/org/base"' in page.body
    assert "org/model" in page.part("rel-adapter") and "org/merged" in page.part("rel-merge")
    assert "org/secret" not in page.body  # private, and nobody logged in
    assert "org/secret" not in check(fetch(public, "/_/repos")).body
    other = check(fetch(public, "/_/tree/org/other"))
    assert "org/merged" in other.part("rel-merge") and 'id="base"' in other.body
    assert "No repo you can read" in check(fetch(public, "/_/tree/nobody/none")).text()
    logged = check(fetch(public, "/_/tree/org/base", cookie=session(public)))
    assert "org/secret" in logged.part("rel-finetune")
    assert check(fetch(srv, "/_/tree/org/base"), 401).status == 401


# -- a real browser ---------------------------------------------------------------------------------------------


@pytest.mark.browser
def test_in_a_browser_log_in_open_a_repo_switch_branch_download(hub: Any, browser: Any) -> None:  # noqa: F811
    srv, _, pushed = hub
    page = browser
    page.goto(srv.url + "/org/model")
    assert "Log in" in page.inner_text("h1")  # the 401 page
    page.locator("main a", has_text="Log in").first.click()
    page.fill("#token", ALICE)
    page.click("#login-submit")
    page.wait_for_url(srv.url + "/org/model")
    assert page.inner_text("#user") == "Logged in as alice"
    assert page.inner_text("#card h2") == "Sparse expert for squad"
    assert HOSTILE in page.inner_text("#card")  # shown as text, never run
    assert page.locator("#base-models a").first.inner_text() == "org/base"
    # the stylesheet applies under the CSP
    assert style(page, "#evals th.num", "text-align") == "right"
    (cookie,) = [c for c in page.context.cookies() if c["name"] == "hub_session"]
    assert cookie["httpOnly"] is True and cookie["sameSite"] == "Strict"

    page.get_by_role("link", name="Files", exact=True).click()
    page.select_option("#rev", label="dev")
    page.click("#rev-submit")
    page.wait_for_url(srv.url + "/org/model/tree/dev")
    names = page.locator("#files tbody td:first-child").all_inner_texts()
    assert "DEV.txt" in names and "CHANGES.txt" not in names
    link = page.locator("xpath=//tr[td/code='adapter_config.json']//a[@class='download']")
    assert link.get_attribute("href").startswith("/org/model/resolve/")
    with page.expect_download() as download:  # the browser downloads it with its login cookie, via /resolve
        link.click()
    assert download.value.suggested_filename == "adapter_config.json"
    assert json.loads(Path(download.value.path()).read_text()) == {"peft_type": "LORA", "r": 4}
    assert page.url == srv.url + "/org/model/tree/dev" and pushed

    # the model tree of the base: its adapter and its merge, each a link; the private one for alice too
    page.get_by_role("link", name="Model card", exact=True).click()
    page.locator("#base-models a", has_text="org/base").first.click()  # the card's base model, then its tree
    page.wait_for_url(srv.url + "/org/base")
    page.click("#tree-link")
    page.wait_for_url(srv.url + "/_/tree/org/base")
    assert page.inner_text("#base") == "org/base"
    assert "org/model" in page.inner_text("#rel-adapter") and "org/merged" in page.inner_text("#rel-merge")
    assert "org/secret" in page.inner_text("#rel-finetune")
    shot(page, "tree")
