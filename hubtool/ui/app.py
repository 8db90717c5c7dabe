"""`hub ui`: the catalog pages alone, read-only, on this machine (what `mlflow ui` is to MLflow).

The same rows `hub serve --catalog` adds to its route table, matched here by the server's own Route
patterns, with no Hub API, no storage root and no auth (it listens on 127.0.0.1 only).
"""

from __future__ import annotations

import socket
import sys
from typing import Any

from hubtool.errors import HubError
from hubtool.hub.server import routes as server_routes
from hubtool.hub.server.http import lifespan
from hubtool.ui.pages import CatalogPages, error_page
from hubtool.ui.view import CatalogView

HOST = "127.0.0.1"
PORT = 8920  # hub serve's is 8910


def make_app(view: CatalogView) -> Any:
    """The ASGI app of `hub ui`: `/` redirects to the catalog list, `/_/...` are the pages, the rest 404s."""
    from starlette.requests import Request
    from starlette.responses import RedirectResponse

    table = CatalogPages(view).routes()

    async def dispatch(request: Request) -> Any:
        raw = request.scope.get("raw_path") or request.scope["path"].encode()
        try:
            segments = server_routes.path_segments(raw)
        except UnicodeDecodeError:
            return error_page(400, "Bad request", "the URL is not valid UTF-8")
        if not segments:
            return RedirectResponse("/_/", status_code=302)
        for route in table:
            found = route.match(segments)
            if found is None or not route.allows(request.method):
                continue
            kwargs: dict[str, Any] = {}
            for name, parts in found:
                server_routes.PARAMS[name].bind(parts, kwargs)
            return await route.handler(None, request, **kwargs)
        return error_page(404, "Not found", f"no page at {request.url.path[:200]} (the catalog is at /_/)")

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            return await lifespan(receive, send, on_shutdown=view.close)
        if scope["type"] != "http":
            return
        request = Request(scope, receive)
        try:
            response = await dispatch(request)
        except Exception:  # a bug: one line in the log, a plain 500 page
            import logging

            logging.getLogger("hubtool.ui").exception("internal error on %s %s", request.method,
                                                      scope.get("path", "")[:300])  # fmt: skip
            response = error_page(500, "Internal error", "internal error (see the terminal running hub ui)")
        await response(scope, receive, send)

    return app


def listen(port: int, host: str = HOST) -> socket.socket:
    """A listening socket on host:port (0: any free port); HubError naming --port when it is taken."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as err:
        sock.close()
        raise HubError(f"--port {port}: can't listen on {host}:{port} ({err.strerror or err})") from None
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def serve(catalog: str | None = None, *, port: int = PORT, log_level: str = "warning") -> None:
    """Open the catalog, listen on 127.0.0.1:port, print the address, serve until interrupted."""
    import uvicorn

    view = CatalogView(catalog)
    view.catalog()  # a catalog that cannot be opened fails here, as one line, before anything listens
    sock = listen(port)
    address = f"http://{HOST}:{sock.getsockname()[1]}/_/"
    config = uvicorn.Config(make_app(view), log_level=log_level, access_log=False, server_header=False,
                            proxy_headers=False, timeout_graceful_shutdown=5)  # fmt: skip
    print(f"hub ui: the catalog {view.safe_url()} at {address} (read-only; Ctrl+C stops it)", flush=True)
    try:
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        sock.close()
        view.close()
        sys.stdout.flush()
