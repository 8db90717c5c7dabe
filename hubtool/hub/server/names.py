"""What a repo id, a revision and a path in a repo may look like (stdlib only).

Everything that later becomes part of a file name on disk, or a key in a commit's tree, passes through
here first. Bad values are 400s with an `X-Error-Code` (InvalidRepoId, InvalidRevision, InvalidPath):
no `..`, no absolute paths, no NUL or other control characters, no backslashes, bounded lengths.

Repo ids and revisions follow the one rule that push and pull also use (hubtool.hub.names: the Hub's
repo-id rule, git's ref-name rules for revisions). This server reserves a few more names on top:
- namespaces that are its own URL space (RESERVED_NAMESPACES: `/api/...`, `/datasets/ns/name`, ...);
- a namespace or repo name starting with '_': kept for the server's own pages and endpoints (`/_lfs`);
- branch and tag names that look like a full commit id, start with `refs/`, or are `HEAD` (a ref by that
  name would shadow, or be shadowed by, what resolves a revision).
"""

from __future__ import annotations

import re

from hubtool.hub import names as shared
from hubtool.hub.server.errors import bad_request

REPO_TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}
# URL prefix of /resolve and of repo URLs
TYPE_PREFIX = {"model": "", "dataset": "datasets/", "space": "spaces/"}

MAX_NAME = shared.MAX_NAME
MAX_REVISION = shared.MAX_REVISION
MAX_PATH = 1024
MAX_PATH_PART = 255

# Namespaces that would collide with the server's own URL space (compared lowercased).
RESERVED_NAMESPACES = {"api", "datasets", "spaces", "models", "_lfs", "_xet", "static"}
COMMIT_ID = shared.COMMIT_ID
SHA256 = re.compile(r"[0-9a-f]{64}")


def repo_type(segment: str) -> str:
    """`models` / `datasets` / `spaces` (a URL segment) -> `model` / `dataset` / `space`."""
    try:
        return REPO_TYPES[segment]
    except KeyError:
        raise bad_request(
            "InvalidRepoType", f"unknown repo type {segment!r}: expected models, datasets or spaces"
        )


def body_repo_type(value: object) -> str:
    """The `type` of a create/delete body: None or "model" -> model, "dataset", "space"."""
    if value is None or value == "model":
        return "model"
    if value in ("dataset", "space"):
        return str(value)
    raise bad_request("InvalidRepoType", "repo type: expected model, dataset or space")


def check_name_part(part: object, what: str = "repo id") -> str:
    """One namespace or repo name: the shared rule, and no leading '_' (this server's pages)."""
    problem = shared.name_part_problem(part)
    if problem is None and part.startswith("_"):  # type: ignore[union-attr]  # a str once the rule passed
        problem = "a name starting with '_' is reserved for the server's pages"
    if problem:
        shown = part[:100] if isinstance(part, str) else type(part).__name__
        raise bad_request(
            "InvalidRepoId",
            f"invalid {what} {shown!r}: {problem} (expected 1-{MAX_NAME} letters, digits, '-', '_' or '.', "
            "starting with a letter or digit and ending with a letter, digit or '_', without '--' or '..')",
        )
    return part  # type: ignore[return-value]


def check_repo_id(namespace: object, name: object) -> str:
    """`namespace/name` after checking both parts (the shared rule plus this server's reservations)."""
    ns = check_name_part(namespace, "namespace")
    if ns.lower() in RESERVED_NAMESPACES:
        raise bad_request("InvalidRepoId", f"namespace {ns!r} is reserved")
    name = check_name_part(name, "repo name")
    if name.endswith(".git"):
        raise bad_request("InvalidRepoId", f"invalid repo name {name[:100]!r}: must not end with '.git'")
    return f"{ns}/{name}"


def check_revision(rev: object) -> str:
    """A branch, tag or commit id (`refs/heads/x` allowed): the shared rule."""
    problem = shared.revision_problem(rev)
    if problem:
        shown = rev[:100] if isinstance(rev, str) else type(rev).__name__
        raise bad_request("InvalidRevision", f"invalid revision {shown!r}: {problem}")
    return rev  # type: ignore[return-value]


def check_branch_name(name: object) -> str:
    """A new branch or tag name: a revision that is not a commit id, not under refs/ and not HEAD."""
    name = check_revision(name)
    if COMMIT_ID.fullmatch(name) or name.startswith("refs/") or name == "HEAD":
        raise bad_request(
            "InvalidRevision", f"invalid branch or tag name {name!r}: looks like a commit id, a ref or HEAD"
        )
    return name


def check_path(path: object, *, allow_root: bool = False) -> str:
    """A path inside a repo: relative, '/'-separated, no empty, '.', '..' or '.git' parts, no control
    characters or backslashes. `allow_root` accepts "" (the repo's root folder)."""
    if allow_root and path == "":
        return ""
    if not isinstance(path, str) or not 0 < len(path) <= MAX_PATH:
        raise bad_request("InvalidPath", f"invalid path: expected 1-{MAX_PATH} characters")
    shown = path[:200]
    if any(ord(c) < 32 or c == "\x7f" for c in path) or "\\" in path:
        raise bad_request(
            "InvalidPath", f"invalid path {shown!r}: control characters and backslashes are refused"
        )
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        raise bad_request("InvalidPath", "invalid path: not valid Unicode (an unpaired surrogate)") from None
    if path.startswith("/"):
        raise bad_request("InvalidPath", f"invalid path {shown!r}: must be relative to the repo root")
    parts = path.split("/")
    for part in parts:
        if part in ("", ".", "..") or part == ".git" or len(part.encode()) > MAX_PATH_PART:
            raise bad_request(
                "InvalidPath", f"invalid path {shown!r}: empty, '.', '..' or '.git' parts are refused"
            )
    return path


def check_sha256(oid: object) -> str:
    if not isinstance(oid, str) or not SHA256.fullmatch(oid):
        raise bad_request("InvalidOid", "invalid LFS oid: expected 64 lowercase hex digits (sha256)")
    return oid


_ASCII_DIGITS = re.compile(r"[0-9]+")
NUMBER_CAP = 10**18  # above any size, offset or time this server meets


def ascii_int(text: str | None) -> int | None:
    """The one rule for numbers in query parameters and headers: ASCII decimal digits only, else None.
    str.isdigit() also passes '²' and other scripts' digits, which int() refuses (a 500); past 18 digits
    the value is NUMBER_CAP, so thousands of digits never reach int() (Python refuses > 4300 of them)."""
    if text is None or not _ASCII_DIGITS.fullmatch(text):
        return None
    return NUMBER_CAP if len(text.lstrip("0")) > 18 else int(text)
