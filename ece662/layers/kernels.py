"""Numba kernels: loops only.

No validation, no allocation policy, no padding decisions live here: the thin
wrappers in ``ece662.layers.functional`` check inputs, pad, allocate every
output and scratch buffer, and then call one of these.  The plain-loop specs
are in ``ece662.layers.reference``; every kernel is tested against them.

This file holds the kernels the layers and the plan run: v3 (any conv on its own), v6 (conv + ReLU +
2x2 pool in eval mode), the backward's dw tile for strided convs, and pooling, linear, activations and
batch norm.  The steps that led there (v1, v2, v4, v5, sparse taps, backward v1/v2) are kept in the lab,
``kernels_lab.py``, to be read in the order of this catalogue; ``kernels_sparse.py`` and
``kernels_train.py`` hold the unstructured-sparse and the training kernels.

Versions (where each lives: [lab] ``kernels_lab.py``, otherwise this file)
--------
conv forward
    v1 [lab] ``conv2d_forward_direct``  any stride: six nested loops, output pixel by pixel.
    v2 [lab] ``conv2d_forward_rows``    stride 1: "flattened rows".  A padded image channel of
       shape (Hp, Wp) is one vector of length Hp*Wp; the output position (i, j) reads
       x[(i+kh)*Wp + (j+kw)] = x[i*Wp + j + off] with off = kh*Wp + kw.  So for each tap
       (c, kh, kw) the whole output plane is one long, contiguous axpy
       ``acc[p] += w * x[p + off]`` over p = i*Wp + j, which LLVM vectorises.  Columns
       j >= W' are computed and thrown away (Wp - W' of every Wp).
    v3 ``conv2d_forward_patches`` any stride, register-tiled (a conv on its own, and strided convs).  Per image,
       copy every receptive field into a row of a patch matrix ``pat (P, K)`` (K = C*HH*WW,
       padded with zeros to a multiple of 16 so no scalar tail is left), then compute a tile
       of 2 output positions x 4 filters at a time as 8 dot products over k that share their
       loads: 6 vector loads feed 8 fused multiply-adds, and the 8 running sums stay in
       registers.  This is the trick behind every fast GEMM, written as plain loops.
    v4 [lab] ``conv2d_relu_pool2_patches`` stride 1, conv + ReLU + 2x2/2 max pool in one pass (eval
       mode): the same patch matrix, tiles of one 2x2 block of output positions x 4 filters
       (sixteen dot products: 8 loads feed 16 multiply-adds per step); only the block's
       maximum, after the ReLU, is written.  The full-size conv output never exists.
    v5 [lab] ``conv2d_relu_pool2_tiled`` the same fusion as v4, with the output channels as the vector
       lanes (channels-last in registers): the weights are packed tap-major, ``wp (K, F/16, 16)``,
       so the 16 filters' weights of one tap are one contiguous row.  A tile is the 4 positions
       of a 2x2 block x 16 filters = 64 sums, held as eight 8-lane AVX2 registers (this machine
       has AVX2, 16 vector registers).  Per tap k: 2 vector loads of weights + 4 broadcasts of
       the inputs feed 8 vector FMAs (64 multiply-adds), i.e. 0.75 loads per vector FMA and no
       horizontal sum at all (v3/v4 vectorise along k, so every output ends in one).  LLVM only
       packs the 64 scalar sums into registers with its SLP vectoriser, which numba leaves off:
       ``functional.conv2d_relu_maxpool2_tiled`` turns it on while the kernel compiles, and
       ``fastmath={"contract"}`` (FMAs, no reassociation) keeps the loop vectoriser from
       turning k into a reduction instead.  The live filters alone are packed, so filter
       skipping costs nothing beyond packing.
    v6 ``conv2d_relu_pool2_lanes`` v5 without the patch matrix, the one the plan uses.  Copying
       the receptive fields costs one load and one store per tap and position whatever the
       filters: for conv1 (75 taps) at 8 live filters that is as many moves as multiply-adds.
       But a patch-matrix row is only a way to find tap k of position (i, j): in the padded
       image flattened to one vector it sits at ``i*Wp + j + offs[k]`` with
       ``offs[k] = c*Hp*Wp + kh*Wp + kw``, so the tile broadcasts straight from the image
       (uint64 offsets: numba adds no negative-index check).  The 1-8 filters left over after
       the 16-wide blocks get a tile of their own, 8 positions (two neighbouring 2x2 blocks) x
       8 filters: still eight independent 8-lane sums, which is what keeps both FMA units busy
       (an FMA's result is ready 4 cycles later, two start per cycle), at one broadcast per FMA
       (the 16-wide tile needs one per two).
    v1 and v2 take ``alive_f`` (F,) and ``alive_c`` (C,) boolean vectors and skip dead output
    filters and dead input channels outright; v3 and v4 take the lists of live filters
    ``fidx``, dead filters ``didx`` and live channels ``cidx`` instead (their tiles walk over
    live filters only).  A dead filter's output plane is its bias (relu(bias) in v4).  With everything alive they are dense kernels.
sparse conv forward (unstructured masks)
    [lab] ``conv2d_forward_sparse_taps`` stride 1: per filter, the list of its non-zero taps as
       (offset, weight) pairs, CSR-style (``ptr[f]:ptr[f+1]``); offset = c*Hp*Wp + kh*Wp + kw
       into the flattened padded image, stored as uint32.  Each tap is one axpy over the
       flattened rows, as in v2, so work is proportional to the non-zeros -- but an axpy is
       slower per multiply-add than v3's register tile, hence a break-even sparsity.
conv backward
    v1 [lab] ``conv2d_backward_direct`` any stride, direct loops.
    v2 [lab] ``conv2d_backward_rows``   stride 1, flattened rows as above: dw is a dot product
       of two contiguous vectors per tap, dx an axpy per tap.
    v3 splits the work in two; ``Conv2d.backward`` runs it for strided convs and with
       ``kernels='reference'``, and the lanes kernels of ``kernels_train`` (one register tile) for
       every stride-1 conv:
       dx is a *forward* convolution of dout, zero-padded by HH-1 / WW-1, with the filters
       flipped and transposed (``conv2d_forward_patches`` again), and
       ``conv2d_weight_grad_patches`` computes dw[f, k] = sum_p dout[n, f, p] * patT[k, p]
       from the transposed patch matrix ``patT (K, P)``, in tiles of 4 filters x 2 taps
       (eight dot products over p that share their loads, like the forward tile).
    All split the batch into ``T`` chunks (one per thread) that each accumulate their own
    slice ``dw_part[t]``; the wrapper sums the slices (no races, deterministic).
max pool forward / backward, linear forward / backward, relu forward / backward:
    one version each, parallel over the batch (or the output features).

Indices: loop counters are plain ``range`` values; numba vectorises the inner
``p`` loops.  All arrays are C-contiguous float32 (the wrappers ensure it).
"""
import os

import numba
import numpy as np
from numba import njit, prange

# Numba's default OpenMP layer fights OpenBLAS' threads when numba kernels and
# numpy BLAS calls alternate (measured: much slower training steps); the
# workqueue layer does not.  An explicit NUMBA_THREADING_LAYER still wins.
if "NUMBA_THREADING_LAYER" not in os.environ:
    numba.config.THREADING_LAYER = "workqueue"


# ============================================================================ conv forward
@njit(cache=True)
def fill_patches(x_n, cidx, HH, WW, stride, i0, rows, cols, W_out, pat):
    """Patch-matrix rows of one image: row p = (i - i0)*W_out + j, for output rows
    i0 <= i < i0 + rows and columns j < cols, holds the receptive field of output position
    (i, j) in (c, kh, kw) order, over the channels ``cidx``; each (c, kh) contributes a run
    of WW neighbours of one input row.  x_n: (C, Hp, Wp); pat: (P, Kp), columns >=
    len(cidx)*HH*WW untouched."""
    for ci in range(cidx.shape[0]):
        c = cidx[ci]
        for kh in range(HH):
            k0 = (ci * HH + kh) * WW
            for i in range(rows):
                src = x_n[c, (i0 + i) * stride + kh]
                for j in range(cols):
                    dst = pat[i * W_out + j]
                    s0 = j * stride
                    if WW == 5:                      # the common widths, spelled out so the
                        dst[k0] = src[s0]            # copies become vector moves
                        dst[k0 + 1] = src[s0 + 1]
                        dst[k0 + 2] = src[s0 + 2]
                        dst[k0 + 3] = src[s0 + 3]
                        dst[k0 + 4] = src[s0 + 4]
                    elif WW == 3:
                        dst[k0] = src[s0]
                        dst[k0 + 1] = src[s0 + 1]
                        dst[k0 + 2] = src[s0 + 2]
                    else:
                        for kw in range(WW):
                            dst[k0 + kw] = src[s0 + kw]


@njit(parallel=True, cache=True, fastmath=True)
def conv2d_forward_patches(xp, wk, b, fidx, didx, cidx, HH, WW, stride, relu, scratch, out):
    """v3. xp: (N, C, Hp, Wp); wk: (F, Kp) the live channels' weights flattened in
    (c, kh, kw) order, zero beyond len(cidx)*HH*WW; fidx: live filters; cidx: live input
    channels; didx: dead filters; relu: apply max(., 0) to every output (a fused ReLU);
    scratch: (T, P, Kp) with P = H'*W'; out: (N, F, H', W') written in full."""
    N = xp.shape[0]
    F, Kp = wk.shape
    _, _, H_out, W_out = out.shape
    T = scratch.shape[0]
    P = H_out * W_out
    K = cidx.shape[0] * HH * WW
    nf = fidx.shape[0]
    zero = np.float32(0.0)
    chunk = (N + T - 1) // T
    for t in prange(T):
        pat = scratch[t]
        for p in range(P):                           # the zero tail k >= K is never written again
            for k in range(K, Kp):
                pat[p, k] = 0.0
        for n in range(t * chunk, min(N, (t + 1) * chunk)):
            # dead filters: the bias plane (the dense result of all-zero weights)
            for q in range(didx.shape[0]):
                f = didx[q]
                v = b[f]
                if relu and v < 0:
                    v = np.float32(0.0)
                for i in range(H_out):
                    for j in range(W_out):
                        out[n, f, i, j] = v
            fill_patches(xp[n], cidx, HH, WW, stride, 0, H_out, W_out, W_out, pat)
            # 2 positions x 4 filters per tile, eight dot products sharing their loads
            for p in range(0, P - 1, 2):
                a0 = pat[p]
                a1 = pat[p + 1]
                i0, j0 = p // W_out, p % W_out
                i1, j1 = (p + 1) // W_out, (p + 1) % W_out
                for q in range(0, nf - 3, 4):
                    f0, f1, f2, f3 = fidx[q], fidx[q + 1], fidx[q + 2], fidx[q + 3]
                    w0, w1, w2, w3 = wk[f0], wk[f1], wk[f2], wk[f3]
                    s00 = s01 = s02 = s03 = np.float32(0.0)
                    s10 = s11 = s12 = s13 = np.float32(0.0)
                    for k in range(Kp):
                        u = a0[k]
                        v = a1[k]
                        s00 += u * w0[k]
                        s01 += u * w1[k]
                        s02 += u * w2[k]
                        s03 += u * w3[k]
                        s10 += v * w0[k]
                        s11 += v * w1[k]
                        s12 += v * w2[k]
                        s13 += v * w3[k]
                    s00 += b[f0]
                    s01 += b[f1]
                    s02 += b[f2]
                    s03 += b[f3]
                    s10 += b[f0]
                    s11 += b[f1]
                    s12 += b[f2]
                    s13 += b[f3]
                    if relu:
                        s00, s01, s02, s03 = max(s00, zero), max(s01, zero), max(s02, zero), max(s03, zero)
                        s10, s11, s12, s13 = max(s10, zero), max(s11, zero), max(s12, zero), max(s13, zero)
                    out[n, f0, i0, j0] = s00
                    out[n, f1, i0, j0] = s01
                    out[n, f2, i0, j0] = s02
                    out[n, f3, i0, j0] = s03
                    out[n, f0, i1, j1] = s10
                    out[n, f1, i1, j1] = s11
                    out[n, f2, i1, j1] = s12
                    out[n, f3, i1, j1] = s13
                for q in range(nf - nf % 4, nf):     # leftover filters, one at a time
                    f0 = fidx[q]
                    w0 = wk[f0]
                    s00 = s10 = np.float32(0.0)
                    for k in range(Kp):
                        s00 += a0[k] * w0[k]
                        s10 += a1[k] * w0[k]
                    s00 += b[f0]
                    s10 += b[f0]
                    if relu:
                        s00, s10 = max(s00, zero), max(s10, zero)
                    out[n, f0, i0, j0] = s00
                    out[n, f0, i1, j1] = s10
            if P % 2 == 1:                           # leftover position
                p = P - 1
                a0 = pat[p]
                for q in range(nf):
                    f0 = fidx[q]
                    s00 = np.float32(0.0)
                    for k in range(Kp):
                        s00 += a0[k] * wk[f0, k]
                    s00 += b[f0]
                    if relu:
                        s00 = max(s00, zero)
                    out[n, f0, p // W_out, p % W_out] = s00


# ============================================================================ conv backward
@njit(parallel=True, cache=True, fastmath=True)
def conv2d_weight_grad_patches(dout, xp, HH, WW, stride, scratch, dw_part):
    """v3 dw. dout: (N, F, H', W'); xp: (N, C, Hp, Wp); scratch: (T, K, P) with
    K = C*HH*WW, P = H'*W'; dw_part: (T, F, K) zeroed."""
    N, C, _, _ = xp.shape
    F = dout.shape[1]
    _, _, H_out, W_out = dout.shape
    T, K, P = scratch.shape
    chunk = (N + T - 1) // T
    for t in prange(T):
        patT = scratch[t]
        acc = dw_part[t]
        for n in range(t * chunk, min(N, (t + 1) * chunk)):
            # row k = (c, kh, kw) of patT: what that tap sees at every output position
            for c in range(C):
                for kh in range(HH):
                    for kw in range(WW):
                        row = patT[(c * HH + kh) * WW + kw]
                        for i in range(H_out):
                            for j in range(W_out):
                                row[i * W_out + j] = xp[n, c, i * stride + kh, j * stride + kw]
            d = dout[n].reshape(F, P)
            for f in range(0, F - 3, 4):
                d0, d1, d2, d3 = d[f], d[f + 1], d[f + 2], d[f + 3]
                for k in range(0, K - 1, 2):
                    u0 = patT[k]
                    u1 = patT[k + 1]
                    s00 = s01 = s10 = s11 = np.float32(0.0)
                    s20 = s21 = s30 = s31 = np.float32(0.0)
                    for p in range(P):
                        a = u0[p]
                        b = u1[p]
                        s00 += d0[p] * a
                        s01 += d0[p] * b
                        s10 += d1[p] * a
                        s11 += d1[p] * b
                        s20 += d2[p] * a
                        s21 += d2[p] * b
                        s30 += d3[p] * a
                        s31 += d3[p] * b
                    acc[f, k] += s00
                    acc[f, k + 1] += s01
                    acc[f + 1, k] += s10
                    acc[f + 1, k + 1] += s11
                    acc[f + 2, k] += s20
                    acc[f + 2, k + 1] += s21
                    acc[f + 3, k] += s30
                    acc[f + 3, k + 1] += s31
                if K % 2 == 1:                       # leftover tap
                    u0 = patT[K - 1]
                    for q in range(4):
                        s00 = np.float32(0.0)
                        for p in range(P):
                            s00 += d[f + q, p] * u0[p]
                        acc[f + q, K - 1] += s00
            for f in range(F - F % 4, F):            # leftover filters
                for k in range(K):
                    s00 = np.float32(0.0)
                    for p in range(P):
                        s00 += d[f, p] * patT[k, p]
                    acc[f, k] += s00


# ============================================================================ max pool
@njit(parallel=True, cache=True)
def maxpool2d_forward(x, k, stride, out):
    """x: (N, C, H, W); out: (N, C, H', W'). First maximum wins."""
    N, C, H, W = x.shape
    _, _, H_out, W_out = out.shape
    for n in prange(N):
        for c in range(C):
            for i in range(H_out):
                for j in range(W_out):
                    m = x[n, c, i * stride, j * stride]
                    for a in range(k):
                        for bb in range(k):
                            v = x[n, c, i * stride + a, j * stride + bb]
                            if v > m:
                                m = v
                    out[n, c, i, j] = m


@njit(parallel=True, cache=True)
def maxpool2d_backward(dout, x, k, stride, dx):
    """dout: (N, C, H', W'); x: (N, C, H, W); dx: (N, C, H, W) zeroed."""
    N, C, H, W = x.shape
    _, _, H_out, W_out = dout.shape
    for n in prange(N):
        for c in range(C):
            for i in range(H_out):
                for j in range(W_out):
                    bi, bj = i * stride, j * stride
                    m = x[n, c, bi, bj]
                    for a in range(k):
                        for bb in range(k):
                            v = x[n, c, i * stride + a, j * stride + bb]
                            if v > m:                # strict: the first maximum keeps it
                                m = v
                                bi, bj = i * stride + a, j * stride + bb
                    dx[n, c, bi, bj] += dout[n, c, i, j]


# ============================================================================ linear
@njit(parallel=True, cache=True, fastmath=True)
def linear_forward(x, w, b, out):
    """x: (N, D); w: (M, D); b: (M,); out: (N, M)."""
    N, D = x.shape
    M = w.shape[0]
    for n in prange(N):
        for o in range(M):
            s = np.float32(0.0)
            for i in range(D):
                s += x[n, i] * w[o, i]
            out[n, o] = s + b[o]


@njit(parallel=True, cache=True)
def linear_backward_dx(dout, w, dx):
    """dout: (N, M); w: (M, D); dx: (N, D) zeroed."""
    N, M = dout.shape
    D = w.shape[1]
    for n in prange(N):
        for o in range(M):
            d = dout[n, o]
            for i in range(D):
                dx[n, i] += d * w[o, i]


@njit(parallel=True, cache=True)
def linear_backward_dw(dout, x, dw):
    """dout: (N, M); x: (N, D); dw: (M, D) zeroed."""
    N, M = dout.shape
    D = x.shape[1]
    for o in prange(M):
        for n in range(N):
            d = dout[n, o]
            for i in range(D):
                dw[o, i] += d * x[n, i]


# ============================================================================ checks
@njit(parallel=True, cache=True)
def count_nonfinite(flat):
    """How many NaN or infinite values a 1-D array holds (no temporary array, unlike
    np.isfinite(x).all(), which matters when every layer checks its input)."""
    bad = 0
    for i in prange(flat.shape[0]):
        v = flat[i]
        bad += (v - v) != 0                          # NaN - NaN and inf - inf are NaN
    return bad


# ============================================================================ relu
@njit(parallel=True, cache=True)
def relu_forward(x, out):
    """x, out: 1-D views of the same length."""
    for i in prange(x.shape[0]):
        v = x[i]
        out[i] = v if v > 0 else np.float32(0.0)


@njit(parallel=True, cache=True)
def relu_backward(dout, x, dx):
    """dout, x, dx: 1-D views of the same length."""
    for i in prange(x.shape[0]):
        dx[i] = dout[i] if x[i] > 0 else np.float32(0.0)


# ============================================================================ leaky relu
@njit(parallel=True, cache=True)
def leaky_relu_forward(x, slope, out):
    """x, out: 1-D views of the same length; slope: the negative slope."""
    for i in prange(x.shape[0]):
        v = x[i]
        out[i] = v if v > 0 else slope * v


@njit(parallel=True, cache=True)
def leaky_relu_backward(dout, x, slope, dx):
    """dout, x, dx: 1-D views of the same length."""
    for i in prange(x.shape[0]):
        dx[i] = dout[i] if x[i] > 0 else slope * dout[i]


# ============================================================================ average pool
@njit(parallel=True, cache=True)
def avgpool2d_forward(x, k, stride, out):
    """x: (N, C, H, W); out: (N, C, H', W'): the mean of each k x k window."""
    N, C, H, W = x.shape
    _, _, H_out, W_out = out.shape
    scale = np.float32(1.0 / (k * k))
    for n in prange(N):
        for c in range(C):
            for i in range(H_out):
                for j in range(W_out):
                    s = np.float32(0.0)
                    for a in range(k):
                        for bb in range(k):
                            s += x[n, c, i * stride + a, j * stride + bb]
                    out[n, c, i, j] = s * scale


@njit(parallel=True, cache=True)
def avgpool2d_backward(dout, k, stride, dx):
    """dout: (N, C, H', W'); dx: (N, C, H, W) zeroed: each window gets dout / k^2."""
    N, C, H_out, W_out = dout.shape
    scale = np.float32(1.0 / (k * k))
    for n in prange(N):
        for c in range(C):
            for i in range(H_out):
                for j in range(W_out):
                    g = dout[n, c, i, j] * scale
                    for a in range(k):
                        for bb in range(k):
                            dx[n, c, i * stride + a, j * stride + bb] += g


@njit(parallel=True, cache=True)
def global_avgpool_forward(x, out):
    """x: (N, C, H, W); out: (N, C, 1, 1): the mean of every plane (float64 sum)."""
    N, C, H, W = x.shape
    for n in prange(N):
        for c in range(C):
            s = 0.0
            for i in range(H):
                for j in range(W):
                    s += x[n, c, i, j]
            out[n, c, 0, 0] = s / (H * W)


@njit(parallel=True, cache=True)
def global_avgpool_backward(dout, dx):
    """dout: (N, C, 1, 1); dx: (N, C, H, W) written in full with dout / (H*W)."""
    N, C, H, W = dx.shape
    for n in prange(N):
        for c in range(C):
            g = dout[n, c, 0, 0] / np.float32(H * W)
            for i in range(H):
                for j in range(W):
                    dx[n, c, i, j] = g


# ============================================================================ batch norm
# x3 is the input seen as (N, C, S): S = H*W for BatchNorm2d, 1 (or L) for BatchNorm1d.
@njit(parallel=True, cache=True)
def batchnorm_stats(x3, mean, var):
    """Per channel c: mean and biased variance of x3[:, c, :] (two passes, float64 sums)."""
    N, C, S = x3.shape
    M = N * S
    for c in prange(C):
        s = 0.0
        for n in range(N):
            for i in range(S):
                s += x3[n, c, i]
        m = s / M
        q = 0.0
        for n in range(N):
            for i in range(S):
                d = x3[n, c, i] - m
                q += d * d
        mean[c] = m
        var[c] = q / M


@njit(parallel=True, cache=True, fastmath=True)
def batchnorm_apply(x3, scale, shift, out):
    """out[n, c, :] = x3[n, c, :] * scale[c] + shift[c]: batch norm with its statistics and
    affine parameters folded into one scale and shift per channel."""
    N, C, S = x3.shape
    for n in prange(N):
        for c in range(C):
            a = scale[c]
            b = shift[c]
            for i in range(S):
                out[n, c, i] = x3[n, c, i] * a + b


@njit(parallel=True, cache=True)
def batchnorm_backward(dout3, x3, mean, inv_std, gamma, dx, dgamma, dbeta):
    """Training-mode gradients per channel (see reference.batchnorm_backward_reference):
    dbeta = sum dout, dgamma = sum dout*xhat, dx = gamma*inv_std/M * (M*dout - dbeta - xhat*dgamma)."""
    N, C, S = x3.shape
    M = N * S
    for c in prange(C):
        sb = 0.0
        sg = 0.0
        for n in range(N):
            for i in range(S):
                d = dout3[n, c, i]
                sb += d
                sg += d * (x3[n, c, i] - mean[c]) * inv_std[c]
        dbeta[c] = sb
        dgamma[c] = sg
        k = gamma[c] * inv_std[c] / M
        for n in range(N):
            for i in range(S):
                xhat = (x3[n, c, i] - mean[c]) * inv_std[c]
                dx[n, c, i] = k * (M * dout3[n, c, i] - sb - xhat * sg)


# ============================================================================ conv forward v6 (no patch matrix)
@njit(parallel=True, cache=True, fastmath={"contract"})
def conv2d_relu_pool2_lanes(xflat, offs, Wp, wp, bp, wt, bt, F, tmp, out):
    """v6. v5's fused conv (stride 1) + bias + ReLU + 2x2/2 max pool without a patch matrix.

    xflat: (N, C*Hp*Wp) the padded images, each flattened; offs: (K,) uint64, the offset of tap
    k = (c, kh, kw) in a flattened image, c*Hp*Wp + kh*Wp + kw, so output position (i, j) reads
    ``x[i*Wp + j + offs[k]]``; wp (K, Fb, 16), bp (Fb, 16), wt (K, 8), bt (8,) as in v5; tmp: (T, 16);
    out: (N, F, H'//2, W'//2).
    Tiles: 4 positions (one 2x2 block) x 16 filters, as in v5; and the last 1-8 filters in a tile of
    8 positions (two neighbouring blocks) x 8 filters, so that it too keeps eight accumulators in
    flight (an FMA takes 4 cycles and two issue per cycle: fewer independent sums leave the units idle).
    """
    N = xflat.shape[0]
    K, Fb, _ = wp.shape
    _, _, Hq, Wq = out.shape
    T = tmp.shape[0]
    zero = np.float32(0.0)
    one, two, three = np.uint64(1), np.uint64(2), np.uint64(3)   # unsigned, like the offsets
    chunk = (N + T - 1) // T
    for t in prange(T):
        best = tmp[t]
        for n in range(t * chunk, min(N, (t + 1) * chunk)):
            x = xflat[n]
            for bi in range(Hq):
                for bj in range(Wq):
                    p0 = 2 * bi * Wp + 2 * bj            # the block's top-left position in x
                    r0 = x[p0:]                          # the four positions' views: tap k of
                    r1 = x[p0 + 1:]                      # position q is rq[offs[k]]
                    r2 = x[p0 + Wp:]
                    r3 = x[p0 + Wp + 1:]
                    for fb in range(Fb):
                        s0_0 = s0_1 = s0_2 = s0_3 = s0_4 = s0_5 = s0_6 = s0_7 = zero
                        s0_8 = s0_9 = s0_10 = s0_11 = s0_12 = s0_13 = s0_14 = s0_15 = zero
                        s1_0 = s1_1 = s1_2 = s1_3 = s1_4 = s1_5 = s1_6 = s1_7 = zero
                        s1_8 = s1_9 = s1_10 = s1_11 = s1_12 = s1_13 = s1_14 = s1_15 = zero
                        s2_0 = s2_1 = s2_2 = s2_3 = s2_4 = s2_5 = s2_6 = s2_7 = zero
                        s2_8 = s2_9 = s2_10 = s2_11 = s2_12 = s2_13 = s2_14 = s2_15 = zero
                        s3_0 = s3_1 = s3_2 = s3_3 = s3_4 = s3_5 = s3_6 = s3_7 = zero
                        s3_8 = s3_9 = s3_10 = s3_11 = s3_12 = s3_13 = s3_14 = s3_15 = zero
                        for k in range(K):
                            w = wp[k, fb]
                            o = offs[k]
                            x0 = r0[o]
                            x1 = r1[o]
                            x2 = r2[o]
                            x3 = r3[o]
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
                        bias = bp[fb]
                        best[0] = max(max(max(s0_0, s1_0), max(s2_0, s3_0)) + bias[0], zero)
                        best[1] = max(max(max(s0_1, s1_1), max(s2_1, s3_1)) + bias[1], zero)
                        best[2] = max(max(max(s0_2, s1_2), max(s2_2, s3_2)) + bias[2], zero)
                        best[3] = max(max(max(s0_3, s1_3), max(s2_3, s3_3)) + bias[3], zero)
                        best[4] = max(max(max(s0_4, s1_4), max(s2_4, s3_4)) + bias[4], zero)
                        best[5] = max(max(max(s0_5, s1_5), max(s2_5, s3_5)) + bias[5], zero)
                        best[6] = max(max(max(s0_6, s1_6), max(s2_6, s3_6)) + bias[6], zero)
                        best[7] = max(max(max(s0_7, s1_7), max(s2_7, s3_7)) + bias[7], zero)
                        best[8] = max(max(max(s0_8, s1_8), max(s2_8, s3_8)) + bias[8], zero)
                        best[9] = max(max(max(s0_9, s1_9), max(s2_9, s3_9)) + bias[9], zero)
                        best[10] = max(max(max(s0_10, s1_10), max(s2_10, s3_10)) + bias[10], zero)
                        best[11] = max(max(max(s0_11, s1_11), max(s2_11, s3_11)) + bias[11], zero)
                        best[12] = max(max(max(s0_12, s1_12), max(s2_12, s3_12)) + bias[12], zero)
                        best[13] = max(max(max(s0_13, s1_13), max(s2_13, s3_13)) + bias[13], zero)
                        best[14] = max(max(max(s0_14, s1_14), max(s2_14, s3_14)) + bias[14], zero)
                        best[15] = max(max(max(s0_15, s1_15), max(s2_15, s3_15)) + bias[15], zero)
                        for q in range(min(16, F - 16 * fb)):
                            out[n, 16 * fb + q, bi, bj] = best[q]
                if F > 16 * Fb:                          # the 8-wide tile: two blocks x 8 filters
                    for bj0 in range(0, Wq, 2):
                        bj = min(bj0, Wq - 2)            # odd Wq: the last pair overlaps the one before
                        p0 = 2 * bi * Wp + 2 * bj
                        top = x[p0:]                     # the two rows of the two blocks
                        low = x[p0 + Wp:]
                        s0_0 = s0_1 = s0_2 = s0_3 = s0_4 = s0_5 = s0_6 = s0_7 = zero
                        s1_0 = s1_1 = s1_2 = s1_3 = s1_4 = s1_5 = s1_6 = s1_7 = zero
                        s2_0 = s2_1 = s2_2 = s2_3 = s2_4 = s2_5 = s2_6 = s2_7 = zero
                        s3_0 = s3_1 = s3_2 = s3_3 = s3_4 = s3_5 = s3_6 = s3_7 = zero
                        s4_0 = s4_1 = s4_2 = s4_3 = s4_4 = s4_5 = s4_6 = s4_7 = zero
                        s5_0 = s5_1 = s5_2 = s5_3 = s5_4 = s5_5 = s5_6 = s5_7 = zero
                        s6_0 = s6_1 = s6_2 = s6_3 = s6_4 = s6_5 = s6_6 = s6_7 = zero
                        s7_0 = s7_1 = s7_2 = s7_3 = s7_4 = s7_5 = s7_6 = s7_7 = zero
                        for k in range(K):
                            w = wt[k]
                            o = offs[k]
                            x0 = top[o]
                            x1 = top[o + one]
                            x2 = low[o]
                            x3 = low[o + one]
                            x4 = top[o + two]
                            x5 = top[o + three]
                            x6 = low[o + two]
                            x7 = low[o + three]
                            u = w[0]
                            s0_0 += x0 * u; s1_0 += x1 * u; s2_0 += x2 * u; s3_0 += x3 * u
                            s4_0 += x4 * u; s5_0 += x5 * u; s6_0 += x6 * u; s7_0 += x7 * u
                            u = w[1]
                            s0_1 += x0 * u; s1_1 += x1 * u; s2_1 += x2 * u; s3_1 += x3 * u
                            s4_1 += x4 * u; s5_1 += x5 * u; s6_1 += x6 * u; s7_1 += x7 * u
                            u = w[2]
                            s0_2 += x0 * u; s1_2 += x1 * u; s2_2 += x2 * u; s3_2 += x3 * u
                            s4_2 += x4 * u; s5_2 += x5 * u; s6_2 += x6 * u; s7_2 += x7 * u
                            u = w[3]
                            s0_3 += x0 * u; s1_3 += x1 * u; s2_3 += x2 * u; s3_3 += x3 * u
                            s4_3 += x4 * u; s5_3 += x5 * u; s6_3 += x6 * u; s7_3 += x7 * u
                            u = w[4]
                            s0_4 += x0 * u; s1_4 += x1 * u; s2_4 += x2 * u; s3_4 += x3 * u
                            s4_4 += x4 * u; s5_4 += x5 * u; s6_4 += x6 * u; s7_4 += x7 * u
                            u = w[5]
                            s0_5 += x0 * u; s1_5 += x1 * u; s2_5 += x2 * u; s3_5 += x3 * u
                            s4_5 += x4 * u; s5_5 += x5 * u; s6_5 += x6 * u; s7_5 += x7 * u
                            u = w[6]
                            s0_6 += x0 * u; s1_6 += x1 * u; s2_6 += x2 * u; s3_6 += x3 * u
                            s4_6 += x4 * u; s5_6 += x5 * u; s6_6 += x6 * u; s7_6 += x7 * u
                            u = w[7]
                            s0_7 += x0 * u; s1_7 += x1 * u; s2_7 += x2 * u; s3_7 += x3 * u
                            s4_7 += x4 * u; s5_7 += x5 * u; s6_7 += x6 * u; s7_7 += x7 * u
                        best[0] = max(max(max(s0_0, s1_0), max(s2_0, s3_0)) + bt[0], zero)
                        best[1] = max(max(max(s0_1, s1_1), max(s2_1, s3_1)) + bt[1], zero)
                        best[2] = max(max(max(s0_2, s1_2), max(s2_2, s3_2)) + bt[2], zero)
                        best[3] = max(max(max(s0_3, s1_3), max(s2_3, s3_3)) + bt[3], zero)
                        best[4] = max(max(max(s0_4, s1_4), max(s2_4, s3_4)) + bt[4], zero)
                        best[5] = max(max(max(s0_5, s1_5), max(s2_5, s3_5)) + bt[5], zero)
                        best[6] = max(max(max(s0_6, s1_6), max(s2_6, s3_6)) + bt[6], zero)
                        best[7] = max(max(max(s0_7, s1_7), max(s2_7, s3_7)) + bt[7], zero)
                        best[8] = max(max(max(s4_0, s5_0), max(s6_0, s7_0)) + bt[0], zero)
                        best[9] = max(max(max(s4_1, s5_1), max(s6_1, s7_1)) + bt[1], zero)
                        best[10] = max(max(max(s4_2, s5_2), max(s6_2, s7_2)) + bt[2], zero)
                        best[11] = max(max(max(s4_3, s5_3), max(s6_3, s7_3)) + bt[3], zero)
                        best[12] = max(max(max(s4_4, s5_4), max(s6_4, s7_4)) + bt[4], zero)
                        best[13] = max(max(max(s4_5, s5_5), max(s6_5, s7_5)) + bt[5], zero)
                        best[14] = max(max(max(s4_6, s5_6), max(s6_6, s7_6)) + bt[6], zero)
                        best[15] = max(max(max(s4_7, s5_7), max(s6_7, s7_7)) + bt[7], zero)
                        for q in range(F - 16 * Fb):
                            out[n, 16 * Fb + q, bi, bj] = best[q]
                            out[n, 16 * Fb + q, bi, bj + 1] = best[8 + q]

