"""Xorbs (huggingface.co/docs/xet/xorb): what a client POSTs to /v1/xorbs/{prefix}/{hash}.

A xorb body is its chunks back to back, each an 8-byte header and the chunk's stored bytes:
    version u8 (0) | stored length u24 LE | scheme u8 | uncompressed length u24 LE | stored bytes
Schemes: 0 none, 1 LZ4 (frame format), 2 byte-grouping-4 then LZ4 (byte i of the chunk goes to group i % 4; the
four groups are concatenated, then compressed). Uploads carry no footer; a storage footer, if present, starts
with the ident b"XETBLOB" where the next header would be, and reading stops there. The xorb's hash is the
merkle root of its chunks' (hash, uncompressed length): `read_xorb` checks it against the URL's.

Bounds, as hf_xet cuts its xorbs: <= 64 MiB of uncompressed chunk data and <= 8,192 chunks. The serialized
body adds 8 bytes of header per chunk (and LZ4 framing), so a client's full xorb of incompressible data is a
little over 64 MiB: the body may be up to 64 MiB + 1 MiB. A chunk <= 128 KiB uncompressed, a stored chunk
<= 256 KiB and, for scheme none, exactly its uncompressed length; decompression never produces more than
the header's length.
"""

from __future__ import annotations

import io
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import BinaryIO

import lz4.block
import lz4.frame
import numpy as np

from hubtool.hub.xet.chunking import MAX_CHUNK
from hubtool.hub.xet.errors import XetFormatError
from hubtool.hub.xet.hashing import chunk_hash, hex_of, xorb_hash

MAX_XORB_BYTES = 64 * 1024 * 1024  # uncompressed chunk data in one xorb (hf_xet's own limit)
MAX_XORB_CHUNKS = 8 * 1024  # chunks in one xorb (hf_xet's own limit)
MAX_XORB_BODY = MAX_XORB_BYTES + (1 << 20)  # serialized: the data, 8 bytes per chunk header, LZ4 framing
MAX_STORED_CHUNK = 2 * MAX_CHUNK
HEADER = struct.Struct("<B3sB3s")
FOOTER_IDENT = b"XETBLOB"
SCHEME_NONE, SCHEME_LZ4, SCHEME_BG4_LZ4 = 0, 1, 2
SCHEMES = {SCHEME_NONE: "none", SCHEME_LZ4: "lz4", SCHEME_BG4_LZ4: "bg4-lz4"}
_LZ4_MAGIC = b"\x04\x22\x4d\x18"


@dataclass(frozen=True)
class XorbChunk:
    """One chunk of a xorb: where its header starts, its stored and uncompressed sizes, scheme and hash."""

    index: int
    offset: int  # byte offset of the chunk's header in the xorb body
    stored_size: int  # bytes after the header
    size: int  # uncompressed bytes
    scheme: int
    hash: bytes


@dataclass(frozen=True)
class XorbInfo:
    hash: bytes
    chunks: tuple[XorbChunk, ...]
    body_size: int  # bytes of chunk records (a footer, if any, starts here)
    footer_size: int  # bytes from the footer ident to the end (0: none, as uploads are)

    @property
    def hex(self) -> str:
        return hex_of(self.hash)

    @property
    def size(self) -> int:
        """Uncompressed bytes of all chunks."""
        return sum(c.size for c in self.chunks)


def _u24(b: bytes) -> int:
    return int.from_bytes(b, "little")


def bg4_split(data: bytes) -> bytes:
    arr = np.frombuffer(data, dtype=np.uint8)
    return b"".join(arr[k::4].tobytes() for k in range(4))


def bg4_regroup(data: bytes) -> bytes:
    n = len(data)
    arr = np.frombuffer(data, dtype=np.uint8)
    out = np.empty(n, dtype=np.uint8)
    pos = 0
    for k in range(4):
        count = (n - k + 3) // 4
        out[k::4] = arr[pos : pos + count]
        pos += count
    return out.tobytes()


def _lz4_single_block(stored: bytes, size: int) -> bytes | None:
    """The fast path for what hf_xet writes: an LZ4 frame of one block (no checksums, no dictionary),
    decoded with lz4.block, which needs no frame context (the frame decoder sets up ~0.5 MiB of buffers per
    frame: 95-150 against 19 ms for a 64 MiB xorb's chunks in a fresh process; about even in a warm server,
    whose allocator reuses them). Never more lenient than the frame decoder: None for anything else, and
    for anything that fails here, so that the frame decoder decides, with its own error."""
    if len(stored) < 15 or stored[:4] != _LZ4_MAGIC:
        return None
    flags = stored[4]
    if flags & 0x15:  # block checksums, content checksum, a dictionary id: the frame decoder checks those
        return None
    try:
        frame = lz4.frame.get_frame_info(stored[:19])  # version, reserved bits, the header checksum
    except RuntimeError:
        return None
    if frame["skippable"] or size > frame["block_size"]:
        return None
    if flags & 0x08 and frame["content_size"] != size:
        return None
    head = 15 if flags & 0x08 else 7
    word = int.from_bytes(stored[head : head + 4], "little")
    length = word & 0x7FFFFFFF
    end = head + 4 + length
    if length > frame["block_size"] or len(stored) != end + 4 or stored[end:] != b"\0\0\0\0":
        return None  # several blocks, or not exactly one block and the end mark
    if word & 0x80000000:
        out = stored[head + 4 : end]
    else:
        try:
            out = lz4.block.decompress(stored[head + 4 : end], uncompressed_size=size)
        except lz4.block.LZ4BlockError:
            return None
    return out if len(out) == size else None


def _lz4_bounded(stored: bytes, size: int, where: str) -> bytes:
    """Decompress one LZ4 frame that must hold exactly `size` bytes; never more than size + 1 come out."""
    out = _lz4_single_block(stored, size)
    if out is not None:
        return out
    d = lz4.frame.LZ4FrameDecompressor()
    try:
        out = d.decompress(stored, max_length=size + 1)
    except RuntimeError as e:
        raise XetFormatError(f"{where}: LZ4 data is corrupt ({str(e).splitlines()[0][:80]})") from None
    if len(out) != size or not d.eof or d.unused_data:
        raise XetFormatError(f"{where}: LZ4 data does not decode to exactly the header's {size} bytes")
    return out


def decode_chunk(scheme: int, stored: bytes, size: int, where: str = "chunk") -> bytes:
    if scheme == SCHEME_NONE:
        if len(stored) != size:
            raise XetFormatError(f"{where}: an uncompressed chunk's stored and uncompressed lengths differ")
        return stored
    if scheme == SCHEME_LZ4:
        return _lz4_bounded(stored, size, where)
    if scheme == SCHEME_BG4_LZ4:
        return bg4_regroup(_lz4_bounded(stored, size, where))
    raise XetFormatError(f"{where}: unknown compression scheme {scheme} (expected 0 none, 1 lz4, 2 bg4-lz4)")


def _read_exact(f: BinaryIO, n: int, where: str) -> bytes:
    data = f.read(n)
    if len(data) != n:
        raise XetFormatError(f"{where}: truncated (wanted {n} bytes, got {len(data)})")
    return data


def iter_xorb(f: BinaryIO, max_bytes: int = MAX_XORB_BODY) -> Iterator[tuple[XorbChunk, bytes]]:
    """Each chunk of the xorb body in `f` with its uncompressed bytes, checked against every bound (`max_bytes`:
    the serialized body and footer). Stops at the end of the body or at a storage footer (its size is then
    left in the generator's return value)."""
    offset = 0
    index = 0
    total = 0  # uncompressed bytes so far
    while True:
        head = f.read(HEADER.size)
        if not head:
            return 0
        where = f"xorb chunk {index} at byte {offset}"
        if head[:1] == FOOTER_IDENT[:1]:  # a chunk header starts with version 0, a storage footer with "X"
            footer = len(head)
            while offset + footer <= max_bytes and (
                piece := f.read(min(1 << 20, max_bytes - offset - footer + 1))
            ):
                head = head if len(head) >= 7 else head + piece[: 7 - len(head)]
                footer += len(piece)
            if offset + footer > max_bytes:
                raise XetFormatError(f"xorb is larger than {max_bytes} bytes")
            if head[:7] != FOOTER_IDENT:
                raise XetFormatError(f"{where}: neither a chunk header nor a {FOOTER_IDENT.decode()} footer")
            return footer
        if len(head) != HEADER.size:
            raise XetFormatError(f"{where}: truncated chunk header ({len(head)} of {HEADER.size} bytes)")
        version, stored_b, scheme, size_b = HEADER.unpack(head)
        stored_size, size = _u24(stored_b), _u24(size_b)
        if version != 0:
            raise XetFormatError(f"{where}: chunk header version {version} (expected 0)")
        if scheme not in SCHEMES:
            raise XetFormatError(
                f"{where}: unknown compression scheme {scheme} (expected 0 none, 1 lz4, 2 bg4-lz4)"
            )
        if size == 0 or size > MAX_CHUNK:
            raise XetFormatError(f"{where}: uncompressed length {size} (expected 1..{MAX_CHUNK})")
        if stored_size == 0 or stored_size > MAX_STORED_CHUNK:
            raise XetFormatError(f"{where}: stored length {stored_size} (expected 1..{MAX_STORED_CHUNK})")
        if offset + HEADER.size + stored_size > max_bytes:
            raise XetFormatError(f"xorb is larger than {max_bytes} bytes")
        if index >= MAX_XORB_CHUNKS:
            raise XetFormatError(f"xorb has more than {MAX_XORB_CHUNKS} chunks")
        total += size
        if total > MAX_XORB_BYTES:
            raise XetFormatError(f"xorb holds more than {MAX_XORB_BYTES} bytes of chunk data")
        stored = _read_exact(f, stored_size, where)
        data = decode_chunk(scheme, stored, size, where)
        yield XorbChunk(index, offset, stored_size, size, scheme, chunk_hash(data)), data
        offset += HEADER.size + stored_size
        index += 1


def read_xorb(f: BinaryIO, expected_hash: bytes | None = None, max_bytes: int = MAX_XORB_BODY) -> XorbInfo:
    """Validate a whole xorb body: every chunk decodes within its bounds, and (if given) the merkle root of
    its chunks equals `expected_hash` (32 raw bytes). XetFormatError (one line) otherwise."""
    chunks: list[XorbChunk] = []
    it = iter_xorb(f, max_bytes)
    footer = 0
    while True:
        try:
            chunk, _ = next(it)
        except StopIteration as stop:
            footer = stop.value or 0
            break
        chunks.append(chunk)
    if not chunks:
        raise XetFormatError("xorb has no chunks")
    body = chunks[-1].offset + HEADER.size + chunks[-1].stored_size
    root = xorb_hash((c.hash, c.size) for c in chunks)
    if expected_hash is not None and root != expected_hash:
        raise XetFormatError(f"xorb hashes to {hex_of(root)}, not the {hex_of(expected_hash)} it was sent as")
    return XorbInfo(root, tuple(chunks), body, footer)


def read_xorb_bytes(body: bytes, expected_hash: bytes | None = None) -> XorbInfo:
    return read_xorb(io.BytesIO(body), expected_hash)


def encode_chunk(data: bytes, scheme: int = SCHEME_LZ4) -> bytes:
    """One chunk record (header + stored bytes); like the client, it stores the chunk uncompressed when
    compression does not make it smaller."""
    if not 0 < len(data) <= MAX_CHUNK:
        raise ValueError(f"a chunk holds 1..{MAX_CHUNK} bytes, not {len(data)}")
    if scheme == SCHEME_LZ4:
        stored = lz4.frame.compress(data)
    elif scheme == SCHEME_BG4_LZ4:
        stored = lz4.frame.compress(bg4_split(data))
    elif scheme == SCHEME_NONE:
        stored = data
    else:
        raise ValueError(f"unknown compression scheme {scheme}")
    if len(stored) >= len(data):
        scheme, stored = SCHEME_NONE, data
    size = len(data).to_bytes(3, "little")
    return HEADER.pack(0, len(stored).to_bytes(3, "little"), scheme, size) + stored


def write_xorb(chunks: Sequence[bytes], scheme: int = SCHEME_LZ4) -> tuple[bytes, XorbInfo]:
    """Serialise chunks (each 1..128 KiB) into a xorb body; returns it and its XorbInfo."""
    out = bytearray()
    infos = []
    for i, data in enumerate(chunks):
        record = encode_chunk(data, scheme)
        infos.append(
            XorbChunk(i, len(out), len(record) - HEADER.size, len(data), record[4], chunk_hash(data))
        )
        out += record
    if sum(c.size for c in infos) > MAX_XORB_BYTES or len(infos) > MAX_XORB_CHUNKS:
        raise ValueError(f"a xorb holds <= {MAX_XORB_BYTES} bytes of data in <= {MAX_XORB_CHUNKS} chunks")
    root = xorb_hash((c.hash, c.size) for c in infos)
    return bytes(out), XorbInfo(root, tuple(infos), len(out), 0)
