"""Position encodings: exact round trips, corrupt payloads rejected, size near the information bound."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hubtool.errors import FormatError
from hubtool.format.encodings import ENCODINGS, decode, encode, encode_best


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
