"""`hub serve`: a Hugging Face Hub-compatible HTTP server for air-gapped teams.

Stdlib only (the CLI imports `defaults` for its option defaults):
- `defaults`: the options' defaults and the fixed limits.
- `names`: validation of repo ids, revisions and paths; `errors`: ApiError.
- `auth`: the token file and signed LFS upload URLs.
- `storage`: content-addressed blobs, commits, refs on disk.
- `ndjson`: a streaming parser for the commit body; `patterns`: .gitattributes / .gitignore rules.

Starlette (imported only when the server starts):
- `app`: the ASGI entry, `HubApp` (state and auth checks) and dispatch; `serve` runs uvicorn.
- `routes`: the route table, every endpoint in one place (its docstring says how to add one).
- handlers per concern: `account`, `repos`, `refs` (tree, paths-info, refs, commits list, branches, tags),
  `downloads` (resolve), `commits` (preupload, the NDJSON commit), `lfs`, `xet` (the Xet
  tokens, the CAS under /_xet and its store: a package).
- `http`: the handlers' shared helpers (errors, JSON bodies within limits, Range, card front matter).

`run(...)` starts uvicorn; see docs/hub.md for the protocol and the storage layout.
"""

from __future__ import annotations


def run(**kwargs) -> None:
    """Start the server (blocking). Keyword arguments: see `hubtool.hub.server.app.serve`."""
    from hubtool.hub.server.app import serve

    serve(**kwargs)
