"""The server's xorb decoding (issue 17, push speed): the single-block LZ4 fast path gives exactly what the
LZ4 frame decoder gives, on the real hf_xet client's xorbs (every compressed chunk takes it) and on frames
built to hit every fallback and error; byte-group-4 regrouping against its definition."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("hf_xet")
lz4_frame = pytest.importorskip("lz4.frame")

from xet_capture import CaptureCas

from hubtool.hub.xet import hashing, xorb
from hubtool.hub.xet.errors import XetFormatError


def _regroup_reference(data: bytes) -> bytes:
    """Byte i of the chunk is byte i // 4 of group i % 4; group k is (n - k + 3) // 4 bytes long."""
    n = len(data)
    groups, pos = [], 0
    for k in range(4):
        count = (n - k + 3) // 4
        groups.append(data[pos : pos + count])
        pos += count
    return bytes(groups[i % 4][i // 4] for i in range(n))


def test_bg4_matches_the_definition() -> None:
    rng = random.Random(4)
    for n in [*range(41), 8191, 65535, 65536, 90_001, 131_071, 131_072]:
        data = rng.randbytes(n)
        assert xorb.bg4_regroup(data) == _regroup_reference(data), n
        split = xorb.bg4_split(data)
        assert split == b"".join(data[k::4] for k in range(4)), n
        assert xorb.bg4_regroup(split) == data, n


def _frames(data: bytes) -> dict[str, bytes]:
    f = lz4_frame
    return {
        # what hf_xet writes: one 256 KiB block, independent, no checksums, no content size
        "hf_xet-like": f.compress(
            data, block_size=f.BLOCKSIZE_MAX256KB, block_linked=False, store_size=False
        ),
        "content size": f.compress(data, block_size=f.BLOCKSIZE_MAX256KB, store_size=True),
        "linked 64 KiB blocks": f.compress(data, block_size=f.BLOCKSIZE_MAX64KB, block_linked=True),
        "content checksum": f.compress(data, block_size=f.BLOCKSIZE_MAX256KB, content_checksum=True),
        "block checksum": f.compress(data, block_size=f.BLOCKSIZE_MAX256KB, block_checksum=True),
        "level 0": f.compress(data, block_size=f.BLOCKSIZE_MAX256KB, store_size=False, compression_level=0),
    }


def test_lz4_fast_path_equals_the_frame_decoder() -> None:
    rng = np.random.default_rng(8)
    samples = [
        rng.bytes(70_000),
        bytes(131_072),
        b"abc" * 30_000,
        rng.normal(0, 1, 20_000).astype(np.float32),
    ]
    fast_taken = 0
    for data in (bytes(s) for s in samples):
        for what, frame in _frames(data).items():
            fast = xorb._lz4_single_block(frame, len(data))
            assert fast is None or fast == data, what
            fast_taken += fast is not None
            assert xorb.decode_chunk(xorb.SCHEME_LZ4, frame, len(data)) == data, what
            # a wrong header length is never accepted, by either path
            assert xorb._lz4_single_block(frame, len(data) + 1) is None
            with pytest.raises(XetFormatError, match="exactly the header's"):
                xorb.decode_chunk(xorb.SCHEME_LZ4, frame, len(data) - 1)
    assert fast_taken >= 8  # the hf_xet-like and content-size frames (and raw blocks) take the fast path


def test_lz4_fast_path_refuses_what_the_frame_decoder_refuses() -> None:
    data = b"weights " * 10_000
    frame = _frames(data)["hf_xet-like"]
    assert xorb._lz4_single_block(frame, len(data)) == data
    bad_checksum = frame[:6] + bytes([frame[6] ^ 0x55]) + frame[7:]
    bad_version = frame[:4] + bytes([frame[4] ^ 0x80]) + frame[5:]
    cut_block = frame[:11] + frame[12:]  # block length says one byte more than is there
    for what, body in {"header checksum": bad_checksum, "version": bad_version, "cut": cut_block,
                       "trailing": frame + b"\0", "no end mark": frame[:-4]}.items():  # fmt: skip
        assert xorb._lz4_single_block(body, len(data)) is None, what
        with pytest.raises(XetFormatError) as e:
            xorb.decode_chunk(xorb.SCHEME_LZ4, body, len(data), "chunk 0")
        assert str(e.value).startswith("chunk 0: LZ4 data"), (what, str(e.value))


@pytest.fixture(scope="module")
def client_xorbs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """Xorbs the real hf_xet client uploads: float32 weights (bg4-lz4), text (lz4), random bytes (none)."""
    root: Path = tmp_path_factory.mktemp("xetdecode")
    rng = np.random.default_rng(21)
    (root / "w.f32").write_bytes(rng.normal(0, 0.02, 700_000).astype(np.float32).tobytes())
    (root / "t.txt").write_bytes(b"".join(b"row %d of a config\n" % (i % 991) for i in range(50_000)))
    (root / "r.bin").write_bytes(rng.bytes(400_000))
    with CaptureCas() as cas:
        cas.upload(sorted(root.iterdir()))
    return cas.xorbs


def test_client_xorbs_take_the_fast_path(client_xorbs) -> None:
    schemes: dict[int, int] = {}
    for name, body in client_xorbs.items():
        raw = hashing.from_hex(name)
        info = xorb.read_xorb_bytes(body, raw)
        for c in info.chunks:
            schemes[c.scheme] = schemes.get(c.scheme, 0) + 1
            if c.scheme == xorb.SCHEME_NONE:
                continue
            stored = body[c.offset + xorb.HEADER.size : c.offset + xorb.HEADER.size + c.stored_size]
            fast = xorb._lz4_single_block(stored, c.size)
            assert fast is not None, f"chunk {c.index} of {name} left the fast path"
            slow = lz4_frame.LZ4FrameDecompressor().decompress(stored)
            assert fast == slow
    assert schemes.keys() == set(xorb.SCHEMES), schemes
