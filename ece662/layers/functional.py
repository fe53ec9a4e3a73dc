"""Fast ops: thin wrappers that check, pad, allocate, and call a Numba kernel.

Every function here has the signature of its twin in
``ece662.layers.reference`` (read that one first: it is the spec) and returns
the same numbers to float32 tolerance.  The loops themselves live in
``ece662.layers.kernels``.

Shapes: ``x (N, C, H, W)``, ``w (F, C, HH, WW)``, ``b (F,)``,
``out (N, F, H', W')`` with ``H' = 1 + (H + 2*pad - HH) // stride``.
"""
import numba
import numpy as np

from ece662.layers import kernels, kernels_lab, kernels_tiles
from ece662.layers.checks import check_float32, check_nchw, check_same_shape
from ece662.layers.shapes import conv_output_size


def thread_count():
    return max(1, numba.get_num_threads())


def pad_image(x, pad):
    """Zero-pad H and W by ``pad`` on each side (a no-op copy-free view when pad == 0)."""
    if pad == 0:
        return x
    return np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))


def _alive(v, n, name, where):
    """An all-True vector when ``v`` is None, else ``v`` checked as a bool vector of length n."""
    if v is None:
        return np.ones(n, dtype=np.bool_)
    v = np.asarray(v)
    if v.dtype != np.bool_ or v.shape != (n,):
        raise ValueError(f"{where}: expected {name} to be a boolean vector of shape ({n},), "
                         f"got dtype {v.dtype} and shape {v.shape}")
    return np.ascontiguousarray(v)


def _pack_for_patches(w, alive_f, alive_c):
    """What the patch kernels (v3, v4) take: live / dead filter indices, live channel indices,
    and the live channels' weights flattened per filter in (c, kh, kw) order, zero-padded to a
    multiple of 16 floats (one AVX-512 register, so the dot products have no scalar tail)."""
    F, _, HH, WW = w.shape
    fidx = np.flatnonzero(alive_f).astype(np.int64)
    didx = np.flatnonzero(~alive_f).astype(np.int64)
    cidx = np.flatnonzero(alive_c).astype(np.int64)
    K = cidx.size * HH * WW
    wk = np.zeros((F, max(16, -(-K // 16) * 16)), dtype=np.float32)
    wk[:, :K] = w[:, cidx].reshape(F, K)
    return fidx, didx, cidx, wk


def check_conv_args(x, w, b, where):
    x = check_float32(x, "x", where)
    w = check_float32(w, "w", where)
    if w.ndim != 4:
        raise ValueError(f"{where}: expected w of shape (F, C, HH, WW), got {w.shape}")
    check_nchw(x, where, channels=w.shape[1])
    F = w.shape[0]
    if b is None:
        b = np.zeros(F, dtype=np.float32)
    b = check_float32(b, "b", where)
    if b.shape != (F,):
        raise ValueError(f"{where}: expected b of shape ({F},) for {F} filters, got {b.shape}")
    return x, w, b


# ============================================================================ conv
def pooled_conv_size(x, w, pad, where):
    """``(H', W')`` of the stride-1 conv that a fused 2x2 max pool follows; an output smaller than 2x2
    cannot be pooled and is refused here, once for every fused kernel."""
    H_out = conv_output_size(x.shape[2], w.shape[2], 1, pad)
    W_out = conv_output_size(x.shape[3], w.shape[3], 1, pad)
    if H_out < 2 or W_out < 2:
        raise ValueError(f"{where}: the conv output {H_out}x{W_out} is too small for 2x2 pooling; it needs "
                         f"at least 2x2: give a larger image, more padding or a smaller kernel")
    return H_out, W_out


def conv2d_forward_numba(x, w, b, stride=1, pad=0, alive_f=None, alive_c=None, version=3, relu=False):
    """Convolution forward; fast twin of ``reference.conv2d_forward_reference``.

    Parameters
    ----------
    x : ndarray, (N, C, H, W) float32
    w : ndarray, (F, C, HH, WW) float32
    b : ndarray, (F,) float32 or None
    stride, pad : int
    alive_f : ndarray of bool, (F,), optional
        Filters to compute; a dead filter's output plane is just its bias
        (exactly what the dense op gives when that filter's weights are zero).
    alive_c : ndarray of bool, (C,), optional
        Input channels to read; a dead channel must be all zeros in ``x`` or
        in ``w[:, c]`` for the result to equal the dense op's.
    version : {1, 2, 3}
        Which kernel of ``ece662.layers.kernels`` runs (see its docstring): 1 direct
        loops, 2 flattened rows (stride 1 only; other strides fall back to 1),
        3 register-tiled patches (the default, fastest).
    relu : bool
        Return ``max(conv, 0)``: a ReLU fused into the kernel's output loop (version 3 only),
        which saves a whole pass over the output.

    Returns
    -------
    out : ndarray, (N, F, H', W') float32

    Examples
    --------
    >>> x = np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4)
    >>> w = np.ones((1, 1, 2, 2), dtype=np.float32)
    >>> conv2d_forward_numba(x, w, None, stride=2)[0, 0]
    array([[10., 18.],
           [42., 50.]], dtype=float32)
    """
    where = "conv2d_forward"
    x, w, b = check_conv_args(x, w, b, where)
    N, C, H, W = x.shape
    F, _, HH, WW = w.shape
    H_out = conv_output_size(H, HH, stride, pad)
    W_out = conv_output_size(W, WW, stride, pad)
    alive_f = _alive(alive_f, F, "alive_f", where)
    alive_c = _alive(alive_c, C, "alive_c", where)
    xp = pad_image(x, pad)
    out = np.empty((N, F, H_out, W_out), dtype=np.float32)
    if relu and version != 3:
        raise ValueError(f"{where}: relu=True is only fused into kernel version 3")
    if version == 3:
        fidx, didx, cidx, wk = _pack_for_patches(w, alive_f, alive_c)
        Kp = wk.shape[1]
        scratch = np.empty((max(1, min(thread_count(), N)), H_out * W_out, Kp), dtype=np.float32)
        kernels.conv2d_forward_patches(xp, wk, b, fidx, didx, cidx, HH, WW, stride, relu, scratch, out)
        return out
    elif version == 2 and stride == 1:
        Hp, Wp = xp.shape[2], xp.shape[3]
        L = (H_out - 1) * Wp + W_out
        scratch = np.empty((thread_count(), L), dtype=np.float32)
        kernels_lab.conv2d_forward_rows(xp.reshape(N, C, Hp * Wp), Wp, w, b, alive_f, alive_c,
                                    scratch, out)
    else:
        kernels_lab.conv2d_forward_direct(xp, w, b, alive_f, alive_c, stride, out)
    return out


def sparse_taps(w, Hp, Wp):
    """The non-zero taps of ``w (F, C, HH, WW)`` per filter, for a padded input of Hp x Wp.

    Returns
    -------
    ptr : ndarray, (F+1,) int64     filter f's taps are ``ptr[f]:ptr[f+1]``
    tap_off : ndarray, (nnz,) uint32  offset c*Hp*Wp + kh*Wp + kw into the flattened image
    tap_w : ndarray, (nnz,) float32
    """
    F, C, HH, WW = w.shape
    f, c, kh, kw = np.nonzero(w)
    ptr = np.zeros(F + 1, dtype=np.int64)
    np.cumsum(np.bincount(f, minlength=F), out=ptr[1:])
    tap_off = (c * (Hp * Wp) + kh * Wp + kw).astype(np.uint32)
    return ptr, tap_off, w[f, c, kh, kw].astype(np.float32)


def conv2d_forward_sparse(x, w, b, stride=1, pad=0, taps=None):
    """Convolution that only multiplies by the non-zero weights (stride 1).

    Same signature and result as ``reference.conv2d_forward_reference``; work is
    proportional to the number of non-zero weights.  ``taps`` may carry a precomputed
    :func:`sparse_taps` of ``w`` (computed on each call; nothing caches it).

    Examples
    --------
    >>> x = np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4)
    >>> w = np.array([[[[0, 0], [0, 1]]]], dtype=np.float32)   # one non-zero tap
    >>> conv2d_forward_sparse(x, w, None)[0, 0]
    array([[ 5.,  6.,  7.],
           [ 9., 10., 11.],
           [13., 14., 15.]], dtype=float32)
    """
    where = "conv2d_forward_sparse"
    x, w, b = check_conv_args(x, w, b, where)
    if stride != 1:
        raise ValueError(f"{where}: only stride 1 is supported, got stride={stride}; "
                         f"use conv2d_forward_numba")
    N, C, H, W = x.shape
    F, _, HH, WW = w.shape
    H_out = conv_output_size(H, HH, 1, pad)
    W_out = conv_output_size(W, WW, 1, pad)
    xp = pad_image(x, pad)
    Hp, Wp = xp.shape[2], xp.shape[3]
    if C * Hp * Wp >= 2 ** 32:
        raise ValueError(f"{where}: images of {C}x{Hp}x{Wp} are too large for uint32 offsets")
    ptr, tap_off, tap_w = taps if taps is not None else sparse_taps(w, Hp, Wp)
    L = (H_out - 1) * Wp + W_out
    out = np.empty((N, F, H_out, W_out), dtype=np.float32)
    scratch = np.empty((max(1, min(thread_count(), N)), L), dtype=np.float32)
    kernels_lab.conv2d_forward_sparse_taps(np.ascontiguousarray(xp).reshape(N, C * Hp * Wp), Wp, ptr,
                                       tap_off, tap_w, b, scratch, out)
    return out


def conv2d_relu_maxpool2_numba(x, w, b, pad=0, alive_f=None, alive_c=None):
    """Conv (stride 1) + ReLU + 2x2 max pooling (stride 2) in one kernel (v4), for inference.

    Equals ``maxpool2d_forward_reference(relu_forward_reference(conv2d_forward_reference(
    x, w, b, 1, pad)), 2, 2)``; the full-size conv output is never stored.

    Returns
    -------
    out : ndarray, (N, F, H'//2, W'//2)

    Examples
    --------
    >>> x = np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4)
    >>> w = np.ones((1, 1, 1, 1), dtype=np.float32)
    >>> conv2d_relu_maxpool2_numba(x, w, np.array([-6.0], np.float32))[0, 0]
    array([[0., 1.],
           [7., 9.]], dtype=float32)
    """
    where = "conv2d_relu_maxpool2"
    x, w, b = check_conv_args(x, w, b, where)
    N, C, H, W = x.shape
    F, _, HH, WW = w.shape
    H_out, W_out = pooled_conv_size(x, w, pad, where)
    alive_f = _alive(alive_f, F, "alive_f", where)
    alive_c = _alive(alive_c, C, "alive_c", where)
    xp = pad_image(x, pad)
    fidx, didx, cidx, wk = _pack_for_patches(w, alive_f, alive_c)
    out = np.empty((N, F, H_out // 2, W_out // 2), dtype=np.float32)
    scratch = np.empty((max(1, min(thread_count(), N)), 2 * W_out, wk.shape[1]), dtype=np.float32)
    kernels_lab.conv2d_relu_pool2_patches(np.ascontiguousarray(xp), wk, b, fidx, didx, cidx, HH, WW, scratch, out)
    return out


def pack_filters_lanes(w, b):
    """The packing of kernel v5: ``wp (K, Fb, 16)`` with ``wp[k, fb, l] = w[16*fb + l]`` at tap
    k = (c, kh, kw), ``bp (Fb, 16)``, and a last block of up to 8 filters ``wt (K, 8)``, ``bt (8,)``
    for the half-width tile (unused, zero, when F % 16 is 0 or above 8).  Padding filters are zero."""
    F = w.shape[0]
    K = int(np.prod(w.shape[1:]))
    rest = F % 16
    Fb = F // 16 + (1 if rest > 8 else 0)            # 16-wide blocks; 1..8 leftovers go to the tail
    F16 = min(F, 16 * Fb)
    wk = w.reshape(F, K)
    wp = np.zeros((K, Fb * 16), dtype=np.float32)
    wp[:, :F16] = wk[:F16].T
    bp = np.zeros(Fb * 16, dtype=np.float32)
    bp[:F16] = b[:F16]
    wt = np.zeros((K, 8), dtype=np.float32)
    bt = np.zeros(8, dtype=np.float32)
    wt[:, :F - F16] = wk[F16:].T
    bt[:F - F16] = b[F16:]
    return wp.reshape(K, Fb, 16), bp.reshape(Fb, 16), wt, bt


def conv2d_relu_maxpool2_tiled(x, w, b, pad=0, alive_f=None):
    """Conv (stride 1) + ReLU + 2x2 max pooling, kernel v5 (output channels as vector lanes).

    Same signature and result as :func:`conv2d_relu_maxpool2_numba`; dead filters (``alive_f``
    False) are left out of the packing and get ``relu(bias)`` planes.

    Examples
    --------
    >>> x = np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4)
    >>> w = np.ones((1, 1, 1, 1), dtype=np.float32)
    >>> conv2d_relu_maxpool2_tiled(x, w, np.array([-6.0], np.float32))[0, 0]
    array([[0., 1.],
           [7., 9.]], dtype=float32)
    """
    where = "conv2d_relu_maxpool2_tiled"
    x, w, b = check_conv_args(x, w, b, where)
    N, C, H, W = x.shape
    F, _, HH, WW = w.shape
    H_out, W_out = pooled_conv_size(x, w, pad, where)
    alive_f = _alive(alive_f, F, "alive_f", where)
    out = np.empty((N, F, H_out // 2, W_out // 2), dtype=np.float32)
    if F == 0:
        return out
    if not alive_f.all():
        out[:, ~alive_f] = np.maximum(b[~alive_f], 0)[None, :, None, None]
        if not alive_f.any():
            return out
        w, b = w[alive_f], b[alive_f]
        sub = conv2d_relu_maxpool2_tiled(x, w, b, pad)
        out[:, alive_f] = sub
        return out
    wp, bp, wt, bt = pack_filters_lanes(w, b)
    xp = np.ascontiguousarray(pad_image(x, pad))
    T = max(1, min(thread_count(), N))
    scratch = np.empty((T, 2 * W_out, C * HH * WW), dtype=np.float32)
    tmp = np.empty((T, 16), dtype=np.float32)
    with slp_vectorizer():
        kernels_lab.conv2d_relu_pool2_tiled(xp, wp, bp, wt, bt, HH, WW, F, scratch, tmp, out)
    return out


def tap_offsets(C, HH, WW, Hp, Wp):
    """``(K,)`` uint64: where tap k = (c, kh, kw) of output position (0, 0) sits in a flattened
    padded image (C, Hp, Wp), ``c*Hp*Wp + kh*Wp + kw``; position (i, j) adds ``i*Wp + j``.
    Unsigned, so numba indexes with them without checking for negative indices."""
    c, kh, kw = np.meshgrid(np.arange(C), np.arange(HH), np.arange(WW), indexing="ij")
    return (c * (Hp * Wp) + kh * Wp + kw).reshape(-1).astype(np.uint64)


def conv2d_relu_maxpool2_lanes(x, w, b, pad=0, alive_f=None, packed=None):
    """Conv (stride 1) + ReLU + 2x2 max pooling, kernel v6: v5's tiles reading the image itself.

    Same signature and result as :func:`conv2d_relu_maxpool2_tiled`; no patch matrix is built
    (the taps are offsets into the flattened padded image), and the last 1-8 filters run in a
    tile of 8 positions x 8 filters.  ``packed`` may carry :func:`pack_filters_lanes` of the
    live filters (a plan packs once).

    Examples
    --------
    >>> x = np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4)
    >>> w = np.ones((1, 1, 1, 1), dtype=np.float32)
    >>> conv2d_relu_maxpool2_lanes(x, w, np.array([-6.0], np.float32))[0, 0]
    array([[0., 1.],
           [7., 9.]], dtype=float32)
    """
    where = "conv2d_relu_maxpool2_lanes"
    x, w, b = check_conv_args(x, w, b, where)
    N, C, H, W = x.shape
    F, _, HH, WW = w.shape
    H_out, W_out = pooled_conv_size(x, w, pad, where)
    alive_f = _alive(alive_f, F, "alive_f", where)
    Hq, Wq = H_out // 2, W_out // 2
    if not alive_f.all():
        out = np.empty((N, F, Hq, Wq), dtype=np.float32)
        out[:, ~alive_f] = np.maximum(b[~alive_f], 0)[None, :, None, None]
        if alive_f.any():
            out[:, alive_f] = conv2d_relu_maxpool2_lanes(x, w[alive_f], b[alive_f], pad)
        return out
    # the 8-wide tile covers two blocks: a single column of blocks gets a second, thrown away
    extra = 2 if Wq == 1 else 0
    xp = x if pad == 0 and not extra else np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad + extra)))
    xp = np.ascontiguousarray(xp)
    Hp, Wp = xp.shape[2], xp.shape[3]
    wp, bp, wt, bt = packed if packed is not None else pack_filters_lanes(w, b)
    out = np.empty((N, F, Hq, Wq + extra // 2), dtype=np.float32)
    if F and N:
        T = min(thread_count(), N)
        with slp_vectorizer():
            kernels.conv2d_relu_pool2_lanes(xp.reshape(N, C * Hp * Wp), tap_offsets(C, HH, WW, Hp, Wp), Wp,
                                            wp, bp, wt, bt, F, np.empty((T, 16), np.float32), out)
    return np.ascontiguousarray(out[..., :Wq]) if extra else out


def tile_segments(tile, F):
    """How kernel v7's ``tile`` covers ``F`` filters: ``[(positions, lanes, first, count), ...]``.

    ``tile`` is a tuple of ``(positions, lanes)`` sizes, e.g. ``((8, 32),)`` or ``((8, 16), (8, 8))``.  Each size
    but the last takes as many whole blocks of its lanes as fit in the filters left; the last takes the
    rest, padded with zero filters to a whole block.  ``sum(-(-count // lanes) * lanes)`` filters are
    computed.

    Examples
    --------
    >>> tile_segments(((8, 16), (8, 8)), 24)
    [(8, 16, 0, 16), (8, 8, 16, 8)]
    >>> tile_segments(((8, 32),), 24)          # one 32-wide block, 8 of its lanes padding
    [(8, 32, 0, 24)]
    """
    segments, first = [], 0
    for i, (positions, lanes) in enumerate(tile):
        count = F - first if i == len(tile) - 1 else (F - first) // lanes * lanes
        if count > 0:
            segments.append((positions, lanes, first, count))
            first += count
    return segments


def pack_filters_tile(w, b, tile):
    """The packing of kernel v7 for ``tile``: per segment of :func:`tile_segments`,
    ``(positions, lanes, first, count, wp (K, Fb, lanes), bp (Fb, lanes))`` with
    ``wp[k, fb, l] = w[first + lanes*fb + l]`` at tap k = (c, kh, kw); padding filters are zero."""
    F = w.shape[0]
    K = int(np.prod(w.shape[1:]))
    wk = w.reshape(F, K)
    packed = []
    for positions, lanes, first, count in tile_segments(tile, F):
        Fb = -(-count // lanes)
        wp = np.zeros((K, Fb * lanes), dtype=np.float32)
        wp[:, :count] = wk[first:first + count].T
        bp = np.zeros(Fb * lanes, dtype=np.float32)
        bp[:count] = b[first:first + count]
        packed.append((positions, lanes, first, count, wp.reshape(K, Fb, lanes), bp.reshape(Fb, lanes)))
    return packed


def tile_input(x, HH, WW, pad, tile):
    """What every kernel v7 tile reads, from a checked ``x (N, C, H, W)``: ``(xflat, offs, Wp, extra)``, the
    images zero-padded by ``pad`` and flattened, ``xflat (N, C*Hp*Wp)``; the tap offsets ``offs (C*HH*WW,)``
    (:func:`tap_offsets`); the padded width ``Wp``; and ``extra``, the blocks of zero input added at the end of
    each row of 2x2 blocks: a tile of B blocks needs B blocks in a row, and their outputs are thrown away.
    The kernel's output is ``(N, F, Hq, Wq + extra)`` for the pooled size ``Hq x Wq``."""
    N, C, H, W = x.shape
    Wq = (W + 2 * pad - WW + 1) // 2
    extra = max(0, max(p // 4 for p, _ in tile) - Wq)
    xp = x if pad == 0 and not extra else np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad + 2 * extra)))
    xp = np.ascontiguousarray(xp)
    Hp, Wp = xp.shape[2], xp.shape[3]
    return xp.reshape(N, C * Hp * Wp), tap_offsets(C, HH, WW, Hp, Wp), Wp, extra


def conv2d_relu_maxpool2_tuned(x, w, b, pad=0, tile=((8, 16), (8, 8)), packed=None):
    """Conv (stride 1) + ReLU + 2x2 max pooling, kernel v7: v6's tile at the size ``tile`` says.

    Same result as :func:`conv2d_relu_maxpool2_lanes` (bit for bit: every tile sums the taps in the same
    order).  ``tile`` is a tuple of ``(positions, lanes)`` from ``tile_source.TILES`` (see
    :func:`tile_segments`); ``ece662.layers.tuning.choose_tile`` measures which is fastest on this CPU.
    ``packed`` may carry :func:`pack_filters_tile` of ``w`` and ``b`` for this tile (a plan packs once).

    Examples
    --------
    >>> x = np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4)
    >>> w = np.ones((1, 1, 1, 1), dtype=np.float32)
    >>> conv2d_relu_maxpool2_tuned(x, w, np.array([-6.0], np.float32), tile=((4, 16),))[0, 0]
    array([[0., 1.],
           [7., 9.]], dtype=float32)
    """
    where = "conv2d_relu_maxpool2_tuned"
    x, w, b = check_conv_args(x, w, b, where)
    N, C, H, W = x.shape
    F, _, HH, WW = w.shape
    H_out, W_out = pooled_conv_size(x, w, pad, where)
    Hq, Wq = H_out // 2, W_out // 2
    unknown = [t for t in tile if tuple(t) not in kernels_tiles.TILE_KERNELS]
    if unknown or not tile:
        raise ValueError(f"{where}: tile must be one or more sizes of {sorted(kernels_tiles.TILE_KERNELS)}, got {tile!r}")
    xflat, offs, Wp, extra = tile_input(x, HH, WW, pad, tile)
    packed = packed if packed is not None else pack_filters_tile(w, b, tile)
    out = np.empty((N, F, Hq, Wq + extra), dtype=np.float32)
    if F and N:
        T = min(thread_count(), N)
        with slp_vectorizer():
            for positions, lanes, first, count, wp, bp in packed:
                kernel = kernels_tiles.TILE_KERNELS[(positions, lanes)]
                kernel(xflat, offs, Wp, wp, bp, first, count, np.empty((T, positions // 4 * lanes), np.float32), out)
    return np.ascontiguousarray(out[..., :Wq]) if extra else out


class slp_vectorizer:
    """Compile what runs inside with LLVM's SLP vectoriser on (numba's default is off): kernel
    v5's tile of scalar sums only becomes vector registers with it.  A kernel already compiled
    (or loaded from numba's cache) is not affected."""

    def __enter__(self):
        self._old = numba.config.SLP_VECTORIZE
        numba.config.SLP_VECTORIZE = 1

    def __exit__(self, *exc):
        numba.config.SLP_VECTORIZE = self._old


def conv2d_forward_direct(x, w, b, stride=1, pad=0):
    """Kernel v1 (direct loops) behind the same signature, for tests and teaching."""
    return conv2d_forward_numba(x, w, b, stride, pad, version=1)


def conv2d_forward_rows(x, w, b, stride=1, pad=0):
    """Kernel v2 (flattened rows; stride 1, else v1) behind the same signature."""
    return conv2d_forward_numba(x, w, b, stride, pad, version=2)


def conv2d_backward_numba(dout, x, w, stride=1, pad=0, need_dx=True, version=3):
    """Convolution backward; fast twin of ``reference.conv2d_backward_reference``.

    Parameters
    ----------
    dout : ndarray, (N, F, H', W') float32
    x : ndarray, (N, C, H, W) float32
    w : ndarray, (F, C, HH, WW) float32
    stride, pad : int
    need_dx : bool
        ``False`` skips the input gradient (the first layer of a network needs none)
        and returns ``None`` in its place.
    version : {2, 3}
        Kernel version (see ``ece662.layers.kernels``); strides other than 1 always use v1.

    Returns
    -------
    dx : ndarray, (N, C, H, W), or None
    dw : ndarray, (F, C, HH, WW)
    db : ndarray, (F,)
    """
    where = "conv2d_backward"
    x, w, _ = check_conv_args(x, w, None, where)
    dout = check_float32(dout, "dout", where)
    N, C, H, W = x.shape
    F, _, HH, WW = w.shape
    H_out, W_out = conv_output_size(H, HH, stride, pad), conv_output_size(W, WW, stride, pad)
    if dout.shape != (N, F, H_out, W_out):
        raise ValueError(f"{where}: expected dout of shape {(N, F, H_out, W_out)}, got {dout.shape}")
    db = dout.sum(axis=(0, 2, 3), dtype=np.float64).astype(np.float32)
    xp = pad_image(x, pad)
    Hp, Wp = xp.shape[2], xp.shape[3]
    T = max(1, min(thread_count(), N))       # one partial dw even for an empty batch (N = 0): dw = 0
    if stride == 1 and version == 3:
        K, P = C * HH * WW, H_out * W_out
        dw_part = np.zeros((T, F, K), dtype=np.float32)
        kernels.conv2d_weight_grad_patches(dout, xp, HH, WW, 1, np.empty((T, K, P), np.float32), dw_part)
        dw = dw_part.sum(axis=0).reshape(F, C, HH, WW)
        dx = None
        if need_dx:
            # dx = full correlation of dout with the flipped filters, read as a forward conv:
            # dxp[c, i, j] = sum_{f,kh,kw} dout_padded[f, i + HH-1-kh, j + WW-1-kw] * w[f, c, kh, kw]
            w_flip = np.ascontiguousarray(w[:, :, ::-1, ::-1].transpose(1, 0, 2, 3))
            dxp = conv2d_forward_numba(np.pad(dout, ((0, 0), (0, 0), (HH - 1, HH - 1), (WW - 1, WW - 1))),
                                       w_flip, None, 1, 0, version=3)
            dx = np.ascontiguousarray(dxp[:, :, pad:pad + H, pad:pad + W])
        return dx, dw, db
    dxp = np.zeros_like(xp)
    dw_part = np.zeros((T, F, C, HH, WW), dtype=np.float32)
    if stride == 1:
        L = (H_out - 1) * Wp + W_out
        scratch = np.empty((T, F, L), dtype=np.float32)
        kernels_lab.conv2d_backward_rows(dout, xp.reshape(N, C, Hp * Wp), Wp, w,
                                     dxp.reshape(N, C, Hp * Wp), dw_part, scratch)
    else:
        kernels_lab.conv2d_backward_direct(dout, xp, w, stride, dxp, dw_part)
    dx = np.ascontiguousarray(dxp[:, :, pad:pad + H, pad:pad + W]) if need_dx else None
    return dx, dw_part.sum(axis=0), db


# ============================================================================ max pool
def maxpool2d_forward_numba(x, kernel_size=2, stride=2):
    """Max pooling forward; fast twin of ``reference.maxpool2d_forward_reference``.

    Parameters
    ----------
    x : ndarray, (N, C, H, W) float32
    kernel_size, stride : int

    Returns
    -------
    out : ndarray, (N, C, H', W') with ``H' = 1 + (H - kernel_size) // stride``

    Examples
    --------
    >>> x = np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4)
    >>> maxpool2d_forward_numba(x)[0, 0]
    array([[ 5.,  7.],
           [13., 15.]], dtype=float32)
    """
    where = "maxpool2d_forward"
    x = check_float32(x, "x", where)
    check_nchw(x, where)
    N, C, H, W = x.shape
    out = np.empty((N, C, conv_output_size(H, kernel_size, stride),
                    conv_output_size(W, kernel_size, stride)), dtype=np.float32)
    kernels.maxpool2d_forward(x, kernel_size, stride, out)
    return out


def maxpool2d_backward_numba(dout, x, kernel_size=2, stride=2):
    """Max pooling backward; fast twin of ``reference.maxpool2d_backward_reference``.

    Returns
    -------
    dx : ndarray, (N, C, H, W)
    """
    where = "maxpool2d_backward"
    x = check_float32(x, "x", where)
    dout = check_float32(dout, "dout", where)
    check_nchw(x, where)
    N, C, H, W = x.shape
    expected = (N, C, conv_output_size(H, kernel_size, stride),
                conv_output_size(W, kernel_size, stride))
    if dout.shape != expected:
        raise ValueError(f"{where}: expected dout of shape {expected}, got {dout.shape}")
    dx = np.zeros_like(x)
    kernels.maxpool2d_backward(dout, x, kernel_size, stride, dx)
    return dx


# ============================================================================ linear
def _check_linear_args(x, w, where):
    x = check_float32(x, "x", where)
    w = check_float32(w, "w", where)
    if w.ndim != 2:
        raise ValueError(f"{where}: expected w of shape (out_features, in_features), got {w.shape}")
    if x.ndim != 2 or x.shape[1] != w.shape[1]:
        raise ValueError(f"{where}: expected x of shape (N, {w.shape[1]}), got {x.shape}; "
                         f"flatten feature maps first (ece662.layers.Flatten)")
    return x, w


def linear_forward_numba(x, w, b):
    """Fully connected forward; fast twin of ``reference.linear_forward_reference``.

    Parameters
    ----------
    x : ndarray, (N, in_features) float32
    w : ndarray, (out_features, in_features) float32
    b : ndarray, (out_features,) float32 or None

    Returns
    -------
    out : ndarray, (N, out_features)

    Examples
    --------
    >>> x = np.array([[1., 2.]], dtype=np.float32)
    >>> w = np.array([[1., 1.], [0., 3.]], dtype=np.float32)
    >>> linear_forward_numba(x, w, np.array([0.5, 0.], dtype=np.float32))
    array([[3.5, 6. ]], dtype=float32)
    """
    where = "linear_forward"
    x, w = _check_linear_args(x, w, where)
    M = w.shape[0]
    b = np.zeros(M, dtype=np.float32) if b is None else check_float32(b, "b", where)
    if b.shape != (M,):
        raise ValueError(f"{where}: expected b of shape ({M},), got {b.shape}")
    out = np.empty((x.shape[0], M), dtype=np.float32)
    kernels.linear_forward(x, w, b, out)
    return out


def linear_backward_numba(dout, x, w):
    """Fully connected backward; fast twin of ``reference.linear_backward_reference``.

    Returns
    -------
    dx : ndarray, (N, in_features)
    dw : ndarray, (out_features, in_features)
    db : ndarray, (out_features,)
    """
    where = "linear_backward"
    x, w = _check_linear_args(x, w, where)
    dout = check_float32(dout, "dout", where)
    if dout.shape != (x.shape[0], w.shape[0]):
        raise ValueError(f"{where}: expected dout of shape {(x.shape[0], w.shape[0])}, "
                         f"got {dout.shape}")
    dx = np.zeros_like(x)
    dw = np.zeros_like(w)
    kernels.linear_backward_dx(dout, w, dx)
    kernels.linear_backward_dw(dout, x, dw)
    db = dout.sum(axis=0, dtype=np.float64).astype(np.float32)
    return dx, dw, db


# ============================================================================ relu
def relu_forward_numba(x):
    """ReLU forward, any shape; fast twin of ``reference.relu_forward_reference``.

    Examples
    --------
    >>> relu_forward_numba(np.array([-1., 0., 2.], dtype=np.float32))
    array([0., 0., 2.], dtype=float32)
    """
    x = check_float32(x, "x", "relu_forward")
    out = np.empty_like(x)
    kernels.relu_forward(x.reshape(-1), out.reshape(-1))
    return out


def relu_backward_numba(dout, x):
    """ReLU backward, any shape; fast twin of ``reference.relu_backward_reference``."""
    where = "relu_backward"
    x = check_float32(x, "x", where)
    dout = check_float32(dout, "dout", where)
    check_same_shape(dout, x, "dout", "x", where)
    dx = np.empty_like(x)
    kernels.relu_backward(dout.reshape(-1), x.reshape(-1), dx.reshape(-1))
    return dx


# ============================================================================ leaky relu
def leaky_relu_forward_numba(x, negative_slope=0.01):
    """Leaky ReLU forward, any shape; fast twin of ``reference.leaky_relu_forward_reference``.

    Examples
    --------
    >>> leaky_relu_forward_numba(np.array([-1., 0., 2.], dtype=np.float32), 0.1)
    array([-0.1,  0. ,  2. ], dtype=float32)
    """
    x = check_float32(x, "x", "leaky_relu_forward")
    out = np.empty_like(x)
    kernels.leaky_relu_forward(x.reshape(-1), np.float32(negative_slope), out.reshape(-1))
    return out


def leaky_relu_backward_numba(dout, x, negative_slope=0.01):
    """Leaky ReLU backward; fast twin of ``reference.leaky_relu_backward_reference``."""
    where = "leaky_relu_backward"
    x = check_float32(x, "x", where)
    dout = check_float32(dout, "dout", where)
    check_same_shape(dout, x, "dout", "x", where)
    dx = np.empty_like(x)
    kernels.leaky_relu_backward(dout.reshape(-1), x.reshape(-1), np.float32(negative_slope), dx.reshape(-1))
    return dx


# ============================================================================ average pool
def avgpool2d_forward_numba(x, kernel_size=2, stride=2):
    """Average pooling forward; fast twin of ``reference.avgpool2d_forward_reference``.

    Returns
    -------
    out : ndarray, (N, C, H', W') with ``H' = 1 + (H - kernel_size) // stride``

    Examples
    --------
    >>> x = np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4)
    >>> avgpool2d_forward_numba(x)[0, 0]
    array([[ 2.5,  4.5],
           [10.5, 12.5]], dtype=float32)
    """
    where = "avgpool2d_forward"
    x = check_float32(x, "x", where)
    check_nchw(x, where)
    N, C, H, W = x.shape
    out = np.empty((N, C, conv_output_size(H, kernel_size, stride),
                    conv_output_size(W, kernel_size, stride)), dtype=np.float32)
    kernels.avgpool2d_forward(x, kernel_size, stride, out)
    return out


def avgpool2d_backward_numba(dout, x, kernel_size=2, stride=2):
    """Average pooling backward; fast twin of ``reference.avgpool2d_backward_reference``."""
    where = "avgpool2d_backward"
    x = check_float32(x, "x", where)
    dout = check_float32(dout, "dout", where)
    check_nchw(x, where)
    N, C, H, W = x.shape
    expected = (N, C, conv_output_size(H, kernel_size, stride), conv_output_size(W, kernel_size, stride))
    if dout.shape != expected:
        raise ValueError(f"{where}: expected dout of shape {expected}, got {dout.shape}")
    dx = np.zeros_like(x)
    kernels.avgpool2d_backward(dout, kernel_size, stride, dx)
    return dx


def global_avgpool_forward_numba(x):
    """``AdaptiveAvgPool2d(1)`` forward: (N, C, H, W) -> (N, C, 1, 1); fast twin of
    ``reference.global_avgpool_forward_reference``."""
    where = "global_avgpool_forward"
    x = check_float32(x, "x", where)
    check_nchw(x, where)
    out = np.empty(x.shape[:2] + (1, 1), dtype=np.float32)
    kernels.global_avgpool_forward(x, out)
    return out


def global_avgpool_backward_numba(dout, x):
    """Global average pooling backward; fast twin of ``reference.global_avgpool_backward_reference``."""
    where = "global_avgpool_backward"
    x = check_float32(x, "x", where)
    dout = check_float32(dout, "dout", where)
    if dout.shape != x.shape[:2] + (1, 1):
        raise ValueError(f"{where}: expected dout of shape {x.shape[:2] + (1, 1)}, got {dout.shape}")
    dx = np.empty_like(x)
    kernels.global_avgpool_backward(dout, dx)
    return dx


# ============================================================================ batch norm
def _as_ncs(x, where):
    """``x`` (N, C, ...) seen as (N, C, S) for the batch-norm kernels."""
    x = check_float32(x, "x", where)
    if x.ndim < 2:
        raise ValueError(f"{where}: expected x of shape (N, C, ...), got {x.shape}")
    return x, x.reshape(x.shape[0], x.shape[1], -1)


def batchnorm_batch_stats_numba(x):
    """Per-channel mean and biased variance; fast twin of ``reference.batchnorm_batch_stats_reference``."""
    x, x3 = _as_ncs(x, "batchnorm_batch_stats")
    mean = np.empty(x.shape[1], dtype=np.float32)
    var = np.empty(x.shape[1], dtype=np.float32)
    kernels.batchnorm_stats(x3, mean, var)
    return mean, var


def batchnorm_forward_numba(x, gamma, beta, mean, var, eps=1e-5):
    """Batch norm with given statistics; fast twin of ``reference.batchnorm_forward_reference``.

    Examples
    --------
    >>> x = np.array([[1., 2.], [3., 6.]], dtype=np.float32)
    >>> one, zero = np.ones(2, np.float32), np.zeros(2, np.float32)
    >>> batchnorm_forward_numba(x, one, zero, np.array([2., 4.], np.float32), one, eps=0.0)
    array([[-1., -2.],
           [ 1.,  2.]], dtype=float32)
    """
    scale, shift = batchnorm_scale_shift(gamma, beta, mean, var, eps)
    return batchnorm_apply_numba(x, scale, shift)


def batchnorm_scale_shift(gamma, beta, mean, var, eps=1e-5):
    """``(scale, shift)`` (C,) float32 with ``bn(x) = x * scale + shift`` per channel:
    ``scale = gamma / sqrt(var + eps)``, ``shift = beta - mean * scale`` (computed in float64)."""
    scale = np.asarray(gamma, np.float64) / np.sqrt(np.asarray(var, np.float64) + eps)
    shift = np.asarray(beta, np.float64) - np.asarray(mean, np.float64) * scale
    return scale.astype(np.float32), shift.astype(np.float32)


def batchnorm_apply_numba(x, scale, shift):
    """``x * scale[c] + shift[c]`` per channel (axis 1) of x (N, C, ...)."""
    x, x3 = _as_ncs(x, "batchnorm_forward")
    out = np.empty_like(x)
    kernels.batchnorm_apply(x3, np.ascontiguousarray(scale, np.float32), np.ascontiguousarray(shift, np.float32),
                            out.reshape(x3.shape))
    return out


def batchnorm_backward_numba(dout, x, gamma, eps=1e-5):
    """Training-mode batch norm backward; fast twin of ``reference.batchnorm_backward_reference``.

    Returns
    -------
    dx : ndarray, the shape of x
    dgamma, dbeta : ndarray, (C,)
    """
    where = "batchnorm_backward"
    x, x3 = _as_ncs(x, where)
    dout = check_float32(dout, "dout", where)
    check_same_shape(dout, x, "dout", "x", where)
    mean, var = batchnorm_batch_stats_numba(x)
    inv_std = (1.0 / np.sqrt(var.astype(np.float64) + eps)).astype(np.float32)
    dx = np.empty_like(x)
    C = x.shape[1]
    dgamma, dbeta = np.empty(C, np.float32), np.empty(C, np.float32)
    kernels.batchnorm_backward(dout.reshape(x3.shape), x3, mean, inv_std, np.ascontiguousarray(gamma, np.float32),
                               dx.reshape(x3.shape), dgamma, dbeta)
    return dx, dgamma, dbeta
