"""The Deep Compression model file: pruned, shared and Huffman-coded weights that really are small.

A masked model saves at its dense size (``pruned_90.npz`` keeps every zero).  This file stores what Han, Mao &
Dally (ICLR 2016, "Deep Compression") store: for each Conv2d and Linear weight, the layer's codebook of shared
values, each surviving weight's codebook index and the survivors' relative positions, both Huffman-coded
(Huffman, 1952).  It is an ``.npz`` archive (read without pickle, member by member through ``ece662.safezip``)
holding:

* ``__ece662_format__`` = ``"ece662-deep-compression-v1"`` and ``__ece662_spec__``, the architecture, as in
  ece662's ``.npz`` models;
* for every Conv2d and Linear layer's weight ``<key>`` (``conv1.weight``):

  ===========================  ===============  ==============================================================
  ``<key>.codebook``           float32 (K,)     the shared values, K <= 256, sorted
  ``<key>.code_lengths``       uint8            canonical Huffman code length of each codebook index, two per byte
  ``<key>.codes``              uint8 (bytes)    the surviving weights' indices, Huffman-coded, in C order
  ``<key>.counts``             uint32 (5,)      survivors, bits in ``.codes``, position symbols, bits in
                                                ``.positions``, b: bits per relative index (0: not pruned)
  ``<key>.position_lengths``   uint8            code lengths of the b-bit relative indices, two per byte
                                                (pruned layers only; the symbols after the last used left out)
  ``<key>.positions``          uint8 (bytes)    the relative indices, Huffman-coded (pruned layers only)
  ===========================  ===============  ==============================================================

  A layer without ``.positions`` is not pruned: its every weight is coded, in C order.  A layer with them
  comes back pruned, its mask being the positions (:mod:`ece662.compress.sparse_index`).
* every other state-dict entry (biases, batch-norm statistics) as an ordinary array.

The codebook is read off the weights themselves (their distinct float32 bit patterns), so any model whose
layers hold at most 256 distinct values saves, and loads back bit for bit: share the weights first
(:func:`ece662.compress.share_weights`).  ``ece662.save_model(model, path, compress=True)`` calls
:func:`save_compressed`; ``ece662.load_model(path)`` recognises the file by its format member and calls
:func:`load_compressed`.

The file is untrusted input (``SECURITY.md``): the archive is read as an ece662 ``.npz`` (bounded members, no
pickle, a checked spec), then every count is bounded by the architecture (survivors and position symbols at
most the weight's size, stream lengths at most 15 bits per symbol and exactly the bytes they need), every code
table must be a complete prefix code (:func:`ece662.compress.huffman.check_code_lengths`), and every decoded
index and position must lie in range, before the weights are made.
"""
import io
import json
import os

import numpy as np

from ece662.compress import huffman
from ece662.compress.sparse_index import positions_from_relative, relative_indices
from ece662.formats.common import (atomic_write, check_finite_weights, effective, load_with_masks)
from ece662.formats.npz_format import FORMAT_KEY, SPEC_KEY, parse_spec, read_npz_arrays
from ece662.layers import Conv2d, Linear, Sequential, from_spec
from ece662.layers.plan import check_finite_computation
from ece662.pruning.methods import prunable
from ece662.safezip import ZipReader

FORMAT = "ece662-deep-compression-v1"
MAX_CODEBOOK = 256            # 8-bit indices at most
# bits per relative index, by layer type: the paper's 8 for conv layers and 5 for fully connected ones
INDEX_BITS = {Conv2d: 8, Linear: 5}
MEMBERS = ("codebook", "code_lengths", "codes", "counts", "position_lengths", "positions")


def encode_weight(weight, mask, index_bits):
    """The arrays that store one weight tensor (see the module docstring).

    Parameters
    ----------
    weight : ndarray of float32, any shape
        The effective weight (``weight_orig * weight_mask`` for a pruned one).
    mask : ndarray of bool, weight's shape, or None
        The surviving weights, or None for a layer that is not pruned.
    index_bits : int in 1..8
        Bits per relative index (before Huffman coding: the fixed width sets the filler's reach).

    Returns
    -------
    dict
        ``{member suffix: array}``, suffixes from :data:`MEMBERS`.

    Raises
    ------
    ValueError
        More than 256 distinct surviving values, or no survivor at all.
    """
    values = np.ascontiguousarray(weight[mask] if mask is not None else weight.ravel(), dtype=np.float32)
    if values.size == 0:
        raise ValueError("every weight is pruned: nothing to store (remove such a layer, or prune less)")
    # the codebook holds distinct bit patterns, so -0.0 and 0.0 both come back as they were
    patterns, inverse = np.unique(values.view(np.uint32), return_inverse=True)
    if len(patterns) > MAX_CODEBOOK:
        raise ValueError(f"it holds {len(patterns):,} distinct values; a compressed file stores at most "
                         f"{MAX_CODEBOOK} shared values per layer: share the weights first, "
                         f"ece662.compress.share_weights(model, bits=4)")
    codebook = patterns.view(np.float32)
    order = np.argsort(codebook, kind="stable")            # the codebook sorted by value, for a reader
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(len(order))
    index = rank[inverse.ravel()]
    lengths = huffman.code_lengths(np.bincount(index, minlength=len(codebook)))
    codes, code_bits = huffman.encode(index, lengths)
    out = {"codebook": codebook[order], "code_lengths": huffman.pack_lengths(lengths), "codes": codes}
    symbols, position_bits = [], 0
    if mask is not None:
        symbols = relative_indices(mask, index_bits)
        position_lengths = huffman.code_lengths(np.bincount(symbols, minlength=2 ** index_bits))
        out["position_lengths"] = huffman.pack_lengths(position_lengths)
        out["positions"], position_bits = huffman.encode(symbols, position_lengths)
    out["counts"] = np.array([len(values), code_bits, len(symbols), position_bits,
                              0 if mask is None else index_bits], dtype=np.uint32)
    return out


def decode_weight(members, shape, where):
    """The weight and its mask (None when not pruned) from the arrays :func:`encode_weight` made.

    Every count is checked against ``shape`` (the architecture's) before anything is decoded.

    Raises
    ------
    ValueError
        A member of the wrong dtype or shape, counts beyond the architecture, bad code tables, streams of
        the wrong length, or codes that decode to out-of-range positions; the message names ``where``.
    """
    size = int(np.prod(shape))
    codebook = _member(members, "codebook", np.float32, where)
    K = len(codebook)
    if not 1 <= K <= MAX_CODEBOOK:
        raise ValueError(f"{where}: the codebook holds {K} values; expected 1..{MAX_CODEBOOK}")
    if not np.isfinite(codebook).all():
        raise ValueError(f"{where}: the codebook holds NaN or infinite values; the model cannot be evaluated")
    lengths = huffman.unpack_lengths(_member(members, "code_lengths", np.uint8, where), K, where + " code lengths")
    codes = _member(members, "codes", np.uint8, where)
    counts = _member(members, "counts", np.uint32, where, length=5)
    n, code_bits, n_symbols, position_bits, bits = (int(c) for c in counts)
    if n > size:
        raise ValueError(f"{where}: {n:,} surviving weights declared, but the layer has {size:,}")
    pruned = "positions" in members or "position_lengths" in members
    if pruned:
        if not 1 <= bits <= 8:
            raise ValueError(f"{where}: {bits} bits per relative index; expected 1..8")
        position_lengths = huffman.unpack_lengths(_member(members, "position_lengths", np.uint8, where),
                                                  2 ** bits, where + " position code lengths")
        positions = _member(members, "positions", np.uint8, where)
        if n_symbols > size:                 # each symbol moves at least one position
            raise ValueError(f"{where}: {n_symbols:,} position symbols declared, more than the layer's {size:,} "
                             f"weights can need")
        _check_stream(position_bits, n_symbols, positions, where + " positions")
        huffman.check_code_lengths(position_lengths, where + " position code lengths")
        symbols = huffman.decode(positions, position_bits, position_lengths, n_symbols, where + " positions")
        mask = positions_from_relative(symbols, bits, size, where + " positions").reshape(shape)
        if int(mask.sum()) != n:
            raise ValueError(f"{where}: the positions hold {int(mask.sum()):,} weights, the counts say {n:,}")
    else:
        if n != size or n_symbols or position_bits or bits:
            raise ValueError(f"{where}: a layer without positions stores all its {size:,} weights, but the "
                             f"counts say {n:,} weights and {n_symbols:,} position symbols")
        mask = None
    _check_stream(code_bits, n, codes, where + " codes")
    huffman.check_code_lengths(lengths, where + " code lengths")
    index = huffman.decode(codes, code_bits, lengths, n, where + " codes")
    weight = np.zeros(shape, dtype=np.float32)
    if mask is None:
        weight[...] = codebook[index].reshape(shape)
    else:
        weight[mask] = codebook[index]
    return weight, mask


def _member(members, suffix, dtype, where, length=None):
    if suffix not in members:
        raise ValueError(f"{where}: the member {suffix!r} is missing; the file is not a complete "
                         f"Deep Compression file")
    a = members[suffix]
    if a.dtype != dtype or a.ndim != 1 or (length is not None and len(a) != length):
        want = f"({length},)" if length is not None else "(n,)"
        raise ValueError(f"{where}.{suffix}: expected {np.dtype(dtype)} of shape {want}, got {a.dtype} of "
                         f"shape {a.shape}; the file is damaged or crafted")
    return a


def _check_stream(nbits, count, stream, where):
    """A stream of ``count`` symbols holds 1..``MAX_CODE_LENGTH`` (15) bits each, and exactly the bytes its bits need."""
    if nbits > count * huffman.MAX_CODE_LENGTH or nbits < count:
        raise ValueError(f"{where}: {nbits:,} bits for {count:,} symbols; each takes 1..{huffman.MAX_CODE_LENGTH}")
    if len(stream) != -(-nbits // 8):
        raise ValueError(f"{where}: {nbits:,} bits need {-(-nbits // 8):,} bytes, the stream has {len(stream):,}")


def compressed_arrays(model, index_bits=None):
    """Every array the file stores, ``{member name: array}`` (format and spec aside).

    Parameters
    ----------
    model : Sequential
    index_bits : dict, optional
        ``{layer name: bits}`` for the relative indices; default 8 for Conv2d, 5 for Linear (the paper's).
    """
    if not isinstance(model, Sequential):
        raise TypeError(f"save_compressed: expected an ece662 Sequential model, got {type(model).__name__}")
    check_finite_weights(model.state_dict(), "save_compressed")
    layers = prunable(model, (Conv2d, Linear))
    index_bits = _check_index_bits(index_bits or {}, [name for name, _ in layers])
    arrays, coded = {}, set()
    for name, m in layers:
        key = f"{name}.weight"
        mask = m._buffers.get("weight_mask")
        bits = index_bits.get(name, INDEX_BITS[type(m)])
        try:
            members = encode_weight(effective(m, "weight"), None if mask is None else mask.astype(bool), bits)
        except ValueError as e:
            raise ValueError(f"save_compressed: {key}: {e}") from None
        arrays.update({f"{key}.{suffix}": a for suffix, a in members.items()})
        coded |= {key, key + "_orig", key + "_mask"}
    arrays.update({k: v for k, v in model.state_dict().items() if k not in coded})
    return arrays


def _check_index_bits(index_bits, names):
    """``index_bits`` if it is a ``{layer name: width}`` dict of Conv2d/Linear names and widths the reader takes."""
    if not isinstance(index_bits, dict):
        raise TypeError(f"save_compressed: expected a dict of relative-index widths per layer, such as "
                        f"{{'conv1': 8, 'fc': 5}}, got {index_bits!r}")
    for name, bits in index_bits.items():
        if name not in names:
            raise ValueError(f"save_compressed: index_bits names {name!r}, not a Conv2d or Linear layer of the "
                             f"model; its are {names}")
        if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)) or not 1 <= bits <= 8:
            raise ValueError(f"save_compressed: index_bits[{name!r}] = {bits!r}; a file stores relative indices "
                             f"of 1..8 bits (the paper: 8 for conv, 5 for fc layers)")
    return index_bits


def save_compressed(model, path, index_bits=None):
    """Write ``model`` as a Deep Compression file (see the module docstring), atomically.

    Parameters
    ----------
    model : Sequential
        Every Conv2d and Linear layer must hold at most 256 distinct surviving values
        (:func:`ece662.compress.share_weights`); the masks are kept.
    path : str or os.PathLike
        Used as given; ``load_model(path)`` reads it back.
    index_bits : dict, optional
        ``{layer name: bits}`` of the relative indices (default: 8 for conv, 5 for linear layers).

    Returns
    -------
    int
        The payload: bytes of all the stored arrays, format and architecture strings aside.

    Raises
    ------
    ValueError
        A layer with more than 256 distinct surviving values, or none; ``index_bits`` naming no Conv2d or Linear
        layer, or a width outside 1..8 (the reader takes no other).  Nothing is written then.

    Examples
    --------
    >>> import os, tempfile
    >>> from ece662.compress import share_weights
    >>> from ece662.io import load_model
    >>> from ece662.models import named_model_path
    >>> net = load_model("pruned-90")
    >>> _ = share_weights(net, bits=4)
    >>> path = os.path.join(tempfile.mkdtemp(), "pruned-90-4bit.npz")
    >>> payload = save_compressed(net, path)
    >>> payload < 3000, os.path.getsize(named_model_path("pruned-90")) > 90_000
    (True, True)
    >>> back = load_model(path)
    >>> all((back.state_dict()[k] == v).all() for k, v in net.state_dict().items())
    True
    """
    arrays = compressed_arrays(model, index_bits)
    strings = {FORMAT_KEY: np.array(FORMAT), SPEC_KEY: np.array(json.dumps(model.spec()))}
    with atomic_write(path, "save_compressed") as f:
        np.savez_compressed(f, **strings, **arrays)
    return payload_bytes(arrays)


def payload_bytes(arrays):
    """Bytes of the stored numbers: every array's ``nbytes`` (what the paper counts; no headers)."""
    return int(sum(a.nbytes for k, a in arrays.items() if k not in (FORMAT_KEY, SPEC_KEY)))


def load_compressed(path):
    """Read a file written by :func:`save_compressed`: the model, its weights exactly as saved, and its masks.

    Raises
    ------
    FileNotFoundError
        No file at ``path``.
    ValueError
        Not a Deep Compression file, or a damaged or crafted one (see the module docstring); the message
        names the file and the layer.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"load_model: no file at {path}")
    arrays = read_npz_arrays(path)
    fmt = arrays.pop(FORMAT_KEY, None)
    if fmt is None or fmt.dtype.kind != "U" or fmt.shape != () or str(fmt) != FORMAT:
        raise ValueError(f"{path}: not a Deep Compression file (its format is "
                         f"{'missing' if fmt is None else repr(str(fmt)[:40])}, expected {FORMAT!r})")
    if SPEC_KEY not in arrays:
        raise ValueError(f"{path}: the architecture ({SPEC_KEY}) is missing; the file is not complete")
    model = from_spec(parse_spec(arrays.pop(SPEC_KEY), path))
    state = {}
    for name, m in prunable(model, (Conv2d, Linear)):
        key = f"{name}.weight"
        members = {s: arrays.pop(f"{key}.{s}") for s in MEMBERS if f"{key}.{s}" in arrays}
        # one reading per file: a plain copy would silently replace what the coded members decode to
        plain = [k for k in (key, key + "_orig", key + "_mask") if k in arrays]
        if plain:
            raise ValueError(f"{path}: {plain} is stored as a plain array, but {key} is coded (its codebook, "
                             f"codes and positions); the file is damaged or crafted")
        weight, mask = decode_weight(members, m._parameters["weight"].shape, f"{path}: {key}")
        if mask is None:
            state[key] = weight
        else:
            state[key + "_orig"], state[key + "_mask"] = weight, mask
    stray = [k for k in arrays if k.rpartition(".")[2] in MEMBERS]
    if stray:
        raise ValueError(f"{path}: {stray[:3]} belong to no Conv2d or Linear layer of the architecture")
    state.update(arrays)
    with np.errstate(over="ignore"):            # float64 1e39 becomes inf in float32: refused just below
        load_with_masks(model, state, source=path)
    check_finite_weights(model.state_dict(), path)
    check_finite_computation(model, path)
    return model.eval()


def is_compressed_file(path):
    """True when ``path`` is a zip archive whose format member says Deep Compression (reads at most 4 kB of it).

    Anything else, including a damaged file, is False: the ordinary reader then gives its own message.
    """
    if not os.path.isfile(path):        # a FIFO would block, a device (/dev/zero) would be read without end
        return False
    try:
        with ZipReader(path) as z:
            if FORMAT_KEY + ".npy" not in z.namelist():
                return False
            raw = z.read(FORMAT_KEY + ".npy", max_bytes=4096)
        fmt = np.lib.format.read_array(io.BytesIO(raw), allow_pickle=False)
        return fmt.dtype.kind == "U" and fmt.shape == () and str(fmt) == FORMAT
    except Exception:
        return False
