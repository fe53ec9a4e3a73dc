"""Huffman coding with canonical codes: the third stage of Deep Compression.

Huffman (1952), "A method for the construction of minimum-redundancy codes": frequent symbols get short
codes, rare ones long codes, and no code is the start of another, so a bit stream decodes without
separators.  Han, Mao & Dally (ICLR 2016, "Deep Compression", section 4) Huffman-code the shared-weight
indices and the relative positions of each layer, saving another 20-30% after pruning and sharing.

*Canonical* codes (as in DEFLATE, RFC 1951, 3.2.2) are fixed by the code *lengths* alone: the symbols are
sorted by (length, symbol) and numbered upwards.  So a file stores one small integer per symbol (its
length; 0 for a symbol that never occurs), never the tree.  A reader must not trust those lengths:
:func:`check_code_lengths` refuses lengths that no prefix code has (Kraft's inequality) before anything is
decoded.  The decoder walks the stream one bit at a time, as Mark Adler's ``puff.c`` does (zlib's
readable reference inflater).

This file imports nothing of ece662: read it alone.

Examples
--------
>>> import numpy as np
>>> symbols = np.array([0, 0, 0, 0, 1, 1, 2, 3])
>>> lengths = code_lengths(np.bincount(symbols, minlength=4))
>>> lengths.tolist()                    # the frequent 0 gets one bit
[1, 2, 3, 3]
>>> [format(c, f"0{n}b") for c, n in zip(canonical_codes(lengths), lengths)]
['0', '10', '110', '111']
>>> stream, nbits = encode(symbols, lengths)
>>> nbits, decode(stream, nbits, lengths, count=8).tolist()
(14, [0, 0, 0, 0, 1, 1, 2, 3])
"""
import heapq

import numpy as np

# the longest code this module writes or reads: DEFLATE's limit, so that a length fits in 4 bits and a table
# stores two per byte (:func:`pack_lengths`).  Counts that would need longer codes (Fibonacci-like ratios over
# thousands) are flattened by code_lengths until they fit.
MAX_CODE_LENGTH = 15


def code_lengths(counts, max_length=MAX_CODE_LENGTH):
    """The Huffman code length of every symbol, from how often each occurs.

    Parameters
    ----------
    counts : array of int, (S,)
        ``counts[s]`` occurrences of symbol ``s``; a symbol that never occurs gets length 0 (no code).
    max_length : int
        No code is longer.  When the optimal code would be, the counts are halved (rounding up, so no
        symbol drops out) and the code rebuilt, until it fits: slightly longer streams, never a failure.

    Returns
    -------
    ndarray of uint8, (S,)
        One symbol alone gets length 1 (a code needs at least one bit).

    Examples
    --------
    >>> code_lengths([5, 0, 1, 1]).tolist()
    [1, 0, 2, 2]
    """
    counts = np.asarray(counts, dtype=np.int64)
    if counts.ndim != 1 or (counts < 0).any():
        raise ValueError(f"code_lengths: expected counts of shape (S,) >= 0, got shape {counts.shape}")
    lengths = np.zeros(len(counts), dtype=np.uint8)
    used = np.flatnonzero(counts)
    if len(used) == 1:
        lengths[used] = 1
    if len(used) <= 1:
        return lengths
    if len(used) > 2 ** max_length:
        raise ValueError(f"code_lengths: {len(used)} symbols cannot all have codes of at most {max_length} bits")
    while True:
        depth = _huffman_depths(counts[used])
        if depth.max() <= max_length:
            lengths[used] = depth
            return lengths
        counts = (counts + 1) // 2            # flatter counts, shallower tree


def _huffman_depths(weights):
    """Huffman's algorithm: merge the two lightest subtrees until one is left; each symbol's depth.

    Ties are broken by the order in which subtrees were made (a counter in the heap entries), so the
    lengths depend only on the counts, on every machine.
    """
    heap = [(int(w), i, [i]) for i, w in enumerate(weights)]      # (weight, tie-breaker, symbols inside)
    heapq.heapify(heap)
    depth = np.zeros(len(weights), dtype=np.int64)
    order = len(weights)
    while len(heap) > 1:
        w1, _, a = heapq.heappop(heap)
        w2, _, b = heapq.heappop(heap)
        depth[a + b] += 1                    # every symbol under the new node is one bit deeper
        heapq.heappush(heap, (w1 + w2, order, a + b))
        order += 1
    return depth


def check_code_lengths(lengths, where="code lengths"):
    """Refuse code lengths that are not those of a complete prefix code.

    A set of lengths ``l_s`` belongs to a prefix code exactly when Kraft's inequality holds,
    ``sum 2^-l_s <= 1``; Huffman codes are *complete* (the sum is exactly 1), except a single symbol,
    which has the one-bit code ``0``.  Lengths must lie in 0..``MAX_CODE_LENGTH`` (0: the symbol has no code).

    Parameters
    ----------
    lengths : ndarray of uint8, (S,)
    where : str
        Names the table in the message (a file and a layer).

    Raises
    ------
    ValueError
        Lengths over the maximum, no symbol with a code, an over-full code (some stream would decode
        two ways) or an incomplete one (some bit strings decode to nothing).
    """
    lengths = np.asarray(lengths)
    if lengths.ndim != 1 or lengths.dtype.kind not in "iu":
        raise ValueError(f"{where}: expected one integer code length per symbol, got {lengths.dtype} "
                         f"of shape {lengths.shape}")
    if len(lengths) and (lengths.min() < 0 or lengths.max() > MAX_CODE_LENGTH):
        raise ValueError(f"{where}: code lengths must lie in 0..{MAX_CODE_LENGTH}, got "
                         f"{int(lengths.min())}..{int(lengths.max())}; the file is damaged or crafted")
    used = lengths[lengths > 0].astype(np.int64)
    if len(used) == 0:
        raise ValueError(f"{where}: no symbol has a code (every length is 0), so nothing can be decoded")
    # Kraft's sum in whole units of 2^-MAX_CODE_LENGTH: exact integer arithmetic, no rounding
    kraft = int(np.sum(np.int64(1) << (MAX_CODE_LENGTH - used)))
    complete = 1 << MAX_CODE_LENGTH
    if len(used) == 1 and used[0] == 1:
        return
    if kraft != complete:
        kind = "over-full (Kraft's sum above 1: two symbols share codes)" if kraft > complete else \
               "incomplete (Kraft's sum below 1: some codes mean nothing)"
        raise ValueError(f"{where}: the code lengths are {kind}; a Huffman code's lengths satisfy "
                         f"sum 2^-length = 1 exactly. The file is damaged or crafted")


def pack_lengths(lengths):
    """Code lengths (each 0..15) two per byte, the first in the high half; trailing zeros (symbols after the
    last one used) are left out.

    Examples
    --------
    >>> pack_lengths([1, 2, 3, 3, 0, 0]).tolist()        # 0x12, 0x33
    [18, 51]
    """
    lengths = np.asarray(lengths, dtype=np.uint8)
    used = np.flatnonzero(lengths)
    lengths = lengths[:used[-1] + 1] if len(used) else lengths[:0]
    if len(lengths) % 2:
        lengths = np.append(lengths, 0)
    return ((lengths[0::2] << 4) | lengths[1::2]).astype(np.uint8)


def unpack_lengths(packed, symbols, where="code lengths"):
    """The ``symbols`` code lengths that :func:`pack_lengths` packed (symbols past the table's end: 0).

    Raises
    ------
    ValueError
        A table with more entries than ``symbols`` could need.
    """
    packed = np.asarray(packed, dtype=np.uint8)
    if 2 * len(packed) > symbols + 1:
        raise ValueError(f"{where}: {len(packed)} bytes hold {2 * len(packed)} code lengths, but there are "
                         f"only {symbols} symbols")
    lengths = np.zeros(symbols + 1, dtype=np.uint8)
    lengths[0:2 * len(packed):2] = packed >> 4
    lengths[1:2 * len(packed):2] = packed & 15
    if lengths[symbols]:
        raise ValueError(f"{where}: a code length for symbol {symbols}, past the last of {symbols} symbols")
    return lengths[:symbols]


def canonical_codes(lengths):
    """The canonical code of every symbol (an int whose low ``lengths[s]`` bits are the code, first bit highest).

    Symbols sorted by (length, symbol) get consecutive codes; at each longer length the code is shifted
    left by the difference (RFC 1951, 3.2.2).  A symbol of length 0 gets code 0 and is never written.

    Examples
    --------
    >>> canonical_codes([2, 1, 3, 3]).tolist()
    [2, 0, 6, 7]
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    codes = np.zeros(len(lengths), dtype=np.int64)
    code, previous = 0, 0
    for s in sorted(np.flatnonzero(lengths), key=lambda s: (lengths[s], s)):   # shortest codes first
        code <<= int(lengths[s]) - previous
        codes[s] = code
        code, previous = code + 1, int(lengths[s])
    return codes


def encode(symbols, lengths):
    """The symbols' canonical codes, one after another, packed into bytes (first bit = highest bit).

    Parameters
    ----------
    symbols : array of int, (n,)
        Each must have a code (``lengths[s] > 0``).
    lengths : array of int, (S,)
        From :func:`code_lengths`.

    Returns
    -------
    stream : ndarray of uint8, (ceil(nbits / 8),)
        The last byte is padded with zero bits.
    nbits : int
        How many bits of ``stream`` are codes.
    """
    symbols = np.asarray(symbols, dtype=np.int64)
    lengths = np.asarray(lengths, dtype=np.int64)
    if len(symbols) and (symbols.min() < 0 or symbols.max() >= len(lengths) or (lengths[symbols] == 0).any()):
        raise ValueError("encode: a symbol has no code; build the lengths from the counts of these symbols")
    codes, sizes = canonical_codes(lengths)[symbols], lengths[symbols]
    starts = np.concatenate([[0], np.cumsum(sizes)])          # where each symbol's code begins in the stream
    nbits = int(starts[-1])
    bits = np.zeros(nbits, dtype=np.uint8)
    for j in range(int(sizes.max()) if len(sizes) else 0):     # bit j of every code at least j + 1 long
        has = sizes > j
        bits[starts[:-1][has] + j] = (codes[has] >> (sizes[has] - 1 - j)) & 1
    return np.packbits(bits), nbits


def decode(stream, nbits, lengths, count, where="stream"):
    """``count`` symbols read from the first ``nbits`` bits of ``stream``; the inverse of :func:`encode`.

    The lengths must have passed :func:`check_code_lengths`.  The walk follows ``puff.c``: read a bit,
    and at each length ask whether the code read so far is among that length's canonical codes.

    Returns
    -------
    ndarray of the smallest unsigned integer type that holds every symbol (uint8 for up to 256), (count,)

    Raises
    ------
    ValueError
        The stream ends inside a code, holds bits that are no code, or has bits left after ``count``
        symbols, or its padding bits are not zero: a damaged or crafted stream.
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    per_length = np.bincount(lengths, minlength=MAX_CODE_LENGTH + 1)     # how many codes of each length
    per_length[0] = 0
    per_length = per_length.tolist()             # Python ints: read once per bit, faster than NumPy scalars
    in_order = sorted(np.flatnonzero(lengths).tolist(), key=lambda s: (lengths[s], s))   # canonical order
    max_length = int(lengths.max())
    stream = np.asarray(stream, dtype=np.uint8)
    if len(stream) != -(-nbits // 8):
        raise ValueError(f"{where}: {nbits:,} bits need {-(-nbits // 8):,} bytes, the stream has {len(stream):,}")
    bits = np.unpackbits(stream)
    if bits[nbits:].any():
        raise ValueError(f"{where}: the padding after the last code is not zero bits; the stream is damaged")
    # one byte per bit, read as Python ints (a list would take 8 bytes per bit: a hostile file declares millions)
    bits = bits[:nbits].tobytes()
    out = np.zeros(count, dtype=np.min_scalar_type(len(lengths) - 1))   # the smallest type that holds every symbol
    pos = 0
    for i in range(count):                       # one symbol per pass
        code = first = index = 0                 # the code read so far; the first code and symbol of this length
        for length in range(1, max_length + 1):
            if pos >= nbits:
                raise ValueError(f"{where}: the stream ends inside symbol {i + 1:,} of {count:,}; it is truncated")
            code |= bits[pos]
            pos += 1
            n = per_length[length]
            if code - first < n:                 # one of the codes of this length
                out[i] = in_order[index + code - first]
                break
            index += n
            first = (first + n) << 1
            code <<= 1
        else:
            raise ValueError(f"{where}: bits at {pos:,} are no code of the table; the stream is damaged")
    if pos != nbits:
        raise ValueError(f"{where}: {nbits - pos:,} bits are left after {count:,} symbols; the stream or its "
                         f"count is damaged")
    return out
