"""Position encodings: k sorted unique positions in [0, n) <-> a compact byte string.

Every encoder/decoder is vectorised numpy (no per-entry Python loop). Bit streams are MSB-first
within each byte and zero-padded to a whole byte. Layouts (docs/format.md has the same, as spec):

  raw         k little-endian int32                                        32 bits/entry
  bitmask     n bits, bit i set iff position i is kept                     n/k bits/entry
  elias-fano  u8 l | low stream: x & (2^l - 1), l bits each | high stream: unary(h_i - h_{i-1}),
              h = x >> l                                                   ≈ 2 + log2(n/k)
  golomb      LEB128 m | low stream | extra stream | unary stream over the gaps
              g_i = x_i - x_{i-1} - 1 (x_{-1} = -1): q = g // m in unary, r = g % m in truncated
              binary split into two fixed-layout streams so decoding needs no sequential scan
                                                                           ≈ log2 C(n,k) / k

unary(q): q zero bits then a one bit. A unary stream ends in the byte holding its last one bit.

Why Golomb: on a uniformly random mask the gaps are ~geometric, for which the Golomb code with the
best integer m is the optimal prefix code; Elias–Fano and Rice (m = 2^l) lose up to ~18% at keep
ratio 0.2, where the bound is only 3.6 bits, while Golomb stays within a few percent of
log2 C(n, k) / k at every keep ratio (benchmarks/bits_per_entry.py).
"""

from __future__ import annotations

import math

import numpy as np

from hubtool.errors import FormatError
from hubtool.format.header import ENCODINGS

_MAX_RAW = 2**31  # raw positions are int32


def encode(positions: np.ndarray, n: int, encoding: str) -> bytes:
    """Encode sorted unique int64 positions [k] in [0, n). The caller validates the positions."""
    positions = np.asarray(positions, dtype=np.int64)
    if encoding == "raw":
        if n > _MAX_RAW:
            raise FormatError(f"raw encoding holds positions < 2^31, got a universe of {n}")
        return positions.astype("<i4").tobytes()
    if encoding == "bitmask":
        bits = np.zeros(n, dtype=np.uint8)
        bits[positions] = 1
        return np.packbits(bits).tobytes()
    if encoding == "elias-fano":
        return _ef_encode(positions, n)
    if encoding == "golomb":
        return _golomb_encode(positions)
    raise FormatError(f"unknown position encoding {encoding!r}: expected one of {', '.join(ENCODINGS)}")


def encode_best(positions: np.ndarray, n: int) -> tuple[str, bytes]:
    """The smallest encoding (ties go to the earlier name in ENCODINGS) and its bytes."""
    candidates = [e for e in ENCODINGS if e != "raw" or n <= _MAX_RAW]
    encoded = [(len(b), i, e, b) for i, e in enumerate(candidates) for b in [encode(positions, n, e)]]
    _, _, name, payload = min(encoded)
    return name, payload


def decode(payload: bytes, n: int, k: int, encoding: str) -> np.ndarray:
    """Decode k positions in [0, n): int64 [k], sorted and unique, else FormatError.

    Every byte must be accounted for: a payload that is too short or too long, has non-zero padding
    bits, or decodes to positions out of range or out of order is rejected.
    """
    buf = np.frombuffer(payload, dtype=np.uint8)
    if encoding == "raw":
        _expect_len(buf, 4 * k, "raw payload")
        positions = buf.view("<i4").astype(np.int64)
    elif encoding == "bitmask":
        _expect_len(buf, -(-n // 8), "bitmask payload")
        positions = np.flatnonzero(np.unpackbits(buf))
        if positions.size != k:
            raise FormatError(f"bitmask has {positions.size} bits set, expected nnz {k}")
    elif encoding == "elias-fano":
        positions = _ef_decode(buf, n, k)
    elif encoding == "golomb":
        positions = _golomb_decode(buf, n, k)
    else:
        raise FormatError(f"unknown position encoding {encoding!r}: expected one of {', '.join(ENCODINGS)}")
    check_positions(positions, n)
    return positions


def check_positions(positions: np.ndarray, n: int) -> None:
    """Sorted, unique and inside [0, n), else FormatError."""
    if positions.size == 0:
        return
    if positions[0] < 0 or positions[-1] >= n:
        raise FormatError(f"positions out of range: expected [0, {n}), got [{positions[0]}, {positions[-1]}]")
    steps = np.diff(positions)
    if steps.size and steps.min() <= 0:
        at = int(np.argmax(steps <= 0))
        raise FormatError(f"positions not sorted and unique: {positions[at]} then {positions[at + 1]}")


# --- Elias–Fano ------------------------------------------------------------------------------------


def _ef_encode(x: np.ndarray, n: int) -> bytes:
    k = x.size
    # Classic choice is l = floor(log2(n / k)); one step either side is sometimes a byte shorter.
    l0 = max(0, math.floor(math.log2(n / k))) if k else 0
    best = min(range(max(0, l0 - 1), min(l0 + 2, 64)), key=lambda l: _ef_bits(x, l))
    return bytes([best]) + _pack_fixed(x & ((1 << best) - 1), best) + _unary_encode(_diffs(x >> best))


def _ef_bits(x: np.ndarray, low: int) -> int:
    high_bits = int(x[-1] >> low) + x.size if x.size else 0
    return 8 * -(-(x.size * low) // 8) + high_bits


def _ef_decode(buf: np.ndarray, n: int, k: int) -> np.ndarray:
    if buf.size < 1:
        raise FormatError("elias-fano payload is empty, expected at least the low-bit-width byte")
    low = int(buf[0])
    if low > max(1, n).bit_length():
        raise FormatError(f"elias-fano low-bit width {low} is larger than the universe {n} needs")
    low_bytes = -(-(k * low) // 8)
    lows = _unpack_fixed(buf[1 : 1 + low_bytes], k, low, "elias-fano low stream")
    highs = np.cumsum(_unary_decode(buf[1 + low_bytes :], k, "elias-fano high stream"))
    return (highs << low) | lows


# --- Golomb ----------------------------------------------------------------------------------------


def _golomb_encode(x: np.ndarray) -> bytes:
    gaps = _diffs(x + 1) - 1  # [k] >= 0
    m = min(_golomb_candidates(gaps), key=lambda m: _golomb_bits(gaps, m))
    q, r = gaps // m, gaps % m
    width, cut = _truncated_binary(m)
    # Truncated binary: r < cut takes `width` bits; otherwise r + cut takes width + 1 bits, whose
    # first `width` bits (>= cut, so the decoder can tell) go to the low stream and the last bit
    # to the extra stream.
    long = r >= cut
    low = np.where(long, (r + cut) >> 1, r)
    extra = ((r + cut) & 1)[long]
    return _leb128(m) + _pack_fixed(low, width) + _pack_fixed(extra, 1) + _unary_encode(q)


def _golomb_candidates(gaps: np.ndarray) -> set[int]:
    """m near the optimum for geometric gaps, (1 - p)^m ≈ 1/2 with p = 1 / (mean gap + 1)."""
    if gaps.size == 0:
        return {1}
    p = 1.0 / (float(gaps.mean()) + 1.0)
    m0 = 1 if p >= 0.5 else math.ceil(math.log(2.0 - p) / -math.log1p(-p))
    return {max(1, round(m0 * f)) for f in (0.7, 0.85, 1.0, 1.15, 1.3)} | {max(1, m0 - 1), m0 + 1}


def _golomb_bits(gaps: np.ndarray, m: int) -> int:
    width, cut = _truncated_binary(m)
    extra = int(np.count_nonzero(gaps % m >= cut)) if m > 1 else 0
    unary = int((gaps // m).sum()) + gaps.size
    return 8 * -(-(gaps.size * width) // 8) + 8 * -(-extra // 8) + unary


def _truncated_binary(m: int) -> tuple[int, int]:
    """(width, cut) with b = ceil(log2 m), width = b - 1, cut = 2^b - m; m = 1 needs no bits."""
    if m == 1:
        return 0, 1  # r is always 0 < cut: no low or extra bits
    b = (m - 1).bit_length()
    return b - 1, (1 << b) - m


def _golomb_decode(buf: np.ndarray, n: int, k: int) -> np.ndarray:
    m, at = _read_leb128(buf)
    if m > max(n, 1):
        raise FormatError(f"golomb parameter m = {m} is larger than the universe {n}")
    width, cut = _truncated_binary(m)
    low_bytes = -(-(k * width) // 8)
    low = _unpack_fixed(buf[at : at + low_bytes], k, width, "golomb low stream")
    at += low_bytes
    long = low >= cut
    n_extra = int(np.count_nonzero(long))
    extra_bytes = -(-n_extra // 8)
    extra = _unpack_fixed(buf[at : at + extra_bytes], n_extra, 1, "golomb extra stream")
    r = low.copy()
    r[long] = ((low[long] << 1) | extra) - cut
    q = _unary_decode(buf[at + extra_bytes :], k, "golomb unary stream")
    return np.cumsum(q * m + r + 1) - 1


def _leb128(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _read_leb128(buf: np.ndarray) -> tuple[int, int]:
    value = 0
    for i in range(min(buf.size, 9)):  # m < 2^63: at most 9 bytes
        value |= (int(buf[i]) & 0x7F) << (7 * i)
        if not buf[i] & 0x80:
            if value < 1:
                raise FormatError("golomb parameter m must be >= 1, got 0")
            return value, i + 1
    raise FormatError("golomb payload does not start with a valid LEB128 parameter m")


# --- bit streams -----------------------------------------------------------------------------------


def _diffs(x: np.ndarray) -> np.ndarray:
    """x_i - x_{i-1} with x_{-1} = 0."""
    return np.diff(x, prepend=0) if x.size else x


def _pack_fixed(values: np.ndarray, width: int) -> bytes:
    """Each value as `width` bits, MSB first, concatenated and zero-padded to a byte."""
    if width == 0 or values.size == 0:
        return b""
    shifts = np.arange(width - 1, -1, -1, dtype=np.int64)
    bits = ((values.astype(np.int64)[:, None] >> shifts) & 1).astype(np.uint8)  # [k, width]
    return np.packbits(bits.reshape(-1)).tobytes()


def _unpack_fixed(buf: np.ndarray, count: int, width: int, what: str) -> np.ndarray:
    nbytes = -(-(count * width) // 8)
    _expect_len(buf, nbytes, what)
    if width == 0 or count == 0:
        return np.zeros(count, dtype=np.int64)
    bits = np.unpackbits(buf)
    if bits[count * width :].any():
        raise FormatError(f"{what} has non-zero padding bits")
    bits = bits[: count * width].reshape(count, width).astype(np.int64)
    return bits @ (np.int64(1) << np.arange(width - 1, -1, -1, dtype=np.int64))


def _unary_encode(q: np.ndarray) -> bytes:
    if q.size == 0:
        return b""
    ones = np.cumsum(q + 1) - 1  # bit index of each terminating one
    bits = np.zeros(int(ones[-1]) + 1, dtype=np.uint8)
    bits[ones] = 1
    return np.packbits(bits).tobytes()


def _unary_decode(buf: np.ndarray, k: int, what: str) -> np.ndarray:
    """The k values of a unary stream that must fill `buf` exactly (ending in its last byte)."""
    ones = np.flatnonzero(np.unpackbits(buf))
    if ones.size != k:
        raise FormatError(f"{what} holds {ones.size} values, expected nnz {k}")
    if k and buf.size != ones[-1] // 8 + 1 or not k and buf.size:
        raise FormatError(f"{what} is {buf.size} bytes, expected it to end with its last value")
    return np.diff(ones, prepend=-1) - 1


def _expect_len(buf: np.ndarray, nbytes: int, what: str) -> None:
    if buf.size != nbytes:
        raise FormatError(f"{what} is {buf.size} bytes, expected {nbytes}")
