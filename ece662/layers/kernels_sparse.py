"""The unstructured-sparse conv kernel: output positions as the vector lanes.

Why not filters as the lanes, as in kernel v5?
-----------------------------------------------
v5 (``kernels_lab.conv2d_relu_pool2_tiled``) puts 16 filters in the vector lanes: one tap's 16 weights
are one contiguous row of ``wp (K, F/16, 16)``.  A sparse kernel in that layout could only skip a
tap when all 16 (or, per AVX2 register, all 8) filters have a zero there.  With unstructured zeros
that almost never happens: at 70% zeros a given 8-filter row is all zero with probability
0.7**8 = 6% (0.7**16 = 0.3% for 16), at 90% zeros 0.9**8 = 43%.  So the lanes run over something
the zeros do not touch: **output positions**.  Every non-zero weight is then one broadcast times a
vector of consecutive positions, and a filter's work is exactly its number of non-zero taps.

Layout
------
Input: the "flattened rows" of kernel v2.  A padded image (C, Hp, Wp) is one vector of C*Hp*Wp
floats; output position (i, j) of tap (c, kh, kw) reads x[p + off] with p = i*Wp + j and
off = c*Hp*Wp + kh*Wp + kw, so consecutive p read consecutive inputs for every tap.  The L =
(H'-1)*Wp + W' flattened positions include Wp - W' thrown-away columns per row (2 of 14 on conv2).
Each image is copied, padded, into a per-thread buffer: padding costs no extra pass over the batch,
and the buffer stays in cache while every filter reads it.
Weights: per filter, the list of its non-zero taps as (off, weight) pairs, CSR-style (``ptr[f]:
ptr[f+1]``; ``functional.sparse_taps``, the same lists the older ``conv2d_forward_sparse_taps``
reads).  A filter with no non-zero tap costs nothing but its bias.

The tile
--------
One filter x 64 consecutive positions: 64 sums in eight 8-lane AVX2 registers.  Per non-zero tap:
the offset and the weight (one broadcast), 8 vector loads of x (LLVM folds each into its FMA's
memory operand), 8 vector FMAs: 10 loads per 8 FMAs, against v5's 6 per 8, and no horizontal sum.
The older sparse-taps kernel did one axpy per tap over the whole plane in memory (every FMA also
loaded and stored its accumulator: 3 memory operations per FMA), then ReLU and pool as separate
passes.  Then the plane's ends: 32-position and
8-position tiles cover the rest of the L positions (conv2 of the course CNN: L = 166 = 64 + 64 + 32
+ 8 - 2, so 21 vector FMAs per non-zero tap, against 18 for its 144 real positions).

Work per image, conv2 (32 filters, K = 288 taps, 12x12 outputs): v5 does 32*288*144/8 = 165,888
vector FMAs whatever the weights; this kernel 21 per non-zero tap, i.e. 32*288*21*d = 193,536*d at a
fraction d of non-zero weights -- fewer from about 15% zeros on, 2.9x fewer at 70% zeros.  The
per-tap overhead (reading the offset and the weight, one broadcast) and the separate epilogue
(below) move the measured break-even above that (benchmarks/bench_sparse.py, RESULTS.md).

Epilogue
--------
Each filter's plane lands in a per-thread buffer (L1-resident), then bias, ReLU and the 2x2/2 max
pool are applied on the way to ``out`` (``relu`` and ``pool2`` flags): the full-size conv output is
never written to memory when the pool is fused.  With a fused pool only the rows the pool reads
are computed.

Reading past a plane
--------------------
The last tile of a filter may cover up to 15 positions beyond L, and the last tap's inputs end
exactly at the image's end (L + the largest offset = C*Hp*Wp), so those loads would leave the
image: the per-thread buffer carries ``SLACK`` zero floats after it, and those positions' results
are never read.  No load leaves the buffer, so ``NUMBA_DISABLE_JIT=1`` runs the same slices as
plain NumPy.

Compiled like v5: LLVM's SLP vectoriser on (``functional.slp_vectorizer``) turns the 64 named
scalar sums into 8 registers; ``fastmath={"contract"}`` permits FMAs and no reassociation.  The tiles skip
Numba's two SSA passes (``numba_pipeline.WithoutSSA``, as kernel v7's tiles): the same code, compiled sooner.
"""
from functools import partial

import numpy as np
from numba import njit

from ece662.layers import functional as fn
from ece662.layers.numba_pipeline import WithoutSSA
from ece662.layers.threads import image_shares, run_shares
from ece662.layers.shapes import conv_output_size

SLACK = 64        # zero floats after the padded image: a last tile's overrun stays inside the buffer


# ============================================================================ tiles
@njit(cache=True, fastmath={"contract"}, pipeline_class=WithoutSSA)
def _tile64(x, offs, wts, q0, q1, plane, p0):
    """64 consecutive positions p0 ... p0+63 of one filter's flattened plane: the taps q0:q1, each one
    broadcast weight times 64 consecutive inputs, summed in 64 scalars that LLVM's SLP vectoriser
    packs into 8 AVX2 registers; then stored to plane[p0:p0+64]."""
    zero = np.float32(0.0)
    s0 = s1 = s2 = s3 = s4 = s5 = s6 = s7 = zero
    s8 = s9 = s10 = s11 = s12 = s13 = s14 = s15 = zero
    s16 = s17 = s18 = s19 = s20 = s21 = s22 = s23 = zero
    s24 = s25 = s26 = s27 = s28 = s29 = s30 = s31 = zero
    s32 = s33 = s34 = s35 = s36 = s37 = s38 = s39 = zero
    s40 = s41 = s42 = s43 = s44 = s45 = s46 = s47 = zero
    s48 = s49 = s50 = s51 = s52 = s53 = s54 = s55 = zero
    s56 = s57 = s58 = s59 = s60 = s61 = s62 = s63 = zero
    for q in range(q0, q1):
        u = wts[q]
        xs = x[p0 + offs[q]:]          # this tap's inputs for the tile's positions, contiguous
        s0 += u * xs[0]; s1 += u * xs[1]; s2 += u * xs[2]; s3 += u * xs[3]
        s4 += u * xs[4]; s5 += u * xs[5]; s6 += u * xs[6]; s7 += u * xs[7]
        s8 += u * xs[8]; s9 += u * xs[9]; s10 += u * xs[10]; s11 += u * xs[11]
        s12 += u * xs[12]; s13 += u * xs[13]; s14 += u * xs[14]; s15 += u * xs[15]
        s16 += u * xs[16]; s17 += u * xs[17]; s18 += u * xs[18]; s19 += u * xs[19]
        s20 += u * xs[20]; s21 += u * xs[21]; s22 += u * xs[22]; s23 += u * xs[23]
        s24 += u * xs[24]; s25 += u * xs[25]; s26 += u * xs[26]; s27 += u * xs[27]
        s28 += u * xs[28]; s29 += u * xs[29]; s30 += u * xs[30]; s31 += u * xs[31]
        s32 += u * xs[32]; s33 += u * xs[33]; s34 += u * xs[34]; s35 += u * xs[35]
        s36 += u * xs[36]; s37 += u * xs[37]; s38 += u * xs[38]; s39 += u * xs[39]
        s40 += u * xs[40]; s41 += u * xs[41]; s42 += u * xs[42]; s43 += u * xs[43]
        s44 += u * xs[44]; s45 += u * xs[45]; s46 += u * xs[46]; s47 += u * xs[47]
        s48 += u * xs[48]; s49 += u * xs[49]; s50 += u * xs[50]; s51 += u * xs[51]
        s52 += u * xs[52]; s53 += u * xs[53]; s54 += u * xs[54]; s55 += u * xs[55]
        s56 += u * xs[56]; s57 += u * xs[57]; s58 += u * xs[58]; s59 += u * xs[59]
        s60 += u * xs[60]; s61 += u * xs[61]; s62 += u * xs[62]; s63 += u * xs[63]
    a = plane[p0:]
    a[0] = s0; a[1] = s1; a[2] = s2; a[3] = s3
    a[4] = s4; a[5] = s5; a[6] = s6; a[7] = s7
    a[8] = s8; a[9] = s9; a[10] = s10; a[11] = s11
    a[12] = s12; a[13] = s13; a[14] = s14; a[15] = s15
    a[16] = s16; a[17] = s17; a[18] = s18; a[19] = s19
    a[20] = s20; a[21] = s21; a[22] = s22; a[23] = s23
    a[24] = s24; a[25] = s25; a[26] = s26; a[27] = s27
    a[28] = s28; a[29] = s29; a[30] = s30; a[31] = s31
    a[32] = s32; a[33] = s33; a[34] = s34; a[35] = s35
    a[36] = s36; a[37] = s37; a[38] = s38; a[39] = s39
    a[40] = s40; a[41] = s41; a[42] = s42; a[43] = s43
    a[44] = s44; a[45] = s45; a[46] = s46; a[47] = s47
    a[48] = s48; a[49] = s49; a[50] = s50; a[51] = s51
    a[52] = s52; a[53] = s53; a[54] = s54; a[55] = s55
    a[56] = s56; a[57] = s57; a[58] = s58; a[59] = s59
    a[60] = s60; a[61] = s61; a[62] = s62; a[63] = s63


@njit(cache=True, fastmath={"contract"}, pipeline_class=WithoutSSA)
def _tile32(x, offs, wts, q0, q1, plane, p0):
    """32 consecutive positions p0 ... p0+31 of one filter's flattened plane: the taps q0:q1, each one
    broadcast weight times 32 consecutive inputs, summed in 32 scalars that LLVM's SLP vectoriser
    packs into 4 AVX2 registers; then stored to plane[p0:p0+32]."""
    zero = np.float32(0.0)
    s0 = s1 = s2 = s3 = s4 = s5 = s6 = s7 = zero
    s8 = s9 = s10 = s11 = s12 = s13 = s14 = s15 = zero
    s16 = s17 = s18 = s19 = s20 = s21 = s22 = s23 = zero
    s24 = s25 = s26 = s27 = s28 = s29 = s30 = s31 = zero
    for q in range(q0, q1):
        u = wts[q]
        xs = x[p0 + offs[q]:]          # this tap's inputs for the tile's positions, contiguous
        s0 += u * xs[0]; s1 += u * xs[1]; s2 += u * xs[2]; s3 += u * xs[3]
        s4 += u * xs[4]; s5 += u * xs[5]; s6 += u * xs[6]; s7 += u * xs[7]
        s8 += u * xs[8]; s9 += u * xs[9]; s10 += u * xs[10]; s11 += u * xs[11]
        s12 += u * xs[12]; s13 += u * xs[13]; s14 += u * xs[14]; s15 += u * xs[15]
        s16 += u * xs[16]; s17 += u * xs[17]; s18 += u * xs[18]; s19 += u * xs[19]
        s20 += u * xs[20]; s21 += u * xs[21]; s22 += u * xs[22]; s23 += u * xs[23]
        s24 += u * xs[24]; s25 += u * xs[25]; s26 += u * xs[26]; s27 += u * xs[27]
        s28 += u * xs[28]; s29 += u * xs[29]; s30 += u * xs[30]; s31 += u * xs[31]
    a = plane[p0:]
    a[0] = s0; a[1] = s1; a[2] = s2; a[3] = s3
    a[4] = s4; a[5] = s5; a[6] = s6; a[7] = s7
    a[8] = s8; a[9] = s9; a[10] = s10; a[11] = s11
    a[12] = s12; a[13] = s13; a[14] = s14; a[15] = s15
    a[16] = s16; a[17] = s17; a[18] = s18; a[19] = s19
    a[20] = s20; a[21] = s21; a[22] = s22; a[23] = s23
    a[24] = s24; a[25] = s25; a[26] = s26; a[27] = s27
    a[28] = s28; a[29] = s29; a[30] = s30; a[31] = s31


@njit(cache=True, fastmath={"contract"}, pipeline_class=WithoutSSA)
def _tile8(x, offs, wts, q0, q1, plane, p0):
    """8 consecutive positions p0 ... p0+7 of one filter's flattened plane: the taps q0:q1, each one
    broadcast weight times 8 consecutive inputs, summed in 8 scalars that LLVM's SLP vectoriser
    packs into 1 AVX2 register; then stored to plane[p0:p0+8]."""
    zero = np.float32(0.0)
    s0 = s1 = s2 = s3 = s4 = s5 = s6 = s7 = zero
    for q in range(q0, q1):
        u = wts[q]
        xs = x[p0 + offs[q]:]          # this tap's inputs for the tile's positions, contiguous
        s0 += u * xs[0]; s1 += u * xs[1]; s2 += u * xs[2]; s3 += u * xs[3]
        s4 += u * xs[4]; s5 += u * xs[5]; s6 += u * xs[6]; s7 += u * xs[7]
    a = plane[p0:]
    a[0] = s0; a[1] = s1; a[2] = s2; a[3] = s3
    a[4] = s4; a[5] = s5; a[6] = s6; a[7] = s7


# ============================================================================ the kernel
@njit(cache=True, nogil=True)
def sparse_images(x, pad, ptr, offs, wts, b, HH, WW, relu, pool2, xi, plane, n0, n1, out):
    """Images n0 to n1 - 1 of :func:`conv2d_sparse_lanes`, with one thread's padded image ``xi`` and ``plane``."""
    _, C, H, W = x.shape
    F = ptr.shape[0] - 1
    Hp, Wp = H + 2 * pad, W + 2 * pad
    H_out, W_out = Hp - HH + 1, Wp - WW + 1
    rows, cols = H_out, W_out
    if pool2:                                        # the rows and columns the pool reads
        rows, cols = 2 * (H_out // 2), 2 * (W_out // 2)
    L = (rows - 1) * Wp + cols                       # flattened positions computed per filter
    zero = np.float32(0.0)
    for n in range(n0, n1):
        for c in range(C):                           # the image, padded and flattened
            for i in range(H):
                row = c * Hp * Wp + (i + pad) * Wp + pad
                for j in range(W):
                    xi[row + j] = x[n, c, i, j]
        for f in range(F):
            q0, q1 = ptr[f], ptr[f + 1]
            bf = b[f]
            if q0 == q1:                             # no non-zero weight: the plane is the bias
                v = max(bf, zero) if relu else bf
                for i in range(out.shape[2]):
                    for j in range(out.shape[3]):
                        out[n, f, i, j] = v
                continue
            p0 = np.int64(0)                         # tiles of 64, then 32, then 8 positions (not a literal 0:
                                                     # Numba would compile _tile64 once more, for p0 == 0)
            while L - p0 > 48:
                _tile64(xi, offs, wts, q0, q1, plane, p0)
                p0 += 64
            if L - p0 > 16:
                _tile32(xi, offs, wts, q0, q1, plane, p0)
                p0 += 32
            while p0 < L:
                _tile8(xi, offs, wts, q0, q1, plane, p0)
                p0 += 8
            if pool2:                                # max commutes with the bias and the ReLU
                for bi in range(rows // 2):
                    for bj in range(cols // 2):
                        p = 2 * bi * Wp + 2 * bj
                        v = max(max(plane[p], plane[p + 1]), max(plane[p + Wp], plane[p + Wp + 1])) + bf
                        out[n, f, bi, bj] = max(v, zero) if relu else v
            else:
                for i in range(rows):
                    for j in range(cols):
                        v = plane[i * Wp + j] + bf
                        out[n, f, i, j] = max(v, zero) if relu else v


def conv2d_sparse_lanes(x, pad, ptr, offs, wts, b, HH, WW, relu, pool2, ximg, planes, out):
    """Sparse conv (stride 1), output positions as the vector lanes; bias, ReLU and 2x2/2 max pool fused.

    x: (N, C, H, W); ptr: (F+1,) int64, filter f's non-zero taps are ``ptr[f]:ptr[f+1]`` of
    offs: (nnz,) uint32, offset c*Hp*Wp + kh*Wp + kw into the flattened padded image, and
    wts: (nnz,) float32 their weights; b: (F,); relu: max(., 0) after the bias; pool2: 2x2/2 max
    pool (out: (N, F, H'//2, W'//2), else (N, F, H', W')); ximg: (T, C*Hp*Wp + SLACK) per-thread
    padded image, ZERO on entry (its border and slack are never written); planes: (T, L + SLACK).
    Thread t runs :func:`sparse_images` on one chunk of the images, with ximg[t] and planes[t]: Python
    threads (``threads.py``, as kernel v7's tiles), because a Numba ``prange`` loop around it cost 2.4 s of
    compile on first use.
    """
    run_shares([partial(sparse_images, x, pad, ptr, offs, wts, b, HH, WW, relu, pool2, ximg[t], planes[t], n0, n1, out)
                for t, (n0, n1) in enumerate(image_shares(x.shape[0], ximg.shape[0]))])


# ============================================================================ the wrapper
def conv2d_forward_sparse_lanes(x, w, b, stride=1, pad=0, relu=False, pool2=False, taps=None):
    """Convolution that multiplies by the non-zero weights only (stride 1), with an optional fused
    ReLU and 2x2 max pool; the fast sparse twin of ``reference.conv2d_forward_reference``.

    Parameters
    ----------
    x : ndarray, (N, C, H, W) float32
    w : ndarray, (F, C, HH, WW) float32, any fraction of zeros
    b : ndarray, (F,) float32 or None
    stride, pad : int
        ``stride`` must be 1.
    relu : bool
        Apply ``max(., 0)`` after the bias.
    pool2 : bool
        Then 2x2 max pooling with stride 2 (an odd last row or column is dropped, as in
        ``reference.maxpool2d_forward_reference``).
    taps : tuple, optional
        ``functional.sparse_taps(w, H + 2*pad, W + 2*pad)``, when the caller keeps it.

    Returns
    -------
    out : ndarray, (N, F, H'//2, W'//2) with ``pool2``, else (N, F, H', W'), float32

    Examples
    --------
    >>> x = np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4)
    >>> w = np.array([[[[0, 0], [0, 1]]]], dtype=np.float32)    # one non-zero tap
    >>> conv2d_forward_sparse_lanes(x, w, None)[0, 0]
    array([[ 5.,  6.,  7.],
           [ 9., 10., 11.],
           [13., 14., 15.]], dtype=float32)
    >>> conv2d_forward_sparse_lanes(x, w, np.array([-10.0], np.float32), relu=True, pool2=True)[0, 0]
    array([[0.]], dtype=float32)
    """
    where = "conv2d_forward_sparse_lanes"
    x, w, b = fn.check_conv_args(x, w, b, where)
    if stride != 1:
        raise ValueError(f"{where}: only stride 1 is supported, got stride={stride}; use conv2d_forward_numba")
    N, C, H, W = x.shape
    F, _, HH, WW = w.shape
    if pool2:
        H_out, W_out = fn.pooled_conv_size(x, w, pad, where)
    else:
        H_out, W_out = conv_output_size(H, HH, 1, pad), conv_output_size(W, WW, 1, pad)
    Hp, Wp = H + 2 * pad, W + 2 * pad
    S = C * Hp * Wp
    if S + SLACK >= 2 ** 32:
        raise ValueError(f"{where}: images of {C}x{Hp}x{Wp} are too large for uint32 offsets")
    out = np.empty((N, F, H_out // 2, W_out // 2) if pool2 else (N, F, H_out, W_out), dtype=np.float32)
    if N == 0 or F == 0:
        return out
    ptr, offs, wts = taps if taps is not None else fn.sparse_taps(w, Hp, Wp)
    T = min(fn.thread_count(), N)
    ximg = np.zeros((T, S + SLACK), dtype=np.float32)   # zero border and slack, written once
    planes = np.empty((T, H_out * Wp + SLACK), dtype=np.float32)
    with fn.slp_vectorizer():
        conv2d_sparse_lanes(np.ascontiguousarray(x), pad, ptr, offs, wts, b, HH, WW, relu, pool2, ximg,
                            planes, out)
    return out
