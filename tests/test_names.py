"""Repo-id and revision rules, once (issue 15 §4): hubtool.hub.names against the references.

- Repo ids: push/pull's rule (hub/client.py) accepts exactly what huggingface_hub's own validate_repo_id
  accepts, on strings generated from huggingface_hub's regex, from the rule's alphabet and from any text.
  The one deliberate difference: a non-string (huggingface_hub lets None through, "no repo id").
- `hub serve` (hub/server/names.py) accepts the shared rule minus its reservations: namespaces that are its
  URL space, and names starting with '_' (its pages).
- Revisions: compared with real git (`git check-ref-format refs/heads/REV`, and `--branch` for new branch
  names). We are stricter in three ways, each named in `_stricter_than_git`.
- Client and server agree on every generated revision; a bad one is one line naming the argument.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id
from huggingface_hub.utils._validators import REPO_ID_REGEX
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from hubtool.errors import HubError
from hubtool.hub import names
from hubtool.hub.client import check_repo_id, check_revision, split_repo
from hubtool.hub.server import names as server_names
from hubtool.hub.server.errors import ApiError

FAST = settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
GIT = shutil.which("git")


def hf_accepts(repo_id: str) -> bool:
    try:
        validate_repo_id(repo_id)
    except HFValidationError:
        return False
    return True


def client_accepts_repo(repo_id: str) -> bool:
    try:
        check_repo_id(repo_id, "--repo")
    except HubError as err:
        line = str(err)
        assert "\n" not in line and line.startswith("--repo "), line
        assert len(line) < 400, line  # a 10 kB id is shown cut, not whole
        return False
    return True


# Parts built from the rule's own alphabet with the characters at its edges, lengths around the 96 limit.
_part = st.one_of(
    st.text(alphabet="aZ9_-.", max_size=6),
    st.text(alphabet="aZ9_-.", min_size=90, max_size=100),
    st.sampled_from(["", "_", "-", ".", "a", "a.git", "x" * 96, "x" * 97, "_lfs", "API", "a--b", "a..b"]),
)
_odd = st.sampled_from(["é", "٣", "²", " ", "\n", "\x00", "/", "@", "\\", "~", ":", "%2F", "ａ"])
repo_ids = st.one_of(
    st.from_regex(REPO_ID_REGEX, fullmatch=True),  # what huggingface_hub accepts (mostly)
    st.lists(_part, min_size=1, max_size=3).map("/".join),
    st.tuples(st.lists(_part, min_size=1, max_size=2).map("/".join), _odd, _part).map("".join),
    st.builds(
        lambda s, git: s + (".git" if git else ""),
        st.from_regex(REPO_ID_REGEX, fullmatch=True),
        st.booleans(),
    ),
    st.text(max_size=40),
)


@FAST
@given(repo_ids)
@example("a" * 96)
@example("a" * 97)
@example("a" * 96 + "/" + "b" * 96)
@example("_x")  # a leading '_' is a word character to huggingface_hub's \b: accepted
@example("x_")
@example("x.git/y")  # only the id's end is checked for '.git'
@example("x/y.git")
@example("a--b")
@example("a/b..c")
@example("-a")
@example("a-")
@example(".a")
@example("a.")
@example("a/b/c")
@example("/a")
@example("a/")
@example("")
@example("é")
@example("a\n")
def test_client_repo_id_rule_is_huggingface_hubs(repo_id):
    assert client_accepts_repo(repo_id) == hf_accepts(repo_id), repo_id
    assert (names.repo_id_problem(repo_id) is None) == hf_accepts(repo_id)


def test_client_repo_id_refuses_what_is_not_a_string():
    # The one deliberate difference: huggingface_hub lets None through ("no repo id given").
    for value in (None, 3, b"org/name", ["org", "name"]):
        with pytest.raises(HubError, match=r"^--repo .*expected a string"):
            check_repo_id(value, "--repo")


def server_accepts(namespace: str, name: str) -> bool:
    try:
        assert server_names.check_repo_id(namespace, name) == f"{namespace}/{name}"
    except ApiError as err:
        assert err.status == 400 and err.code == "InvalidRepoId", err.message
        assert "\n" not in err.message
        return False
    return True


def _server_reserves(namespace: str, name: str) -> str | None:
    """The server's extra rules, on top of the shared one: which one refuses namespace/name, or None."""
    if namespace.lower() in server_names.RESERVED_NAMESPACES:
        return "namespace is the server's URL space (/api, /datasets/..., /_lfs, ...)"
    if namespace.startswith("_") or name.startswith("_"):
        return "a name starting with '_' is kept for the server's pages"
    return None


@FAST
@given(st.tuples(_part | st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,8}", fullmatch=True), _part))
@example(("api", "x"))
@example(("Datasets", "x"))
@example(("_lfs", "x"))
@example(("_org", "x"))
@example(("org", "_x"))
@example(("x.git", "y"))
@example(("org", "y.git"))
@example(("org", "a" * 96))
def test_server_repo_id_is_the_shared_rule_minus_its_reservations(parts):
    namespace, name = parts
    repo_id = f"{namespace}/{name}"
    shared = names.repo_id_problem(repo_id) is None
    assert server_accepts(namespace, name) == (shared and _server_reserves(namespace, name) is None), repo_id
    if server_accepts(namespace, name):
        assert hf_accepts(repo_id) and client_accepts_repo(repo_id)


def test_server_names_the_reservation():
    with pytest.raises(ApiError, match="reserved for the server's pages"):
        server_names.check_repo_id("org", "_settings")
    with pytest.raises(ApiError, match="namespace 'API' is reserved"):
        server_names.check_repo_id("API", "x")


# --- revisions ---------------------------------------------------------------------------------------

_REV_ALPHABET = re.compile(r"[A-Za-z0-9._+/-]*")


def _stricter_than_git(rev: str) -> str | None:
    """Where our revision rule refuses a name git accepts, on purpose (docs/hub.md says the same)."""
    if len(rev) > names.MAX_REVISION:
        return "longer than 255 characters: a ref is a file name in a git repo, and a URL segment here"
    if not _REV_ALPHABET.fullmatch(rev):
        return "outside [A-Za-z0-9._+/-]: revisions go into URLs, NAME@REV specs and shells unquoted"
    if any(part[:1] in ("-", "+") for part in rev.split("/")):
        return "a part starting with '-' or '+' reads as an option or a refspec's force mark"
    return None


def git_ref_ok(rev: str, *flags: str) -> bool:
    target = rev if flags else f"refs/heads/{rev}"
    run = subprocess.run([GIT, "check-ref-format", *flags, target], capture_output=True, cwd="/", check=False)
    return run.returncode == 0


def _revision_accepted(rev: object) -> bool:
    client = server = True
    try:
        check_revision(rev, "--revision")
    except HubError as err:
        assert "\n" not in str(err) and str(err).startswith("--revision "), str(err)
        client = False
    try:
        assert server_names.check_revision(rev) == rev
    except ApiError as err:
        assert err.status == 400 and err.code == "InvalidRevision" and "\n" not in err.message
        server = False
    assert client == server, rev  # push/pull and hub serve never disagree
    return client


_rev_part = st.one_of(
    st.text(alphabet="aZ9._+-", max_size=6),
    st.sampled_from(
        ["", ".", "..", ".lock", "a.lock", "main", "refs", "heads", "tags", "pr", "HEAD", "-x", "+x"]
    ),
)
revisions = st.one_of(
    st.lists(_rev_part, min_size=1, max_size=4).map("/".join),
    st.tuples(
        st.lists(_rev_part, min_size=1, max_size=2).map("/".join),
        st.sampled_from(["@", "@{", "~", "^", ":", "?", "*", "[", "\\", " ", "\x7f", "\t", "é", "#"]),
        _rev_part,
    ).map("".join),
    st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9._+/-]{0,30}", fullmatch=True),
    st.text(max_size=20).filter(lambda s: "\x00" not in s),  # argv cannot carry NUL
)


@pytest.mark.skipif(GIT is None, reason="needs git")
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(revisions)
@example("main")
@example("refs/heads/main")
@example("refs/pr/1")
@example("0123456789abcdef0123456789abcdef01234567")
@example("v1.0+build.7")
@example("_x")
@example("a./b")  # a part may end with '.', the whole may not
@example("a.")
@example("a..b")
@example("a/.b")
@example("a.lock")
@example("a.lock/b")
@example("/a")
@example("a/")
@example("a//b")
@example("-a")
@example("a/-b")
@example("+a")
@example("a@{1}")
@example("@")
@example("a b")
@example("x" * 255)
@example("x" * 256)
def test_revision_rule_is_gits_within_our_alphabet(rev):
    ours = _revision_accepted(rev)
    stricter = _stricter_than_git(rev)
    if ours or stricter is None:
        assert ours == git_ref_ok(rev), (rev, ours)
    else:
        assert not ours, (rev, stricter)


@pytest.mark.skipif(GIT is None, reason="needs git")
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(revisions)
@example("HEAD")
@example("-x")
@example("refs/heads/x")
@example("0123456789abcdef0123456789abcdef01234567")
def test_new_branch_names_are_what_git_branch_accepts(rev):
    """hub serve's create-branch / create-tag names: a revision, and a name `git branch` would take
    (not HEAD, not starting with '-'), that does not read as a commit id or a ref."""
    try:
        server_names.check_branch_name(rev)
        accepted = True
    except ApiError:
        accepted = False
    if accepted:
        assert git_ref_ok(rev, "--branch"), rev
    reads_as_other = bool(names.COMMIT_ID.fullmatch(rev)) or rev.startswith("refs/")
    if git_ref_ok(rev, "--branch") and _stricter_than_git(rev) is None and not reads_as_other:
        assert accepted, rev


def test_revision_refuses_what_is_not_a_string():
    for value in (None, 7, b"main"):
        with pytest.raises(HubError, match=r"^--revision .*expected a string"):
            check_revision(value, "--revision")


def test_split_repo_names_the_whole_spec():
    assert split_repo("org/x@refs/pr/1") == ("org/x", "refs/pr/1")
    assert split_repo("_org/x") == ("_org/x", None)
    with pytest.raises(HubError) as err:
        split_repo("org/x@" + "y" * 10_000)
    assert str(err.value).startswith("repo 'org/x@yyy") and "longer than 255" in str(err.value)
    assert len(str(err.value)) < 400


# --- end to end: the real CLI, a real hub serve -----------------------------------------------------------


def test_cli_refuses_a_bad_revision_in_one_line(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUB_"))}
    env["HUB_HOME"] = str(tmp_path / "home")
    for argv, named in (
        (["pull", "org/x@a.lock"], "repo 'org/x@a.lock': revision 'a.lock'"),
        (["push", "some-expert", "--repo", "org/x", "--revision", "a/.b"], "--revision 'a/.b'"),
        (["pull", "a--b/x"], "repo 'a--b/x'"),
    ):
        run = subprocess.run([sys.executable, "-m", "hubtool", *argv], env=env, capture_output=True, text=True,
                             timeout=120, check=False)  # fmt: skip
        assert run.returncode == 1, (argv, run.stdout, run.stderr)
        lines = [line for line in (run.stdout + run.stderr).splitlines() if line.strip()]
        assert len(lines) == 1 and named in lines[0], lines
    assert not Path(env["HUB_HOME"]).exists()  # refused before the catalog was opened


def test_hub_serve_takes_what_the_client_takes_less_its_reservations(tmp_path):
    from hubserver import ALICE, Server, write_tokens
    from huggingface_hub.errors import HfHubHTTPError

    srv = Server(tmp_path / "root", write_tokens(tmp_path / "tokens.txt"))
    try:
        api = srv.api()
        for repo_id in ("x.git/y", "org/a" + "b" * 95, "org/v1.0_", "0/0"):
            check_repo_id(repo_id)
            api.create_repo(repo_id)
            api.create_branch(repo_id, branch="feat/a./b+c")
            api.create_tag(repo_id, tag="v1.0+build")
            assert api.list_repo_refs(repo_id) is not None
            assert api.model_info(repo_id, revision="refs/heads/feat/a./b+c").id == repo_id
        for repo_id, why in (("_org/x", "reserved for the server's pages"), ("api/x", "is reserved")):
            check_repo_id(repo_id)  # the Hub would take it ...
            with pytest.raises(HfHubHTTPError) as err:  # ... this server keeps it
                api.create_repo(repo_id)
            assert err.value.response.status_code == 400 and why in err.value.response.text
        for branch in ("HEAD", "a.lock", "0123456789abcdef0123456789abcdef01234567"):
            with pytest.raises(HfHubHTTPError) as err:
                api.create_branch("0/0", branch=branch)
            assert err.value.response.status_code == 400
        assert ALICE not in srv.log.read_text()
    finally:
        srv.stop()
