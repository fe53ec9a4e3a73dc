"""Symmetric per-channel int8: the plain post-training quantization that weight sharing is compared with.

Each output channel ``f`` (a conv filter, a row of a linear weight) gets one scale
``s_f = max |w_f| / 127``; each weight is stored as ``q = round(w / s_f)`` in -127..127 and read back as
``q * s_f``.  Zero stays exactly zero, so the masks are held.  No training, no codebook: 8 bits per weight
where trained sharing needs 2-5 (Jacob et al., CVPR 2018, describe this scheme; "symmetric" because
zero maps to the integer 0).
"""
import numpy as np

from ece662.layers import Conv2d, Linear
from ece662.pruning import methods as prune


def int8_per_channel(w):
    """Quantize ``w`` (any shape, axis 0 = output channels) symmetrically to int8, one scale per channel.

    Returns
    -------
    q : ndarray of int8, w's shape
    scales : ndarray of float32, (w.shape[0],)
        0 for a channel whose weights are all zero.

    Examples
    --------
    >>> q, s = int8_per_channel(np.array([[0.5, -1.27], [0.0, 0.0]], np.float32))
    >>> q.tolist(), s.tolist()
    ([[50, -127], [0, 0]], [0.009999999776482582, 0.0])
    """
    w = np.asarray(w, dtype=np.float32)
    largest = np.abs(w.reshape(len(w), -1)).max(axis=1) if w.size else np.zeros(len(w), np.float32)
    scales = (largest / 127).astype(np.float32)
    safe = np.where(scales > 0, scales, 1).reshape((-1,) + (1,) * (w.ndim - 1))
    q = np.clip(np.round(w / safe), -127, 127).astype(np.int8)
    return q, scales


def quantize_int8(model):
    """Replace every Conv2d and Linear weight of ``model`` by its int8 per-channel reading, in place; masks kept.

    Returns
    -------
    dict
        ``{layer name: (q, scales)}``, what a file would store.
    """
    stored = {}
    for name, m in prune.prunable(model, (Conv2d, Linear)):
        param = "weight_orig" if "weight_mask" in m._buffers else "weight"
        w = m._parameters[param] * (m._buffers["weight_mask"] if param == "weight_orig" else 1)
        q, scales = int8_per_channel(w)
        m._parameters[param] = (q * scales.reshape((-1,) + (1,) * (q.ndim - 1))).astype(np.float32)
        stored[name] = (q, scales)
    prune.refresh(model)
    return stored
