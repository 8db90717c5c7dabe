"""Handlers of what a repo holds at a revision and of its history: tree listings, paths-info, refs,
the commit list, branches and tags."""

from __future__ import annotations

import html
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, quote

from starlette.concurrency import run_in_threadpool
from starlette.responses import JSONResponse, Response

from hubtool.hub.server import http, names
from hubtool.hub.server.defaults import (
    COMMITS_PAGE,
    COMMITS_PAGE_MAX,
    MAX_PATHS_INFO,
    TREE_PAGE,
    TREE_PAGE_EXPANDED,
)
from hubtool.hub.server.errors import ApiError, bad_request, entry_not_found
from hubtool.hub.server.storage import Commit, Entry, RepoRef, folder_oid, lfs_pointer

if TYPE_CHECKING:
    from starlette.requests import Request

    from hubtool.hub.server.app import HubApp

HISTORY_WALK = 2000  # commits walked back at most to find each listed path's last commit


def pointer_size(entry: Entry) -> int:
    """Bytes of the git LFS pointer file that stands for an LFS entry in git."""
    return len(lfs_pointer(entry.sha256, entry.size))


def file_json(path: str, entry: Entry) -> dict:
    item: dict[str, Any] = {"type": "file", "oid": entry.tree_oid, "size": entry.size, "path": path}
    if entry.lfs:
        item["lfs"] = {"oid": entry.sha256, "size": entry.size, "pointerSize": pointer_size(entry)}
    if entry.xet is not None:  # only where the CAS can serve it (shared/hub-protocol.md §5)
        item["xetHash"] = entry.xet
    return item


def folder_json(path: str, tree: dict[str, Entry]) -> dict:
    return {"type": "directory", "oid": folder_oid(tree, path), "size": 0, "path": path}


def listing(tree: dict[str, Entry], folder: str, recursive: bool) -> list[dict] | None:
    """The entries of `folder` (all below it when recursive), folders and files sorted by path; None if
    the folder does not exist."""
    prefix = folder + "/" if folder else ""
    files: list[str] = []
    folders: set[str] = set()
    for path in tree:
        if not path.startswith(prefix):
            continue
        rest = path[len(prefix) :]
        parts = rest.split("/")
        if recursive:
            files.append(path)
            for i in range(1, len(parts)):
                folders.add(prefix + "/".join(parts[:i]))
        elif len(parts) == 1:
            files.append(path)
        else:
            folders.add(prefix + parts[0])
    if folder and not files and not folders:
        return None
    items = [(p, True) for p in folders] + [(p, False) for p in files]
    items.sort(key=lambda item: item[0])
    return [folder_json(p, tree) if is_dir else file_json(p, tree[p]) for p, is_dir in items]


async def tree(hub: HubApp, request: Request, repo: RepoRef, revision: str, path: str) -> Response:
    hub.require_read(request, repo)
    names.check_path(path, allow_root=True)
    folder = path.rstrip("/")
    params = request.query_params
    recursive, expand = http.true(params.get("recursive")), http.true(params.get("expand"))
    commit = await run_in_threadpool(hub.commit_of, repo, revision)
    items = await run_in_threadpool(listing, commit.tree, folder, recursive)
    if items is None:
        raise entry_not_found(folder, commit.id, f"Folder not found: {folder} at {commit.id}")
    page_size = TREE_PAGE_EXPANDED if expand else TREE_PAGE
    page_size = http.int_param(params.get("limit"), page_size, 1, page_size)
    start = http.int_param(params.get("cursor"), 0, 0, len(items))
    page = items[start : start + page_size]
    if expand:
        await run_in_threadpool(add_last_commits, hub, repo, commit, page)
    headers = {}
    if start + page_size < len(items):
        quoted = "/" + quote(folder, safe="") if folder else ""
        query = (
            f"recursive={str(recursive).lower()}&expand={str(expand).lower()}"
            f"&limit={page_size}&cursor={start + page_size}"
        )
        url = f"{http.base_url(request)}/api/{repo.type}s/{repo.id}/tree/{commit.id}{quoted}?{query}"
        headers["Link"] = f'<{url}>; rel="next"'
    return JSONResponse(page, headers=headers)


def _changed(newer: dict[str, Entry], older: dict[str, Entry], path: str) -> bool:
    if path in newer or path in older:
        return newer.get(path) != older.get(path)
    prefix = path + "/"
    a = {p: e for p, e in newer.items() if p.startswith(prefix)}
    b = {p: e for p, e in older.items() if p.startswith(prefix)}
    return a != b


def _commit_ref(commit: Commit) -> dict:
    return {"id": commit.id, "title": commit.title, "date": commit.date}


def add_last_commits(hub: HubApp, repo: RepoRef, commit: Commit, items: list[dict]) -> None:
    """lastCommit {id, title, date} of each item: the newest commit that changed it (first-parent walk)."""
    pending = {item["path"]: item for item in items}
    previous: Commit | None = None
    for depth, current in enumerate(hub.storage.history(repo, commit.id)):
        if previous is not None:
            for path in list(pending):
                if _changed(previous.tree, current.tree, path):
                    pending.pop(path)["lastCommit"] = _commit_ref(previous)
        if not pending or depth > HISTORY_WALK:
            break
        previous = current
    for item in pending.values():
        item["lastCommit"] = _commit_ref(previous or commit)


async def paths_info(hub: HubApp, request: Request, repo: RepoRef, revision: str) -> Response:
    hub.require_read(request, repo)
    body = await http.read_body(request)
    ctype = request.headers.get("content-type", "")
    if "json" in ctype:
        data = http.loads(body or b"{}")
        paths = data.get("paths", []) if isinstance(data, dict) else []
        paths = [paths] if isinstance(paths, str) else paths
        expand = bool(data.get("expand")) if isinstance(data, dict) else False
    else:
        form = parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True)
        paths, expand = form.get("paths", []), http.true((form.get("expand") or ["false"])[0])
    if not isinstance(paths, list) or len(paths) > MAX_PATHS_INFO:
        raise bad_request("InvalidPath", f"expected at most {MAX_PATHS_INFO} paths")
    commit = await run_in_threadpool(hub.commit_of, repo, revision)
    out = []
    for path in paths:
        path = names.check_path(path).rstrip("/")
        if path in commit.tree:
            out.append(file_json(path, commit.tree[path]))
        elif any(p.startswith(path + "/") for p in commit.tree):
            out.append(folder_json(path, commit.tree))
    if expand:
        await run_in_threadpool(add_last_commits, hub, repo, commit, out)
    return JSONResponse(out)


def refs(hub: HubApp, request: Request, repo: RepoRef) -> Response:
    hub.require_read(request, repo)
    stored = hub.storage.refs(repo)
    data: dict[str, Any] = {
        "branches": [
            {"name": n, "ref": f"refs/heads/{n}", "targetCommit": c}
            for n, c in sorted(stored["heads"].items())
        ],
        "converts": [],
        "tags": [
            {"name": n, "ref": f"refs/tags/{n}", "targetCommit": c} for n, c in sorted(stored["tags"].items())
        ],
    }
    if http.true(request.query_params.get("include_prs")):
        data["pullRequests"] = []
    return JSONResponse(data)


async def commits(hub: HubApp, request: Request, repo: RepoRef, revision: str) -> Response:
    hub.require_read(request, repo)
    params = request.query_params
    limit = http.int_param(params.get("limit"), COMMITS_PAGE, 1, COMMITS_PAGE_MAX)
    page = http.int_param(params.get("p"), 0, 0, 10**7)
    formatted = "formatted" in params.getlist("expand[]") or "formatted" in params.getlist("expand")
    cid = await run_in_threadpool(hub.storage.resolve, repo, revision)

    def collect() -> tuple[list[dict], bool]:
        items, more = [], False
        for index, commit in enumerate(hub.storage.history(repo, cid)):
            if index < page * limit:
                continue
            if len(items) == limit:
                more = True
                break
            item = {
                "id": commit.id,
                "title": commit.title,
                "message": commit.message,
                "authors": [{"user": commit.author, "avatar": None}],
                "date": commit.date,
            }
            if formatted:
                item["formatted"] = {
                    "title": html.escape(commit.title),
                    "message": html.escape(commit.message),
                }
            items.append(item)
        return items, more

    items, more = await run_in_threadpool(collect)
    headers = {}
    if more:
        extra = "&expand[]=formatted" if formatted else ""
        url = f"{http.base_url(request)}/api/{repo.type}s/{repo.id}/commits/{cid}?p={page + 1}&limit={limit}{extra}"
        headers["Link"] = f'<{url}>; rel="next"'
    return JSONResponse(items, headers=headers)


async def branch(hub: HubApp, request: Request, repo: RepoRef, branch: str) -> Response:
    """POST: create `branch` (from startingPoint, main by default, or empty); DELETE: delete it."""
    user, _ = hub.require_write(request, repo)
    names.check_branch_name(branch)
    if request.method == "DELETE":
        if branch == "main":
            raise ApiError(403, "DefaultBranch", "the default branch main cannot be deleted")
        await run_in_threadpool(hub.storage.delete_ref, repo, "heads", branch)
        return JSONResponse({"success": True})
    body = await http.read_json(request, default={})
    if not isinstance(body, dict):
        raise bad_request("InvalidJson", "expected a JSON object")
    if body.get("emptyBranch"):
        target = await run_in_threadpool(hub.storage.empty_commit, repo, user)
    else:
        start = body.get("startingPoint") or "main"
        target = await run_in_threadpool(hub.storage.resolve, repo, names.check_revision(start))
    await run_in_threadpool(hub.storage.create_ref, repo, "heads", branch, target)
    return JSONResponse({"success": True})


async def tag(hub: HubApp, request: Request, repo: RepoRef, revision: str) -> Response:
    """POST: tag `revision` with the body's `tag`; DELETE: delete the tag named `revision`."""
    hub.require_write(request, repo)
    if request.method == "DELETE":
        names.check_revision(revision)
        await run_in_threadpool(hub.storage.delete_ref, repo, "tags", revision)
        return JSONResponse({"success": True})
    body = await http.read_json(request)
    if not isinstance(body, dict):
        raise bad_request("InvalidJson", "expected a JSON object")
    name = names.check_branch_name(body.get("tag"))
    target = await run_in_threadpool(hub.storage.resolve, repo, revision)
    await run_in_threadpool(hub.storage.create_ref, repo, "tags", name, target)
    return JSONResponse({"success": True})
