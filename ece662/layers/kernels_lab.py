"""The kernel lab: the numbered versions that led to the kernels the plan runs, kept to be read in order.

Like llm.c's ``dev/`` folder, every version here is tested against the plain-loop reference
(``tests/layers/test_ops.py`` runs one suite over all of them) and was timed when it was written
(``benchmarks/RESULTS.md``); the plan runs none of them by default.  The production kernels
(v3 ``conv2d_forward_patches``, v6 ``conv2d_relu_pool2_lanes``, the backward's dw tile, pooling, linear,
activations, batch norm) are in ``kernels.py``, whose docstring is the catalogue of all versions; read
it first.  Here, in order:

    v1 ``conv2d_forward_direct``     six nested loops, output pixel by pixel (any stride);
    v2 ``conv2d_forward_rows``       "flattened rows": one contiguous axpy per tap (stride 1); load/store bound;
    ``conv2d_forward_sparse_taps``   per filter its non-zero taps, one axpy each; superseded by
                                     ``kernels_sparse`` (output positions as the vector lanes);
    v4 ``conv2d_relu_pool2_patches`` conv + ReLU + 2x2 pool fused over the patch matrix (1 block x 4 filters);
    v5 ``conv2d_relu_pool2_tiled``   the same with the output channels as the vector lanes; v6 is v5 without
                                     the patch matrix, 1.22x faster on the AVX2 EPYC (benchmarks/RESULTS.md);
    backward v1 ``conv2d_backward_direct`` and v2 ``conv2d_backward_rows``.

``model.kernels`` never picks v4 or v5 by itself; ``kernel_choice.FUSED_POOL_KERNEL = "v5"`` (or ``"v4"``)
brings one back for a comparison (``benchmarks/bench_inference.py`` does).
"""
import numpy as np
from numba import njit, prange

from ece662.layers.kernels import fill_patches  # noqa: F401  (v4 copies its receptive fields with it)


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


# ============================================================================ conv forward v5 (channels-last tile)
@njit(parallel=True, cache=True, fastmath={"contract"})
def conv2d_relu_pool2_tiled(xp, wp, bp, wt, bt, HH, WW, F, scratch, tmp, out):
    """v5. Conv (stride 1) + bias + ReLU + 2x2/2 max pool, output channels as the vector lanes.

    xp: (N, C, Hp, Wp); wp: (K, Fb, 16) the weights packed tap-major, ``wp[k, fb, l]`` =
    w[16*fb + l, k] (k in (c, kh, kw) order, filters beyond F zero); bp: (Fb, 16) the bias,
    padded the same way; wt: (K, 8), bt: (8,) a last block of up to 8 filters (filters 16*Fb ...
    F-1) in a half-width tile, so 24 or 8 live filters do not cost 32 or 16 (F == 16*Fb: unused);
    scratch: (T, 2*W', K) patch rows; tmp: (T, 16); out: (N, F, H'//2, W'//2).
    Compile with LLVM's SLP vectoriser on (``functional`` does): the sixty-four sums of the
    tile are then eight 8-lane registers.  ``fastmath={"contract"}`` allows the FMAs but no
    reassociation, so LLVM does not vectorise the k loop as a reduction (which spills).
    """
    N = xp.shape[0]
    K, Fb, _ = wp.shape
    _, _, Hq, Wq = out.shape
    T = scratch.shape[0]
    W_out = xp.shape[3] - WW + 1
    C = xp.shape[1]
    cidx = np.arange(C)
    zero = np.float32(0.0)
    chunk = (N + T - 1) // T
    for t in prange(T):
        pat = scratch[t]
        best = tmp[t]
        for n in range(t * chunk, min(N, (t + 1) * chunk)):
            for bi in range(Hq):
                # the patches of the two output rows of this row of 2x2 blocks
                fill_patches(xp[n], cidx, HH, WW, 1, 2 * bi, 2, 2 * Wq, W_out, pat)
                for bj in range(Wq):
                    p0 = 2 * bj                      # the block's four positions: rows r0..r3
                    r0 = pat[p0]
                    r1 = pat[p0 + 1]
                    r2 = pat[p0 + W_out]
                    r3 = pat[p0 + W_out + 1]
                    for fb in range(Fb):             # 16 filters at a time: the tile's lanes
                        s0_0 = s0_1 = s0_2 = s0_3 = s0_4 = s0_5 = s0_6 = s0_7 = zero
                        s0_8 = s0_9 = s0_10 = s0_11 = s0_12 = s0_13 = s0_14 = s0_15 = zero
                        s1_0 = s1_1 = s1_2 = s1_3 = s1_4 = s1_5 = s1_6 = s1_7 = zero
                        s1_8 = s1_9 = s1_10 = s1_11 = s1_12 = s1_13 = s1_14 = s1_15 = zero
                        s2_0 = s2_1 = s2_2 = s2_3 = s2_4 = s2_5 = s2_6 = s2_7 = zero
                        s2_8 = s2_9 = s2_10 = s2_11 = s2_12 = s2_13 = s2_14 = s2_15 = zero
                        s3_0 = s3_1 = s3_2 = s3_3 = s3_4 = s3_5 = s3_6 = s3_7 = zero
                        s3_8 = s3_9 = s3_10 = s3_11 = s3_12 = s3_13 = s3_14 = s3_15 = zero
                        for k in range(K):
                            w = wp[k, fb]            # 16 filters' weights for tap k, contiguous
                            x0 = r0[k]               # one input value per position, broadcast
                            x1 = r1[k]
                            x2 = r2[k]
                            x3 = r3[k]
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
                        # max over the block, + bias, ReLU (max commutes with both)
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
                    if F > 16 * Fb:                  # the half-width tile: 4 positions x 8 filters
                        s0_0 = s0_1 = s0_2 = s0_3 = s0_4 = s0_5 = s0_6 = s0_7 = zero
                        s1_0 = s1_1 = s1_2 = s1_3 = s1_4 = s1_5 = s1_6 = s1_7 = zero
                        s2_0 = s2_1 = s2_2 = s2_3 = s2_4 = s2_5 = s2_6 = s2_7 = zero
                        s3_0 = s3_1 = s3_2 = s3_3 = s3_4 = s3_5 = s3_6 = s3_7 = zero
                        for k in range(K):
                            w = wt[k]
                            x0 = r0[k]
                            x1 = r1[k]
                            x2 = r2[k]
                            x3 = r3[k]
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
                        best[0] = max(max(max(s0_0, s1_0), max(s2_0, s3_0)) + bt[0], zero)
                        best[1] = max(max(max(s0_1, s1_1), max(s2_1, s3_1)) + bt[1], zero)
                        best[2] = max(max(max(s0_2, s1_2), max(s2_2, s3_2)) + bt[2], zero)
                        best[3] = max(max(max(s0_3, s1_3), max(s2_3, s3_3)) + bt[3], zero)
                        best[4] = max(max(max(s0_4, s1_4), max(s2_4, s3_4)) + bt[4], zero)
                        best[5] = max(max(max(s0_5, s1_5), max(s2_5, s3_5)) + bt[5], zero)
                        best[6] = max(max(max(s0_6, s1_6), max(s2_6, s3_6)) + bt[6], zero)
                        best[7] = max(max(max(s0_7, s1_7), max(s2_7, s3_7)) + bt[7], zero)
                        for q in range(F - 16 * Fb):
                            out[n, 16 * Fb + q, bi, bj] = best[q]


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
