"""What push and pull share: repo-id and revision checks, the HfApi client, one-line errors.

huggingface_hub is imported inside functions only (`hub --help` and `hub list` never load it).
Endpoint and token work as in the HF tools: an explicit value wins, else HF_ENDPOINT / HF_TOKEN, else
the client's stored login (`hf auth login`); token=None lets huggingface_hub find it. A token is never
printed, logged, stored or put into an error message: every message that leaves here is scrubbed.

HF_HUB_OFFLINE=1 means "do not go on the network". A loopback endpoint (127.0.0.0/8, ::1, localhost: a
`hub serve` on this machine, as `make demo` runs) is not the network, so push and pull reach it with the flag
set; any other endpoint is refused with one line, as huggingface_hub would refuse it.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from hubtool.errors import HubError, shown
from hubtool.hub.names import MAX_NAME, repo_id_problem, revision_problem


class HubAccessError(HubError):
    """The Hub (or a `hub serve`) refused a request or could not be reached."""


def check_repo_id(repo_id: object, what: str = "repo") -> str:
    """'org/name' or 'name' (the token's own namespace), checked before any work is done: the rule of
    huggingface_hub's validate_repo_id (hubtool.hub.names)."""
    problem = repo_id_problem(repo_id)
    if problem:
        raise HubError(
            f"{what} {shown(repo_id)}: expected ORG/NAME or NAME, each part 1-{MAX_NAME} letters, digits, "
            f"'-', '_' or '.' ({problem})"
        )
    return str(repo_id)


def check_revision(revision: object, what: str = "revision") -> str:
    """A branch, tag or commit id, by git's ref-name rules over a URL-safe alphabet (hubtool.hub.names)."""
    problem = revision_problem(revision)
    if problem:
        raise HubError(f"{what} {shown(revision)}: expected a branch, tag or commit id ({problem})")
    return str(revision)


def split_repo(spec: str, what: str = "repo") -> tuple[str, str | None]:
    """'org/name@rev' -> ('org/name', 'rev'); 'org/name' -> ('org/name', None). Both parts checked."""
    repo, at, revision = spec.partition("@")
    check_repo_id(repo, what)
    if at:
        check_revision(revision, f"{what} {shown(spec)}: revision")
    return repo, (revision if at else None)


def check_endpoint(endpoint: str | None) -> str:
    """The Hub URL requests will go to (`endpoint`, else HF_ENDPOINT, else the Hub's), checked before any
    request: an http:// or https:// URL with a host and a valid port, no spaces or control characters.
    Else one line naming --endpoint (or HF_ENDPOINT) instead of the HTTP client's InvalidURL."""
    import os
    from urllib.parse import urlsplit

    from hubtool.errors import shown

    # HF_ENDPOINT read here, not through huggingface_hub.constants: importing that raises on a bad one.
    url = endpoint or os.environ.get("HF_ENDPOINT")
    what = "--endpoint" if endpoint else "HF_ENDPOINT"
    if url is None:
        return "https://huggingface.co"
    why = None
    if not isinstance(url, str) or any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in url):
        why = "it holds spaces or control characters"
    else:
        try:
            parts = urlsplit(url)
            parts.port  # noqa: B018  (raises ValueError for a port that is not a number in 0-65535)
        except ValueError as err:
            why = " ".join(str(err).split())[:100]
        else:
            if parts.scheme.lower() not in ("http", "https"):
                why = f"scheme {parts.scheme!r}" if parts.scheme else "no scheme"
            elif not parts.hostname:
                why = "no host"
            else:
                why = _client_refuses(url)
    if why is not None:
        raise HubError(f"{what} {shown(url, 100)}: expected an http:// or https:// URL with a host, "
                       f"like https://huggingface.co ({why})")
    return url


def _client_refuses(url: str) -> str | None:
    """Why the HTTP client huggingface_hub uses (httpx2, or httpx before it) would refuse `url` (a host
    that is not valid IDNA, a lone surrogate), or None."""
    try:
        url.encode("utf-8")
    except UnicodeEncodeError:
        return "not UTF-8 text"
    for load in (_httpx2, _httpx):
        try:
            module = load()
        except ImportError:
            continue
        try:
            module.URL(url)
        except Exception as err:  # noqa: BLE001  (InvalidURL and whatever its parser raises)
            return " ".join(str(err).split())[:100] or type(err).__name__
        return None
    return None


def _httpx2() -> Any:
    import httpx2

    return httpx2


def _httpx() -> Any:
    import httpx

    return httpx


def make_api(endpoint: str | None, token: str | None) -> Any:
    check_endpoint(endpoint)  # first: huggingface_hub's import raises on a bad HF_ENDPOINT
    from huggingface_hub import HfApi

    from hubtool import __version__

    return HfApi(
        endpoint=endpoint or None, token=token or None, library_name="hubtool", library_version=__version__
    )


def endpoint_of(endpoint: str | None) -> str:
    from huggingface_hub import constants

    return (endpoint or constants.ENDPOINT).rstrip("/")


def _known_token(token: str | None) -> str | None:
    if token:
        return token
    try:
        from huggingface_hub import get_token

        return get_token()
    except Exception:  # noqa: BLE001 (a broken token file is the client's business, not ours)
        return None


def scrub(text: str, token: str | None) -> str:
    """One line, without the token (and without anything that looks like a bearer header)."""
    text = " ".join(str(text).split())
    if token:
        text = text.replace(token, "***")
    return re.sub(r"(?i)(bearer\s+)\S+", r"\1***", text)


def is_loopback(endpoint: str) -> bool:
    """Whether `endpoint` (a URL) names this machine by a loopback address or `localhost` (no DNS asked: a
    name that merely resolves to 127.0.0.1 elsewhere is not trusted to stay on this machine)."""
    from urllib.parse import urlsplit

    try:
        host = urlsplit(endpoint).hostname
    except ValueError:
        return False
    if not host:
        return False
    if host.lower().rstrip(".") == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@contextmanager
def loopback_online(endpoint: str | None) -> Iterator[None]:
    """With HF_HUB_OFFLINE set, let huggingface_hub's requests to a loopback `endpoint` through for the
    duration (it reads the flag once, at import, into constants.HF_HUB_OFFLINE, and refuses every request
    while it is true). Any other endpoint: nothing changes, and the client refuses it as before."""
    from huggingface_hub import constants

    if not constants.HF_HUB_OFFLINE or not is_loopback(endpoint_of(endpoint)):
        yield
        return
    constants.HF_HUB_OFFLINE = False
    _reset_sessions()
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = True
        _reset_sessions()


def _reset_sessions() -> None:
    """Clients before 1.0 (requests) build their cached sessions offline or not: drop them on a switch.
    Newer ones check the flag on every request and have no such function."""
    try:
        from huggingface_hub.utils import reset_sessions
    except ImportError:
        return
    reset_sessions()


@contextmanager
def hub_errors(
    what: str,
    *,
    endpoint: str | None,
    token: str | None,
    repo: str | None = None,
    revision: str | None = None,
) -> Iterator[None]:
    """Turn huggingface_hub / network exceptions raised inside into one-line HubAccessErrors.

    `what` says what was being done ("pushing qa@1 to org/qa"); `repo`/`revision` name the target.
    Every Hub call runs inside one, so this is also where a loopback endpoint gets past HF_HUB_OFFLINE."""
    try:
        with loopback_online(endpoint):
            yield
    except HubError:
        raise
    except Exception as err:  # classified below; anything unknown is re-raised untouched
        message = _classify(err, what, endpoint=endpoint, token=token, repo=repo, revision=revision)
        if message is None:
            raise
        raise HubAccessError(scrub(message, _known_token(token))) from None


def _classify(
    err: Exception,
    what: str,
    *,
    endpoint: str | None,
    token: str | None,
    repo: str | None,
    revision: str | None,
) -> str | None:
    from huggingface_hub.errors import (
        EntryNotFoundError,
        HfHubHTTPError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    where = endpoint_of(endpoint)
    login = "pass --token, set HF_TOKEN or run `hf auth login`"
    status = getattr(getattr(err, "response", None), "status_code", None)
    detail = _server_message(err)
    if isinstance(err, RevisionNotFoundError):
        return f"{what}: {repo} has no revision {revision or 'main'!r} on {where}"
    if isinstance(err, RepositoryNotFoundError):
        if status == 401 and not _known_token(token):
            return f"{what}: {repo} is not readable on {where} without a token ({login})"
        return f"{what}: no repo {repo} on {where} (or the token may not read it)"
    if isinstance(err, EntryNotFoundError):
        return f"{what}: {repo}@{revision or 'main'} lacks a file: {detail or err}"
    if isinstance(err, HfHubHTTPError) and status is not None:
        if status == 401:
            reason = "no token was sent" if not _known_token(token) else "the token was refused"
            return f"{what}: 401 Unauthorized from {where}: {reason} ({login})"
        if status == 403:
            return f"{what}: 403 Forbidden from {where}: the token may not do this on {repo}{_tail(detail)}"
        if status == 412:
            return f"{what}: {repo} changed while pushing (someone else committed); push again"
        if status == 404:  # a 404 the client could not type: no Hub API answers there
            return f"{what}: HTTP 404 from {where}: is it a Hub endpoint? (check --endpoint / HF_ENDPOINT)"
        return f"{what}: HTTP {status} from {where}{_tail(detail)}"
    if isinstance(err, OfflineModeIsEnabled):
        return f"{what}: HF_HUB_OFFLINE is set, so {where} is not contacted (only a loopback endpoint is)"
    if type(err).__name__ == "InvalidURL":  # the HTTP client's, past check_endpoint: one line all the same
        return f"{what}: {where} is not a usable URL ({_reason(err)}); check --endpoint / HF_ENDPOINT"
    if _is_network_error(err):
        return f"{what}: cannot reach {where} ({_reason(err)}); is the server up? (check --endpoint / HF_ENDPOINT)"
    if isinstance(err, ValueError) and "huggingface_hub" in type(err).__module__:
        return f"{what}: {err}"
    if _is_xet_error(err):  # hf_xet's (Rust) errors arrive as RuntimeError: corrupt or missing Xet data
        return f"{what}: the Xet transfer with {where} failed ({_reason(err)})"
    return None


_XET_MARKERS = ("CAS Client Error", "File reconstruction error", "Xet", "xorb")


def _is_xet_error(err: BaseException) -> bool:
    """hf_xet raises plain RuntimeErrors ("Task error: File reconstruction error: CAS Client Error: ..."):
    known by their text, as the client itself gives them no type of their own."""
    return type(err) is RuntimeError and any(marker in str(err) for marker in _XET_MARKERS)


def _is_network_error(err: BaseException) -> bool:
    try:
        import httpx2

        if isinstance(err, httpx2.TransportError):
            return True
    except ImportError:  # an older client on httpx or requests
        pass
    try:
        import httpx

        if isinstance(err, httpx.TransportError):
            return True
    except ImportError:
        pass
    return isinstance(err, (ConnectionError, TimeoutError))


def _reason(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return text[:200] or type(err).__name__


def _server_message(err: BaseException) -> str:
    message = getattr(err, "server_message", None)
    if message:
        return " ".join(str(message).split())[:300]
    return ""


def _tail(detail: str) -> str:
    return f": {detail}" if detail else ""


@contextmanager
def quiet_client() -> Iterator[None]:
    """Silence huggingface_hub's own warnings and progress bars for the duration (our output says it)."""
    import logging

    logger = logging.getLogger("huggingface_hub")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        from huggingface_hub.utils import (
            are_progress_bars_disabled,
            disable_progress_bars,
            enable_progress_bars,
        )

        was_disabled = are_progress_bars_disabled()
        disable_progress_bars()
    except ImportError:
        was_disabled = True
    try:
        yield
    finally:
        logger.setLevel(level)
        if not was_disabled:
            enable_progress_bars()
