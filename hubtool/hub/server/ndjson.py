"""A push parser for the commit endpoint's NDJSON body that never holds a file's content in memory.

huggingface_hub sends one JSON object per line; a regular file travels inline as
`{"key": "file", "value": {"content": "<base64>", "path": ..., "encoding": "base64"}}`, content first,
so a line can be as large as the file times 4/3. This parser reads the body chunk by chunk; the string
at `value.content` of a line goes straight through a streaming base64 decoder into a temp file while
its sha256 is computed, and the object gets a `Spilled` in its place. Everything else of a line is
small JSON, bounded by `max_line_bytes`.

Stdlib only; no JSON library can do this, because their parsers want the whole string.
"""

from __future__ import annotations

import binascii
import hashlib
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_STRING_STOP = re.compile(rb'["\\\x00-\x1f]')
_CONTROL = re.compile(rb"[\x00-\x1f]")
_WS = b" \t\r\n"
_NUMBER_CHARS = frozenset(b"+-0123456789.eE")
_ESCAPES = {
    ord('"'): b'"',
    ord("\\"): b"\\",
    ord("/"): b"/",
    ord("b"): b"\b",
    ord("f"): b"\f",
    ord("n"): b"\n",
    ord("r"): b"\r",
    ord("t"): b"\t",
}


class ParseError(ValueError):
    pass


def _a2b_strict(block: bytes | memoryview) -> bytes:
    return binascii.a2b_base64(block, strict_mode=True)


def _a2b_regex(block: bytes | memoryview) -> bytes:  # Python 3.10: no strict_mode
    if not _B64_310.fullmatch(block):
        raise binascii.Error("not base64")
    return binascii.a2b_base64(block)


_B64_310 = re.compile(rb"[A-Za-z0-9+/]*={0,2}")
_a2b_base64 = _a2b_strict if sys.version_info >= (3, 11) else _a2b_regex

try:  # SIMD base64 (25x binascii here), when installed: the same strictness (alphabet only, padding at the end)
    from pybase64 import b64decode as _pybase64_decode

    def _a2b_base64(block: bytes | memoryview) -> bytes:
        return _pybase64_decode(block, validate=True)

except ImportError:
    pass


@dataclass
class Spilled:
    """The `value.content` string of one line, decoded from base64 into `path` (if it was base64)."""

    path: Path
    size: int = 0
    sha256: str = ""
    base64_ok: bool = True
    raw: bytes | None = None  # the string itself (utf-8), kept while it is at most `keep_raw` bytes
    _file: Any = field(default=None, repr=False)
    _digest: Any = field(default=None, repr=False)
    _carry: bytes = field(default=b"", repr=False)
    _padded: bool = field(default=False, repr=False)
    _raw: bytearray | None = field(default_factory=bytearray, repr=False)
    _keep_raw: int = field(default=1 << 20, repr=False)
    _max_size: int = field(default=0, repr=False)

    def open(self) -> None:
        self._file = open(self.path, "wb")  # noqa: SIM115 (written across feed() calls, closed in close())
        self._digest = hashlib.sha256()

    def write(self, data: bytes | memoryview) -> None:
        if self._raw is not None:
            if len(self._raw) + len(data) <= self._keep_raw:
                self._raw += data
            else:
                self._raw = None
        if not self.base64_ok:
            return
        data = memoryview(data)
        if self._carry:  # complete the quantum left over from the last write (no copy of `data`)
            need = 4 - len(self._carry)
            head, data = self._carry + bytes(data[:need]), data[need:]
            if len(head) < 4:
                self._carry = head
                return
            self._carry = b""
            if not self._decode(head):
                return
        cut = len(data) - len(data) % 4
        if cut < len(data):
            self._carry = bytes(data[cut:])
        if cut:
            self._decode(data[:cut])

    def _decode(self, block: bytes | memoryview) -> bool:
        """Decode whole base64 quanta; strict: only the alphabet, padding at the very end only."""
        if self._padded:  # padding ends the data: anything after it is invalid
            self.base64_ok = False
            return False
        try:
            decoded = _a2b_base64(block)
        except binascii.Error:
            self.base64_ok = False
            return False
        if block[-1] == 61:  # "="
            self._padded = True
        self.size += len(decoded)
        if self._max_size and self.size > self._max_size:
            raise ParseError(
                f"a file in the commit is larger than the server's limit ({self._max_size} bytes)"
            )
        self._digest.update(decoded)
        self._file.write(decoded)
        return True

    def close(self) -> None:
        if self._carry:
            self.base64_ok = False
        self.raw = bytes(self._raw) if self._raw is not None else None
        self._raw = None
        self.sha256 = self._digest.hexdigest()
        self._file.close()

    def discard(self) -> None:
        self.raw = self._raw = None
        if self._file is not None and not self._file.closed:
            self._file.close()
        self.path.unlink(missing_ok=True)


class _Frame:
    __slots__ = ("container", "is_obj", "key")

    def __init__(self, is_obj: bool) -> None:
        self.is_obj = is_obj
        self.container: Any = {} if is_obj else []
        self.key: str | None = None


# parser states
(
    _VALUE,
    _AFTER_VALUE,
    _KEY,
    _KEY_OR_END,
    _COLON,
    _STRING,
    _ESCAPE,
    _UNICODE,
    _NUMBER,
    _LITERAL,
    _VALUE_OR_END,
) = range(11)


class NDJSONParser:
    """feed(bytes) -> [completed line objects]; close() checks nothing is left half-parsed.

    `new_spill()` returns the temp file path for the next `value.content` string. Every Spilled made is
    also in `self.spills`, so the caller can delete what it did not keep.
    """

    def __init__(
        self,
        new_spill: Callable[[], Path],
        *,
        max_line_bytes: int = 16 << 20,
        max_depth: int = 32,
        max_file_size: int = 0,
    ) -> None:
        self.new_spill = new_spill
        self.max_line_bytes = max_line_bytes
        self.max_depth = max_depth
        self.max_file_size = max_file_size
        self.spills: list[Spilled] = []
        self._stack: list[_Frame] = []
        self._state = _VALUE
        self._string: bytearray | None = None  # a small string being read
        self._sink: Spilled | None = None  # or the spilled one
        self._tail = b""  # the last <= 3 raw bytes given to the sink
        self._string_is_key = False
        self._token = bytearray()  # number / literal / \\u digits
        self._high_surrogate: int | None = None
        self._line_bytes = 0
        self._done: list[dict] = []

    # -- public ---------------------------------------------------------------------------------------

    def feed(self, data: bytes) -> list[dict]:
        pos, n = 0, len(data)
        while pos < n:
            state = self._state
            if state == _STRING:
                pos = self._read_string(data, pos)
                continue
            c = data[pos]
            if state == _ESCAPE:
                pos += 1
                self._escape(c)
                continue
            if state == _UNICODE:
                pos += 1
                self._unicode(c)
                continue
            if state in (_NUMBER, _LITERAL):
                if (state == _NUMBER and c in _NUMBER_CHARS) or (state == _LITERAL and 97 <= c <= 122):
                    self._token.append(c)
                    self._count(1)
                    if len(self._token) > 64:
                        raise ParseError("number or literal too long")
                    pos += 1
                    continue
                self._end_scalar()
                continue  # re-read c in the new state
            pos += 1
            if c in _WS:
                continue
            self._count(1)
            if state in (_VALUE, _VALUE_OR_END):
                if state == _VALUE_OR_END and c == ord("]"):
                    self._close_container(is_obj=False)
                else:
                    self._start_value(c)
            elif state == _AFTER_VALUE:
                top = self._stack[-1]
                if c == ord(","):
                    self._state = _KEY if top.is_obj else _VALUE
                elif c == ord("}") and top.is_obj:
                    self._close_container(is_obj=True)
                elif c == ord("]") and not top.is_obj:
                    self._close_container(is_obj=False)
                else:
                    raise ParseError(f"unexpected {chr(c)!r} after a value")
            elif state in (_KEY, _KEY_OR_END):
                if c == ord('"'):
                    self._string_is_key = True
                    self._string = bytearray()
                    self._state = _STRING
                elif c == ord("}") and state == _KEY_OR_END:
                    self._close_container(is_obj=True)
                else:
                    raise ParseError("expected an object key")
            elif state == _COLON:
                if c != ord(":"):
                    raise ParseError("expected ':' after an object key")
                self._state = _VALUE
        done, self._done = self._done, []
        return done

    def close(self) -> None:
        if self._state in (_NUMBER, _LITERAL):
            self._end_scalar()
        if self._stack or self._state != _VALUE:
            raise ParseError("the body ends in the middle of a JSON line")

    def discard_all(self) -> None:
        for spill in self.spills:
            spill.discard()

    # -- internals ------------------------------------------------------------------------------------

    def _count(self, k: int) -> None:
        self._line_bytes += k
        if self._line_bytes > self.max_line_bytes:
            raise ParseError(f"a commit line has more than {self.max_line_bytes} bytes besides file contents")

    def _start_value(self, c: int) -> None:
        if c == ord("{") or c == ord("["):
            if len(self._stack) >= self.max_depth:
                raise ParseError("JSON nested too deeply")
            if not self._stack and c != ord("{"):
                raise ParseError("each commit line must be a JSON object")
            self._stack.append(_Frame(c == ord("{")))
            self._state = _KEY_OR_END if c == ord("{") else _VALUE_OR_END
        elif c == ord('"'):
            if not self._stack:
                raise ParseError("each commit line must be a JSON object")
            self._string_is_key = False
            if self._is_content_slot():
                sink = Spilled(self.new_spill(), _keep_raw=1 << 20, _max_size=self.max_file_size)
                self.spills.append(sink)
                sink.open()
                self._sink = sink
                self._tail = b""
                self._string = None
            else:
                self._string = bytearray()
            self._state = _STRING
        elif c == ord("-") or 48 <= c <= 57:
            self._need_container()
            self._token = bytearray([c])
            self._state = _NUMBER
        elif 97 <= c <= 122:
            self._need_container()
            self._token = bytearray([c])
            self._state = _LITERAL
        else:
            raise ParseError(f"unexpected {chr(c)!r} where a value was expected")

    def _need_container(self) -> None:
        if not self._stack:
            raise ParseError("each commit line must be a JSON object")

    def _is_content_slot(self) -> bool:
        s = self._stack
        return len(s) == 2 and s[0].is_obj and s[0].key == "value" and s[1].is_obj and s[1].key == "content"

    def _read_string(self, data: bytes, pos: int) -> int:
        sink = self._sink
        if sink is not None and sink.base64_ok:
            return self._read_content(sink, data, pos)
        m = _STRING_STOP.search(data, pos)
        end = m.start() if m else len(data)
        if end > pos:
            self._append(data[pos:end])
        if m is None:
            return end
        c = data[end]
        if c == ord('"'):
            self._end_string()
        elif c == ord("\\"):
            self._state = _ESCAPE
        else:
            raise ParseError("control character inside a JSON string")
        return end + 1

    def _read_content(self, sink: Spilled, data: bytes, pos: int) -> int:
        """A file's content string while it is still valid base64: the string ends at the next '"' or '\\'
        (bytes.find, not a regex: this is every byte of every file). A raw control character cannot pass the
        strict base64 decoder, so only once decoding fails is the text checked for one: the failed segment and
        the last bytes before it (the decoder's carry-over; decoded bytes were base64, never control bytes)."""
        quote, backslash = data.find(b'"', pos), data.find(b"\\", pos)
        if quote < 0 or (0 <= backslash < quote):
            quote = backslash
        end = len(data) if quote < 0 else quote
        if end > pos:
            if self._high_surrogate is not None:
                raise ParseError("unpaired surrogate in a JSON string")
            segment = memoryview(data)[pos:end]
            sink.write(segment)
            tail = self._tail + bytes(segment[-3:])
            if not sink.base64_ok and _CONTROL.search(self._tail + bytes(segment)):
                raise ParseError("control character inside a JSON string")
            self._tail = tail[-3:]
        if quote < 0:
            return end
        if data[end] == ord('"'):
            self._end_string()
        else:
            self._state = _ESCAPE
        return end + 1

    def _append(self, chunk: bytes) -> None:
        if self._high_surrogate is not None:
            raise ParseError("unpaired surrogate in a JSON string")
        if self._sink is not None:
            self._sink.write(chunk)
        else:
            self._count(len(chunk))
            self._string += chunk

    def _escape(self, c: int) -> None:
        if c == ord("u"):
            self._token = bytearray()
            self._state = _UNICODE
            return
        replacement = _ESCAPES.get(c)
        if replacement is None:
            raise ParseError("invalid escape in a JSON string")
        self._state = _STRING
        self._append(replacement)

    def _unicode(self, c: int) -> None:
        self._token.append(c)
        if len(self._token) < 4:
            return
        try:
            code = int(self._token.decode("ascii"), 16)
        except ValueError:
            raise ParseError("invalid \\u escape in a JSON string") from None
        self._state = _STRING
        if 0xD800 <= code < 0xDC00:
            if self._high_surrogate is not None:
                raise ParseError("unpaired surrogate in a JSON string")
            self._high_surrogate = code
            return
        if 0xDC00 <= code < 0xE000:
            if self._high_surrogate is None:
                raise ParseError("unpaired surrogate in a JSON string")
            code = 0x10000 + ((self._high_surrogate - 0xD800) << 10) + (code - 0xDC00)
            self._high_surrogate = None
        self._append(chr(code).encode("utf-8"))

    def _end_string(self) -> None:
        if self._high_surrogate is not None:
            raise ParseError("unpaired surrogate in a JSON string")
        if self._sink is not None:
            self._sink.close()
            if not self._sink.base64_ok and _CONTROL.search(self._tail):  # raw bytes the decoder never saw
                raise ParseError("control character inside a JSON string")
            value: Any = self._sink
            self._sink = None
        else:
            try:
                value = self._string.decode("utf-8")
            except UnicodeDecodeError:
                raise ParseError("a JSON string is not valid UTF-8") from None
            self._string = None
        if self._string_is_key:
            self._stack[-1].key = value
            self._state = _COLON
        else:
            self._add_value(value)

    def _end_scalar(self) -> None:
        token = bytes(self._token)
        self._token = bytearray()
        if token in (b"true", b"false", b"null"):
            value: Any = {b"true": True, b"false": False, b"null": None}[token]
        else:
            import json

            try:
                value = json.loads(token)
            except ValueError:
                raise ParseError(f"invalid JSON value {token[:20]!r}") from None
            if not isinstance(value, (int, float)):
                raise ParseError(f"invalid JSON value {token[:20]!r}")
        self._add_value(value)

    def _add_value(self, value: Any) -> None:
        top = self._stack[-1]
        if top.is_obj:
            top.container[top.key] = value
            top.key = None
        else:
            top.container.append(value)
        self._state = _AFTER_VALUE

    def _close_container(self, *, is_obj: bool) -> None:
        frame = self._stack.pop()
        if frame.is_obj != is_obj:
            raise ParseError("mismatched brackets")
        if self._stack:
            self._add_value(frame.container)
        else:
            self._done.append(frame.container)
            self._line_bytes = 0
            self._state = _VALUE
