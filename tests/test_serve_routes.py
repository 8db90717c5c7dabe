"""`hub serve`'s route table, its request JSON loader and the CLI's defaults, without a server process
(tests/test_serve.py drives the same paths through a real `hub serve`)."""

from __future__ import annotations

import inspect
import json

import pytest

pytest.importorskip("starlette")

from hubtool.hub.server import commits, defaults, downloads, http, lfs, refs, repos, routes, xet
from hubtool.hub.server.errors import ApiError
from hubtool.hub.server.storage import RepoRef


def _find(method: str, raw: bytes):
    return routes.find(method, routes.path_segments(raw))


def _kwargs_of(route: routes.Route) -> set[str]:
    """The keyword arguments a row passes to its handler (what PARAMS' bind functions put in)."""
    names = {t[1:-1] for t in route.tokens if t.startswith("{")}
    out = set()
    for name in names:
        out |= {
            "type": {"repo_type"} if not names & {"repo", "repo_git"} else set(),
            "prefix": set(),
            "repo": {"repo"},
            "repo_git": {"repo"},
            "oid": {"oid"},
            "revision": {"revision"},
            "branch": {"branch"},
            "revision_path": {"revision", "path"},
            "revision_file": {"revision", "path"},
            "rest": set(),
            "cas_path": {"cas_path"},
        }[name]
    return out


def test_every_row_calls_its_handler_with_what_it_takes():
    seen = set()
    for route in routes.ROUTES:
        key = (route.methods, route.pattern)
        assert key not in seen, key
        seen.add(key)
        kwargs = dict.fromkeys(_kwargs_of(route))
        inspect.signature(route.handler).bind(
            None, None, **kwargs
        )  # TypeError if a row and its handler disagree


@pytest.mark.parametrize(
    ("method", "raw", "handler", "kwargs"),
    [
        ("GET", b"/", None, {}),
        ("POST", b"//", None, {}),
        ("GET", b"/api/spaces", repos.list_repos, {"repo_type": "space"}),
        ("GET", b"/api/models/org/x/", repos.info, {"repo": RepoRef("model", "org/x")}),
        (
            "GET",
            b"/api/datasets/org/x/revision/refs%2Fpr%2F1",
            repos.info,
            {"repo": RepoRef("dataset", "org/x"), "revision": "refs/pr/1"},
        ),
        (
            "GET",
            b"/api/models/org/x/tree/main/a%2Fb?recursive=1",
            refs.tree,
            {"repo": RepoRef("model", "org/x"), "revision": "main", "path": "a/b"},
        ),
        (
            "GET",
            b"/api/models/org/x/tree/refs/heads/dev",
            refs.tree,
            {"repo": RepoRef("model", "org/x"), "revision": "refs/heads/dev", "path": ""},
        ),
        (
            "DELETE",
            b"/api/models/org/x/branch/dev",
            refs.branch,
            {"repo": RepoRef("model", "org/x"), "branch": "dev"},
        ),
        (
            "POST",
            b"/api/models/org/x/commit/main",
            commits.commit,
            {"repo": RepoRef("model", "org/x"), "revision": "main"},
        ),
        (
            "PUT",
            b"/api/models/org/x/xet-write-token/main",
            xet.write_token,
            {"repo": RepoRef("model", "org/x")},
        ),
        (
            "HEAD",
            b"/datasets/org/x/resolve/refs/heads/dev/dir/f.txt",
            downloads.resolve,
            {"repo": RepoRef("dataset", "org/x"), "revision": "refs/heads/dev", "path": "dir/f.txt"},
        ),
        (
            "GET",
            b"/org/x/resolve/main/a%2Fb.txt",
            downloads.resolve,
            {"repo": RepoRef("model", "org/x"), "revision": "main", "path": "a/b.txt"},
        ),
        ("POST", b"/spaces/org/x.git/info/lfs/objects/batch", lfs.batch, {"repo": RepoRef("space", "org/x")}),
        ("PUT", b"/_lfs/upload/abc", lfs.upload, {"oid": "abc"}),
    ],
)
def test_paths_reach_their_handler(method, raw, handler, kwargs):
    route, found = _find(method, raw)
    if handler is None:
        assert route.pattern == "/"
    else:
        assert route.handler is handler
    assert found == kwargs


@pytest.mark.parametrize(
    ("method", "raw", "status", "code"),
    [
        ("GET", b"/api/models/../etc/passwd", 400, "InvalidRepoId"),  # under a repo: its id is checked first
        ("PATCH", b"/api/models/api/x", 400, "InvalidRepoId"),
        ("PATCH", b"/api/models/org/x", 404, None),  # a row's path with another method
        ("GET", b"/api/models/org/x/nothing", 404, None),
        ("GET", b"/api/models/org", 404, None),
        ("GET", b"/api/nothing", 404, None),
        ("POST", b"/org/x/resolve/main/f.txt", 404, None),
        ("GET", b"/org/x/resolve/main", 404, None),  # a revision but no file
        ("GET", b"/org/x.git/info/lfs/locks", 404, None),
        ("GET", b"/a..b/x.git/info/lfs/locks", 400, "InvalidRepoId"),
        ("GET", b"/_ui/org/x", 404, None),
    ],
)
def test_refusals(method, raw, status, code):
    with pytest.raises(ApiError) as err:
        _find(method, raw)
    assert (err.value.status, err.value.code) == (status, code)


def test_a_new_endpoint_is_a_row():
    """What routes.py's docstring promises the web pages and Xet issues: a module's handler plus a row."""

    async def page(hub, request, repo):
        return repo

    row = routes.Route("GET", "/_ui/{prefix}/{repo}", page)
    assert row.match(routes.path_segments(b"/_ui/datasets/org/x")) == [
        ("prefix", ["datasets"]),
        ("repo", ["org", "x"]),
    ]
    assert row.match(routes.path_segments(b"/_ui/org/x/more")) is None
    with pytest.raises(ValueError, match="unknown parameter"):
        routes.Route("GET", "/_ui/{nope}", page)
    with pytest.raises(ValueError, match="comes last"):
        routes.Route("GET", "/_ui/{rest}/x", page)


def test_path_segments_are_decoded_one_by_one():
    assert routes.path_segments(b"/a%2Fb/c/?x=1") == ["a/b", "c"]
    assert routes.path_segments(b"/") == []
    with pytest.raises(UnicodeDecodeError):
        routes.path_segments(b"/a%ffb")


def test_request_bodies_use_the_one_safe_json_loader():
    assert http.loads(b'{"a": [1, NaN]}')["a"][0] == 1
    ok = b"[" * defaults.MAX_JSON_DEPTH + b"]" * defaults.MAX_JSON_DEPTH
    assert http.loads(ok)
    cases = [
        b"[" * (defaults.MAX_JSON_DEPTH + 1) + b"]" * (defaults.MAX_JSON_DEPTH + 1),
        b"[" * 100_000,
        b'{"\\ud800": 1}',
        b'{"a": ["\\udfff"]}',
        b"{'a': 1}",
        b"\xff",
        b"1" * 5000,
    ]
    for body in cases:
        with pytest.raises(ApiError) as err:
            http.loads(body)
        assert (err.value.status, err.value.code) == (400, "InvalidJson"), body[:20]
        assert err.value.message.startswith("the request body: "), err.value.message
    assert http.loads(json.dumps({"paired": "\U0001f600"})) == {"paired": "\U0001f600"}


def test_cli_defaults_are_the_servers_constants():
    import typer

    from hubtool.cli import app

    command = typer.main.get_command(app).commands["serve"]
    got = {p.name: p.default for p in command.params}
    assert got["host"] == defaults.HOST and got["port"] == defaults.PORT
    assert got["log_level"] == defaults.LOG_LEVEL
    assert (got["auth_burst"], got["auth_rate"]) == (defaults.AUTH_BURST, defaults.AUTH_RATE)
    assert int(got["max_commit_gib"] * 2**30) == defaults.MAX_COMMIT_BODY
    from hubtool.hub.server import app as server_app

    serve_defaults = {k: v.default for k, v in inspect.signature(server_app.serve).parameters.items()}
    assert (
        serve_defaults["port"] == defaults.PORT
        and serve_defaults["max_commit_bytes"] == defaults.MAX_COMMIT_BODY
    )
