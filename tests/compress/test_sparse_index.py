"""Relative indices with fillers (Han, Mao & Dally, ICLR 2016, Fig. 2), and the bitmask alternative."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ece662.compress.sparse_index import (bitmask_bytes, positions_from_relative, relative_index_bytes,
                                          relative_indices)


def test_the_papers_example_with_three_bit_indices():
    """Survivors at 1, 4 and 15: gaps 1, 2 and 10; with 3 bits (filler 7) the 10 needs one filler."""
    mask = np.zeros(16, bool)
    mask[[1, 4, 15]] = True
    assert relative_indices(mask, 3).tolist() == [1, 2, 7, 3]
    assert np.array_equal(positions_from_relative([1, 2, 7, 3], 3, 16), mask)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.booleans(), min_size=1, max_size=600), st.integers(1, 8))
def test_round_trip_and_bounded_entries(flags, bits):
    """positions(relative(mask)) == mask for every mask and width, in at most size entries."""
    mask = np.array(flags)
    symbols = relative_indices(mask, bits)
    assert len(symbols) <= mask.size
    assert symbols.max(initial=0) <= 2 ** bits - 1
    assert np.array_equal(positions_from_relative(symbols, bits, mask.size), mask)


def test_bytes():
    """Bytes are entries x index bits + survivors x value bits, rounded up; the bitmask one bit per position."""
    mask = np.zeros(100, bool)
    mask[[0, 50, 99]] = True
    entries = len(relative_indices(mask, 5))         # gaps 0, 49, 48: 49 = 31 + 18, 48 = 31 + 17
    assert entries == 5
    assert relative_index_bytes(mask, 5, 32) == -(-(5 * 5 + 3 * 32) // 8)
    assert bitmask_bytes(mask, 32) == -(-(100 + 96) // 8)


@pytest.mark.parametrize("symbols, message", [
    ([8], r"0\.\.7"),
    ([1, 7], "end with a filler"),
    ([7, 7, 3], "position 17"),
])
def test_positions_out_of_range_are_refused(symbols, message):
    with pytest.raises(ValueError, match=message):
        positions_from_relative(symbols, 3, 16)


def test_bad_widths_are_refused():
    with pytest.raises(ValueError, match="1..16 bits"):
        relative_indices(np.ones(3, bool), 0)


def test_positions_take_a_few_bytes_per_symbol():
    """A hostile file may declare as many position symbols as the layer has weights: the mask is built with one
    int64 running sum and two booleans per symbol (it took five int64 arrays)."""
    import tracemalloc
    count = 1 << 19
    symbols = np.zeros(count, np.uint8)               # every position a survivor, as the decoder returns them
    tracemalloc.start()
    try:
        mask = positions_from_relative(symbols, 8, count)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert mask.all()
    assert peak < 12 * count, f"{peak / count:.1f} bytes per symbol"
