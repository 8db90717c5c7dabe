"""Handlers of repos as a whole: create, delete, move, settings, the list of repos, repo_info, and the
model card check (validate-yaml)."""

from __future__ import annotations

import hashlib
import logging
from typing import TYPE_CHECKING, Any

from starlette.concurrency import run_in_threadpool
from starlette.responses import JSONResponse, Response

from hubtool.errors import HubError
from hubtool.format import safejson
from hubtool.hub.server import http, names
from hubtool.hub.server.defaults import MAX_JSON_DEPTH, REPOS_PAGE, REPOS_PAGE_MAX
from hubtool.hub.server.errors import ApiError, bad_request
from hubtool.hub.server.refs import pointer_size
from hubtool.hub.server.storage import Commit, RepoRef

if TYPE_CHECKING:
    from starlette.requests import Request

    from hubtool.hub.server.app import HubApp

log = logging.getLogger("hubtool.hub.server")


def object_id(repo: RepoRef) -> str:
    """The repo's `_id` (the Hub's is a 24-hex object id): stable for its type and id."""
    return hashlib.sha1(f"{repo.type}:{repo.id}".encode()).hexdigest()[:24]


def _body_repo(body: Any, user: str | None) -> RepoRef:
    if not isinstance(body, dict):
        raise bad_request("InvalidJson", "expected a JSON object")
    name, organization = body.get("name"), body.get("organization")
    if isinstance(name, str) and "/" in name and organization is None:
        organization, name = name.split("/", 1)
    if organization is None:
        if user is None:
            raise bad_request("InvalidRepoId", "no organization given and no user to default to")
        organization = user
    return RepoRef(names.body_repo_type(body.get("type")), names.check_repo_id(organization, name))


def _two(repo_id: str) -> tuple[str, str]:
    if repo_id.count("/") != 1:
        raise bad_request("InvalidRepoId", "expected a repo id namespace/name")
    ns, name = repo_id.split("/")
    return ns, name


async def create(hub: HubApp, request: Request) -> Response:
    user = hub.require_user(request, what="creating a repo")
    body = await http.read_json(request)
    repo = _body_repo(body, user)
    private = bool(body.get("private")) or body.get("visibility") in ("private", "protected")
    url = http.repo_url(request, repo)
    try:
        await run_in_threadpool(hub.storage.create_repo, repo, user=user, private=private)
    except ApiError as err:
        if err.status == 409:
            err.body["url"] = url  # the client reads it on 409 with exist_ok
        raise
    log.info("%s created %s", user, repo.label)
    return JSONResponse({"url": url, "name": repo.id, "id": repo.id})


async def delete(hub: HubApp, request: Request) -> Response:
    user = hub.require_user(request, what="deleting a repo")
    repo = _body_repo(await http.read_json(request), user)
    await run_in_threadpool(hub.storage.delete_repo, repo)
    log.info("%s deleted %s", user, repo.label)
    return JSONResponse({"success": True})


async def move(hub: HubApp, request: Request) -> Response:
    user = hub.require_user(request, what="moving a repo")
    body = await http.read_json(request)
    if not isinstance(body, dict) or not all(isinstance(body.get(k), str) for k in ("fromRepo", "toRepo")):
        raise bad_request("InvalidJson", "expected fromRepo and toRepo")
    repo_type = names.body_repo_type(body.get("type"))
    src = RepoRef(repo_type, names.check_repo_id(*_two(body["fromRepo"])))
    dst = RepoRef(repo_type, names.check_repo_id(*_two(body["toRepo"])))
    await run_in_threadpool(hub.storage.move_repo, src, dst)
    log.info("%s moved %s to %s", user, src.label, dst.label)
    return JSONResponse({"success": True, "url": http.repo_url(request, dst)})


async def settings(hub: HubApp, request: Request, repo: RepoRef) -> Response:
    hub.require_write(request, repo)
    body = await http.read_json(request)
    if not isinstance(body, dict):
        raise bad_request("InvalidJson", "expected a JSON object")
    changes = {}
    if "private" in body:
        changes["private"] = bool(body["private"])
    if body.get("visibility") in ("private", "public", "protected"):
        changes["private"] = body["visibility"] != "public"
    meta = await run_in_threadpool(hub.storage.update_repo, repo, **changes)
    return JSONResponse({"private": bool(meta.get("private")), "gated": False})


def list_repos(hub: HubApp, request: Request, repo_type: str) -> Response:
    user = hub.user(request)
    if user is None and not hub.public_read:
        raise ApiError(401, "Unauthorized", "Authentication required to list repos: send a token")
    author = request.query_params.get("author")
    search = (request.query_params.get("search") or "").lower()
    limit = http.int_param(request.query_params.get("limit"), REPOS_PAGE, 1, REPOS_PAGE_MAX)
    out = []
    for repo in hub.storage.list_repos(repo_type):
        meta = hub.storage.repo_meta(repo)
        if meta is None or (user is None and meta.get("private")):
            continue
        if author and repo.id.split("/")[0] != author:
            continue
        if search and search not in repo.id.lower():
            continue
        item = {
            "_id": object_id(repo),
            "id": repo.id,
            "private": bool(meta.get("private")),
            "createdAt": meta.get("createdAt"),
            "author": repo.id.split("/")[0],
        }
        if repo_type == "model":
            item["modelId"] = repo.id
        out.append(item)
        if len(out) >= limit:
            break
    return JSONResponse(out)


async def info(hub: HubApp, request: Request, repo: RepoRef, revision: str | None = None) -> Response:
    """repo_info: `/api/{type}s/{repo}` (main) and `/api/{type}s/{repo}/revision/{revision}`."""
    meta = hub.require_read(request, repo)
    commit = await run_in_threadpool(hub.commit_of, repo, revision or "main")
    blobs = http.true(request.query_params.get("blobs"))
    siblings = []
    used = 0
    for path in sorted(commit.tree):
        entry = commit.tree[path]
        used += entry.size
        sibling: dict[str, Any] = {"rfilename": path}
        if blobs:
            sibling["size"] = entry.size
            sibling["blobId"] = entry.tree_oid
            if entry.lfs:
                sibling["lfs"] = {
                    "size": entry.size,
                    "sha256": entry.sha256,
                    "pointerSize": pointer_size(entry),
                }
        siblings.append(sibling)
    data: dict[str, Any] = {
        "_id": object_id(repo),
        "id": repo.id,
        "author": repo.id.split("/")[0],
        "sha": commit.id,
        "lastModified": commit.date,
        "createdAt": meta.get("createdAt"),
        "private": bool(meta.get("private")),
        "gated": False,
        "disabled": False,
        "downloads": 0,
        "likes": 0,
        "tags": [],
        "siblings": siblings,
        "usedStorage": used,
    }
    if repo.type == "model":
        data["modelId"] = repo.id
        data["spaces"] = []
    card = await run_in_threadpool(_card_data, hub, commit)
    if card:
        data["cardData"] = card
        tags = card.get("tags")
        if isinstance(tags, list):
            data["tags"] = [str(t) for t in tags]
        for key in ("library_name", "pipeline_tag"):
            if isinstance(card.get(key), str):
                data[key] = card[key]
    if repo.type == "model":
        config = await run_in_threadpool(_model_config, hub, commit)
        if config:
            data["config"] = config
    if repo.type == "space":
        data["sdk"] = (card or {}).get("sdk")
    return JSONResponse(data)


def _card_data(hub: HubApp, commit: Commit) -> dict | None:
    entry = commit.tree.get("README.md")
    content = hub.storage.read_small(entry) if entry is not None else None
    if not content:
        return None
    import yaml

    try:
        data = http.front_matter(content.decode("utf-8", "replace"))
    except (yaml.YAMLError, RecursionError, ValueError):
        return None  # a README committed without validate-yaml: the repo still answers, without cardData
    data = http.jsonable(data)
    return data if isinstance(data, dict) else None


def _model_config(hub: HubApp, commit: Commit) -> dict | None:
    entry = commit.tree.get("config.json")
    content = hub.storage.read_small(entry) if entry is not None else None
    if not content:
        return None
    try:
        data = safejson.loads(content, "config.json", max_depth=MAX_JSON_DEPTH, allow_nan=True)
    except HubError:
        return None  # a config.json that is not JSON: the repo still answers, without config
    if not isinstance(data, dict):
        return None
    return http.jsonable({k: data[k] for k in ("architectures", "model_type") if k in data})


async def validate_yaml(hub: HubApp, request: Request) -> Response:
    if not hub.public_read:
        hub.require_user(request, what="validate-yaml")
    body = await http.read_json(request)
    content = body.get("content") if isinstance(body, dict) else None
    if not isinstance(content, str):
        return JSONResponse({"errors": [{"message": "expected a string 'content'"}], "warnings": []}, 400)
    error = await run_in_threadpool(http.front_matter_error, content)  # YAML parsing is slow Python
    if error:
        return JSONResponse({"errors": [{"message": error}], "warnings": []}, 400)
    return JSONResponse({"errors": [], "warnings": []})
