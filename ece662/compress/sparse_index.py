"""Where the surviving weights of a pruned tensor are: relative indices, or a bitmask.

A pruned layer keeps a few weights in a sea of zeros.  Storing only the survivors needs their positions
too.  Han, Mao & Dally (ICLR 2016, "Deep Compression", section 2 and Fig. 2) store, for each survivor,
how far it is from the previous one, in a fixed number of bits (8 for conv layers, 5 for fully connected
ones), in the compressed-sparse-row spirit.  When a gap is longer than those bits can say, a *filler* is
inserted.  The alternative is a plain bitmask, one bit per position whatever the sparsity.

The tensor is read flat, in C order (``w.ravel()``).  With ``bits`` index bits the largest symbol
``M = 2**bits - 1`` is the filler; each symbol says:

* ``d < M``: skip ``d`` zeros, then comes a surviving weight;
* ``M``: skip ``M`` positions, no weight (a filler).

This differs from the paper in one detail: the paper's filler is a stored zero weight, which needs a
value (or, after weight sharing, a codebook entry meaning zero); here the filler symbol itself says "no
weight", so the values are exactly the survivors.  Every symbol moves forward at least one position, so a
tensor of ``size`` positions never needs more than ``size`` symbols: a reader can bound its work by the
architecture before decoding.

This file imports nothing of ece662: read it alone.

Examples
--------
>>> import numpy as np
>>> mask = np.array([0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1], bool)
>>> gaps = relative_indices(mask, bits=3)      # M = 7: 8 zeros between the survivors need a filler
>>> gaps.tolist()
[1, 7, 1, 0]
>>> np.flatnonzero(positions_from_relative(gaps, bits=3, size=12)).tolist()
[1, 10, 11]
"""
import numpy as np


def relative_indices(mask, bits):
    """The relative-index symbols of the ``True`` positions of ``mask`` (flattened in C order).

    Parameters
    ----------
    mask : ndarray of bool, any shape
    bits : int in 1..16
        Bits per index; the symbol ``2**bits - 1`` is the filler.

    Returns
    -------
    ndarray of int64, (entries,)
        ``entries`` = survivors + fillers.

    Raises
    ------
    ValueError
        ``bits`` outside 1..16.
    """
    filler = _filler(bits)
    survivors = np.flatnonzero(np.asarray(mask).ravel())
    gaps = np.diff(survivors, prepend=-1) - 1           # zeros before each survivor
    symbols = []
    for gap in gaps.tolist():                           # one survivor at a time
        symbols += [filler] * (gap // filler)           # each filler skips `filler` zeros
        symbols.append(gap % filler)
    return np.array(symbols, dtype=np.int64)


def positions_from_relative(symbols, bits, size, where="relative indices"):
    """The boolean mask (flat, ``size`` long) that relative-index ``symbols`` describe.

    Raises
    ------
    ValueError
        A symbol outside 0..2**bits - 1, a position past ``size``, or a stream that ends with a filler
        (the encoder never writes one: it would describe no weight).
    """
    filler = _filler(bits)
    symbols = np.asarray(symbols)
    if len(symbols) and (symbols.min() < 0 or symbols.max() > filler):
        raise ValueError(f"{where}: symbols must lie in 0..{filler} for {bits}-bit indices, got "
                         f"{int(symbols.min())}..{int(symbols.max())}")
    if len(symbols) and symbols[-1] == filler:
        raise ValueError(f"{where}: the positions end with a filler, which describes no weight; the stream is "
                         f"damaged or crafted")
    # a filler moves `filler` positions, a survivor d + 1; the survivors sit at the running sum minus one.
    # One int64 array, updated in place: a hostile file may declare as many symbols as the layer has weights.
    ends = symbols.astype(np.int64)
    ends += 1
    ends[symbols == filler] = filler
    np.cumsum(ends, out=ends)
    ends -= 1
    if len(ends) and ends[-1] >= size:           # the last symbol is a survivor, the furthest position
        raise ValueError(f"{where}: a weight at position {int(ends[-1]):,}, but the tensor has {size:,} "
                         f"positions")
    mask = np.zeros(size, dtype=bool)
    mask[ends] = symbols != filler               # every end is a different position; a filler's stays False
    return mask


def relative_index_bytes(mask, bits, value_bits):
    """Bytes of the paper's sparse storage: every entry (survivor or filler) holds a ``bits``-bit index, every
    survivor a ``value_bits``-bit value (32 for float32, the shared-weight index width after sharing).
    Rounded up to whole bytes."""
    survivors = int(np.count_nonzero(mask))
    entries = len(relative_indices(mask, bits))
    return -(-(entries * bits + survivors * value_bits) // 8)


def bitmask_bytes(mask, value_bits):
    """Bytes of the plain alternative: one bit per position, and a ``value_bits``-bit value per survivor."""
    mask = np.asarray(mask)
    return -(-(mask.size + int(np.count_nonzero(mask)) * value_bits) // 8)


def _filler(bits):
    if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)) or not 1 <= bits <= 16:
        raise ValueError(f"relative indices: expected 1..16 bits per index (the paper uses 8 for conv layers, "
                         f"5 for fully connected ones), got {bits!r}")
    return 2 ** int(bits) - 1
