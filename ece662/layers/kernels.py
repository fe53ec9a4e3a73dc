"""Numba kernels: loops only.

No validation, no allocation policy, no padding decisions live here: the thin
wrappers in ``ece662.layers.functional`` check inputs, pad, allocate every
output and scratch buffer, and then call one of these.  The plain-loop specs
are in ``ece662.layers.reference``; every kernel is tested against them.

Versions
--------
conv forward
    v1 ``conv2d_forward_direct``  any stride: six nested loops, output pixel by pixel.
    v2 ``conv2d_forward_rows``    stride 1: "flattened rows".  A padded image channel of
       shape (Hp, Wp) is one vector of length Hp*Wp; the output position (i, j) reads
       x[(i+kh)*Wp + (j+kw)] = x[i*Wp + j + off] with off = kh*Wp + kw.  So for each tap
       (c, kh, kw) the whole output plane is one long, contiguous axpy
       ``acc[p] += w * x[p + off]`` over p = i*Wp + j, which LLVM vectorises.  Columns
       j >= W' are computed and thrown away (Wp - W' of every Wp).
    v3 ``conv2d_forward_patches`` any stride, register-tiled (the one layers use).  Per image,
       copy every receptive field into a row of a patch matrix ``pat (P, K)`` (K = C*HH*WW,
       padded with zeros to a multiple of 16 so no scalar tail is left), then compute a tile
       of 2 output positions x 4 filters at a time as 8 dot products over k that share their
       loads: 6 vector loads feed 8 fused multiply-adds, and the 8 running sums stay in
       registers.  This is the trick behind every fast GEMM, written as plain loops.
    v4 ``conv2d_relu_pool2_patches`` stride 1, conv + ReLU + 2x2/2 max pool in one pass (eval
       mode): the same patch matrix, tiles of one 2x2 block of output positions x 4 filters
       (sixteen dot products: 8 loads feed 16 multiply-adds per step); only the block's
       maximum, after the ReLU, is written.  The full-size conv output never exists.
    v1 and v2 take ``alive_f`` (F,) and ``alive_c`` (C,) boolean vectors and skip dead output
    filters and dead input channels outright; v3 and v4 take the lists of live filters
    ``fidx``, dead filters ``didx`` and live channels ``cidx`` instead (their tiles walk over
    live filters only).  A dead filter's output plane is its bias (relu(bias) in v4).  With everything alive they are dense kernels.
sparse conv forward (unstructured masks)
    ``conv2d_forward_sparse_taps`` stride 1: per filter, the list of its non-zero taps as
       (offset, weight) pairs, CSR-style (``ptr[f]:ptr[f+1]``); offset = c*Hp*Wp + kh*Wp + kw
       into the flattened padded image, stored as uint32.  Each tap is one axpy over the
       flattened rows, as in v2, so work is proportional to the non-zeros -- but an axpy is
       slower per multiply-add than v3's register tile, hence a break-even sparsity.
conv backward
    v1 ``conv2d_backward_direct`` any stride, direct loops.
    v2 ``conv2d_backward_rows``   stride 1, flattened rows as above: dw is a dot product
       of two contiguous vectors per tap, dx an axpy per tap.
    v3 (stride 1, the one layers use) splits the work in two:
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
@njit(parallel=True, cache=True)
def conv2d_forward_direct(xp, w, b, alive_f, alive_c, stride, out):
    """v1. xp: (N, C, Hp, Wp) padded input; out: (N, F, H', W') written in full."""
    N, C, Hp, Wp = xp.shape
    F, _, HH, WW = w.shape
    _, _, H_out, W_out = out.shape
    for n in prange(N):                              # images are independent
        for f in range(F):
            for i in range(H_out):
                for j in range(W_out):
                    out[n, f, i, j] = b[f]
            if not alive_f[f]:                       # dead filter: its plane is the bias
                continue
            for c in range(C):
                if not alive_c[c]:                   # dead input channel: contributes 0
                    continue
                for kh in range(HH):
                    for kw in range(WW):
                        wv = w[f, c, kh, kw]
                        for i in range(H_out):
                            row = i * stride + kh
                            for j in range(W_out):
                                out[n, f, i, j] += wv * xp[n, c, row, j * stride + kw]


@njit(parallel=True, cache=True)
def conv2d_forward_rows(xflat, Wp, w, b, alive_f, alive_c, scratch, out):
    """v2, stride 1. xflat: (N, C, Hp*Wp); scratch: (T, L) with L = (H'-1)*Wp + W';
    out: (N, F, H', W') written in full."""
    N, C, _ = xflat.shape
    F, _, HH, WW = w.shape
    _, _, H_out, W_out = out.shape
    T, L = scratch.shape
    chunk = (N + T - 1) // T
    for t in prange(T):                              # one chunk of images per thread
        acc = scratch[t]
        for n in range(t * chunk, min(N, (t + 1) * chunk)):
            for f in range(F):
                if not alive_f[f]:
                    for i in range(H_out):
                        for j in range(W_out):
                            out[n, f, i, j] = b[f]
                    continue
                for p in range(L):
                    acc[p] = 0.0
                for c in range(C):
                    if not alive_c[c]:
                        continue
                    x_c = xflat[n, c]
                    for kh in range(HH):
                        for kw in range(WW):
                            wv = w[f, c, kh, kw]
                            off = kh * Wp + kw
                            for p in range(L):       # the whole output plane, one tap
                                acc[p] += wv * x_c[p + off]
                # keep columns j < W' of each row, add the bias
                for i in range(H_out):
                    for j in range(W_out):
                        out[n, f, i, j] = acc[i * Wp + j] + b[f]


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


@njit(parallel=True, cache=True)
def conv2d_forward_sparse_taps(ximg, Wp, ptr, tap_off, tap_w, b, scratch, out):
    """Sparse, stride 1. ximg: (N, C*Hp*Wp) flattened padded images; ptr: (F+1,) int64;
    tap_off: (nnz,) uint32; tap_w: (nnz,) float32; scratch: (T, L) with L = (H'-1)*Wp + W';
    out: (N, F, H', W') written in full."""
    N = ximg.shape[0]
    F = ptr.shape[0] - 1
    _, _, H_out, W_out = out.shape
    T, L = scratch.shape
    chunk = (N + T - 1) // T
    for t in prange(T):
        acc = scratch[t]
        for n in range(t * chunk, min(N, (t + 1) * chunk)):
            x_n = ximg[n]
            for f in range(F):
                for p in range(L):
                    acc[p] = 0.0
                for q in range(ptr[f], ptr[f + 1]):  # only the taps that survived pruning
                    off = tap_off[q]
                    wv = tap_w[q]
                    for p in range(L):
                        acc[p] += wv * x_n[p + off]
                for i in range(H_out):
                    for j in range(W_out):
                        out[n, f, i, j] = acc[i * Wp + j] + b[f]


@njit(parallel=True, cache=True, fastmath=True)
def conv2d_relu_pool2_patches(xp, wk, b, fidx, didx, cidx, HH, WW, scratch, out):
    """v4. Like v3 with stride 1, then ReLU, then 2x2 max pooling with stride 2.
    out: (N, F, H'//2, W'//2) written in full; scratch: (T, 2*W', Kp): the patches of one
    row of 2x2 blocks at a time (they stay in L1 cache while the tiles use them)."""
    N = xp.shape[0]
    F, Kp = wk.shape
    _, _, Hq, Wq = out.shape
    T = scratch.shape[0]
    W_out = xp.shape[3] - WW + 1
    H_out = xp.shape[2] - HH + 1
    P = H_out * W_out
    K = cidx.shape[0] * HH * WW
    nf = fidx.shape[0]
    zero = np.float32(0.0)
    chunk = (N + T - 1) // T
    for t in prange(T):
        pat = scratch[t]
        for p in range(pat.shape[0]):
            for k in range(K, Kp):
                pat[p, k] = 0.0
        for n in range(t * chunk, min(N, (t + 1) * chunk)):
            for q in range(didx.shape[0]):           # dead filters: relu(bias) everywhere
                f = didx[q]
                v = max(b[f], zero)
                for i in range(Hq):
                    for j in range(Wq):
                        out[n, f, i, j] = v
            for bi in range(Hq):
                # the two output rows of this row of blocks, while they are in L1 cache
                fill_patches(xp[n], cidx, HH, WW, 1, 2 * bi, 2, 2 * Wq, W_out, pat)
                for bj in range(Wq):
                    p00 = 2 * bj                     # the block's four positions
                    a0 = pat[p00]
                    a1 = pat[p00 + 1]
                    a2 = pat[p00 + W_out]
                    a3 = pat[p00 + W_out + 1]
                    for q in range(0, nf - 3, 4):
                        f0, f1, f2, f3 = fidx[q], fidx[q + 1], fidx[q + 2], fidx[q + 3]
                        w0, w1, w2, w3 = wk[f0], wk[f1], wk[f2], wk[f3]
                        s00 = s01 = s02 = s03 = np.float32(0.0)
                        s10 = s11 = s12 = s13 = np.float32(0.0)
                        s20 = s21 = s22 = s23 = np.float32(0.0)
                        s30 = s31 = s32 = s33 = np.float32(0.0)
                        for k in range(Kp):
                            c0 = a0[k]
                            c1 = a1[k]
                            c2 = a2[k]
                            c3 = a3[k]
                            u = w0[k]
                            s00 += c0 * u
                            s01 += c1 * u
                            s02 += c2 * u
                            s03 += c3 * u
                            u = w1[k]
                            s10 += c0 * u
                            s11 += c1 * u
                            s12 += c2 * u
                            s13 += c3 * u
                            u = w2[k]
                            s20 += c0 * u
                            s21 += c1 * u
                            s22 += c2 * u
                            s23 += c3 * u
                            u = w3[k]
                            s30 += c0 * u
                            s31 += c1 * u
                            s32 += c2 * u
                            s33 += c3 * u
                        # max commutes with adding the bias and with the ReLU
                        out[n, f0, bi, bj] = max(max(max(s00, s01), max(s02, s03)) + b[f0], zero)
                        out[n, f1, bi, bj] = max(max(max(s10, s11), max(s12, s13)) + b[f1], zero)
                        out[n, f2, bi, bj] = max(max(max(s20, s21), max(s22, s23)) + b[f2], zero)
                        out[n, f3, bi, bj] = max(max(max(s30, s31), max(s32, s33)) + b[f3], zero)
                    for q in range(nf - nf % 4, nf):  # leftover filters, one at a time
                        f0 = fidx[q]
                        w0 = wk[f0]
                        s00 = s01 = s02 = s03 = np.float32(0.0)
                        for k in range(Kp):
                            u = w0[k]
                            s00 += a0[k] * u
                            s01 += a1[k] * u
                            s02 += a2[k] * u
                            s03 += a3[k] * u
                        out[n, f0, bi, bj] = max(max(max(s00, s01), max(s02, s03)) + b[f0], zero)


# ============================================================================ conv backward
@njit(parallel=True, cache=True)
def conv2d_backward_direct(dout, xp, w, stride, dxp, dw_part):
    """v1. dout: (N, F, H', W'); xp: (N, C, Hp, Wp); dxp: (N, C, Hp, Wp) zeroed;
    dw_part: (T, F, C, HH, WW) zeroed, one slice per chunk of images."""
    N, C, Hp, Wp = xp.shape
    F, _, HH, WW = w.shape
    _, _, H_out, W_out = dout.shape
    T = dw_part.shape[0]
    chunk = (N + T - 1) // T
    for t in prange(T):
        for n in range(t * chunk, min(N, (t + 1) * chunk)):
            for f in range(F):
                for c in range(C):
                    for kh in range(HH):
                        for kw in range(WW):
                            wv = w[f, c, kh, kw]
                            g = np.float32(0.0)
                            for i in range(H_out):
                                row = i * stride + kh
                                for j in range(W_out):
                                    d = dout[n, f, i, j]
                                    g += d * xp[n, c, row, j * stride + kw]
                                    dxp[n, c, row, j * stride + kw] += wv * d
                            dw_part[t, f, c, kh, kw] += g


@njit(parallel=True, cache=True, fastmath=True)
def conv2d_backward_rows(dout, xflat, Wp, w, dxflat, dw_part, scratch):
    """v2, stride 1. xflat, dxflat: (N, C, Hp*Wp) (dxflat zeroed); scratch: (T, F, L);
    dw_part: (T, F, C, HH, WW) zeroed."""
    N, C, _ = xflat.shape
    F, _, HH, WW = w.shape
    _, _, H_out, W_out = dout.shape
    T = dw_part.shape[0]
    L = scratch.shape[2]
    chunk = (N + T - 1) // T
    for t in prange(T):
        g = scratch[t]                               # dout laid out on the Wp-wide rows
        for n in range(t * chunk, min(N, (t + 1) * chunk)):
            for f in range(F):
                for p in range(L):
                    g[f, p] = 0.0
                for i in range(H_out):
                    for j in range(W_out):
                        g[f, i * Wp + j] = dout[n, f, i, j]
            for c in range(C):
                x_c = xflat[n, c]
                dx_c = dxflat[n, c]
                for f in range(F):
                    g_f = g[f]
                    for kh in range(HH):
                        for kw in range(WW):
                            off = kh * Wp + kw
                            wv = w[f, c, kh, kw]
                            s = np.float32(0.0)
                            for p in range(L):       # dw: a dot product; dx: an axpy
                                s += g_f[p] * x_c[p + off]
                                dx_c[p + off] += wv * g_f[p]
                            dw_part[t, f, c, kh, kw] += s


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
