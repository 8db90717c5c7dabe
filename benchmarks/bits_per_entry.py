"""Index bits per kept entry: ours against raw int32, PEFT SHiRA and the information bound.

For each weight shape and keep ratio, draws a uniformly random mask of k = round(ratio * n) positions
and encodes it with hubtool's automatic encoding choice (the encoding's whole payload is counted,
parameters and padding included). The bound is log2(C(n, k)) / k: no code can do better on average
over all masks. A second table packs the mask with bf16 values into a real expert file and reports
file bytes per kept entry (safetensors header and metadata included) against SHiRA's 12 bytes
(int32 [2, nnz] coordinates + fp32 values).

A third table is position decode speed (it is on `hub compose`'s critical path): M positions/s per
shape at keep ratios 0.01 and 0.05 for golomb (what `pack` picks there), elias-fano and bitmask,
against the v1 decoder (hubtool's decoder before the vectorised rewrite, kept below only as the
baseline); and decode_many with 1 and 2 threads on a list of 8 weights of each shape. Timings are
wall clock, the best (min) of --runs runs, v1 and current interleaved so both see the same load.

    .venv/bin/python benchmarks/bits_per_entry.py [--seed 0] [--runs 7] [--threads 2] [--speed-only]
"""

from __future__ import annotations

import argparse
import math
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial

import numpy as np
import torch

from hubtool.errors import FormatError
from hubtool.format import Expert, SparseDelta, encodings, pack_bytes
from hubtool.format.encodings import (
    ENCODINGS,
    _read_leb128,
    _truncated_binary,
    decode,
    decode_many,
    encode,
    encode_best,
)

RATIOS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5)
SHAPES = {  # [out, in]
    "smollm2 q_proj 576x576": (576, 576),
    "smollm2 k/v_proj 192x576": (192, 576),
    "phi-3 qkv_proj 9216x3072": (9216, 3072),
}


def bound_bits(n: int, k: int) -> float:
    """log2(C(n, k)) / k, via lgamma so it works for n in the millions."""
    return (math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)) / math.log(2) / k


def random_mask(rng: np.random.Generator, n: int, k: int) -> np.ndarray:
    return np.sort(rng.choice(n, size=k, replace=False)).astype(np.int64)


# --- BASELINE ONLY: the v1 position decoder --------------------------------------------------------
# hubtool's decoder before the vectorised rewrite, verbatim (bar names), kept here only to measure the
# speed-up against; hubtool does not use it. unpackbits + int64 matmul for fixed-width fields,
# unpackbits + flatnonzero (on uint8) + diff for unary streams, one cumsum of q m + r + 1, np.diff check.


def v1_decode(payload: bytes, n: int, k: int, encoding: str) -> np.ndarray:
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


# --- END BASELINE ---------------------------------------------------------------------------------


def best_of(runs: int, *calls: Callable[[], object]) -> list[float]:
    """Min wall-clock seconds of each call over `runs` rounds, the calls interleaved in each round."""
    best = [math.inf] * len(calls)
    for _ in range(runs):
        for i, call in enumerate(calls):
            start = time.perf_counter()
            call()
            best[i] = min(best[i], time.perf_counter() - start)
    return best


def starmap_list(fn: Callable, args: list[tuple]) -> list:
    return [fn(*a) for a in args]


def pool_map_list(pool: ThreadPoolExecutor, fn: Callable, args: list) -> list:
    return list(pool.map(fn, args))  # list(): wait for every result


SPEED_RATIOS = (0.01, 0.05)
SPEED_ENCODINGS = ("golomb", "elias-fano", "bitmask")
MANY = 8  # weights per decode_many list


def speed_tables(rng: np.random.Generator, runs: int, threads: int) -> None:
    print(
        f"Position decode, single thread: M positions/s, best of {runs} (wall clock); "
        f"v1 = the decoder before the rewrite; * = the encoding pack picks"
    )
    print(f"{'shape':26} {'keep':>6} {'k':>9} {'encoding':>11} {'v1':>7} {'now':>7} {'speed-up':>8}")
    many_rows = []
    for label, (rows, cols) in SHAPES.items():
        n = rows * cols
        for ratio in SPEED_RATIOS:
            k = round(ratio * n)
            positions = random_mask(rng, n, k)
            chosen, _ = encode_best(positions, n)
            for name in SPEED_ENCODINGS:
                payload = encode(positions, n, name)
                assert np.array_equal(decode(payload, n, k, name), positions)
                assert np.array_equal(v1_decode(payload, n, k, name), positions)
                args = (payload, n, k, name)
                old, new = best_of(runs, partial(v1_decode, *args), partial(decode, *args))
                mark = "*" if name == chosen else " "
                print(
                    f"{label:26} {ratio:6.3f} {k:9d} {mark + name:>11} {k / old / 1e6:7.1f} "
                    f"{k / new / 1e6:7.1f} {old / new:7.2f}x"
                )
            items = []
            for _ in range(MANY):
                name, payload = encode_best(random_mask(rng, n, k), n)
                items.append((payload, n, k, name))
            many_rows.append((label, ratio, k, items))
        print()

    print(
        f"decode_many on {MANY} weights of the shape (encoding pack picks), M positions/s, best of {runs}; "
        f"v1 loop = v1_decode one after another; {os.cpu_count()} CPU cores"
    )
    print(
        "machine check = 1 vs N thread scaling of a GIL-free numpy loop (np.cumsum of 8 x >= 1M int64s) "
        "measured alongside: how much of a second core the run actually got"
    )
    print(
        f"lists under {encodings._PARALLEL_BYTES // 1024} KiB of payload (the smollm2 rows) are decoded "
        f"in the calling thread, without a pool"
    )
    print(
        f"{'shape':26} {'keep':>6} {'k x ' + str(MANY):>12} {'encoding':>9} {'v1 loop':>8} "
        f"{'1 thread':>8} {str(threads) + ' threads':>9} {'scaling':>7} {'vs v1':>6} {'machine check':>13}"
    )
    for label, ratio, k, items in many_rows:
        total = MANY * k
        arrays = [np.ones(max(k, 1 << 20), dtype=np.int64) for _ in items]
        with ThreadPoolExecutor(threads) as pool:
            old, one, many, ref_one, ref_many = best_of(
                runs,
                partial(starmap_list, v1_decode, items),
                partial(decode_many, items, threads=1),
                partial(decode_many, items, threads=threads),
                partial(starmap_list, np.cumsum, [(a,) for a in arrays]),
                partial(pool_map_list, pool, np.cumsum, arrays),
            )
        names = "/".join(sorted({item[3] for item in items}))
        print(
            f"{label:26} {ratio:6.3f} {total:12d} {names:>9} {total / old / 1e6:8.1f} {total / one / 1e6:8.1f} "
            f"{total / many / 1e6:9.1f} {one / many:6.2f}x {old / many:5.1f}x {ref_one / ref_many:12.2f}x"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--runs", type=int, default=7, help="timing runs; the best (min) is reported")
    parser.add_argument("--threads", type=int, default=2, help="decode_many threads to compare with 1")
    parser.add_argument("--speed-only", action="store_true", help="only the decode speed tables")
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    if args.speed_only:
        speed_tables(rng, args.runs, args.threads)
        return

    print(
        f"{'shape':26} {'keep':>6} {'k':>9} {'encoding':>10} {'ours':>6} {'int32':>5} {'SHiRA':>5} "
        f"{'bound':>6} {'ours/bound':>10} {'decode ms':>9}"
    )
    worst = 0.0
    file_rows = []
    for label, (rows, cols) in SHAPES.items():
        n = rows * cols
        for ratio in RATIOS:
            k = round(ratio * n)
            positions = random_mask(rng, n, k)
            name, payload = encode_best(positions, n)
            assert np.array_equal(decode(payload, n, k, name), positions)
            ms = 1000 * best_of(3, partial(decode, payload, n, k, name))[0]
            ours, bound = 8 * len(payload) / k, bound_bits(n, k)
            worst = max(worst, ours / bound)
            print(
                f"{label:26} {ratio:6.3f} {k:9d} {name:>10} {ours:6.2f} {32:5d} {64:5d} "
                f"{bound:6.2f} {ours / bound:10.3f} {ms:9.1f}"
            )
            if label.startswith("smollm2 q_proj") or ratio in (0.01, 0.05):
                values = torch.randn(k).to(torch.bfloat16)
                delta = SparseDelta((rows, cols), torch.from_numpy(positions), values, "v1:0123456789abcdef")
                expert = Expert(
                    "bench", "bench", "sparse", "bench-base", {"w.weight": delta}, keep_ratio=ratio
                )
                file_rows.append((label, ratio, k, len(pack_bytes(expert)) / k))
        print()
    print(f"worst ours/bound: {worst:.3f} (target <= 1.10)\n")

    print(
        f"{'shape':26} {'keep':>6} {'k':>9} {'file B/entry (bf16)':>20} {'SHiRA B/entry':>14} {'x smaller':>9}"
    )
    for label, ratio, k, per_entry in file_rows:
        print(f"{label:26} {ratio:6.3f} {k:9d} {per_entry:20.3f} {12:14d} {12 / per_entry:9.2f}")
    print()
    speed_tables(rng, args.runs, args.threads)


if __name__ == "__main__":
    main()
