"""MDB shards (huggingface.co/docs/xet/shard): the body of POST /v1/shards (a client's file reconstructions and
new xorbs) and of a global-dedup answer (GET /v1/chunks/...). All integers little-endian; hashes raw 32 bytes.

    header   32-byte tag | version u64 (2) | footer size u64 (200, or 0 when there is no footer)
    files    per file: [hash | flags u32 | n u32 | 0 u64], n segments [xorb hash | flags u32 |
             unpacked bytes u32 | first chunk u32 | end chunk u32 (exclusive)], then n verification entries
             [range hash | 16 zero bytes] if flags bit 31, then [sha256 | 16 zero bytes] if flags bit 30;
             ended by a bookend entry (hash of all 0xff bytes, the rest zero)
    xorbs    per xorb: [hash | flags u32 | n u32 | unpacked bytes u32 | stored bytes u32], n chunks
             [chunk hash | unpacked offset u32 | unpacked bytes u32 | flags u32 | 0 u32]; ended by a bookend
    lookups  file (trunc hash u64, entry index u32), xorb (u64, u32), chunk (u64, xorb entry index u32,
             chunk index u32), each sorted by the hash's first u64; then the 200-byte footer
    footer   version u64 (1) | files, xorbs, file-lookup offset, count, xorb-lookup offset, count,
             chunk-lookup offset, count (u64 each) | chunk-hash HMAC key (32 bytes, zero: none) |
             created u64 | expiry u64 | 6 zero u64 | stored bytes on disk, materialized bytes, stored bytes,
             footer offset (u64 each)

Every entry is 48 bytes. Counts are checked against the bytes left before anything is allocated, and the
whole shard is bounded (MAX_SHARD_BYTES). `parse_shard` raises XetFormatError (one line); `write_shard` is its
inverse (a parsed client shard re-serialises to the same bytes).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

import blake3

from hubtool.hub.xet.errors import XetFormatError
from hubtool.hub.xet.hashing import HASH_LEN, ZERO_HASH, hex_of

MAX_SHARD_BYTES = 64 * 1024 * 1024
HEADER_TAG = bytes([
    72, 70, 82, 101, 112, 111, 77, 101, 116, 97, 68, 97, 116, 97, 0, 85,
    105, 103, 69, 106, 123, 129, 87, 131, 165, 189, 217, 92, 205, 209, 74, 169,
])  # fmt: skip  # b"HFRepoMetaData\0" + magic
HEADER_VERSION = 2
FOOTER_VERSION = 1
ENTRY = 48
BOOKEND_HASH = b"\xff" * HASH_LEN
FLAG_VERIFICATION = 1 << 31
FLAG_METADATA_EXT = 1 << 30
CHUNK_FLAG_GLOBAL_DEDUP = 1 << 31
NO_EXPIRY = (1 << 64) - 1

_HEADER = struct.Struct("<32sQQ")
_FILE_HEAD = struct.Struct("<32sIIQ")
_SEGMENT = struct.Struct("<32sIIII")
_HASH_PAD = struct.Struct("<32s16s")
_XORB_HEAD = struct.Struct("<32sIIII")
_CHUNK = struct.Struct("<32sIIII")
_FOOTER = struct.Struct("<9Q32sQQ6Q4Q")
_LOOKUP = struct.Struct("<QI")
_CHUNK_LOOKUP = struct.Struct("<QII")
FOOTER_SIZE = _FOOTER.size  # 200


@dataclass
class Segment:
    """A run of chunks [chunk_start, chunk_end) of one xorb, `size` uncompressed bytes of the file."""

    xorb: bytes
    chunk_start: int
    chunk_end: int
    size: int
    flags: int = 0


@dataclass
class FileEntry:
    """A file's reconstruction: its Xet hash, segments in order, one verification (range) hash per segment or
    none, and the sha256 the client claims for it (metadata ext) or none."""

    hash: bytes
    segments: list[Segment]
    verification: list[bytes] | None = None
    sha256: bytes | None = None
    flags: int = 0  # bits other than the two the fields above decide

    @property
    def size(self) -> int:
        return sum(s.size for s in self.segments)


@dataclass
class ChunkEntry:
    hash: bytes
    offset: int  # uncompressed byte offset of the chunk in its xorb
    size: int
    flags: int = 0


@dataclass
class XorbEntry:
    """A xorb's chunk list: hash, chunks in order, uncompressed bytes, serialized bytes."""

    hash: bytes
    chunks: list[ChunkEntry]
    size: int
    stored_size: int
    flags: int = 0


@dataclass
class Shard:
    files: list[FileEntry] = field(default_factory=list)
    xorbs: list[XorbEntry] = field(default_factory=list)
    footer: bool = True  # lookup tables + footer (a client's upload has them)
    hmac_key: bytes = ZERO_HASH  # nonzero: the chunk hashes are blake3-keyed with it (dedup answers)
    created: int = 0
    expiry: int = NO_EXPIRY


def keyed_chunk_hash(chunk_hash: bytes, key: bytes) -> bytes:
    """How a dedup answer with an HMAC key disguises a chunk hash: blake3 keyed with `key`."""
    return blake3.blake3(chunk_hash, key=key).digest()


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = memoryview(data)
        self.pos = 0

    def take(self, st: struct.Struct, what: str) -> tuple:
        end = self.pos + st.size
        if end > len(self.data):
            raise XetFormatError(f"shard is truncated in {what} at byte {self.pos}")
        out = st.unpack_from(self.data, self.pos)
        self.pos = end
        return out

    def room(self, count: int, size: int, what: str) -> None:
        left = len(self.data) - self.pos
        if count * size > left:
            raise XetFormatError(f"shard {what} needs {count} entries, more than the {left} bytes left hold")


def parse_shard(data: bytes, max_bytes: int = MAX_SHARD_BYTES) -> Shard:
    """Parse and bounds-check a whole shard body. XetFormatError (one line) when anything is off."""
    if len(data) > max_bytes:
        raise XetFormatError(f"shard is {len(data)} bytes, over the {max_bytes} limit")
    r = _Reader(data)
    tag, version, footer_size = r.take(_HEADER, "the header")
    if tag != HEADER_TAG:
        raise XetFormatError("not a xet shard (wrong header tag)")
    if version != HEADER_VERSION:
        raise XetFormatError(f"shard header version {version} (expected {HEADER_VERSION})")
    if footer_size not in (0, FOOTER_SIZE):
        raise XetFormatError(f"shard footer size {footer_size} (expected 0 or {FOOTER_SIZE})")
    shard = Shard(footer=footer_size != 0)
    file_info_offset = r.pos
    while True:
        fhash, flags, n, _unused = r.take(_FILE_HEAD, "the file section")
        if fhash == BOOKEND_HASH:
            break
        where = f"shard file {hex_of(fhash)}"
        has_ver, has_ext = bool(flags & FLAG_VERIFICATION), bool(flags & FLAG_METADATA_EXT)
        r.room(n * (2 if has_ver else 1) + has_ext, ENTRY, f"file {hex_of(fhash)} ({n} segments)")
        segments = []
        for _ in range(n):
            xhash, xflags, size, start, end = r.take(_SEGMENT, where)
            if end <= start:
                raise XetFormatError(f"{where}: segment chunk range [{start}, {end}) is empty or reversed")
            segments.append(Segment(xhash, start, end, size, xflags))
        verification = [r.take(_HASH_PAD, where)[0] for _ in range(n)] if has_ver else None
        sha256 = r.take(_HASH_PAD, where)[0] if has_ext else None
        entry = FileEntry(
            fhash, segments, verification, sha256, flags & ~(FLAG_VERIFICATION | FLAG_METADATA_EXT)
        )
        shard.files.append(entry)
    xorb_info_offset = r.pos
    while True:
        xhash, xflags, n, size, stored = r.take(_XORB_HEAD, "the xorb section")
        if xhash == BOOKEND_HASH:
            break
        r.room(n, ENTRY, f"xorb {hex_of(xhash)} ({n} chunks)")
        chunks = []
        for _ in range(n):
            chash, offset, csize, cflags, _unused = r.take(_CHUNK, f"shard xorb {hex_of(xhash)}")
            chunks.append(ChunkEntry(chash, offset, csize, cflags))
        shard.xorbs.append(XorbEntry(xhash, chunks, size, stored, xflags))
    if not shard.footer:
        if r.pos != len(data):
            raise XetFormatError(f"shard has {len(data) - r.pos} bytes after its sections and no footer")
        return shard
    if len(data) - r.pos < FOOTER_SIZE:
        raise XetFormatError("shard is truncated before its footer")
    f = _FOOTER.unpack_from(r.data, len(data) - FOOTER_SIZE)
    (fversion, fi_off, xi_off, fl_off, fl_n, xl_off, xl_n, cl_off, cl_n, key, created, expiry) = f[:12]
    footer_offset = f[-1]
    if fversion != FOOTER_VERSION:
        raise XetFormatError(f"shard footer version {fversion} (expected {FOOTER_VERSION})")
    n_chunks = sum(len(x.chunks) for x in shard.xorbs)
    expected = (
        ("file section offset", fi_off, file_info_offset),
        ("xorb section offset", xi_off, xorb_info_offset),
        ("file lookup offset", fl_off, r.pos),
        ("file lookup count", fl_n, len(shard.files)),
        ("xorb lookup offset", xl_off, r.pos + _LOOKUP.size * len(shard.files)),
        ("xorb lookup count", xl_n, len(shard.xorbs)),
        ("chunk lookup offset", cl_off, r.pos + _LOOKUP.size * (len(shard.files) + len(shard.xorbs))),
        ("chunk lookup count", cl_n, n_chunks),
        ("footer offset", footer_offset, len(data) - FOOTER_SIZE),
        ("footer offset", footer_offset, cl_off + _CHUNK_LOOKUP.size * n_chunks),
    )
    for what, got, want in expected:
        if got != want:
            raise XetFormatError(f"shard footer: {what} is {got}, the sections put it at {want}")
    shard.hmac_key, shard.created, shard.expiry = key, created, expiry
    return shard


def _file_bytes(entry: FileEntry) -> bytes:
    n = len(entry.segments)
    if entry.verification is not None and len(entry.verification) != n:
        raise ValueError(
            f"file {hex_of(entry.hash)}: {len(entry.verification)} verification hashes for {n} segments"
        )
    flags = entry.flags
    flags |= FLAG_VERIFICATION if entry.verification is not None else 0
    flags |= FLAG_METADATA_EXT if entry.sha256 is not None else 0
    parts = [_FILE_HEAD.pack(entry.hash, flags, n, 0)]
    parts += [_SEGMENT.pack(s.xorb, s.flags, s.size, s.chunk_start, s.chunk_end) for s in entry.segments]
    parts += [_HASH_PAD.pack(h, bytes(16)) for h in entry.verification or ()]
    if entry.sha256 is not None:
        parts.append(_HASH_PAD.pack(entry.sha256, bytes(16)))
    return b"".join(parts)


def write_shard(shard: Shard) -> bytes:
    """Serialise a shard (sections in the given order, lookup tables rebuilt, footer if shard.footer)."""
    out = bytearray(_HEADER.pack(HEADER_TAG, HEADER_VERSION, FOOTER_SIZE if shard.footer else 0))
    file_info_offset = len(out)
    file_lookup = []
    index = 0
    for entry in shard.files:
        data = _file_bytes(entry)
        file_lookup.append((entry.hash[:8], index))
        index += len(data) // ENTRY
        out += data
    out += _FILE_HEAD.pack(BOOKEND_HASH, 0, 0, 0)
    xorb_info_offset = len(out)
    xorb_lookup, chunk_lookup = [], []
    index = 0
    for x in shard.xorbs:
        xorb_lookup.append((x.hash[:8], index))
        out += _XORB_HEAD.pack(x.hash, x.flags, len(x.chunks), x.size, x.stored_size)
        for i, c in enumerate(x.chunks):
            out += _CHUNK.pack(c.hash, c.offset, c.size, c.flags, 0)
            chunk_lookup.append((c.hash[:8], index, i))
        index += 1 + len(x.chunks)
    out += _XORB_HEAD.pack(BOOKEND_HASH, 0, 0, 0, 0)
    if not shard.footer:
        return bytes(out)

    def key(raw: bytes) -> int:
        return int.from_bytes(raw, "little")

    file_lookup_offset = len(out)
    for k, i in sorted(file_lookup, key=lambda t: key(t[0])):
        out += _LOOKUP.pack(key(k), i)
    xorb_lookup_offset = len(out)
    for k, i in sorted(xorb_lookup, key=lambda t: key(t[0])):
        out += _LOOKUP.pack(key(k), i)
    chunk_lookup_offset = len(out)
    for k, i, j in sorted(chunk_lookup, key=lambda t: key(t[0])):
        out += _CHUNK_LOOKUP.pack(key(k), i, j)
    footer_offset = len(out)
    out += _FOOTER.pack(
        FOOTER_VERSION, file_info_offset, xorb_info_offset,
        file_lookup_offset, len(file_lookup), xorb_lookup_offset, len(xorb_lookup),
        chunk_lookup_offset, len(chunk_lookup), shard.hmac_key, shard.created, shard.expiry,
        0, 0, 0, 0, 0, 0,
        sum(x.stored_size for x in shard.xorbs), sum(f.size for f in shard.files),
        sum(x.size for x in shard.xorbs), footer_offset,
    )  # fmt: skip
    return bytes(out)
