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

Decoding is on `hub compose`'s critical path, so it never materialises the unary values: the bit
index o_i of the i-th one already is a prefix sum (o_i - i = q_0 + ... + q_i), so Elias–Fano highs
are o_i - i and Golomb positions are m o_i + (m - 1) + cumsum(r + 1 - m), one cumsum of small steps
looked up in a table. Unary streams and bitmasks are walked _STEP bytes at a time so temporaries stay
in cache (and below malloc's mmap threshold: no page faults); fixed-width fields are read per byte
column, as 8 values take exactly `width` bytes. All checks of the straightforward decoder are kept,
with the same messages; docs/benchmarks.md has the speed against it.

Why Golomb: on a uniformly random mask the gaps are ~geometric, for which the Golomb code with the
best integer m is the optimal prefix code; Elias–Fano and Rice (m = 2^l) lose up to ~18% at keep
ratio 0.2, where the bound is only 3.6 bits, while Golomb stays within a few percent of
log2 C(n, k) / k at every keep ratio (benchmarks/bits_per_entry.py).
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from hubtool.errors import FormatError
from hubtool.format.header import ENCODINGS

_MAX_RAW = 2**31  # raw positions are int32
# Decoders walk unary streams and bitmasks _STEP bytes at a time (<= 8 * _STEP values per step).
_STEP = 16384
_ARANGE = np.arange(8 * _STEP, dtype=np.int64)
_ARANGE.flags.writeable = False
# Golomb remainders come from a lookup table up to this low-stream width (m <= 2^(width+1)).
_TABLE_WIDTH = 11
# Fixed-width streams of at most this many values are read per value, longer ones per byte column.
_SMALL = 8192
# decode_many uses threads only for at least this much payload: a pool costs ~0.1-1 ms to start.
_PARALLEL_BYTES = 1 << 18


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
    encoded = [
        (len(b), ENCODINGS.index(e), e, b)
        for e in ENCODINGS
        if e != "bitmask" and (e != "raw" or n <= _MAX_RAW)
        for b in [encode(positions, n, e)]
    ]
    # The bitmask's size is known without building it (n bits): built only when it may win, so a
    # huge, nearly empty weight never allocates n bytes.
    if -(-n // 8) <= min(encoded)[0]:
        encoded.append((-(-n // 8), ENCODINGS.index("bitmask"), "bitmask", encode(positions, n, "bitmask")))
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
        positions, ordered = buf.view("<i4").astype(np.int64), False
    elif encoding == "bitmask":
        positions, ordered = _bitmask_decode(buf, n, k), True
    elif encoding == "elias-fano":
        positions, ordered = _ef_decode(buf, n, k)
    elif encoding == "golomb":
        positions, ordered = _golomb_decode(buf, n, k)
    else:
        raise FormatError(f"unknown position encoding {encoding!r}: expected one of {', '.join(ENCODINGS)}")
    if ordered:  # strictly increasing and >= 0 by construction: only the top end can be wrong
        _check_range(positions, n)
    else:
        check_positions(positions, n)
    return positions


def decode_many(
    items: Iterable[tuple[bytes, int, int, str]], *, threads: int | None = None
) -> list[np.ndarray]:
    """decode() of each (payload, n, k, encoding), in order, on a pool of `threads` threads.

    The decoders spend their time in numpy loops that release the GIL, so threads run in parallel;
    threads defaults to os.cpu_count(). Lists too small to gain from threads (under _PARALLEL_BYTES
    of payload) are decoded in this thread. The first failing item (in order) raises its FormatError.
    """
    items = list(items)
    if threads is None:
        threads = os.cpu_count() or 1
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    threads = min(threads, len(items))
    if threads <= 1 or sum(len(item[0]) for item in items) < _PARALLEL_BYTES:
        return [decode(*item) for item in items]
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="hubtool-decode") as pool:
        # Largest first, so no thread is left with a big one at the end; results in input order.
        order = sorted(range(len(items)), key=lambda i: -len(items[i][0]))
        futures = {i: pool.submit(decode, *items[i]) for i in order}
        try:
            return [futures[i].result() for i in range(len(items))]
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise


def check_positions(positions: np.ndarray, n: int) -> None:
    """Sorted, unique and inside [0, n), else FormatError."""
    if positions.size == 0:
        return
    _check_range(positions, n)
    if positions.size > 1:
        bad = positions[1:] <= positions[:-1]  # one bool pass, no int64 diff
        if bad.any():
            at = int(np.argmax(bad))
            raise FormatError(f"positions not sorted and unique: {positions[at]} then {positions[at + 1]}")


def _check_range(positions: np.ndarray, n: int) -> None:
    """First and last inside [0, n) (all of them, when the positions are known to increase)."""
    if positions.size and (positions[0] < 0 or positions[-1] >= n):
        raise FormatError(f"positions out of range: expected [0, {n}), got [{positions[0]}, {positions[-1]}]")


def _bitmask_decode(buf: np.ndarray, n: int, k: int) -> np.ndarray:
    _expect_len(buf, -(-n // 8), "bitmask payload")
    if k > 8 * buf.size:  # before allocating k positions for a corrupt k
        raise FormatError(f"bitmask has {_count_ones(buf)} bits set, expected nnz {k}")
    positions = np.empty(k, dtype=np.int64)
    done = 0
    # Under 1 bit in 8 set, finding the non-zero bytes first and unpacking only those is faster
    # (measured: ~1.6x at 1 bit in 20, even at 1 in 8, ~0.6x at 1 in 5).
    sparse = 8 * k < n
    step = 4 * _STEP if sparse else _STEP
    for start in range(0, buf.size, step):
        chunk = buf[start : start + step]
        if sparse:  # unpack only the non-zero bytes
            nonzero = (chunk != 0).nonzero()[0]
            bits = _ones(chunk[nonzero])
            found = nonzero[bits >> 3]
            found <<= 3
            found |= bits & 7
        else:
            found = _ones(chunk)
        if done + found.size > k:
            break
        np.add(found, 8 * start, out=positions[done : done + found.size])
        done += found.size
    else:
        if done == k:
            return positions
    raise FormatError(f"bitmask has {_count_ones(buf)} bits set, expected nnz {k}")


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


def _ef_decode(buf: np.ndarray, n: int, k: int) -> tuple[np.ndarray, bool]:
    """(positions, ordered): ordered means strictly increasing from >= 0 (checked here)."""
    if buf.size < 1:
        raise FormatError("elias-fano payload is empty, expected at least the low-bit-width byte")
    low = int(buf[0])
    if low > max(1, n).bit_length():
        raise FormatError(f"elias-fano low-bit width {low} is larger than the universe {n} needs")
    low_bytes = -(-(k * low) // 8)
    if not low:  # a corrupt k fails on the high stream, as below, before k zeros are allocated
        _check_unary_room(buf[1:], k, "elias-fano high stream")
    lows = _unpack_fixed(buf[1 : 1 + low_bytes], k, low, "elias-fano low stream")
    high = buf[1 + low_bytes :]
    if (8 * high.size + 1) << low >= 2**62:  # int64 could overflow: the plain way, checked after
        positions = _unary_ones(high, k, "elias-fano high stream")
        positions -= np.arange(k, dtype=np.int64)
        positions <<= low
        positions |= lows
        return positions, False
    # h_i = (bit index of the i-th one) - i: the unary values are never materialised or summed.
    _check_unary_room(high, k, "elias-fano high stream")
    positions = np.empty(k, dtype=np.int64)
    ordered = True
    for start, base, ones in _unary_chunks(high, k, "elias-fano high stream"):
        stop = start + ones.size
        ones -= _ARANGE[: ones.size]
        ones += base - start
        if low:
            ones <<= low
            ones |= lows[start:stop]
        positions[start:stop] = ones
        if ordered and (start and positions[start - 1] >= ones[0] or (ones[1:] <= ones[:-1]).any()):
            ordered = False  # check_positions finds and names the first offending pair
    return positions, ordered


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


def _golomb_decode(buf: np.ndarray, n: int, k: int) -> tuple[np.ndarray, bool]:
    """(positions, ordered): ordered means strictly increasing from >= 0 by construction."""
    m, at = _read_leb128(buf)
    if m > max(n, 1):
        raise FormatError(f"golomb parameter m = {m} is larger than the universe {n}")
    width, cut = _truncated_binary(m)
    if not width and k > 8 * buf.size:  # a corrupt k fails as below, before k zeros are allocated
        n_extra = 0 if cut else k
        _unpack_fixed(buf[at : at + -(-n_extra // 8)], n_extra, 1, "golomb extra stream")
        _check_unary_room(buf[at:], k, "golomb unary stream")
    low_bytes = -(-(k * width) // 8)
    low = _unpack_fixed(buf[at : at + low_bytes], k, width, "golomb low stream")
    at += low_bytes
    n_extra = int(np.count_nonzero(low >= cut)) if cut else k
    extra_bytes = -(-n_extra // 8)
    extra = _unpack_fixed(buf[at : at + extra_bytes], n_extra, 1, "golomb extra stream")
    unary = buf[at + extra_bytes :]
    if 16 * m * (buf.size + 1) >= 2**63:  # int64 could overflow: the plain way, checked after
        ones = _unary_ones(unary, k, "golomb unary stream")
        r = low.astype(np.int64)
        long = r >= cut
        r[long] = 2 * r[long] + extra - cut
        gaps = np.diff(ones, prepend=-1) - 1
        gaps *= m
        gaps += r + 1
        return np.cumsum(gaps) - 1, False
    # With o_i the bit index of the i-th one in the unary stream, q_0 + ... + q_i = o_i - i, so
    #   x_i = sum_{j<=i} (q_j m + r_j + 1) - 1 = m o_i + (m - 1) + sum_{j<=i} d_j,  d_j = r_j + 1 - m:
    # one cumsum of small steps per chunk; the unary values q are never materialised.
    # d is looked up by index 2 v + e (low value v, extra bit e or 0) in a 2^(width+1) table.
    _check_unary_room(unary, k, "golomb unary stream")
    table = _golomb_table(m) if width <= _TABLE_WIDTH else None
    if table is not None:
        steps = np.empty(min(k, 8 * _STEP), dtype=np.int64)
    positions = np.empty(k, dtype=np.int64)
    carry = m - 1  # sum of d so far, plus m - 1
    taken = 0  # extra bits used so far (when cut > 0)
    for start, base, ones in _unary_chunks(unary, k, "golomb unary stream"):
        stop = start + ones.size
        if m == 1:  # r = 0, d = 0
            np.add(ones, base, out=positions[start:stop])
            continue
        v = low[start:stop]
        d = v.astype(np.int64)
        if cut:  # the extra bits go to the entries with v >= cut, in order
            long = (v >= cut).nonzero()[0]
            e = extra[taken : taken + long.size]
            taken += long.size
        else:  # m = 2^b: every entry has one
            long, e = slice(None), extra[start:stop]
        if table is not None:  # d = table[2 v + e], e = 0 for short entries
            d <<= 1
            if 4 * e.size < d.size:  # few long entries: or them in where they are
                d[long] |= e
            else:  # many: a scatter of bytes and a dense or are cheaper than a gather and scatter
                wide = np.zeros(d.size, dtype=np.uint8)
                wide[long] = e
                d |= wide
            d = table.take(d, out=steps[: d.size], mode="wrap")  # all in range: wrap is a no-op
        else:
            d[long] += d[long] + (e.astype(np.int64) - cut)
            d += 1 - m
        d[0] += carry + base * m  # ones are relative to bit `base`
        np.cumsum(d, out=d)
        carry = int(d[-1]) - base * m
        ones *= m
        np.add(ones, d, out=positions[start:stop])
    # Every gap is q m + r + 1 >= 1 with 0 <= r < m: the positions increase from >= 0.
    return positions, True


@functools.lru_cache(maxsize=256)
def _golomb_table(m: int) -> np.ndarray:
    """int64 [2^(width+1)], read-only: entry 2 v + e is d = r + 1 - m for low value v and extra
    bit e (e = 0 when v < cut, where the extra bit does not exist)."""
    width, cut = _truncated_binary(m)
    v = np.arange(1 << width, dtype=np.int64)
    table = np.empty((1 << width, 2), dtype=np.int64)
    table[:, 0] = np.where(v < cut, v, 2 * v - cut)
    table[:, 1] = np.where(v < cut, v, 2 * v + 1 - cut)
    table = table.reshape(-1) + (1 - m)
    table.flags.writeable = False
    return table


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
    """`count` values of `width` bits from a stream of exactly that many bytes, zero-padded.

    Unsigned, in the narrowest of uint8/16/32 that holds `width` bits (int64 above 32 bits).
    """
    nbytes = -(-(count * width) // 8)
    _expect_len(buf, nbytes, what)
    if width == 0 or count == 0:
        return np.zeros(count, dtype=np.uint8)
    pad = 8 * nbytes - count * width  # 0..7 bits, all in the last byte
    if int(buf[-1]) & ((1 << pad) - 1):
        raise FormatError(f"{what} has non-zero padding bits")
    if width == 1:
        return np.unpackbits(buf, count=count)
    if width > 56:  # a value can straddle 9 bytes: positions that large only in theory
        bits = np.unpackbits(buf)[: count * width].reshape(count, width).astype(np.int64)
        return bits @ (np.int64(1) << np.arange(width - 1, -1, -1, dtype=np.int64))
    out_dtype = _uint_for(width)
    if width in (8, 16, 32):
        return buf.view(np.dtype(out_dtype).newbyteorder(">")).astype(out_dtype)
    nb = -(-(7 + width) // 8)  # most bytes one value touches
    if count <= _SMALL:
        # Few values: per value, gather the bytes it touches as one big-endian word, shift, mask
        # (fewer numpy calls than the slot loop below, whose fixed cost dominates here).
        word_dtype = _WORDS[nb]
        bit = np.arange(0, count * width, width, dtype=np.intp)
        at = bit >> 3
        padded = np.concatenate([buf, np.zeros(nb, dtype=np.uint8)])
        word = padded.take(at).astype(word_dtype)
        for t in range(1, nb):
            at += 1
            word <<= word_dtype(8)
            word |= padded.take(at)
        bit &= 7
        word >>= (8 * nb - width - bit).astype(word_dtype)
        word &= word_dtype((1 << width) - 1)
        return word.astype(out_dtype, copy=False)
    # 8 values take exactly `width` bytes, so in a [groups, width] byte matrix value j of every
    # group sits at the same byte column(s) and bit shift: each of the 8 slots is a few strided
    # column reads, shifts and ors over all groups at once, into one reused word buffer.
    groups = -(-count // 8)
    if buf.size < groups * width:
        buf = np.concatenate([buf, np.zeros(groups * width - buf.size, dtype=np.uint8)])
    cols = buf.reshape(groups, width)
    out = np.empty((groups, 8), dtype=out_dtype)
    words: dict[type, np.ndarray] = {}
    for j in range(8):
        first, skip = divmod(j * width, 8)
        nb = -(-(skip + width) // 8)  # bytes this slot touches, read as one big-endian word
        word_dtype = _WORDS[nb]
        word = words.get(word_dtype)
        if word is None:
            word = words[word_dtype] = np.empty(groups, dtype=word_dtype)
        np.copyto(word, cols[:, first])
        for c in range(first + 1, first + nb):
            word <<= word_dtype(8)
            word |= cols[:, c]
        word >>= word_dtype(8 * nb - skip - width)
        if skip:  # the leading `skip` bits belong to the previous value
            word &= word_dtype((1 << width) - 1)
        out[:, j] = word
    return out.reshape(-1)[:count]


_WORDS = {
    1: np.uint8,
    2: np.uint16,
    3: np.uint32,
    4: np.uint32,
    5: np.uint64,
    6: np.uint64,
    7: np.uint64,
    8: np.uint64,
}


def _uint_for(bits: int) -> type:
    """The narrowest numpy unsigned type holding `bits` bits; int64 above 32 (callers mix it with
    int64, and the values stay below 2^57)."""
    if bits <= 8:
        return np.uint8
    if bits <= 16:
        return np.uint16
    if bits <= 32:
        return np.uint32
    return np.int64


def _unary_encode(q: np.ndarray) -> bytes:
    if q.size == 0:
        return b""
    ones = np.cumsum(q + 1) - 1  # bit index of each terminating one
    bits = np.zeros(int(ones[-1]) + 1, dtype=np.uint8)
    bits[ones] = 1
    return np.packbits(bits).tobytes()


def _ones(buf: np.ndarray) -> np.ndarray:
    """int64 bit indices of the one bits of a bit stream."""
    # The bool view matters: numpy has fast nonzero loops for bool only (~7x faster than uint8).
    return np.unpackbits(buf).view(np.bool_).nonzero()[0]


def _count_ones(buf: np.ndarray) -> int:
    return int(np.unpackbits(buf).sum(dtype=np.int64))


def _unary_ones(buf: np.ndarray, k: int, what: str) -> np.ndarray:
    """int64 [k]: the bit index of each value's terminating one in a unary stream of k values that
    must fill `buf` exactly (ending in its last byte). Value i is ones[i] - ones[i - 1] - 1."""
    ones = _ones(buf)
    _check_unary(buf, ones.size, k, what)
    return ones


def _unary_chunks(buf: np.ndarray, k: int, what: str) -> Iterator[tuple[int, int, np.ndarray]]:
    """_unary_ones in pieces of _STEP bytes: (index of the first value, bit offset of the piece,
    bit indices of its ones relative to that offset). Checked like _unary_ones, at the end.

    Working piecewise keeps every temporary small: in cache, and below malloc's mmap threshold,
    so no page faults on fresh multi-megabyte arrays (that alone was ~20% of a large decode).
    """
    done = 0
    for start in range(0, buf.size, _STEP):
        ones = _ones(buf[start : start + _STEP])
        if done + ones.size > k:
            _check_unary(buf, _count_ones(buf), k, what)
        if ones.size:
            yield done, 8 * start, ones
            done += ones.size
    _check_unary(buf, done, k, what)


def _check_unary_room(buf: np.ndarray, k: int, what: str) -> None:
    """A stream of fewer than k bits cannot hold k values: reject before allocating k positions."""
    if k > 8 * buf.size:
        _check_unary(buf, _count_ones(buf), k, what)


def _check_unary(buf: np.ndarray, count: int, k: int, what: str) -> None:
    if count != k:
        raise FormatError(f"{what} holds {count} values, expected nnz {k}")
    # With exactly k ones, the stream ends with its last value iff its last byte is not zero.
    if k and not buf[-1] or not k and buf.size:
        raise FormatError(f"{what} is {buf.size} bytes, expected it to end with its last value")


def _expect_len(buf: np.ndarray, nbytes: int, what: str) -> None:
    if buf.size != nbytes:
        raise FormatError(f"{what} is {buf.size} bytes, expected {nbytes}")
