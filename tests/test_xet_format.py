"""hubtool.hub.xet against the real client: our chunker and file hash equal hf_xet.hash_files, and the xorbs and
shard that hf_xet.upload_files POSTs to a capturing CAS (tests/xet_capture.py) parse, hash to their names,
reconstruct the files byte for byte, and re-serialise to the same bytes. Corrupt bodies give one-line errors."""

from __future__ import annotations

import hashlib
import io
import random
import struct
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

hf_xet = pytest.importorskip("hf_xet")
pytest.importorskip("blake3")
pytest.importorskip("lz4")

from xet_capture import CaptureCas

from hubtool.hub.xet import chunking, hashing, shard, xorb
from hubtool.hub.xet.errors import XetFormatError


def _files(root: Path) -> dict[str, Path]:
    """Edge sizes and contents: empty, 1 byte, under one chunk, random MiBs, compressible text, float32
    weights (byte grouping), long zero runs (forced 128 KiB cuts), and a chunk-boundary-sized file."""
    rng = np.random.default_rng(17)
    text = b"".join(b"line %d of a compressible config file\n" % (i % 977) for i in range(60000))
    contents = {
        "empty.bin": b"",
        "one.bin": b"x",
        "small.bin": rng.bytes(5000),
        "min_chunk.bin": rng.bytes(chunking.MIN_CHUNK),
        "random.bin": rng.bytes(3 * 1024 * 1024 + 123),
        "text.txt": text,
        "weights.f32": rng.normal(0, 0.02, 400_000).astype(np.float32).tobytes(),
        "zeros_mix.bin": bytes(700_000) + rng.bytes(300_000) + bytes(300_001),
    }
    out = {}
    for name, data in contents.items():
        (root / name).write_bytes(data)
        out[name] = root / name
    return out


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return _files(tmp_path_factory.mktemp("xetfiles"))


@pytest.fixture(scope="module")
def oracle_hashes(files: dict[str, Path]) -> dict[str, str]:
    """hf_xet's own file hashes (hash_files; nothing uploaded)."""
    names = list(files)
    infos = hf_xet.hash_files([str(files[n]) for n in names])
    return {n: i.hash for n, i in zip(names, infos, strict=True)}


@pytest.fixture(scope="module")
def capture(files: dict[str, Path]):
    """One real upload of every file through hf_xet.upload_files into the capturing CAS."""
    names = list(files)
    with CaptureCas() as cas:
        infos = cas.upload([files[n] for n in names])
    return cas, dict(zip(names, infos, strict=True))


def test_chunker_and_file_hash_equal_hf_xet(files, oracle_hashes) -> None:
    for name, path in files.items():
        assert chunking.hash_file(str(path)) == oracle_hashes[name], name
    assert oracle_hashes["empty.bin"] == "0" * 64
    # the forced 128 KiB cut and the 8 KiB minimum are exercised, not just the mask
    sizes = [len(c) for c in chunking.chunk_bytes(files["zeros_mix.bin"].read_bytes())]
    assert chunking.MAX_CHUNK in sizes and all(s <= chunking.MAX_CHUNK for s in sizes)
    sizes = [len(c) for c in chunking.chunk_bytes(files["random.bin"].read_bytes())]
    assert all(s >= chunking.MIN_CHUNK for s in sizes[:-1]) and len(set(sizes)) > 10


def test_chunker_is_independent_of_how_bytes_arrive(files) -> None:
    data = files["random.bin"].read_bytes()[: 1024 * 1024] + files["text.txt"].read_bytes()[:300_000]
    whole = chunking.chunk_bytes(data)
    rnd = random.Random(5)
    pieces, i = [], 0
    while i < len(data):
        n = rnd.choice([1, 7, 63, 64, 65, 4096, 70_000, 200_000])
        pieces.append(data[i : i + n])
        i += n
    assert list(chunking.iter_chunks(pieces)) == whole
    assert b"".join(whole) == data


def test_hash_encodings() -> None:
    raw = bytes(range(32))
    text = hashing.hex_of(raw)
    assert text[:16] == "0706050403020100"  # each u64 word little-endian, printed big-endian
    assert hashing.from_hex(text) == raw
    for bad in ("00", "g" * 64):
        with pytest.raises(ValueError):
            hashing.from_hex(bad)


def test_captured_upload_parses_and_verifies(files, oracle_hashes, capture) -> None:
    cas, infos = capture
    assert ("POST", "/v1/shards") in cas.requests and cas.xorbs and cas.shards
    # every xorb hashes to the name it was POSTed under; keep its decoded chunks for reconstruction
    decoded: dict[bytes, list[bytes]] = {}
    parsed_xorbs: dict[bytes, xorb.XorbInfo] = {}
    schemes = set()
    for name, body in cas.xorbs.items():
        raw = hashing.from_hex(name)
        info = xorb.read_xorb_bytes(body, raw)
        assert info.footer_size == 0 and info.body_size == len(body)
        parsed_xorbs[raw] = info
        decoded[raw] = [data for _, data in xorb.iter_xorb(io.BytesIO(body))]
        schemes |= {c.scheme for c in info.chunks}
    # the float32 weights take bg4-lz4, the text lz4, the random bytes none
    assert schemes == set(xorb.SCHEMES), schemes
    # the shard(s): files, segments, verification, sha256, xorb chunk lists; and a byte-exact rewrite
    entries: dict[str, shard.FileEntry] = {}
    for body in cas.shards:
        parsed = shard.parse_shard(body)
        assert shard.write_shard(parsed) == body
        for x in parsed.xorbs:
            info = parsed_xorbs[x.hash]
            assert [(c.hash, c.size) for c in x.chunks] == [(c.hash, c.size) for c in info.chunks]
            assert [c.offset for c in x.chunks] == list(np.cumsum([0] + [c.size for c in info.chunks[:-1]]))
            assert x.size == info.size
        for f in parsed.files:
            entries[hashing.hex_of(f.hash)] = f
    for name, path in files.items():
        data = path.read_bytes()
        assert infos[name].hash == oracle_hashes[name], name
        if not data:
            continue  # an empty file needs no reconstruction
        f = entries[oracle_hashes[name]]
        assert f.size == len(data)
        assert hashing.hex_of(f.sha256) == hashlib.sha256(data).hexdigest() == infos[name].sha256
        assert f.verification is not None and len(f.verification) == len(f.segments)
        rebuilt = bytearray()
        leaves = []
        for seg, ver in zip(f.segments, f.verification, strict=True):
            chunks = parsed_xorbs[seg.xorb].chunks[seg.chunk_start : seg.chunk_end]
            assert len(chunks) == seg.chunk_end - seg.chunk_start and sum(c.size for c in chunks) == seg.size
            assert hashing.range_hash(c.hash for c in chunks) == ver
            rebuilt += b"".join(decoded[seg.xorb][seg.chunk_start : seg.chunk_end])
            leaves += [(c.hash, c.size) for c in chunks]
        assert bytes(rebuilt) == data, name
        assert hashing.hex_of(hashing.file_hash(leaves)) == oracle_hashes[name]


def test_writer_round_trips_through_the_reader(files) -> None:
    chunks = chunking.chunk_bytes(files["weights.f32"].read_bytes())[:5] + chunking.chunk_bytes(b"abc" * 9000)
    for scheme in xorb.SCHEMES:
        body, info = xorb.write_xorb(chunks, scheme)
        again = xorb.read_xorb_bytes(body, info.hash)
        assert again == info
        assert [d for _, d in xorb.iter_xorb(io.BytesIO(body))] == chunks
    body, info = xorb.write_xorb(chunks, xorb.SCHEME_BG4_LZ4)
    assert xorb.SCHEME_BG4_LZ4 in {c.scheme for c in info.chunks}
    # a storage footer after the chunks is tolerated and measured
    assert xorb.read_xorb_bytes(body + b"XETBLOB" + bytes(50), info.hash).footer_size == 57


# ---- corrupt input: one line, a XetFormatError, bounded work ----


def _one_line(excinfo: pytest.ExceptionInfo) -> str:
    text = str(excinfo.value)
    assert "\n" not in text and 0 < len(text) < 300
    return text


@pytest.fixture(scope="module")
def sample_xorb() -> tuple[bytes, xorb.XorbInfo]:
    rng = np.random.default_rng(3)
    data = rng.bytes(200_000) + b"compress me " * 20_000
    return xorb.write_xorb(chunking.chunk_bytes(data), xorb.SCHEME_LZ4)


def test_corrupt_xorbs(sample_xorb) -> None:
    body, info = sample_xorb
    first = info.chunks[0]
    cases = {
        "flipped byte in stored data": (lambda b: b[:100] + bytes([b[100] ^ 1]) + b[101:], "hashes to"),
        "truncated": (lambda b: b[:-10], "truncated"),
        "truncated header": (lambda b: b + b"\x00\x01", "truncated chunk header"),
        "unknown scheme": (lambda b: b[:4] + b"\x07" + b[5:], "unknown compression scheme 7"),
        "header version": (lambda b: b"\x01" + b[1:], "version 1"),
        "oversize chunk": (lambda b: b[:5] + (1 << 20).to_bytes(3, "little") + b[8:], "uncompressed length"),
        "wrong length": (lambda b: b[:5] + (first.size - 1).to_bytes(3, "little") + b[8:], ""),
        "trailing junk": (lambda b: b + b"Xjunk", "neither a chunk header"),
    }
    for what, (mutate, needle) in cases.items():
        with pytest.raises(XetFormatError) as e:
            xorb.read_xorb_bytes(mutate(body), info.hash)
        assert needle in _one_line(e), (what, str(e.value))
    with pytest.raises(XetFormatError, match="larger than"):
        xorb.read_xorb(io.BytesIO(body), info.hash, max_bytes=len(body) - 1)
    with pytest.raises(XetFormatError, match="no chunks"):
        xorb.read_xorb_bytes(b"")


def test_a_full_xorb_of_incompressible_data_is_accepted() -> None:
    """hf_xet cuts a xorb at 64 MiB of chunk data (8,192 chunks); with incompressible chunks (scheme none)
    the body is that plus 8 bytes per chunk header, over 64 MiB. A bound on the body at 64 MiB refused
    such xorbs (a 1,000 MiB random file's push ended in 400), so the bound is on the data; one byte more
    data, or one chunk more, is refused."""
    big = [random.Random(i).randbytes(xorb.MAX_CHUNK) for i in range(2)]
    records = [xorb.encode_chunk(big[i % 2], xorb.SCHEME_NONE) for i in range(xorb.MAX_XORB_BYTES // xorb.MAX_CHUNK)]
    body = b"".join(records)
    assert len(body) > xorb.MAX_XORB_BYTES
    info = xorb.read_xorb_bytes(body)
    assert sum(c.size for c in info.chunks) == xorb.MAX_XORB_BYTES and info.body_size == len(body)
    with pytest.raises(XetFormatError, match="more than 67108864 bytes of chunk data"):
        xorb.read_xorb_bytes(body + xorb.encode_chunk(b"x", xorb.SCHEME_NONE))
    tiny = xorb.encode_chunk(b"y", xorb.SCHEME_NONE)
    with pytest.raises(XetFormatError, match="more than 8192 chunks"):
        xorb.read_xorb_bytes(tiny * (xorb.MAX_XORB_CHUNKS + 1))
    assert len(xorb.read_xorb_bytes(tiny * xorb.MAX_XORB_CHUNKS).chunks) == xorb.MAX_XORB_CHUNKS


def test_lz4_bomb_is_refused_without_inflating() -> None:
    import lz4.frame

    bomb = lz4.frame.compress(bytes(30 * 1024 * 1024))  # ~120 KB that inflates to 30 MiB
    assert len(bomb) < xorb.MAX_STORED_CHUNK
    body = (
        xorb.HEADER.pack(0, len(bomb).to_bytes(3, "little"), xorb.SCHEME_LZ4, (100).to_bytes(3, "little"))
        + bomb
    )
    tracemalloc.start()
    try:
        with pytest.raises(XetFormatError) as e:
            xorb.read_xorb_bytes(body)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert "exactly the header's 100 bytes" in _one_line(e)
    assert peak < 4 * 1024 * 1024, peak


@pytest.fixture(scope="module")
def sample_shard(sample_xorb) -> bytes:
    _, info = sample_xorb
    chunks = [
        shard.ChunkEntry(c.hash, sum(x.size for x in info.chunks[: c.index]), c.size) for c in info.chunks
    ]
    n = len(chunks)
    seg = shard.Segment(info.hash, 0, n, info.size)
    leaves = [(c.hash, c.size) for c in info.chunks]
    entry = shard.FileEntry(hashing.file_hash(leaves), [seg], [hashing.range_hash(c.hash for c in info.chunks)],
                            hashlib.sha256(b"claimed").digest())  # fmt: skip
    s = shard.Shard([entry], [shard.XorbEntry(info.hash, chunks, info.size, 0)], footer=True, created=1)
    return shard.write_shard(s)


def test_corrupt_shards(sample_shard) -> None:
    body = sample_shard
    assert shard.write_shard(shard.parse_shard(body)) == body
    no_footer = shard.write_shard(
        shard.Shard(shard.parse_shard(body).files, shard.parse_shard(body).xorbs, False)
    )
    assert shard.write_shard(shard.parse_shard(no_footer)) == no_footer
    huge = struct.pack("<I", 0xFFFFFFFF)
    cases = {
        "wrong tag": (b"X" + body[1:], "wrong header tag"),
        "header version": (body[:32] + struct.pack("<Q", 3) + body[40:], "header version 3"),
        "truncated": (body[:-1], ""),
        "truncated in sections": (body[:90], "truncated in the file section"),
        "file entry count": (body[:48 + 36] + huge + body[48 + 40 :], "(4294967295 segments) needs"),
        "xorb chunk count": (body[:48 + 5 * 48 + 36] + huge + body[48 + 5 * 48 + 40 :], "(4294967295 chunks) needs"),
        "footer offset": (body[:-8] + struct.pack("<Q", 7), "footer offset"),
        "footer version": (body[: -shard.FOOTER_SIZE] + struct.pack("<Q", 9) + body[-shard.FOOTER_SIZE + 8 :],
                           "footer version 9"),
        "trailing bytes without footer": (no_footer + b"\0", "after its sections"),
    }  # fmt: skip
    for what, (data, needle) in cases.items():
        with pytest.raises(XetFormatError) as e:
            shard.parse_shard(data)
        assert needle in _one_line(e), (what, str(e.value))
    with pytest.raises(XetFormatError, match="over the"):
        shard.parse_shard(body, max_bytes=len(body) - 1)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_mutated_bodies_fail_cleanly(sample_xorb, sample_shard, data) -> None:
    """Random byte edits, truncations and insertions: the parsers return or raise XetFormatError, nothing
    else (no IndexError, struct.error, MemoryError)."""
    for body, parse in ((sample_xorb[0], xorb.read_xorb_bytes), (sample_shard, shard.parse_shard)):
        b = bytearray(body)
        for _ in range(data.draw(st.integers(1, 4))):
            op = data.draw(st.sampled_from(["set", "cut", "insert"]))
            i = data.draw(st.integers(0, len(b) - 1))
            if op == "set":
                b[i] = data.draw(st.integers(0, 255))
            elif op == "cut":
                del b[i:]
                if not b:
                    break
            else:
                b[i:i] = data.draw(st.binary(min_size=1, max_size=16))
        try:
            parse(bytes(b))
        except XetFormatError as e:
            assert "\n" not in str(e)
