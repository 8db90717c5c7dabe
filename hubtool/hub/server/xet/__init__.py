"""Xet storage in `hub serve` (docs/hub.md, "Xet"; the formats: hubtool/hub/xet, docs/xet.md).

tokens.py signs the short-lived, repo-scoped tokens; store.py keeps xorbs, file reconstructions and what
each repo may read of them; cas.py has the handlers: the token endpoints, the CAS under /_xet, and the
server-side reconstruction that serves a Xet-stored file to a plain GET /resolve.
"""

from hubtool.hub.server.xet.cas import (
    CAS_PREFIX,
    cas,
    file_response,
    read_token,
    resolve_headers,
    store_of,
    write_token,
)

__all__ = ["CAS_PREFIX", "cas", "file_response", "read_token", "resolve_headers", "store_of", "write_token"]
