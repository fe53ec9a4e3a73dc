"""Huffman coding (Huffman, 1952) with canonical codes: round trips for all inputs, and code tables a reader refuses."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ece662.compress import huffman


def test_hand_worked_code():
    """Counts 4, 2, 1, 1 give the textbook lengths 1, 2, 3, 3 and canonical codes 0, 10, 110, 111."""
    lengths = huffman.code_lengths([4, 2, 1, 1])
    assert lengths.tolist() == [1, 2, 3, 3]
    assert [format(c, f"0{n}b") for c, n in zip(huffman.canonical_codes(lengths), lengths)] == \
        ["0", "10", "110", "111"]
    stream, nbits = huffman.encode([2, 0, 3, 1], lengths)      # 110 0 111 10 -> 1100 1111 0(000)
    assert nbits == 9 and stream.tolist() == [0b11001111, 0b00000000]


def test_code_lengths_are_optimal_against_entropy():
    """A Huffman code's mean length lies within one bit of the entropy."""
    counts = np.array([50, 20, 15, 10, 4, 1])
    lengths = huffman.code_lengths(counts)
    p = counts / counts.sum()
    mean = float((p * lengths).sum())
    entropy = float(-(p * np.log2(p)).sum())
    assert entropy <= mean < entropy + 1


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 40), min_size=1, max_size=400), st.integers(41, 300))
def test_round_trip(symbols, alphabet):
    """decode(encode(x)) == x for any symbols over any alphabet, with tables that pass the reader's checks."""
    symbols = np.array(symbols)
    lengths = huffman.code_lengths(np.bincount(symbols, minlength=alphabet))
    huffman.check_code_lengths(lengths)
    packed = huffman.pack_lengths(lengths)
    assert (huffman.unpack_lengths(packed, alphabet) == lengths).all()
    stream, nbits = huffman.encode(symbols, lengths)
    assert (huffman.decode(stream, nbits, lengths, len(symbols)) == symbols).all()


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(1, 10 ** 6), min_size=2, max_size=256))
def test_lengths_never_exceed_the_maximum(counts):
    """Even counts that would need codes over 15 bits get a complete code of at most 15 bits."""
    lengths = huffman.code_lengths(counts)
    assert 1 <= lengths.min() and lengths.max() <= huffman.MAX_CODE_LENGTH
    huffman.check_code_lengths(lengths)


def test_fibonacci_counts_are_flattened_to_fit():
    """Fibonacci counts are the worst case: 30 symbols would need a 29-bit code; the table keeps 15."""
    fib = [1, 1]
    while len(fib) < 30:
        fib.append(fib[-1] + fib[-2])
    lengths = huffman.code_lengths(fib)
    assert lengths.max() == huffman.MAX_CODE_LENGTH
    symbols = np.repeat(np.arange(30), 1)
    stream, nbits = huffman.encode(symbols, lengths)
    assert (huffman.decode(stream, nbits, lengths, 30) == symbols).all()


def test_one_symbol_gets_one_bit():
    lengths = huffman.code_lengths([0, 7, 0])
    assert lengths.tolist() == [0, 1, 0]
    stream, nbits = huffman.encode([1] * 7, lengths)
    assert nbits == 7 and huffman.decode(stream, nbits, lengths, 7).tolist() == [1] * 7


@pytest.mark.parametrize("lengths, message", [
    ([1, 1, 1], "over-full"),
    ([1, 2, 3], "incomplete"),
    ([0, 0, 0], "no symbol has a code"),
    ([16, 1, 2], r"0\.\.15"),
])
def test_code_tables_no_prefix_code_has_are_refused(lengths, message):
    """Kraft's inequality, completeness and the maximum length are checked before a bit is decoded."""
    with pytest.raises(ValueError, match=message):
        huffman.check_code_lengths(np.array(lengths, dtype=np.uint8), "t")


@pytest.mark.parametrize("damage, message", [
    (lambda s, n: (s[:-1], n), "need 2 bytes"),                       # truncated
    (lambda s, n: (s, n - 1), "left after|need"),                    # a count that stops inside the stream
    (lambda s, n: (np.array([s[0], s[1] | 1], np.uint8), n), "padding"),
])
def test_damaged_streams_are_refused(damage, message):
    lengths = np.array([1, 2, 3, 3], np.uint8)
    stream, nbits = huffman.encode([2, 0, 3, 1], lengths)
    s, n = damage(stream, nbits)
    with pytest.raises(ValueError, match=message):
        huffman.decode(s, n, lengths, 4)


def test_a_stream_that_ends_inside_a_code_is_refused():
    lengths = np.array([1, 2, 3, 3], np.uint8)
    stream, nbits = huffman.encode([3, 3, 3], lengths)              # 111 111 111
    with pytest.raises(ValueError, match="ends inside symbol 4"):
        huffman.decode(stream, nbits, lengths, 4)


def test_a_table_longer_than_the_alphabet_is_refused():
    with pytest.raises(ValueError, match="only 4 symbols"):
        huffman.unpack_lengths(np.array([0x11, 0x22, 0x33], np.uint8), 4)
    with pytest.raises(ValueError, match="past the last"):
        huffman.unpack_lengths(np.array([0x11, 0x23], np.uint8), 3)


def test_decoding_takes_a_few_bytes_per_symbol():
    """A hostile file may declare millions of one-bit codes (a few kB once deflated): decoding them holds about
    two bytes per symbol, not a Python list of every bit and int64 symbols (17 bytes each)."""
    import tracemalloc
    count = 1 << 16                                   # the bit walk is slow under tracemalloc
    tracemalloc.start()
    try:
        out = huffman.decode(np.zeros(count // 8, np.uint8), count, [1], count)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(out) == count and not out.any()
    assert peak < 4 * count, f"{peak / count:.1f} bytes per symbol"
