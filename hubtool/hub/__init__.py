"""Sharing experts and models between machines: a Hub-compatible server (`hub serve`) and, later, clients.

Kept import-light on purpose: `hubtool.hub.server` pulls in Starlette and uvicorn only when it is imported,
which the CLI does inside the `serve` command.
"""
