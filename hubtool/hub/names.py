"""Repo-id and revision rules, once (stdlib only): push and pull (hub/client.py) and `hub serve`
(hub/server/names.py) both check names here, so a name one side accepts the other never calls malformed.

Each `*_problem` function returns None for a good value, else one short reason (no value in it: the
caller names the argument and shows the value). Callers turn a reason into their own error: a HubError
naming the option in the client, a 400 with an `X-Error-Code` in the server.

Repo id: exactly huggingface_hub's `validate_repo_id` (huggingface_hub/utils/_validators.py), which
mirrors the Hub's own rule. `NAME` or `NAMESPACE/NAME`; each part 1-96 ASCII letters, digits, '-', '_'
or '.', starting and ending with a letter, digit or '_'; no '--' or '..' anywhere; the id does not end
with '.git' (a namespace may). tests/test_names.py checks this against huggingface_hub on generated
strings.

Revision: a branch, tag or commit id as git's ref-name rules allow it (`git check-ref-format`, as a branch
or tag name), over a narrower, URL- and shell-safe alphabet: ASCII letters, digits, '.', '_', '+', '-' in
'/'-separated parts. Each part is non-empty, starts with a letter, digit or '_' (git: not '.'; we also
refuse '-' and '+', so that no part reads as an option), and does not end with '.lock'; no '..'; the
revision does not end with '.'; at most 255 characters. `refs/heads/x`, `refs/tags/x`, `refs/pr/1` and
40-hex commit ids all pass. tests/test_names.py checks it against git's rules.

`hub serve` adds its own reservations on top (hub/server/names.py): namespaces that are its URL space
(`api`, `datasets`, ...), names starting with '_' (kept for its pages), and branch or tag names that look
like a commit id, a ref or HEAD.
"""

from __future__ import annotations

import re

MAX_NAME = 96  # characters in a namespace or repo name (the Hub's limit)
MAX_REVISION = 255  # characters in a revision (git has no limit; a ref is a file name in a git repo)

_NAME_CHARS = re.compile(r"[A-Za-z0-9._-]+")
# One namespace or repo name: huggingface_hub's REPO_ID_REGEX (`\b[\w\-.]{1,96}\b`, ASCII) for one part.
NAME_PART = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9_])?")
_REVISION_CHARS = re.compile(r"[A-Za-z0-9._+/-]+")
_REVISION_PART = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._+-]*")
COMMIT_ID = re.compile(r"[0-9a-f]{40}")


def name_part_problem(part: object) -> str | None:
    """Why `part` is not a valid namespace or repo name (one part of a repo id), or None."""
    if not isinstance(part, str):
        return f"expected a string, got {type(part).__name__}"
    if not part:
        return "empty"
    if len(part) > MAX_NAME:
        return f"longer than {MAX_NAME} characters"
    if not _NAME_CHARS.fullmatch(part):
        return "only ASCII letters, digits, '-', '_' and '.' are allowed"
    if not NAME_PART.fullmatch(part):
        return "must start and end with a letter, digit or '_'"
    if "--" in part or ".." in part:
        return "'--' and '..' are not allowed"
    return None


def repo_id_problem(repo_id: object) -> str | None:
    """Why `repo_id` ('NAME' or 'NAMESPACE/NAME') is not a valid repo id, or None."""
    if not isinstance(repo_id, str):
        return f"expected a string, got {type(repo_id).__name__}"
    parts = repo_id.split("/")
    if len(parts) > 2:
        return "more than one '/'"
    for part, what in zip(parts, ("namespace", "name") if len(parts) == 2 else ("name",)):
        problem = name_part_problem(part)
        if problem:
            return f"{what} {problem}" if len(parts) == 2 else problem
    if repo_id.endswith(".git"):
        return "must not end with '.git'"
    return None


def revision_problem(revision: object) -> str | None:
    """Why `revision` is not a valid branch, tag or commit id, or None."""
    if not isinstance(revision, str):
        return f"expected a string, got {type(revision).__name__}"
    if not revision:
        return "empty"
    if len(revision) > MAX_REVISION:
        return f"longer than {MAX_REVISION} characters"
    if not _REVISION_CHARS.fullmatch(revision):
        return "only ASCII letters, digits, '.', '_', '+', '-' and '/' are allowed"
    if ".." in revision:
        return "'..' is not allowed"
    for part in revision.split("/"):
        if not part:
            return "empty '/'-separated part (a leading, trailing or doubled '/')"
        if not _REVISION_PART.fullmatch(part):
            return "each '/'-separated part must start with a letter, digit or '_'"
        if part.endswith(".lock"):
            return "a '/'-separated part must not end with '.lock'"
    if revision.endswith("."):
        return "must not end with '.'"
    return None
