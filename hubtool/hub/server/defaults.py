"""The server's constants: the defaults of `hub serve`'s options and the fixed limits (stdlib only).

The CLI (hubtool/cli/serve.py) takes its option defaults from here, so a default is typed once; the
handlers take their limits from here. Importing this module imports neither Starlette nor uvicorn.
"""

from __future__ import annotations

# -- `hub serve` options (the CLI's defaults) ---------------------------------------------------------
HOST = "127.0.0.1"
PORT = 8910
LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_LEVEL = "info"
AUTH_BURST, AUTH_RATE = 20, 0.5  # failed authentications per client: a burst, then per second
MAX_COMMIT_BODY = 64 << 30  # bytes of one commit body (files travel inside it, base64); `--max-commit-gib`

# -- fixed limits -------------------------------------------------------------------------------------
CHUNK = 1 << 20  # bytes read, hashed or written at a time
MAX_JSON_BODY = 8 << 20  # a JSON request body
MAX_JSON_DEPTH = 64  # nesting of a JSON request body or of a model card's YAML metadata
MAX_CARD_YAML = 1 << 20  # characters of a model card's YAML metadata
EARLY_SYNC = 8 << 20  # files at least this large start their fsync as soon as they are received
MAX_FILE_SIZE = 50 * 10**9  # the client cannot download a larger file over plain HTTP anyway
MAX_COMMIT_OPS = 100_000  # lines of one commit body (each an operation)
MAX_BATCH = 1000  # files of one preupload, objects of one LFS batch
MAX_PATHS_INFO = 10_000  # paths of one paths-info request
LFS_URL_TTL = 3600  # seconds a signed LFS URL stays valid
TREE_PAGE = 1000  # entries of a tree page
TREE_PAGE_EXPANDED = 50  # ... with expand=true (each entry needs its last commit)
COMMITS_PAGE = 50  # commits of a history page (the client may ask up to COMMITS_PAGE_MAX)
COMMITS_PAGE_MAX = 1000
REPOS_PAGE, REPOS_PAGE_MAX = 1000, 10_000  # repos of a list_models answer
DRAIN_LIMIT = 256 << 20  # bytes of a refused body read and dropped before the connection is closed
