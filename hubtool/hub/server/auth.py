"""Who may do what: the token file, constant-time token checks, signed LFS transfer URLs (stdlib only).

Token file format (one user per line; blank lines and `#` comments ignored):

    # user    token
    alice     hf_alice_0123456789
    bob       s3cret-bob-token

A user name follows the namespace rule (letters, digits, - _ .); a token is any run of 8-1024 visible
ASCII characters without spaces, unique in the file. The file is re-read when its modification time
changes, so users can be added or revoked without a restart. Tokens are compared as sha256 digests
with `hmac.compare_digest` against every entry (no early exit; equal-length inputs, so neither the
position of the match nor the length of the token shows in the time), and never appear in a log line or
an error. Failed attempts are rate-limited per client address (`FailedAuthLimiter`).
"""

from __future__ import annotations

import hashlib
import hmac
import math
import os
import re
import secrets
import threading
import time
from pathlib import Path

from hubtool.errors import HubError
from hubtool.hub.server.names import ascii_int

# The login form's cookie (pages.py): the token itself, HttpOnly, SameSite=Strict; read for GET/HEAD only
SESSION_COOKIE = "hub_session"
_USER = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9_])?")
_TOKEN = re.compile(r"[\x21-\x7e]{8,1024}")


def parse_token_file(text: str, source: str = "token file") -> list[tuple[str, bytes]]:
    """`<user> <token>` lines -> [(user, sha256 of the token)]. Errors name the line, never the token."""
    entries: list[tuple[str, bytes]] = []
    seen: set[bytes] = set()
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        fields = line.split()
        if len(fields) != 2:
            raise HubError(
                f"{source} line {number}: expected '<user> <token>' (two fields separated by spaces)"
            )
        user, token = fields
        if not _USER.fullmatch(user) or "--" in user or ".." in user:
            raise HubError(f"{source} line {number}: invalid user name (letters, digits, '-', '_', '.')")
        if not _TOKEN.fullmatch(token):
            raise HubError(f"{source} line {number}: a token must be 8-1024 visible ASCII characters")
        digest = _digest(token)
        if digest in seen:
            raise HubError(f"{source} line {number}: the same token appears twice")
        seen.add(digest)
        entries.append((user, digest))
    return entries


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()


class TokenStore:
    """The users of one token file (or none: then nobody can authenticate)."""

    def __init__(self, path: str | os.PathLike | None) -> None:
        self.path = Path(path).expanduser() if path is not None else None
        self._entries: list[tuple[str, bytes]] = []
        self._stamp: tuple[int, int] | None = None
        self._lock = threading.Lock()
        if self.path is not None:
            self._load(strict=True)

    def _load(self, *, strict: bool) -> None:
        assert self.path is not None
        try:
            st = self.path.stat()
            stamp = (st.st_mtime_ns, st.st_size)
            if stamp == self._stamp:
                return
            entries = parse_token_file(self.path.read_text(encoding="utf-8"), str(self.path))
        except (OSError, UnicodeDecodeError, HubError) as err:
            if strict:
                raise HubError(f"cannot read token file {self.path}: {err}") from None
            return  # keep the last good set of users rather than locking everybody out
        self._entries, self._stamp = entries, stamp

    def __len__(self) -> int:
        return len(self._entries)

    def user_for(self, token: str | None) -> str | None:
        """The user owning `token`, or None. Every entry is compared, so the time does not depend on
        which entry (if any) matches."""
        if self.path is None or not token:
            return None
        with self._lock:
            self._load(strict=False)
            entries = self._entries
        given = _digest(token)
        found = None
        for user, candidate in entries:
            if hmac.compare_digest(given, candidate):
                found = user
        return found


class FailedAuthLimiter:
    """A token bucket per client address, spent by failed authentications only: `burst` failures at once,
    then one per `1/rate` seconds. While a client's bucket is empty, its requests that carry credentials
    are refused (429 + Retry-After) before any token is checked, so guessing cannot go faster than `rate`
    even when a guess is right. At most `max_clients` addresses are tracked (the oldest are forgotten)."""

    def __init__(self, burst: int = 20, rate: float = 0.5, max_clients: int = 10_000) -> None:
        self.burst, self.rate, self.max_clients = float(burst), float(rate), max_clients
        self._buckets: dict[str, tuple[float, float]] = {}  # client -> (tokens left, when last updated)
        self._lock = threading.Lock()

    def _level(self, client: str, now: float) -> float:
        left, then = self._buckets.get(client, (self.burst, now))
        return min(self.burst, left + (now - then) * self.rate)

    def retry_after(self, client: str) -> int:
        """Seconds this client must wait before its credentials are looked at again (0: go ahead)."""
        if self.burst <= 0:
            return 0
        with self._lock:
            if client not in self._buckets:
                return 0
            left = self._level(client, time.monotonic())
            return 0 if left >= 1 else max(1, math.ceil((1 - left) / self.rate))

    def failed(self, client: str) -> None:
        if self.burst <= 0:
            return
        with self._lock:
            now = time.monotonic()
            left = self._level(client, now) - 1
            self._buckets.pop(client, None)  # re-insert: dict order is least recently failed first
            self._buckets[client] = (max(left, 0.0), now)
            while len(self._buckets) > self.max_clients:
                self._buckets.pop(next(iter(self._buckets)))


def bearer_token(authorization: str | None) -> str | None:
    """`Bearer <token>` -> token. Anything else (Basic, an empty value) -> None."""
    if not authorization:
        return None
    scheme, _, value = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()


class Signer:
    """HMAC-SHA256 signatures for URLs the client calls without credentials (LFS PUT hrefs)."""

    def __init__(self, secret: bytes) -> None:
        self._secret = secret

    @classmethod
    def from_file(cls, path: Path) -> Signer:
        """The server's key, created once (0600) so signed URLs survive a restart."""
        try:
            secret = bytes.fromhex(path.read_text().strip())
            if len(secret) >= 32:
                return cls(secret)
        except (OSError, ValueError):
            pass
        secret = secrets.token_bytes(32)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secret.hex())
        os.replace(tmp, path)
        return cls(secret)

    def sign(self, *fields: str) -> str:
        message = "\n".join(fields).encode()
        return hmac.new(self._secret, message, hashlib.sha256).hexdigest()

    def check(self, signature: str | None, expires: str | None, *fields: str) -> bool:
        deadline = ascii_int(expires)
        if not signature or deadline is None or deadline < time.time():
            return False
        return hmac.compare_digest(signature.encode(), self.sign(*fields, expires).encode())
