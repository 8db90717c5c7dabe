"""The one error type of the server: an HTTP status, an `X-Error-Code` and a message (stdlib only).

huggingface_hub maps `X-Error-Code` to its typed exceptions (RepoNotFound -> RepositoryNotFoundError, ...);
on a plain-http endpoint that header is the only thing that does it, so every typed error carries one.
Messages never contain a token: they name the repo, revision or path, which the caller sent.
"""

from __future__ import annotations


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        code: str | None,
        message: str,
        *,
        headers: dict[str, str] | None = None,
        body: dict | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = dict(headers or {})
        self.body = dict(body or {})


def repo_not_found(repo: str, status: int = 404) -> ApiError:
    return ApiError(status, "RepoNotFound", f"Repository not found: {repo}")


def revision_not_found(repo: str, revision: str) -> ApiError:
    return ApiError(404, "RevisionNotFound", f"Invalid rev id: {revision} (repository {repo})")


def entry_not_found(path: str, commit: str | None = None, message: str | None = None) -> ApiError:
    headers = {"X-Repo-Commit": commit} if commit else None
    return ApiError(404, "EntryNotFound", message or f"Entry not found: {path}", headers=headers)


def bad_request(code: str, message: str) -> ApiError:
    return ApiError(400, code, message)
