"""Position encodings: exact round trips, corrupt payloads rejected, size near the information bound,
bytes unchanged, the fast decoder equivalent to the original one, decode_many."""

from __future__ import annotations

import hashlib
import math
import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hubtool.errors import FormatError
from hubtool.format import encodings
from hubtool.format.encodings import (
    ENCODINGS,
    _read_leb128,
    _truncated_binary,
    check_positions,
    decode,
    decode_many,
    encode,
    encode_best,
)


@st.composite
def masks(draw) -> tuple[np.ndarray, int]:
    """(sorted unique positions, universe n), biased towards the edges: k = 0, k = n, 0 and n - 1."""
    n = draw(st.integers(1, 3000))
    shape = draw(st.sampled_from(["random", "empty", "full", "ends", "run"]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if shape == "empty":
        positions = np.zeros(0, dtype=np.int64)
    elif shape == "full":
        positions = np.arange(n)
    elif shape == "ends":
        positions = np.unique([0, n - 1])
    elif shape == "run":  # a dense run somewhere: long and short gaps together
        start = draw(st.integers(0, n - 1))
        positions = np.arange(start, draw(st.integers(start + 1, n)))
    else:
        k = draw(st.integers(0, n))
        positions = np.sort(rng.choice(n, size=k, replace=False))
    return positions.astype(np.int64), n


@settings(max_examples=300, deadline=None)
@given(masks(), st.sampled_from(ENCODINGS))
def test_every_encoding_round_trips_exactly(mask: tuple[np.ndarray, int], encoding: str) -> None:
    positions, n = mask
    payload = encode(positions, n, encoding)
    decoded = decode(payload, n, positions.size, encoding)
    assert decoded.dtype == np.int64
    np.testing.assert_array_equal(decoded, positions)


@settings(max_examples=100, deadline=None)
@given(masks())
def test_auto_choice_is_the_smallest(mask: tuple[np.ndarray, int]) -> None:
    positions, n = mask
    name, payload = encode_best(positions, n)
    assert len(payload) == min(len(encode(positions, n, e)) for e in ENCODINGS)
    np.testing.assert_array_equal(decode(payload, n, positions.size, name), positions)


def _bound_bits(n: int, k: int) -> float:
    return (math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)) / math.log(2) / k


@pytest.mark.parametrize("shape", [(576, 576), (192, 576)])
@pytest.mark.parametrize("ratio", [0.001, 0.005, 0.05, 0.2, 0.5])
def test_random_masks_within_ten_percent_of_the_bound(shape: tuple[int, int], ratio: float) -> None:
    n = shape[0] * shape[1]
    k = round(ratio * n)
    positions = np.sort(np.random.default_rng(k).choice(n, size=k, replace=False))
    _, payload = encode_best(positions, n)
    assert 8 * len(payload) / k <= 1.10 * _bound_bits(n, k)


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_truncated_or_padded_payload_is_rejected(encoding: str) -> None:
    n = 5000
    positions = np.sort(np.random.default_rng(1).choice(n, size=300, replace=False))
    payload = encode(positions, n, encoding)
    with pytest.raises(FormatError):
        decode(payload[:-1], n, positions.size, encoding)
    with pytest.raises(FormatError):
        decode(payload + b"\x00", n, positions.size, encoding)


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_wrong_count_is_rejected(encoding: str) -> None:
    n = 1000
    positions = np.arange(0, n, 7)
    payload = encode(positions, n, encoding)
    with pytest.raises(FormatError, match="expected|nnz"):
        decode(payload, n, positions.size + 1, encoding)


def test_raw_rejects_unsorted_duplicate_and_out_of_range_positions() -> None:
    def raw(xs: list[int]) -> bytes:
        return np.asarray(xs, dtype="<i4").tobytes()

    with pytest.raises(FormatError, match="sorted"):
        decode(raw([5, 3]), 10, 2, "raw")
    with pytest.raises(FormatError, match="sorted and unique"):
        decode(raw([3, 3]), 10, 2, "raw")
    with pytest.raises(FormatError, match="out of range"):
        decode(raw([3, 10]), 10, 2, "raw")
    with pytest.raises(FormatError, match="out of range"):
        decode(raw([-1, 3]), 10, 2, "raw")


def test_gap_codes_reject_positions_past_the_universe() -> None:
    positions = np.array([2, 9], dtype=np.int64)
    for encoding in ("elias-fano", "golomb"):
        with pytest.raises(FormatError, match="out of range"):
            decode(encode(positions, 10, encoding), 9, 2, encoding)


def test_unknown_encoding_is_rejected() -> None:
    with pytest.raises(FormatError, match="unknown position encoding 'zstd'"):
        decode(b"", 10, 0, "zstd")


# --- byte-identical output -------------------------------------------------------------------------
#
# The encoders must keep producing exactly the bytes they did when the decoders were rewritten for
# speed (files written since the format was introduced must keep decoding, and re-packing an expert
# must give the same blob hash). The digests below were computed with that implementation over
# deterministic masks (SplitMix64, so no dependence on numpy's random streams).


def _splitmix64(seed: int, count: int) -> np.ndarray:
    """count deterministic pseudo-random uint64s (SplitMix64), independent of numpy's generators."""
    with np.errstate(over="ignore"):
        z = np.arange(1, count + 1, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15) + np.uint64(seed)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def _golden_masks():
    """(n, positions): each encoding's edge cases and the shapes hubtool sees, deterministically."""
    for seed, n in enumerate([1, 2, 7, 8, 9, 64, 1000, 4099, 110592, 331776, 1 << 20]):
        for ratio in (0.001, 0.01, 0.05, 0.2, 0.5, 0.9):
            keep = _splitmix64(1000 * seed + int(1000 * ratio), n) < np.uint64(int(ratio * 2**64))
            yield n, np.flatnonzero(keep).astype(np.int64)
        yield n, np.zeros(0, dtype=np.int64)
        yield n, np.arange(n, dtype=np.int64)
        yield n, np.unique([0, n - 1]).astype(np.int64)
        yield n, np.arange(n // 3, n - n // 3, dtype=np.int64)


def _golden_sparse():
    """(n, positions): a few positions in universes too large for a bitmask (wide low streams)."""
    for seed, n in enumerate([10**7, 2**31, 2**40, 2**60]):
        for k in (1, 5, 50):
            z = _splitmix64(7 + seed * 100 + k, k) % np.uint64(n)
            yield n, np.unique(z.astype(np.int64))


_GOLDEN = {
    "raw": "ad8937731286efdfd9f3c74a0df7cfa8e40abd1fa879727382b131c1fc116826",
    "bitmask": "97677bd767f4a583c741f7409d9bff2ab03f362025cd6d38bfab359e4b2bdbac",
    "elias-fano": "7ae0a1959e1f510c8c9fc2c4ceee6f83e0f4f05d56ec92d804674e7b433924da",
    "golomb": "170a612496c5e6061e6c13b85afc2fb12534dde51489190a3b39072c7c9a4167",
    "best": "3e532fffc41dd95b2c7475d67c97c82cc1b76012199f8b5082de412829caa905",
}


@pytest.mark.parametrize("encoding", [*ENCODINGS, "best"])
def test_encoded_bytes_are_unchanged(encoding: str) -> None:
    digest = hashlib.sha256()
    if encoding == "best":  # the choice and its bytes; bitmask candidates need n bytes of memory
        for n, positions in [*_golden_masks(), *(m for m in _golden_sparse() if m[0] <= 10**7)]:
            name, payload = encode_best(positions, n)
            digest.update(name.encode() + b":" + len(payload).to_bytes(8, "little") + payload)
    else:
        cases = list(_golden_masks())
        if encoding in ("elias-fano", "golomb"):
            cases += list(_golden_sparse())
        for n, positions in cases:
            payload = encode(positions, n, encoding)
            digest.update(len(payload).to_bytes(8, "little") + payload)
            np.testing.assert_array_equal(decode(payload, n, positions.size, encoding), positions)
    assert digest.hexdigest() == _GOLDEN[encoding]


# --- the decoder before the speed rewrite, as an oracle ---------------------------------------------
#
# Verbatim (bar names) from hubtool/format/encodings.py as it was: unpackbits + matmul for fixed-width
# fields, unpackbits + flatnonzero + diff for unary streams, one cumsum, then check_positions. The
# fast decoder must return the same positions, and reject the same payloads with the same message.


def _v1_decode(payload: bytes, n: int, k: int, encoding: str) -> np.ndarray:
    buf = np.frombuffer(payload, dtype=np.uint8)
    if encoding == "raw":
        _v1_expect_len(buf, 4 * k, "raw payload")
        positions = buf.view("<i4").astype(np.int64)
    elif encoding == "bitmask":
        _v1_expect_len(buf, -(-n // 8), "bitmask payload")
        positions = np.flatnonzero(np.unpackbits(buf))
        if positions.size != k:
            raise FormatError(f"bitmask has {positions.size} bits set, expected nnz {k}")
    elif encoding == "elias-fano":
        if buf.size < 1:
            raise FormatError("elias-fano payload is empty, expected at least the low-bit-width byte")
        low = int(buf[0])
        if low > max(1, n).bit_length():
            raise FormatError(f"elias-fano low-bit width {low} is larger than the universe {n} needs")
        low_bytes = -(-(k * low) // 8)
        lows = _v1_unpack_fixed(buf[1 : 1 + low_bytes], k, low, "elias-fano low stream")
        highs = np.cumsum(_v1_unary_decode(buf[1 + low_bytes :], k, "elias-fano high stream"))
        positions = (highs << low) | lows
    elif encoding == "golomb":
        m, at = _read_leb128(buf)
        if m > max(n, 1):
            raise FormatError(f"golomb parameter m = {m} is larger than the universe {n}")
        width, cut = _truncated_binary(m)
        low_bytes = -(-(k * width) // 8)
        low = _v1_unpack_fixed(buf[at : at + low_bytes], k, width, "golomb low stream")
        at += low_bytes
        long = low >= cut
        n_extra = int(np.count_nonzero(long))
        extra_bytes = -(-n_extra // 8)
        extra = _v1_unpack_fixed(buf[at : at + extra_bytes], n_extra, 1, "golomb extra stream")
        r = low.copy()
        r[long] = ((low[long] << 1) | extra) - cut
        q = _v1_unary_decode(buf[at + extra_bytes :], k, "golomb unary stream")
        positions = np.cumsum(q * m + r + 1) - 1
    else:
        raise FormatError(f"unknown position encoding {encoding!r}: expected one of {', '.join(ENCODINGS)}")
    if positions.size:
        if positions[0] < 0 or positions[-1] >= n:
            raise FormatError(
                f"positions out of range: expected [0, {n}), got [{positions[0]}, {positions[-1]}]"
            )
        steps = np.diff(positions)
        if steps.size and steps.min() <= 0:
            at = int(np.argmax(steps <= 0))
            raise FormatError(f"positions not sorted and unique: {positions[at]} then {positions[at + 1]}")
    return positions


def _v1_unpack_fixed(buf: np.ndarray, count: int, width: int, what: str) -> np.ndarray:
    nbytes = -(-(count * width) // 8)
    _v1_expect_len(buf, nbytes, what)
    if width == 0 or count == 0:
        return np.zeros(count, dtype=np.int64)
    bits = np.unpackbits(buf)
    if bits[count * width :].any():
        raise FormatError(f"{what} has non-zero padding bits")
    bits = bits[: count * width].reshape(count, width).astype(np.int64)
    return bits @ (np.int64(1) << np.arange(width - 1, -1, -1, dtype=np.int64))


def _v1_unary_decode(buf: np.ndarray, k: int, what: str) -> np.ndarray:
    ones = np.flatnonzero(np.unpackbits(buf))
    if ones.size != k:
        raise FormatError(f"{what} holds {ones.size} values, expected nnz {k}")
    if k and buf.size != ones[-1] // 8 + 1 or not k and buf.size:
        raise FormatError(f"{what} is {buf.size} bytes, expected it to end with its last value")
    return np.diff(ones, prepend=-1) - 1


def _v1_expect_len(buf: np.ndarray, nbytes: int, what: str) -> None:
    if buf.size != nbytes:
        raise FormatError(f"{what} is {buf.size} bytes, expected {nbytes}")


def _outcome(decoder, payload: bytes, n: int, k: int, encoding: str):
    try:
        positions = decoder(payload, n, k, encoding)
    except FormatError as err:
        return "rejected", str(err)
    assert positions.dtype == np.int64
    return "decoded", positions.tolist()


@st.composite
def corruptions(draw) -> tuple[bytes, int, int, str]:
    """A valid (payload, n, k, encoding), then maybe one change: a bit flipped, a byte set, bytes cut
    or appended, or k or n off by a little."""
    positions, n = draw(masks())
    encoding = draw(st.sampled_from(ENCODINGS))
    payload, k = bytearray(encode(positions, n, encoding)), positions.size
    change = draw(st.sampled_from(["none", "flip", "set", "cut", "append", "k", "n"]))
    if change in ("flip", "set") and payload:
        at = draw(st.integers(0, len(payload) - 1))
        if change == "flip":
            payload[at] ^= 1 << draw(st.integers(0, 7))
        else:
            payload[at] = draw(st.integers(0, 255))
    elif change == "cut" and payload:
        del payload[-draw(st.integers(1, min(3, len(payload)))) :]
    elif change == "append":
        payload += bytes(draw(st.lists(st.integers(0, 255), min_size=1, max_size=3)))
    elif change == "k":
        k = max(0, k + draw(st.sampled_from([-2, -1, 1, 2])))
    elif change == "n":
        n = max(1, n + draw(st.sampled_from([-9, -1, 1, 9])))
    return bytes(payload), n, k, encoding


@settings(max_examples=1500, deadline=None)
@given(corruptions())
def test_decode_agrees_with_v1_on_valid_and_corrupt_payloads(case: tuple[bytes, int, int, str]) -> None:
    assert _outcome(decode, *case) == _outcome(_v1_decode, *case)


# Small streaming steps, no lookup table, and the per-column path for short fixed-width streams:
# every chunk boundary and code path the large tensors take, on masks small enough to test broadly.
_SETTINGS = [
    {"_STEP": 1},
    {"_STEP": 3, "_SMALL": 0},
    {"_STEP": 5, "_TABLE_WIDTH": -1},
    {"_SMALL": 0, "_TABLE_WIDTH": -1},
]


@pytest.mark.parametrize("overrides", _SETTINGS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()))
@settings(max_examples=300, deadline=None)
@given(case=corruptions())
def test_every_decoder_path_agrees_with_v1(overrides: dict, case: tuple[bytes, int, int, str]) -> None:
    with pytest.MonkeyPatch.context() as patch:
        for name, value in overrides.items():
            patch.setattr(encodings, name, value)
        assert _outcome(decode, *case) == _outcome(_v1_decode, *case)


@pytest.mark.parametrize("encoding", ["elias-fano", "golomb"])
def test_wide_fields_and_huge_universes_agree_with_v1(encoding: str) -> None:
    """Low streams of 13-60 bits (no table; 8-byte words; > 56 bits by the bit-matrix fallback) and
    universes where int64 could overflow (the unchunked fallback), valid and with one bit flipped."""
    for n, positions in _golden_sparse():
        payload = encode(positions, n, encoding)
        np.testing.assert_array_equal(decode(payload, n, positions.size, encoding), positions)
        for at in range(0, 8 * len(payload), 5):
            broken = bytearray(payload)
            broken[at // 8] ^= 0x80 >> (at % 8)
            case = (bytes(broken), n, positions.size, encoding)
            assert _outcome(decode, *case) == _outcome(_v1_decode, *case)


@pytest.mark.parametrize("encoding", ENCODINGS)
@pytest.mark.parametrize("ratio", [0.01, 0.05, 0.3])
def test_multi_chunk_tensors_round_trip(encoding: str, ratio: float) -> None:
    """A Phi-3-sized row block: many streaming steps of the default size."""
    n = 3072 * 512
    positions = np.flatnonzero(_splitmix64(int(100 * ratio), n) < np.uint64(int(ratio * 2**64)))
    payload = encode(positions, n, encoding)
    np.testing.assert_array_equal(decode(payload, n, positions.size, encoding), positions)


def test_check_positions_names_the_first_offending_pair() -> None:
    check_positions(np.array([0, 3, 9]), 10)
    with pytest.raises(FormatError, match="not sorted and unique: 7 then 7"):
        check_positions(np.array([1, 7, 7, 2]), 10)
    with pytest.raises(FormatError, match="not sorted and unique: 5 then 4"):
        check_positions(np.array([5, 4]), 10)
    with pytest.raises(FormatError, match=r"out of range: expected \[0, 10\), got \[1, 10\]"):
        check_positions(np.array([1, 10]), 10)


# --- decode_many -----------------------------------------------------------------------------------


def _items(count: int) -> list[tuple[bytes, int, int, str]]:
    rng = np.random.default_rng(count)
    out = []
    for i in range(count):
        n = int(rng.integers(1, 200_000))
        positions = np.sort(rng.choice(n, size=int(rng.integers(0, n // 3 + 1)), replace=False))
        encoding = ENCODINGS[i % len(ENCODINGS)]
        out.append((encode(positions, n, encoding), n, positions.size, encoding))
    return out


@pytest.mark.parametrize("threads", [None, 1, 2, 3, 16])
@pytest.mark.parametrize("parallel_bytes", [0, encodings._PARALLEL_BYTES])
def test_decode_many_returns_every_decode_in_order(
    threads: int | None, parallel_bytes: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(encodings, "_PARALLEL_BYTES", parallel_bytes)  # 0: threads even for a few bytes
    items = _items(13)
    decoded = decode_many(items, threads=threads)
    assert len(decoded) == len(items)
    for got, item in zip(decoded, items):
        np.testing.assert_array_equal(got, decode(*item))
    assert decode_many([], threads=threads) == []
    np.testing.assert_array_equal(decode_many(iter(items[:1]), threads=threads)[0], decode(*items[0]))


@pytest.mark.parametrize("threads", [1, 2])
def test_decode_many_raises_the_first_failure(threads: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(encodings, "_PARALLEL_BYTES", 0)
    items = _items(6)
    broken = [items[0], (items[1][0] + b"\x00", *items[1][1:]), items[2], (b"", 10, 3, "raw")]
    with pytest.raises(FormatError) as first:
        decode(*broken[1])
    with pytest.raises(FormatError, match=re.escape(str(first.value))):
        decode_many(broken, threads=threads)
    with pytest.raises(ValueError, match="threads"):
        decode_many(items, threads=0)


@pytest.mark.parametrize("encoding", ENCODINGS)
@pytest.mark.parametrize("step", [1, 2, 3, 5])  # every Golomb m and Elias-Fano l from 0 up
def test_a_corrupt_huge_nnz_is_rejected_before_allocating(encoding: str, step: int) -> None:
    n = 100
    payload = encode(np.arange(0, n, step), n, encoding)
    with pytest.raises(FormatError, match="expected"):
        decode(payload, n, 10**13, encoding)  # 80 TB of positions, if anything were allocated first
    assert _outcome(decode, payload, n, 10**5, encoding) == _outcome(_v1_decode, payload, n, 10**5, encoding)
