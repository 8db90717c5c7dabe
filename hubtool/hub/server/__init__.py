"""`hub serve`: a Hugging Face Hub-compatible HTTP server for air-gapped teams.

- `names`: validation of repo ids, revisions and paths (stdlib only).
- `auth`: the token file and signed LFS upload URLs (stdlib only).
- `storage`: content-addressed blobs, commits, refs on disk (stdlib only).
- `ndjson`: a streaming parser for the commit body (stdlib only).
- `app`: the Starlette application (imports Starlette).

`run(...)` starts uvicorn; see docs/hub.md for the protocol and the storage layout.
"""

from __future__ import annotations


def run(**kwargs) -> None:
    """Start the server (blocking). Keyword arguments: see `hubtool.hub.server.app.serve`."""
    from hubtool.hub.server.app import serve

    serve(**kwargs)
