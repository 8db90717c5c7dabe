"""HTTP helpers that every handler of `hub serve` shares: error responses, query numbers, JSON bodies
within limits, files with Range, model card front matter.

Nothing here knows an endpoint; the handlers (repos.py, refs.py, downloads.py, commits.py, lfs.py) do.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any
from urllib.parse import quote

import anyio
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from hubtool.format import safejson
from hubtool.hub.server import names
from hubtool.hub.server.defaults import CHUNK, DRAIN_LIMIT, MAX_CARD_YAML, MAX_JSON_BODY, MAX_JSON_DEPTH
from hubtool.hub.server.errors import ApiError, bad_request
from hubtool.hub.server.storage import RepoRef

log = logging.getLogger("hubtool.hub.server")

# -- responses ----------------------------------------------------------------------------------------


async def lifespan(receive: Any, send: Any, on_shutdown: Any = None) -> None:
    """The ASGI lifespan protocol for an app with nothing to start: acknowledge startup, and on shutdown
    call `on_shutdown` (if any) before acknowledging it."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            if on_shutdown is not None:
                on_shutdown()
            await send({"type": "lifespan.shutdown.complete"})
            return


def header_safe(text: str, limit: int = 400) -> str:
    text = text.encode("ascii", "backslashreplace").decode("ascii")
    # h11 refuses a header value with leading or trailing whitespace (a message ending in a space would
    # turn a clean 404 into a dropped connection)
    return "".join(c if 32 <= ord(c) < 127 else " " for c in text)[:limit].strip()


def error_response(err: ApiError, *, head: bool = False) -> Response:
    headers = dict(err.headers)
    if err.code:
        headers["X-Error-Code"] = err.code
    headers["X-Error-Message"] = header_safe(err.message)
    if head:
        return Response(status_code=err.status, headers=headers)
    return JSONResponse({"error": err.message, **err.body}, status_code=err.status, headers=headers)


def base_url(request: Request) -> str:
    """The server's URL as the client reached it (no trailing slash)."""
    return str(request.base_url).rstrip("/")


def repo_url(request: Request, repo: RepoRef) -> str:
    return f"{base_url(request)}/{names.TYPE_PREFIX[repo.type]}{repo.id}"


def jsonable(data: Any) -> Any:
    """What a repo's own files (README front matter, config.json) put into repo_info, as strict JSON: dates
    become strings; NaN, lone surrogates (YAML's "\\ud83d\\ude00" escapes stay two surrogates) or anything
    else a response cannot encode make it None, so a hostile file cannot turn repo_info into a 500."""
    try:
        text = json.dumps(data, default=str, ensure_ascii=False, allow_nan=False)
        text.encode("utf-8")
        return json.loads(text)
    except (TypeError, ValueError, RecursionError):  # UnicodeEncodeError is a ValueError
        return None


# -- query parameters ---------------------------------------------------------------------------------


def true(value: str | None) -> bool:
    """A boolean query parameter: 1, true, yes, on (any case)."""
    return value is not None and value.lower() in ("1", "true", "yes", "on")


def int_param(value: str | None, default: int, low: int, high: int) -> int:
    """A numeric query parameter (names.ascii_int's one rule), clamped to [low, high]; default if absent
    or not a number."""
    number = names.ascii_int(value)
    return default if number is None else max(low, min(high, number))


# -- request bodies -----------------------------------------------------------------------------------


async def read_body(request: Request, limit: int = MAX_JSON_BODY) -> bytes:
    """The whole body, or a 413 as soon as it (or its Content-Length) passes `limit` bytes."""
    declared = names.ascii_int(request.headers.get("content-length"))
    if declared is not None and declared > limit:
        raise ApiError(413, "PayloadTooLarge", f"request body larger than {limit} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, "PayloadTooLarge", f"request body larger than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _invalid_json(message: str) -> ApiError:
    return bad_request("InvalidJson", message)


def loads(body: bytes | str) -> Any:
    """A JSON request body through the one safe loader (hubtool.format.safejson): nesting at most
    MAX_JSON_DEPTH, no unpaired surrogates (no response or file name could encode them); anything else
    than such JSON is a 400 InvalidJson."""
    return safejson.loads(
        body,
        "the request body",
        error=_invalid_json,
        max_depth=MAX_JSON_DEPTH,
        allow_nan=True,
        allow_surrogates=False,
    )


async def read_json(request: Request, *, default: Any = None) -> Any:
    """The JSON body (at most MAX_JSON_BODY bytes); an empty body is `default`, or a 400 without one."""
    body = await read_body(request)
    if not body.strip():
        if default is not None:
            return default
        raise bad_request("InvalidJson", "expected a JSON body")
    return loads(body)


async def drain(request: Request, limit: int = DRAIN_LIMIT) -> None:
    """Read (and drop) what is left of a refused request body, so that the client, still sending, gets the
    error response instead of a reset connection; past `limit` bytes the connection is dropped instead."""
    try:
        async for chunk in request.stream():
            limit -= len(chunk)
            if limit < 0:
                return
    except (ClientDisconnect, RuntimeError):  # gone, or the body was already read to the end
        pass


async def settle(task) -> None:
    """Wait until a background step (a worker thread using a request's files) is over, whatever it raised."""
    if task is None:
        return
    try:
        await asyncio.shield(task)
    except BaseException:  # noqa: BLE001, S110 (its error, if any, was or will be raised by the request itself)
        pass


# -- files, with Range --------------------------------------------------------------------------------


def content_disposition(path: str) -> str:
    name = path.rsplit("/", 1)[-1]
    ascii_name = "".join(c if 32 <= ord(c) < 127 and c not in '"\\' else "_" for c in name)
    return f"inline; filename*=UTF-8''{quote(name, safe='')}; filename=\"{ascii_name}\""


def parse_range(header: str, size: int):
    """`bytes=a-b` / `bytes=a-` / `bytes=-n` -> (start, end) inclusive; "unsatisfiable"; None to ignore
    (several ranges or a malformed header: the whole file is sent, as RFC 9110 allows)."""
    unit, _, spec = header.partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    first, dash, last = spec.strip().partition("-")
    if not dash:
        return None
    first, last = first.strip(), last.strip()
    a, b = names.ascii_int(first), names.ascii_int(last)
    if first == "":
        if not b:
            return "unsatisfiable" if b == 0 else None
        return max(0, size - b), size - 1
    if a is None or (last and b is None):
        return None
    end = min(b, size - 1) if b is not None else size - 1
    if a >= size or (b is not None and b < a):
        return "unsatisfiable"
    return a, end


async def read_range(raw, start: int, length: int):
    f = anyio.wrap_file(raw)
    try:
        await f.seek(start)
        remaining = length
        while remaining > 0:
            chunk = await f.read(min(CHUNK, remaining))
            if not chunk:
                break
            remaining -= len(chunk)
            yield chunk
    finally:
        await f.aclose()


def range_of(request: Request, size: int, headers: dict) -> tuple[int, int, int] | Response:
    """(start, end inclusive, status) of a GET/HEAD of `size` bytes under its Range header, with
    Content-Range and Content-Length set in `headers`; or the 416 answer when the range is unsatisfiable."""
    start, end, status = 0, size - 1, 200
    header = request.headers.get("range")
    if header:
        parsed = parse_range(header, size)
        if parsed == "unsatisfiable":
            return Response(
                status_code=416,
                headers={**headers, "Content-Range": f"bytes */{size}", "Content-Length": "0"},
            )
        if parsed is not None:
            start, end = parsed
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end}/{size}"
    headers["Content-Length"] = str(max(0, end - start + 1))
    return start, end, status


def file_response(request: Request, path, size: int, headers: dict) -> Response:
    """A stored file (a blob of `size` bytes at `path`) as the answer to GET or HEAD, honouring Range."""
    planned = range_of(request, size, headers)
    if isinstance(planned, Response):
        return planned
    start, end, status = planned
    length = max(0, end - start + 1)
    if request.method == "HEAD":
        return Response(status_code=status, headers=headers)
    # Opened before the status line goes out: a blob that cannot be read is a clean error response,
    # never a 200 whose body stops short.
    try:
        f = open(path, "rb")  # noqa: SIM115 (closed by read_range when the body is sent or dropped)
    except OSError:
        log.error("blob %s cannot be read", path.name if hasattr(path, "name") else path)
        raise ApiError(500, "BlobUnreadable", "a stored file cannot be read; try again later") from None
    return StreamingResponse(read_range(f, start, length), status_code=status, headers=headers)


# -- model card front matter --------------------------------------------------------------------------


def front_matter(text: str):
    """The YAML metadata block of a model card (between `---` lines at its top), or None."""
    if not text.startswith("---"):
        return None
    lines = text.split("\n")
    if lines[0].strip() != "---":
        return None
    for index in range(1, len(lines)):
        if lines[index].strip() == "---":
            import yaml

            block = "\n".join(lines[1:index])
            check_yaml_shape(block)
            return yaml.safe_load(block)
    return None


def check_yaml_shape(block: str) -> None:
    """Refuse, before composing it, card metadata that is too big, nested deeper than MAX_JSON_DEPTH (the
    composer recurses: RecursionError) or uses aliases (`&a [x, x]`, `[*a, *a]`, nine levels: 9**9 items
    once the card is written as JSON for repo_info). yaml.parse is a non-recursive event stream."""
    import yaml

    if len(block) > MAX_CARD_YAML:
        raise yaml.YAMLError(f"the metadata block is larger than {MAX_CARD_YAML} characters")
    depth = 0
    for event in yaml.parse(block, Loader=yaml.SafeLoader):
        if isinstance(event, yaml.AliasEvent):
            raise yaml.YAMLError("aliases (*name) are not allowed in model card metadata")
        if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
            depth += 1
            if depth > MAX_JSON_DEPTH:
                raise yaml.YAMLError(f"the metadata nests deeper than {MAX_JSON_DEPTH}")
        elif isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
            depth -= 1


def front_matter_error(text: str) -> str | None:
    """Why a model card's metadata would be refused (validate-yaml), or None if it is fine."""
    import yaml

    try:
        data = front_matter(text)
    except (yaml.YAMLError, RecursionError, ValueError) as err:
        return f"Invalid YAML in the model card metadata: {str(err).splitlines()[0][:200]}"
    if data is not None and not isinstance(data, dict):
        return "The model card metadata must be a YAML mapping"
    return None
