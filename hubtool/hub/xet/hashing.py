"""Xet hashes (huggingface.co/docs/xet/hashing): chunk hashes, the aggregated merkle root of a xorb or a file,
the file hash, and the range hash of a shard's verification entries.

A hash is kept as its 32 raw bytes, in the byte order blake3 produced them (the order they sit in xorbs and
shards). Xet prints a hash as four little-endian u64 words, each in 16 hex digits: `hex_of` / `from_hex`
convert, so the printed form equals hf_xet's and the one in CAS URLs.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence

import blake3

HASH_LEN = 32
ZERO_HASH = bytes(HASH_LEN)
# blake3 keys (xet-core merklehash/data_hash.rs, metadata_shard/chunk_verification.rs)
DATA_KEY = bytes([
    102, 151, 245, 119, 91, 149, 80, 222, 49, 53, 203, 172, 165, 151, 24, 28,
    157, 228, 33, 16, 155, 235, 43, 88, 180, 208, 176, 75, 147, 173, 242, 41,
])  # fmt: skip
INTERNAL_NODE_KEY = bytes([
    1, 126, 197, 199, 165, 71, 41, 150, 253, 148, 102, 102, 180, 138, 2, 230,
    93, 221, 83, 111, 55, 199, 109, 210, 248, 99, 82, 230, 74, 83, 113, 63,
])  # fmt: skip
VERIFICATION_KEY = bytes([
    127, 24, 87, 214, 206, 86, 237, 102, 18, 127, 249, 19, 231, 165, 195, 243,
    164, 205, 38, 213, 181, 219, 73, 230, 65, 36, 152, 127, 40, 251, 148, 195,
])  # fmt: skip
# the aggregation tree: a group ends after an entry whose hash is 0 mod 4 (from its 3rd entry on), or at 9
BRANCHING = 4
MAX_GROUP = 2 * BRANCHING + 1

_WORDS = struct.Struct("<4Q")


def hex_of(raw: bytes) -> str:
    """The printed form of a 32-byte hash: four little-endian u64 words, each as 16 hex digits."""
    return "".join(f"{w:016x}" for w in _WORDS.unpack(raw))


def from_hex(text: str) -> bytes:
    """The 32 raw bytes of a printed hash (64 hex digits); ValueError otherwise."""
    if len(text) != 64:
        raise ValueError(f"a xet hash has 64 hex digits, got {len(text)}")
    try:
        words = [int(text[i : i + 16], 16) for i in range(0, 64, 16)]
    except ValueError:
        raise ValueError("a xet hash has 64 hex digits (0-9, a-f)") from None
    return _WORDS.pack(*words)


def chunk_hash(data: bytes | bytearray | memoryview) -> bytes:
    """The hash of one chunk: blake3 keyed with DATA_KEY."""
    return blake3.blake3(data, key=DATA_KEY).digest()


def _last_word(raw: bytes) -> int:
    return int.from_bytes(raw[24:32], "little")


def _merge(group: Sequence[tuple[bytes, int]]) -> tuple[bytes, int]:
    text = "".join(f"{hex_of(h)} : {size}\n" for h, size in group)
    return blake3.blake3(text.encode(), key=INTERNAL_NODE_KEY).digest(), sum(size for _, size in group)


def merkle_root(leaves: Iterable[tuple[bytes, int]]) -> bytes:
    """The aggregated hash of (hash, size) leaves (a xorb's hash, and the file hash before its salt):
    each level cuts the list into groups of 2..9 and hashes each group's "hex : size" lines."""
    level = list(leaves)
    if not level:
        return ZERO_HASH
    while len(level) > 1:
        merged = []
        i = 0
        while i < len(level):
            rest = len(level) - i
            if rest <= 2:
                cut = rest
            else:
                end = min(MAX_GROUP, rest)
                cut = end
                for j in range(2, end):
                    if _last_word(level[i + j][0]) % BRANCHING == 0:
                        cut = j + 1
                        break
            merged.append(_merge(level[i : i + cut]))
            i += cut
        level = merged
    return level[0][0]


def xorb_hash(chunks: Iterable[tuple[bytes, int]]) -> bytes:
    """A xorb's hash: the merkle root of its chunks' (hash, uncompressed size)."""
    return merkle_root(chunks)


def file_hash(chunks: Iterable[tuple[bytes, int]], salt: bytes = ZERO_HASH) -> bytes:
    """A file's hash: the merkle root of its chunks, blake3-keyed with `salt` (32 zero bytes); an empty file
    hashes to 32 zero bytes."""
    chunks = list(chunks)
    if not chunks:
        return ZERO_HASH
    return blake3.blake3(merkle_root(chunks), key=salt).digest()


def range_hash(chunk_hashes: Iterable[bytes]) -> bytes:
    """The verification hash of a run of chunks (a shard's file verification entry): their raw hashes
    concatenated, blake3-keyed with VERIFICATION_KEY."""
    return blake3.blake3(b"".join(chunk_hashes), key=VERIFICATION_KEY).digest()


def global_dedup_eligible(raw: bytes, modulus: int = 1024) -> bool:
    """Whether the client asks the global dedup route about this chunk hash (its last word is 0 mod 1024;
    the first chunk of a file is always asked about)."""
    return _last_word(raw) % modulus == 0
