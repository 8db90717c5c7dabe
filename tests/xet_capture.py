"""A minimal Xet CAS that records what the real hf_xet client sends (the oracle for tests/test_xet_format.py).

It answers just enough for `hf_xet.upload_files` to finish: 404 to every dedup query (so every chunk is new),
stores each POSTed xorb and shard body verbatim, answers the JSON the client parses, and 404 to anything else
(the newer v2 routes included, so the client falls back to v1). Every request is logged as (method, path).

    with CaptureCas() as cas:
        infos = cas.upload([path])          # hf_xet.upload_files against this CAS
        cas.xorbs  # {hash hex: body bytes}
        cas.shards # [body bytes]
"""

from __future__ import annotations

import socket
import threading
import time
import warnings
from typing import Self


class CaptureCas:
    def __init__(self) -> None:
        self.xorbs: dict[str, bytes] = {}
        self.shards: list[bytes] = []
        self.requests: list[tuple[str, str]] = []
        self.request_headers: list[dict[str, str]] = []
        self._server = None
        self._thread: threading.Thread | None = None
        self.url = ""

    def _app(self):
        from starlette.applications import Starlette
        from starlette.requests import Request
        from starlette.responses import JSONResponse, Response
        from starlette.routing import Route

        async def chunks(request: Request) -> Response:  # global dedup query: nothing known
            return Response(status_code=404)

        async def xorb(request: Request) -> Response:
            if request.method == "HEAD":
                return Response(status_code=404)
            body = await request.body()
            self.xorbs[request.path_params["hash"]] = body
            return JSONResponse({"was_inserted": True})

        async def shard(request: Request) -> Response:
            self.shards.append(await request.body())
            return JSONResponse({"result": 1})  # SyncPerformed

        async def other(request: Request) -> Response:
            return Response(status_code=404)

        app = Starlette(routes=[
            Route("/v1/chunks/{prefix}/{hash}", chunks, methods=["GET"]),
            Route("/v1/xorbs/{prefix}/{hash}", xorb, methods=["POST", "HEAD"]),
            Route("/v1/shards", shard, methods=["POST"]),
            Route("/{rest:path}", other, methods=["GET", "POST", "PUT", "HEAD", "DELETE"]),
        ])  # fmt: skip

        async def logged(scope, receive, send):
            if scope["type"] == "http":
                self.requests.append((scope["method"], scope["path"]))
                self.request_headers.append({k.decode(): v.decode() for k, v in scope["headers"]})
            await app(scope, receive, send)

        return logged

    def __enter__(self) -> Self:
        import uvicorn

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        config = uvicorn.Config(self._app(), host="127.0.0.1", port=port, log_level="warning", lifespan="off")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 20
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("capture CAS did not start")
            time.sleep(0.02)
        self.url = f"http://127.0.0.1:{port}"
        return self

    def __exit__(self, *exc) -> None:
        assert self._server is not None and self._thread is not None
        self._server.should_exit = True
        self._thread.join(timeout=20)

    def upload(self, paths: list[str], sha256s: list[str] | None = None) -> list:
        """hf_xet.upload_files(paths) against this CAS; returns the client's PyXetUploadInfo list."""
        import hf_xet

        token = ("capture-token", int(time.time()) + 3600)
        # upload_files is deprecated in hf_xet 1.8 in favour of XetSession; it still speaks the same CAS protocol
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            return hf_xet.upload_files(
                [str(p) for p in paths], self.url, token, lambda: token, None, "model", sha256s=sha256s
            )
