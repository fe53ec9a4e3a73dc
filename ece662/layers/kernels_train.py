"""Training kernels, channels-last in registers: conv forward (+ bias + ReLU + 2x2 max pool),
the weight gradient dw and the input gradient dx, all on one register tile.

The inference kernels (``ece662.layers.kernels``, v1-v6) come first: read v3 (a register
tile, vectorised along the taps k, ending in horizontal sums) and v5 (output channels as the
vector lanes) before this file.  Here is v5's idea applied to all three products of training.

The tile
--------
Every product of a conv layer is a sum of outer products.  Write it as

    acc[j, l] = sum_t  r_j[t] * B[t, l]          j < 4 rows, l < 16 lanes

:func:`tile_4x16` computes exactly that: 4 x 16 = 64 sums, which LLVM's SLP vectoriser packs
into eight 8-lane AVX2 registers (this machine: znver3, 16 vector registers of 8 floats).  Per
step t it does 2 vector loads (``B[t]``, 16 lanes) and 4 broadcasts (``r_0[t] .. r_3[t]``) for
8 vector FMAs = 64 multiply-adds: **0.75 loads per vector FMA**, and no horizontal sum, because
each lane is its own output.  (v3: 6 loads for 8 FMAs and a horizontal sum per output.)  The
three products only differ in what plays r, B and t:

=====================  ==========================  ============================  ============
product                the 4 rows r_j              B (the 16 lanes)              t runs over
=====================  ==========================  ============================  ============
forward  out[p, f]     patches of 4 positions p    packed weights wp[k, f]       taps k
dw       dw[k, f]      4 taps k of the patches,    the gradient dz[p, f]         positions p
                       transposed (patT[k, p])
dx       dx[p, c]      patches of 4 positions of   the flipped weights           taps (f,kh,kw)
                       the zero-padded gradient    wq[(f, kh, kw), c]
=====================  ==========================  ============================  ============

So filters (output channels) are the lanes of the forward and of dw, and input channels are the
lanes of dx.  Lanes are packed ``(T, Fb, 16)``: block ``fb`` of 16 channels is one contiguous
row per t, with constant indices 0..15 inside the tile (what makes SLP emit vector code;
channels beyond the layer's count are zero).  ``dx`` is the forward conv of the gradient, padded
by HH-1-pad (WW-1-pad) on each side, with the filters flipped and transposed: dx[c, i, j] =
sum_{f, kh, kw} dz[f, i + pad - kh, j + pad - kw] * w[f, c, kh, kw].

Fusion (the course CNN: conv -> ReLU -> MaxPool2d(2))
-----------------------------------------------------
* forward (:func:`conv2d_relu_pool2_train`): the 4 rows of a tile are one 2x2 pooling block;
  the epilogue adds the bias, takes the block's first maximum and its ReLU, and keeps one byte
  per pooled output, ``code``: which of the 4 positions won (0..3, row-major), or 4 when the
  maximum is <= 0 (the ReLU zeroes the gradient).  Neither the conv output nor the ReLU output
  is stored; backward needs the input x and ``code`` only.
* backward: the conv's gradient dz is the pooled gradient put back at the winning positions
  (zero elsewhere, and zero where code is 4): ReLU backward + max-pool backward, done while the
  dz rows are built for dw (:func:`conv2d_weight_grad_lanes`) and dx
  (:func:`conv2d_input_grad_lanes`), never as a full-size array.  db is summed from the same rows.

Work is split over images: thread t takes one chunk of the batch and, for dw and db, keeps its
own partial sums ``dw_part[t]``; the wrapper adds them (no races, deterministic).  Stride 1 only
(other strides keep the v1-v3 paths).  Like v5, every kernel here must be compiled with the SLP
vectoriser on: the wrappers below compile them inside ``functional.slp_vectorizer()``, with
``fastmath={"contract"}`` (FMAs, no reassociation, so LLVM does not turn t into a reduction).
``tests/layers/test_kernels_train.py`` checks the assembly and every kernel against the references.
"""
import numpy as np
from numba import njit, prange

from ece662.layers.checks import check_float32
from ece662.layers.functional import check_conv_args, pad_image, pooled_conv_size, slp_vectorizer, thread_count
from ece662.layers.kernels import fill_patches
from ece662.layers.shapes import conv_output_size

DW_POSITIONS = 1024  # about how many positions one dw chunk holds (the tile's t loop; measured: longer is faster)
NO_WINNER = 4       # ``code`` of a pooling block whose maximum is <= 0: no gradient flows back


# ============================================================================ the tile
@njit(cache=True, fastmath={"contract"})
def tile_4x16(r0, r1, r2, r3, B, fb, n, acc):
    """acc[j, l] = sum_{t < n} r_j[t] * B[t, fb, l] for the 4 rows r_j (1-D) and the 16 lanes of
    block fb of B (T, Fb, 16); acc: (4, 16), overwritten.  64 named sums: SLP keeps them in eight
    8-lane registers (see the module docstring)."""
    zero = np.float32(0.0)
    s0_0 = s0_1 = s0_2 = s0_3 = s0_4 = s0_5 = s0_6 = s0_7 = zero
    s0_8 = s0_9 = s0_10 = s0_11 = s0_12 = s0_13 = s0_14 = s0_15 = zero
    s1_0 = s1_1 = s1_2 = s1_3 = s1_4 = s1_5 = s1_6 = s1_7 = zero
    s1_8 = s1_9 = s1_10 = s1_11 = s1_12 = s1_13 = s1_14 = s1_15 = zero
    s2_0 = s2_1 = s2_2 = s2_3 = s2_4 = s2_5 = s2_6 = s2_7 = zero
    s2_8 = s2_9 = s2_10 = s2_11 = s2_12 = s2_13 = s2_14 = s2_15 = zero
    s3_0 = s3_1 = s3_2 = s3_3 = s3_4 = s3_5 = s3_6 = s3_7 = zero
    s3_8 = s3_9 = s3_10 = s3_11 = s3_12 = s3_13 = s3_14 = s3_15 = zero
    for t in range(n):
        w = B[t, fb]                     # 16 lanes of the vector operand, contiguous
        x0 = r0[t]                       # one value per tile row, broadcast
        x1 = r1[t]
        x2 = r2[t]
        x3 = r3[t]
        u = w[0]
        s0_0 += x0 * u; s1_0 += x1 * u; s2_0 += x2 * u; s3_0 += x3 * u
        u = w[1]
        s0_1 += x0 * u; s1_1 += x1 * u; s2_1 += x2 * u; s3_1 += x3 * u
        u = w[2]
        s0_2 += x0 * u; s1_2 += x1 * u; s2_2 += x2 * u; s3_2 += x3 * u
        u = w[3]
        s0_3 += x0 * u; s1_3 += x1 * u; s2_3 += x2 * u; s3_3 += x3 * u
        u = w[4]
        s0_4 += x0 * u; s1_4 += x1 * u; s2_4 += x2 * u; s3_4 += x3 * u
        u = w[5]
        s0_5 += x0 * u; s1_5 += x1 * u; s2_5 += x2 * u; s3_5 += x3 * u
        u = w[6]
        s0_6 += x0 * u; s1_6 += x1 * u; s2_6 += x2 * u; s3_6 += x3 * u
        u = w[7]
        s0_7 += x0 * u; s1_7 += x1 * u; s2_7 += x2 * u; s3_7 += x3 * u
        u = w[8]
        s0_8 += x0 * u; s1_8 += x1 * u; s2_8 += x2 * u; s3_8 += x3 * u
        u = w[9]
        s0_9 += x0 * u; s1_9 += x1 * u; s2_9 += x2 * u; s3_9 += x3 * u
        u = w[10]
        s0_10 += x0 * u; s1_10 += x1 * u; s2_10 += x2 * u; s3_10 += x3 * u
        u = w[11]
        s0_11 += x0 * u; s1_11 += x1 * u; s2_11 += x2 * u; s3_11 += x3 * u
        u = w[12]
        s0_12 += x0 * u; s1_12 += x1 * u; s2_12 += x2 * u; s3_12 += x3 * u
        u = w[13]
        s0_13 += x0 * u; s1_13 += x1 * u; s2_13 += x2 * u; s3_13 += x3 * u
        u = w[14]
        s0_14 += x0 * u; s1_14 += x1 * u; s2_14 += x2 * u; s3_14 += x3 * u
        u = w[15]
        s0_15 += x0 * u; s1_15 += x1 * u; s2_15 += x2 * u; s3_15 += x3 * u
    a = acc[0]
    a[0] = s0_0; a[1] = s0_1; a[2] = s0_2; a[3] = s0_3; a[4] = s0_4; a[5] = s0_5; a[6] = s0_6; a[7] = s0_7
    a[8] = s0_8; a[9] = s0_9; a[10] = s0_10; a[11] = s0_11; a[12] = s0_12; a[13] = s0_13; a[14] = s0_14; a[15] = s0_15
    a = acc[1]
    a[0] = s1_0; a[1] = s1_1; a[2] = s1_2; a[3] = s1_3; a[4] = s1_4; a[5] = s1_5; a[6] = s1_6; a[7] = s1_7
    a[8] = s1_8; a[9] = s1_9; a[10] = s1_10; a[11] = s1_11; a[12] = s1_12; a[13] = s1_13; a[14] = s1_14; a[15] = s1_15
    a = acc[2]
    a[0] = s2_0; a[1] = s2_1; a[2] = s2_2; a[3] = s2_3; a[4] = s2_4; a[5] = s2_5; a[6] = s2_6; a[7] = s2_7
    a[8] = s2_8; a[9] = s2_9; a[10] = s2_10; a[11] = s2_11; a[12] = s2_12; a[13] = s2_13; a[14] = s2_14; a[15] = s2_15
    a = acc[3]
    a[0] = s3_0; a[1] = s3_1; a[2] = s3_2; a[3] = s3_3; a[4] = s3_4; a[5] = s3_5; a[6] = s3_6; a[7] = s3_7
    a[8] = s3_8; a[9] = s3_9; a[10] = s3_10; a[11] = s3_11; a[12] = s3_12; a[13] = s3_13; a[14] = s3_14; a[15] = s3_15



# ============================================================================ forward
@njit(parallel=True, cache=True, fastmath={"contract"})
def conv2d_relu_pool2_train(xp, wp, bp, HH, WW, F, scratch, accs, out, code):
    """Conv (stride 1) + bias + ReLU + 2x2/2 max pool, keeping what backward needs.

    xp: (N, C, Hp, Wp); wp: (K, Fb, 16) packed weights, wp[k, fb, l] = w[16*fb + l] at tap
    k = (c, kh, kw); bp: (Fb, 16); scratch: (T, 2*W', K) the patch rows of one row of blocks;
    accs: (T, 4, 16); out: (N, F, H'//2, W'//2); code: (N, F, H'//2, W'//2) int8, the winner of
    each block (0..3) or NO_WINNER."""
    N, C = xp.shape[0], xp.shape[1]
    K, Fb, _ = wp.shape
    _, _, Hq, Wq = out.shape
    T = scratch.shape[0]
    W_out = xp.shape[3] - WW + 1
    cidx = np.arange(C)
    zero = np.float32(0.0)
    chunk = (N + T - 1) // T
    for t in prange(T):
        pat = scratch[t]
        acc = accs[t]
        best = np.empty(16, np.float32)
        won = np.empty(16, np.int8)
        for n in range(t * chunk, min(N, (t + 1) * chunk)):
            for bi in range(Hq):
                fill_patches(xp[n], cidx, HH, WW, 1, 2 * bi, 2, 2 * Wq, W_out, pat)
                for bj in range(Wq):
                    p0 = 2 * bj                  # the block's 4 positions, row-major
                    for fb in range(Fb):
                        tile_4x16(pat[p0], pat[p0 + 1], pat[p0 + W_out], pat[p0 + W_out + 1], wp, fb, K, acc)
                        # epilogue, branch-free so it vectorises (the winner is random: branches
                        # would mispredict): bias, the block's first maximum, ReLU
                        for l in range(16):
                            bias = bp[fb, l]
                            z0 = acc[0, l] + bias
                            z1 = acc[1, l] + bias
                            z2 = acc[2, l] + bias
                            z3 = acc[3, l] + bias
                            m = max(max(z0, z1), max(z2, z3))
                            c = np.int8(3)
                            c = np.int8(2) if z2 == m else c
                            c = np.int8(1) if z1 == m else c
                            c = np.int8(0) if z0 == m else c
                            best[l] = max(m, zero)
                            won[l] = c if m > zero else np.int8(NO_WINNER)
                        for l in range(min(16, F - 16 * fb)):
                            out[n, 16 * fb + l, bi, bj] = best[l]
                            code[n, 16 * fb + l, bi, bj] = won[l]


@njit(cache=True, fastmath={"contract"})
def conv_lanes_image(x_n, cidx, wp, bp, HH, WW, F, pat, acc, out_n):
    """One image of a stride-1 conv, output channels as lanes: out_n (F, H', W') = conv of
    x_n (C, Hin, Win) (already padded) with wp (K, Fb, 16), plus bp (Fb, 16).  The output is
    done in chunks of rows whose patches fill pat (R*W' + 3 rows, K); tiles are 4 consecutive
    positions of a chunk (the last one padded with stale rows that are never written out)."""
    K, Fb, _ = wp.shape
    _, H_out, W_out = out_n.shape
    R = max(1, (pat.shape[0] - 3) // W_out)
    for i0 in range(0, H_out, R):
        rows = min(R, H_out - i0)
        fill_patches(x_n, cidx, HH, WW, 1, i0, rows, W_out, W_out, pat)
        P = rows * W_out
        for p in range(0, P, 4):
            for fb in range(Fb):
                tile_4x16(pat[p], pat[p + 1], pat[p + 2], pat[p + 3], wp, fb, K, acc)
                for q in range(min(4, P - p)):
                    i = i0 + (p + q) // W_out
                    j = (p + q) % W_out
                    for l in range(min(16, F - 16 * fb)):
                        out_n[16 * fb + l, i, j] = acc[q, l] + bp[fb, l]


@njit(parallel=True, cache=True, fastmath={"contract"})
def conv2d_forward_lanes(xp, wp, bp, HH, WW, F, scratch, accs, out):
    """A plain conv (stride 1): out (N, F, H', W') of xp (N, C, Hp, Wp); scratch (T, R*W'+3, K)."""
    N, C = xp.shape[0], xp.shape[1]
    T = scratch.shape[0]
    cidx = np.arange(C)
    chunk = (N + T - 1) // T
    for t in prange(T):
        for n in range(t * chunk, min(N, (t + 1) * chunk)):
            conv_lanes_image(xp[n], cidx, wp, bp, HH, WW, F, scratch[t], accs[t], out[n])


# ============================================================================ backward
@njit(cache=True)
def gradient_rows(dout, code, pooled, n, i0, rows, W_use, dz):
    """The conv's gradient at rows i0 .. i0+rows-1 (columns < W_use) of image n, channels as
    lanes: dz[a*W_use + j, f // 16, f % 16] = dz[n, f, i0 + a, j].  ``pooled``: dout is the
    gradient of the 2x2 max pool after a ReLU, put back at each block's winner (``code``);
    else dout is the conv's gradient itself."""
    F = dout.shape[1]
    Fb = dz.shape[1]
    for p in range(rows * W_use):
        for fb in range(Fb):
            for l in range(16):
                dz[p, fb, l] = 0.0
    if pooled:                                        # rows i0 .. i0+rows-1 are rows//2 rows of blocks
        for f in range(F):
            for a in range(rows // 2):
                bi = i0 // 2 + a
                for bj in range(W_use // 2):
                    c = code[n, f, bi, bj]
                    if c != NO_WINNER:
                        dz[(2 * a + c // 2) * W_use + 2 * bj + c % 2, f // 16, f % 16] = dout[n, f, bi, bj]
    else:
        for f in range(F):
            for a in range(rows):
                for j in range(W_use):
                    dz[a * W_use + j, f // 16, f % 16] = dout[n, f, i0 + a, j]


@njit(parallel=True, cache=True, fastmath={"contract"})
def conv2d_weight_grad_lanes(xp, dout, code, pooled, HH, WW, H_use, W_use, patTs, dzs, accs, dw_part, db_part):
    """dw and db, filters as lanes.  xp: (N, C, Hp, Wp); dout, code: see :func:`gradient_rows`;
    H_use x W_use: the conv output positions that can carry gradient (all of them, or the
    2x2 blocks of the pool); patTs: (T, Kp, R*W_use) for R rows per chunk with Kp = K rounded up to 4 (rows K.. zero);
    dzs: (T, R*W_use, Fb, 16); accs: (T, 4, 16); dw_part: (T, Kp, Fb, 16) and db_part: (T, Fb, 16),
    zeroed, one slice per thread."""
    N, C = xp.shape[0], xp.shape[1]
    T, Kp, _ = patTs.shape
    Fb = dzs.shape[2]
    K = C * HH * WW
    R = patTs.shape[2] // W_use                       # rows per chunk (even when pooled)
    chunk = (N + T - 1) // T
    for t in prange(T):
        patT = patTs[t]
        dz = dzs[t]
        acc = accs[t]
        dwp = dw_part[t]
        dbp = db_part[t]
        for k in range(K, Kp):                        # padding taps: zero rows, zero gradient
            for p in range(patT.shape[1]):
                patT[k, p] = 0.0
        for n in range(t * chunk, min(N, (t + 1) * chunk)):
            for i0 in range(0, H_use, R):             # R rows of positions at a time
                rows = min(R, H_use - i0)
                P = rows * W_use
                gradient_rows(dout, code, pooled, n, i0, rows, W_use, dz)
                for p in range(P):
                    for fb in range(Fb):
                        for l in range(16):
                            dbp[fb, l] += dz[p, fb, l]
                # row k = (c, kh, kw) of patT: what tap k sees at the chunk's positions
                for c in range(C):
                    for kh in range(HH):
                        for kw in range(WW):
                            row = patT[(c * HH + kh) * WW + kw]
                            for a in range(rows):
                                src = xp[n, c, i0 + a + kh]
                                for j in range(W_use):
                                    row[a * W_use + j] = src[j + kw]
                for kb in range(0, Kp, 4):            # 4 taps x 16 filters per tile, t over positions
                    for fb in range(Fb):
                        tile_4x16(patT[kb], patT[kb + 1], patT[kb + 2], patT[kb + 3], dz, fb, P, acc)
                        for j in range(4):
                            for l in range(16):
                                dwp[kb + j, fb, l] += acc[j, l]


@njit(parallel=True, cache=True, fastmath={"contract"})
def conv2d_input_grad_lanes(dout, code, pooled, off_h, off_w, wq, bq, HH, WW, C, dzqs, scratch, accs, dx):
    """dx (N, C, H, W), input channels as lanes: per image, the conv's gradient is laid out
    zero-padded, dzq[f, a, b] = dz[f, a - off_h, b - off_w] (off_h = HH-1-pad), and convolved with
    the flipped, transposed filters wq (F*HH*WW, Cb, 16) (bq: zeros).  dout, code, pooled: see
    :func:`gradient_rows`; dzqs: (T, F, H+HH-1, W+WW-1); scratch: (T, R*W+3, F*HH*WW)."""
    N, F = dout.shape[0], dout.shape[1]
    T, _, Hz, Wz = dzqs.shape
    cidx = np.arange(F)
    chunk = (N + T - 1) // T
    for t in prange(T):
        dzq = dzqs[t]
        for n in range(t * chunk, min(N, (t + 1) * chunk)):
            for f in range(F):
                for a in range(Hz):
                    for b in range(Wz):
                        dzq[f, a, b] = 0.0
            for f in range(F):
                for i in range(dout.shape[2]):
                    for j in range(dout.shape[3]):
                        g = dout[n, f, i, j]
                        a, b = i + off_h, j + off_w
                        if pooled:                    # put the pooled gradient back at the winner
                            c = code[n, f, i, j]
                            if c == NO_WINNER:
                                continue
                            a, b = 2 * i + c // 2 + off_h, 2 * j + c % 2 + off_w
                        if 0 <= a < Hz and 0 <= b < Wz:
                            dzq[f, a, b] = g
            conv_lanes_image(dzq, cidx, wq, bq, HH, WW, C, scratch[t], accs[t], dx[n])


# ============================================================================ wrappers
def pack_lanes(wk):
    """``wk (K, F)`` -> ``(K, Fb, 16)``, Fb = ceil(F / 16): row k holds the F values of tap k in
    blocks of 16 lanes, zero beyond F."""
    K, F = wk.shape
    Fb = max(1, -(-F // 16))
    wp = np.zeros((K, Fb * 16), dtype=np.float32)
    wp[:, :F] = wk
    return wp.reshape(K, Fb, 16)


def _pack_bias(b, Fb):
    bp = np.zeros(Fb * 16, dtype=np.float32)
    bp[:b.shape[0]] = b
    return bp.reshape(Fb, 16)


def _rows_per_chunk(W_out, positions=64):
    """How many output rows one patch chunk of :func:`conv_lanes_image` holds (about 64 positions)."""
    return max(1, positions // max(W_out, 1))


def conv2d_forward_lanes_numba(x, w, b, pad=0):
    """Convolution forward (stride 1), output channels as lanes; fast twin of
    ``reference.conv2d_forward_reference(x, w, b, 1, pad)``.

    Examples
    --------
    >>> x = np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4)
    >>> w = np.ones((1, 1, 2, 2), dtype=np.float32)
    >>> conv2d_forward_lanes_numba(x, w, None)[0, 0]
    array([[10., 14., 18.],
           [26., 30., 34.],
           [42., 46., 50.]], dtype=float32)
    """
    x, w, b = check_conv_args(x, w, b, "conv2d_forward_lanes")
    N, C, H, W = x.shape
    F, _, HH, WW = w.shape
    H_out, W_out = conv_output_size(H, HH, 1, pad), conv_output_size(W, WW, 1, pad)
    K = C * HH * WW
    wp = pack_lanes(w.reshape(F, K).T)
    bp = _pack_bias(b, wp.shape[1])
    out = np.empty((N, F, H_out, W_out), dtype=np.float32)
    T = max(1, min(thread_count(), N))
    scratch = np.zeros((T, _rows_per_chunk(W_out) * W_out + 3, K), dtype=np.float32)
    with slp_vectorizer():
        conv2d_forward_lanes(np.ascontiguousarray(pad_image(x, pad)), wp, bp, HH, WW, F, scratch,
                             np.empty((T, 4, 16), np.float32), out)
    return out


def conv2d_relu_maxpool2_train(x, w, b, pad=0, alive_f=None):
    """Conv (stride 1) + ReLU + 2x2 max pool for training: the pooled output and ``code``.

    ``out`` equals ``maxpool2d_forward_reference(relu_forward_reference(conv2d_forward_reference(
    x, w, b, 1, pad)), 2, 2)``; ``code (N, F, H'//2, W'//2) int8`` says, per pooled output, which
    position of its 2x2 block won (0..3, row-major, first maximum) or ``NO_WINNER`` (4) where the
    maximum is <= 0.  :func:`conv2d_relu_maxpool2_train_backward` needs it and x.

    Returns
    -------
    out : ndarray, (N, F, H'//2, W'//2) float32
    code : ndarray, (N, F, H'//2, W'//2) int8

    Examples
    --------
    >>> x = np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4)
    >>> w = np.ones((1, 1, 1, 1), dtype=np.float32)
    >>> out, code = conv2d_relu_maxpool2_train(x, w, np.array([-6.0], np.float32))
    >>> out[0, 0], code[0, 0]
    (array([[0., 1.],
           [7., 9.]], dtype=float32), array([[4, 3],
           [3, 3]], dtype=int8))
    """
    where = "conv2d_relu_maxpool2_train"
    x, w, b = check_conv_args(x, w, b, where)
    N, C, H, W = x.shape
    F, _, HH, WW = w.shape
    H_out, W_out = pooled_conv_size(x, w, pad, where)
    out = np.empty((N, F, H_out // 2, W_out // 2), dtype=np.float32)
    code = np.empty(out.shape, dtype=np.int8)
    if alive_f is not None and not np.all(alive_f):
        alive_f = np.asarray(alive_f, dtype=bool)
        dead = ~alive_f
        out[:, dead] = np.maximum(b[dead], 0)[None, :, None, None]
        code[:, dead] = np.where(b[dead] > 0, 0, NO_WINNER).astype(np.int8)[None, :, None, None]
        if alive_f.any():
            out[:, alive_f], code[:, alive_f] = conv2d_relu_maxpool2_train(x, w[alive_f], b[alive_f], pad)
        return out, code
    K = C * HH * WW
    wp = pack_lanes(w.reshape(F, K).T)
    bp = _pack_bias(b, wp.shape[1])
    T = max(1, min(thread_count(), N))
    with slp_vectorizer():
        conv2d_relu_pool2_train(np.ascontiguousarray(pad_image(x, pad)), wp, bp, HH, WW, F,
                                np.zeros((T, 2 * W_out, K), np.float32), np.empty((T, 4, 16), np.float32),
                                out, code)
    return out, code


def _weight_grad(d, code, pooled, xp, F, HH, WW, H_use, W_use):
    """dw (F, C, HH, WW) and db (F,) from the conv gradient (see :func:`gradient_rows`)."""
    N, C = xp.shape[0], xp.shape[1]
    K = C * HH * WW
    Kp = -(-K // 4) * 4
    Fb = max(1, -(-F // 16))
    T = max(1, min(thread_count(), N))
    R = min(H_use, max(2, DW_POSITIONS // max(W_use, 1) // 2 * 2))     # rows per chunk, even
    dw_part = np.zeros((T, Kp, Fb, 16), dtype=np.float32)
    db_part = np.zeros((T, Fb, 16), dtype=np.float32)
    with slp_vectorizer():
        conv2d_weight_grad_lanes(xp, d, code, pooled, HH, WW, H_use, W_use,
                                 np.zeros((T, Kp, max(R, 1) * W_use), np.float32),
                                 np.zeros((T, max(R, 1) * W_use, Fb, 16), np.float32),
                                 np.empty((T, 4, 16), np.float32), dw_part, db_part)
    dw = dw_part.sum(axis=0).reshape(Kp, Fb * 16)[:K, :F]
    db = db_part.sum(axis=0).reshape(-1)[:F]
    return np.ascontiguousarray(dw.T).reshape(F, C, HH, WW), np.ascontiguousarray(db)


def _input_grad(d, code, pooled, w, pad, H, W):
    """dx (N, C, H, W) from the conv gradient (see :func:`gradient_rows`)."""
    N = d.shape[0]
    F, C, HH, WW = w.shape
    # wq[(f, kh, kw), c] = w[f, c, HH-1-kh, WW-1-kw]: the filters flipped and transposed
    wq = pack_lanes(np.ascontiguousarray(w[:, :, ::-1, ::-1].transpose(0, 2, 3, 1)).reshape(F * HH * WW, C))
    bq = np.zeros((wq.shape[1], 16), dtype=np.float32)
    dx = np.empty((N, C, H, W), dtype=np.float32)
    T = max(1, min(thread_count(), N))
    with slp_vectorizer():
        conv2d_input_grad_lanes(d, code, pooled, HH - 1 - pad, WW - 1 - pad, wq, bq, HH, WW, C,
                                np.empty((T, F, H + HH - 1, W + WW - 1), np.float32),
                                np.zeros((T, _rows_per_chunk(W) * W + 3, F * HH * WW), np.float32),
                                np.empty((T, 4, 16), np.float32), dx)
    return dx


def _check_backward_args(dout, x, w, expected, where):
    x, w, _ = check_conv_args(x, w, None, where)
    dout = check_float32(dout, "dout", where)
    if dout.shape != expected:
        raise ValueError(f"{where}: expected dout of shape {expected}, got {dout.shape}")
    return dout, x, w


def conv2d_backward_lanes_numba(dout, x, w, pad=0, need_dx=True):
    """Convolution backward (stride 1), channels as lanes; fast twin of
    ``reference.conv2d_backward_reference(dout, x, w, 1, pad)``.

    Returns
    -------
    dx : ndarray, (N, C, H, W), or None with ``need_dx=False``
    dw : ndarray, (F, C, HH, WW)
    db : ndarray, (F,)
    """
    where = "conv2d_backward_lanes"
    N, C, H, W = np.shape(x)
    F, _, HH, WW = np.shape(w)
    H_out, W_out = conv_output_size(H, HH, 1, pad), conv_output_size(W, WW, 1, pad)
    dout, x, w = _check_backward_args(dout, x, w, (N, F, H_out, W_out), where)
    none = np.zeros((1, 1, 1, 1), np.int8)
    dw, db = _weight_grad(dout, none, False, np.ascontiguousarray(pad_image(x, pad)), F, HH, WW, H_out, W_out)
    dx = _input_grad(dout, none, False, w, pad, H, W) if need_dx else None
    return dx, dw, db


def conv2d_relu_maxpool2_train_backward(dpool, code, x, w, pad=0, need_dx=True):
    """Backward of :func:`conv2d_relu_maxpool2_train`: max-pool, ReLU and conv backward in one.

    Equals ``conv2d_backward_reference(relu_backward_reference(maxpool2d_backward_reference(
    dpool, r, 2, 2), z), x, w, 1, pad)`` with z the conv output and r = relu(z), using only
    ``code`` from the forward pass.

    Returns
    -------
    dx : ndarray, (N, C, H, W), or None with ``need_dx=False``
    dw : ndarray, (F, C, HH, WW)
    db : ndarray, (F,)
    """
    where = "conv2d_relu_maxpool2_train_backward"
    N, C, H, W = np.shape(x)
    F, _, HH, WW = np.shape(w)
    Hq, Wq = conv_output_size(H, HH, 1, pad) // 2, conv_output_size(W, WW, 1, pad) // 2
    dpool, x, w = _check_backward_args(dpool, x, w, (N, F, Hq, Wq), where)
    code = np.asarray(code)
    if code.shape != dpool.shape or code.dtype != np.int8:
        raise ValueError(f"{where}: expected code as int8 of shape {dpool.shape} (from "
                         f"conv2d_relu_maxpool2_train), got {code.dtype} of shape {code.shape}")
    code = np.ascontiguousarray(code)
    dw, db = _weight_grad(dpool, code, True, np.ascontiguousarray(pad_image(x, pad)), F, HH, WW, 2 * Hq, 2 * Wq)
    dx = _input_grad(dpool, code, True, w, pad, H, W) if need_dx else None
    return dx, dw, db
