"""Plain-loop NumPy references: the specification of every op.

Read these first.  Each function is written for clarity, not speed: explicit
loops over the output positions, one formula per line.  The fast versions in
``ece662.layers.functional`` (backed by the Numba kernels in
``ece662.layers.kernels``) have the same signatures and are tested against
these over random shapes.

Shapes (NCHW, as everywhere in ece662)::

    x    : (N, C, H, W)        input images / feature maps
    w    : (F, C, HH, WW)      conv filters
    b    : (F,)                conv bias
    out  : (N, F, H', W')      H' = 1 + (H + 2*pad - HH) // stride
    linear weight : (out_features, in_features), as in torch

Max pooling picks the *first* maximum of a window in row-major order; its
backward routes the whole gradient to that one position (torch does the same).
"""
import numpy as np

from ece662.layers.shapes import conv_output_size


# ----------------------------------------------------------------------------- conv
def conv2d_forward_reference(x, w, b, stride=1, pad=0):
    """Convolution (cross-correlation, as in every DL library), the naive way.

    Parameters
    ----------
    x : ndarray, (N, C, H, W)
    w : ndarray, (F, C, HH, WW)
    b : ndarray, (F,) or None
    stride, pad : int

    Returns
    -------
    out : ndarray, (N, F, H', W')

    Examples
    --------
    >>> x = np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4)
    >>> w = np.ones((1, 1, 2, 2), dtype=np.float32)
    >>> conv2d_forward_reference(x, w, None, stride=2)[0, 0]
    array([[10., 18.],
           [42., 50.]], dtype=float32)
    """
    N, C, H, W = x.shape
    F, _, HH, WW = w.shape
    H_out = conv_output_size(H, HH, stride, pad)
    W_out = conv_output_size(W, WW, stride, pad)
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    out = np.zeros((N, F, H_out, W_out), dtype=x.dtype)
    for n in range(N):                      # each image
        for f in range(F):                  # each filter
            for i in range(H_out):          # each output row
                for j in range(W_out):      # each output column
                    window = xp[n, :, i * stride:i * stride + HH, j * stride:j * stride + WW]
                    out[n, f, i, j] = np.sum(window * w[f])
            if b is not None:
                out[n, f] += b[f]
    return out


def conv2d_backward_reference(dout, x, w, stride=1, pad=0):
    """Gradients of :func:`conv2d_forward_reference`.

    Parameters
    ----------
    dout : ndarray, (N, F, H', W')   upstream gradient
    x : ndarray, (N, C, H, W)        the forward input
    w : ndarray, (F, C, HH, WW)      the forward weights
    stride, pad : int

    Returns
    -------
    dx : ndarray, (N, C, H, W)
    dw : ndarray, (F, C, HH, WW)
    db : ndarray, (F,)
    """
    N, C, H, W = x.shape
    F, _, HH, WW = w.shape
    _, _, H_out, W_out = dout.shape
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    dxp = np.zeros_like(xp)
    dw = np.zeros_like(w)
    for n in range(N):
        for f in range(F):
            for i in range(H_out):
                for j in range(W_out):
                    rows = slice(i * stride, i * stride + HH)
                    cols = slice(j * stride, j * stride + WW)
                    # out[n,f,i,j] = sum(window * w[f]): each factor gets the other times dout
                    dw[f] += dout[n, f, i, j] * xp[n, :, rows, cols]
                    dxp[n, :, rows, cols] += dout[n, f, i, j] * w[f]
    db = dout.sum(axis=(0, 2, 3))
    dx = dxp[:, :, pad:pad + H, pad:pad + W]
    return dx, dw, db


# ----------------------------------------------------------------------------- max pool
def maxpool2d_forward_reference(x, kernel_size=2, stride=2):
    """Max over each ``kernel_size x kernel_size`` window (no padding).

    Parameters
    ----------
    x : ndarray, (N, C, H, W)
    kernel_size, stride : int

    Returns
    -------
    out : ndarray, (N, C, H', W')

    Examples
    --------
    >>> x = np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4)
    >>> maxpool2d_forward_reference(x)[0, 0]
    array([[ 5.,  7.],
           [13., 15.]], dtype=float32)
    """
    N, C, H, W = x.shape
    k = kernel_size
    H_out = conv_output_size(H, k, stride)
    W_out = conv_output_size(W, k, stride)
    out = np.empty((N, C, H_out, W_out), dtype=x.dtype)
    for n in range(N):
        for c in range(C):
            for i in range(H_out):
                for j in range(W_out):
                    out[n, c, i, j] = x[n, c, i * stride:i * stride + k, j * stride:j * stride + k].max()
    return out


def maxpool2d_backward_reference(dout, x, kernel_size=2, stride=2):
    """Gradient of :func:`maxpool2d_forward_reference`.

    Each window's gradient goes to the position of its first maximum
    (row-major order); every other position of the window gets nothing.

    Parameters
    ----------
    dout : ndarray, (N, C, H', W')
    x : ndarray, (N, C, H, W)   the forward input
    kernel_size, stride : int

    Returns
    -------
    dx : ndarray, (N, C, H, W)
    """
    N, C, H, W = x.shape
    k = kernel_size
    _, _, H_out, W_out = dout.shape
    dx = np.zeros_like(x)
    for n in range(N):
        for c in range(C):
            for i in range(H_out):
                for j in range(W_out):
                    window = x[n, c, i * stride:i * stride + k, j * stride:j * stride + k]
                    a, b = np.unravel_index(np.argmax(window), window.shape)  # first max
                    dx[n, c, i * stride + a, j * stride + b] += dout[n, c, i, j]
    return dx


# ----------------------------------------------------------------------------- linear
def linear_forward_reference(x, w, b):
    """``out[n, o] = sum_i x[n, i] * w[o, i] + b[o]``.

    Parameters
    ----------
    x : ndarray, (N, in_features)
    w : ndarray, (out_features, in_features)
    b : ndarray, (out_features,) or None

    Returns
    -------
    out : ndarray, (N, out_features)

    Examples
    --------
    >>> x = np.array([[1., 2.]], dtype=np.float32)
    >>> w = np.array([[1., 1.], [0., 3.]], dtype=np.float32)
    >>> linear_forward_reference(x, w, np.array([0.5, 0.], dtype=np.float32))
    array([[3.5, 6. ]], dtype=float32)
    """
    N, D = x.shape
    M, _ = w.shape
    out = np.zeros((N, M), dtype=x.dtype)
    for n in range(N):
        for o in range(M):
            acc = 0.0
            for i in range(D):
                acc += x[n, i] * w[o, i]
            out[n, o] = acc + (b[o] if b is not None else 0.0)
    return out


def linear_backward_reference(dout, x, w):
    """Gradients of :func:`linear_forward_reference`.

    Parameters
    ----------
    dout : ndarray, (N, out_features)
    x : ndarray, (N, in_features)
    w : ndarray, (out_features, in_features)

    Returns
    -------
    dx : ndarray, (N, in_features)
    dw : ndarray, (out_features, in_features)
    db : ndarray, (out_features,)
    """
    N, D = x.shape
    M, _ = w.shape
    dx = np.zeros_like(x)
    dw = np.zeros_like(w)
    for n in range(N):
        for o in range(M):
            for i in range(D):
                dx[n, i] += dout[n, o] * w[o, i]
                dw[o, i] += dout[n, o] * x[n, i]
    db = dout.sum(axis=0)
    return dx, dw, db


# ----------------------------------------------------------------------------- relu
def relu_forward_reference(x):
    """``max(x, 0)`` elementwise; any shape.

    Examples
    --------
    >>> relu_forward_reference(np.array([-1., 0., 2.], dtype=np.float32))
    array([0., 0., 2.], dtype=float32)
    """
    out = np.empty_like(x)
    flat_in, flat_out = x.reshape(-1), out.reshape(-1)
    for i in range(flat_in.size):
        flat_out[i] = flat_in[i] if flat_in[i] > 0 else 0
    return out


def relu_backward_reference(dout, x):
    """Gradient of ReLU: ``dout`` where ``x > 0``, else 0 (the subgradient at 0 is 0)."""
    dx = np.empty_like(dout)
    flat_d, flat_x, flat_dx = dout.reshape(-1), x.reshape(-1), dx.reshape(-1)
    for i in range(flat_x.size):
        flat_dx[i] = flat_d[i] if flat_x[i] > 0 else 0
    return dx


# ----------------------------------------------------------------------------- leaky relu
def leaky_relu_forward_reference(x, negative_slope=0.01):
    """``x`` where ``x > 0``, else ``negative_slope * x``; any shape.

    Examples
    --------
    >>> leaky_relu_forward_reference(np.array([-1., 0., 2.], dtype=np.float32), 0.1)
    array([-0.1,  0. ,  2. ], dtype=float32)
    """
    out = np.empty_like(x)
    flat_in, flat_out = x.reshape(-1), out.reshape(-1)
    for i in range(flat_in.size):
        flat_out[i] = flat_in[i] if flat_in[i] > 0 else negative_slope * flat_in[i]
    return out


def leaky_relu_backward_reference(dout, x, negative_slope=0.01):
    """Gradient of leaky ReLU: ``dout`` where ``x > 0``, else ``negative_slope * dout``
    (at exactly 0 the slope is ``negative_slope``, as torch has it)."""
    dx = np.empty_like(dout)
    flat_d, flat_x, flat_dx = dout.reshape(-1), x.reshape(-1), dx.reshape(-1)
    for i in range(flat_x.size):
        flat_dx[i] = flat_d[i] if flat_x[i] > 0 else negative_slope * flat_d[i]
    return dx


# ----------------------------------------------------------------------------- average pool
def avgpool2d_forward_reference(x, kernel_size=2, stride=2):
    """Mean over each ``kernel_size x kernel_size`` window (no padding).

    ``AdaptiveAvgPool2d(1)`` (global average pooling) is the window ``H x W`` itself:
    ``avgpool2d_forward_reference(x, H)`` when the image is square.

    Parameters
    ----------
    x : ndarray, (N, C, H, W)
    kernel_size, stride : int

    Returns
    -------
    out : ndarray, (N, C, H', W') with ``H' = 1 + (H - kernel_size) // stride``

    Examples
    --------
    >>> x = np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4)
    >>> avgpool2d_forward_reference(x)[0, 0]
    array([[ 2.5,  4.5],
           [10.5, 12.5]], dtype=float32)
    """
    N, C, H, W = x.shape
    k = kernel_size
    H_out = conv_output_size(H, k, stride)
    W_out = conv_output_size(W, k, stride)
    out = np.empty((N, C, H_out, W_out), dtype=x.dtype)
    for n in range(N):
        for c in range(C):
            for i in range(H_out):
                for j in range(W_out):
                    out[n, c, i, j] = x[n, c, i * stride:i * stride + k, j * stride:j * stride + k].mean()
    return out


def avgpool2d_backward_reference(dout, x, kernel_size=2, stride=2):
    """Gradient of :func:`avgpool2d_forward_reference`: each window spreads its gradient
    evenly, ``dout / kernel_size**2`` to each of its positions (overlaps add up).

    Parameters
    ----------
    dout : ndarray, (N, C, H', W')
    x : ndarray, (N, C, H, W)   the forward input (only its shape is used)

    Returns
    -------
    dx : ndarray, (N, C, H, W)
    """
    N, C, H, W = x.shape
    k = kernel_size
    _, _, H_out, W_out = dout.shape
    dx = np.zeros_like(x)
    for n in range(N):
        for c in range(C):
            for i in range(H_out):
                for j in range(W_out):
                    dx[n, c, i * stride:i * stride + k, j * stride:j * stride + k] += dout[n, c, i, j] / (k * k)
    return dx


def global_avgpool_forward_reference(x):
    """``AdaptiveAvgPool2d(1)``: the mean of every channel plane.

    Parameters
    ----------
    x : ndarray, (N, C, H, W)

    Returns
    -------
    out : ndarray, (N, C, 1, 1)
    """
    N, C, H, W = x.shape
    out = np.empty((N, C, 1, 1), dtype=x.dtype)
    for n in range(N):
        for c in range(C):
            out[n, c, 0, 0] = x[n, c].sum() / (H * W)
    return out


def global_avgpool_backward_reference(dout, x):
    """Gradient of :func:`global_avgpool_forward_reference`: ``dout / (H*W)`` everywhere.

    Parameters
    ----------
    dout : ndarray, (N, C, 1, 1)
    x : ndarray, (N, C, H, W)   the forward input (only its shape is used)
    """
    N, C, H, W = x.shape
    dx = np.empty_like(x)
    for n in range(N):
        for c in range(C):
            dx[n, c] = dout[n, c, 0, 0] / (H * W)
    return dx


# ----------------------------------------------------------------------------- channel dropout
def dropout2d_forward_reference(x, keep, p):
    """Channel dropout with a given draw: plane ``(n, c)`` is kept (scaled by ``1/(1-p)``)
    where ``keep[n, c]`` is True and zeroed elsewhere.

    Parameters
    ----------
    x : ndarray, (N, C, H, W)
    keep : ndarray of bool, (N, C)
    p : float in [0, 1)

    Returns
    -------
    out : ndarray, (N, C, H, W); the backward is the same function applied to ``dout``.
    """
    N, C, H, W = x.shape
    out = np.zeros_like(x)
    for n in range(N):
        for c in range(C):
            if keep[n, c]:
                out[n, c] = x[n, c] / (1 - p)
    return out


# ----------------------------------------------------------------------------- batch norm
def batchnorm_forward_reference(x, gamma, beta, mean, var, eps=1e-5):
    """Batch normalisation with given statistics: ``(x - mean) / sqrt(var + eps) * gamma + beta``
    per channel (axis 1).  Eval mode passes the running statistics; training mode the batch's
    (:func:`batchnorm_batch_stats_reference`).

    Parameters
    ----------
    x : ndarray, (N, C, H, W) for BatchNorm2d, (N, C) or (N, C, L) for BatchNorm1d
    gamma, beta, mean, var : ndarray, (C,)

    Returns
    -------
    out : ndarray, the shape of x

    Examples
    --------
    >>> x = np.array([[1., 2.], [3., 6.]], dtype=np.float32)
    >>> one, zero = np.ones(2, np.float32), np.zeros(2, np.float32)
    >>> batchnorm_forward_reference(x, one, zero, np.array([2., 4.], np.float32), one, eps=0.0)
    array([[-1., -2.],
           [ 1.,  2.]], dtype=float32)
    """
    out = np.empty_like(x)
    for c in range(x.shape[1]):             # each channel has its own statistics
        inv_std = 1.0 / np.sqrt(var[c] + eps)
        out[:, c] = (x[:, c] - mean[c]) * inv_std * gamma[c] + beta[c]
    return out


def batchnorm_batch_stats_reference(x):
    """Per-channel mean and *biased* variance (divide by the count M, as the forward uses) over
    every axis but 1.  ``running_var`` is updated with the unbiased ``var * M / (M - 1)``.

    Returns
    -------
    mean, var : ndarray, (C,)
    """
    C = x.shape[1]
    mean = np.empty(C, dtype=x.dtype)
    var = np.empty(C, dtype=x.dtype)
    for c in range(C):
        v = x[:, c].astype(np.float64)
        mean[c] = v.mean()
        var[c] = ((v - v.mean()) ** 2).mean()
    return mean, var


def batchnorm_backward_reference(dout, x, gamma, eps=1e-5):
    """Gradients of training-mode batch normalisation (the batch's own statistics).

    With ``xhat = (x - mean) / sqrt(var + eps)`` over the M = N*H*W values of a channel:
    ``dbeta = sum(dout)``, ``dgamma = sum(dout * xhat)``,
    ``dx = gamma / sqrt(var + eps) / M * (M * dout - dbeta - xhat * dgamma)``.

    Returns
    -------
    dx : ndarray, the shape of x
    dgamma, dbeta : ndarray, (C,)
    """
    mean, var = batchnorm_batch_stats_reference(x)
    C = x.shape[1]
    dx = np.empty_like(x)
    dgamma = np.empty(C, dtype=x.dtype)
    dbeta = np.empty(C, dtype=x.dtype)
    for c in range(C):
        inv_std = 1.0 / np.sqrt(var[c] + eps)
        xhat = (x[:, c] - mean[c]) * inv_std
        d = dout[:, c]
        M = d.size
        dbeta[c] = d.sum()
        dgamma[c] = (d * xhat).sum()
        dx[:, c] = gamma[c] * inv_std / M * (M * d - dbeta[c] - xhat * dgamma[c])
    return dx, dgamma, dbeta
