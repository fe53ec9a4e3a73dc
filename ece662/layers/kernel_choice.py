"""Which kernel one conv runs, and why: the switch every layer reads.

``check_mode`` and :data:`MODES` are the values of ``model.kernels``; :func:`choose_conv_kernel` picks a
conv's kernel from its (live) weights; :func:`run_conv` runs it; :func:`conv_forward` is a Conv2d on its own
(training, or a layer called directly); :class:`KernelChoice` is the record of what ran (``layer.last_kernel``);
:func:`alive_rows` is the dead-filter rule.  The plan of a whole eval network (``ece662.layers.plan``) builds
on these; the layers of ``ece662.layers.modules`` call them without knowing the plan.
"""
from typing import NamedTuple

import numpy as np

from ece662.layers import functional as fn
from ece662.layers import kernels_sparse as sparse
from ece662.layers import reference as ref
from ece662.layers import tuning

MODES = ("auto", "dense", "reference")

# The sparse conv (kernels_sparse: output positions as vector lanes) runs when at least a fraction of a
# layer's live weights are zero.  For a conv with a fused ReLU + 2x2 pool that fraction is measured on this
# CPU for the layer's shape, against the v7 tile it would replace (tuning.sparse_from): the break-even was
# near 48% (conv1) and 55% (conv2) against v6 on the AVX2 EPYC (benchmarks/RESULTS.md, "Unstructured sparse
# kernel"), 22-36% against v7 on Zen 4 ("Kernel v7").  Elsewhere, and when nothing is measured,
# tuning.DEFAULT_SPARSE_FROM (0.6); ECE662_SPARSE_FROM forces one value everywhere.


# The kernel for a stride-1 conv followed by ReLU and MaxPool2d(2): v7, v6's tile at the size measured
# fastest on this CPU (ece662.layers.tuning; benchmarks/RESULTS.md, "Kernel v7").  v6 measured faster than
# v5 and v5 than v4 on both layers of the course CNN ("Inference and kernel v5"); "v6", "v5" or "v4" here
# brings a previous kernel back.
FUSED_POOL_KERNEL = "v7"


def check_mode(value):
    """``value`` if it is one of :data:`MODES`, else a ValueError saying which are."""
    if value not in MODES:
        raise ValueError(f"kernels must be one of {MODES}, got {value!r}")
    return value


class KernelChoice(NamedTuple):
    """Which kernel a Conv2d or Linear layer ran, and why (``layer.last_kernel``).

    ``version`` is ``'v3'``, ``'v4'``, ``'v5'``, ``'v6'``, ``'v7'``, ``'sparse'``, ``'reference'`` (conv, eval or alone), ``'lanes'`` (the
    fused training conv of ``kernels_train``) or ``'linear'``;
    ``fused`` names the layers that ran inside the kernel (e.g. ``('ReLU', 'MaxPool2d(2)')``);
    ``live_filters / filters`` and ``live_inputs / inputs`` say how much of the layer was
    computed (input channels for a conv, input features for a linear layer); ``tile`` (v7) the register
    tile's size, e.g. ``'8x32'`` (``ece662.layers.tuning``).
    """
    version: str
    fused: tuple
    live_filters: int
    filters: int
    live_inputs: int
    inputs: int
    reason: str
    tile: str = ""

    @property
    def skipping(self):
        """True when part of the layer (dead filters, constant inputs) is not computed."""
        return self.live_filters < self.filters or self.live_inputs < self.inputs

    def __str__(self):
        fused = (", fused " + " + ".join(self.fused)) if self.fused else ""
        tile = f" tile {self.tile}" if self.tile else ""
        return f"{self.version}{tile}{' skip' if self.skipping else ''}{fused}"


# ============================================================================ conv kernels
def choose_conv_kernel(mode, w_live, stride, pool2, threshold=None):
    """``(version, reason)`` for a conv with the (live) weights ``w_live``.

    * ``'reference'`` mode: the plain-loop reference;
    * ``'auto'``, stride 1, and at least the threshold's fraction of the live weights zero: the sparse
      kernel of ``kernels_sparse`` (work proportional to the non-zeros).  ``threshold`` is
      ``(fraction, why)``: the plan passes ``tuning.sparse_from``, measured for the layer's shape; by
      default ``tuning.unmeasured_sparse_from()``, ``ECE662_SPARSE_FROM`` or ``tuning.DEFAULT_SPARSE_FROM``;
    * a fused 2x2 max pool: ``FUSED_POOL_KERNEL`` (v7; v6, v5 or v4: conv + ReLU + pool in one pass);
    * everything else: v3 (register-tiled patches).
    """
    if mode == "reference":
        return "reference", "kernels='reference'"
    if mode == "dense":
        why = "kernels='dense'"
    else:
        frac, frac_why = _check_threshold(threshold or tuning.unmeasured_sparse_from())
        zeros = 1.0 - np.count_nonzero(w_live) / max(w_live.size, 1)
        if stride == 1 and zeros >= frac and w_live.size:
            return "sparse", f"{zeros:.0%} of live weights are zero (>= {frac:.0%}, {frac_why})"
        why = f"{zeros:.0%} zeros, fewer than {frac:.0%} ({frac_why})"
    if pool2:
        return FUSED_POOL_KERNEL, why + "; ReLU and MaxPool2d(2) follow a stride-1 conv"
    return "v3", why


def _check_threshold(threshold):
    """``threshold`` as ``(fraction in [0, 1], reason)``, or a ValueError saying what it must be."""
    try:
        frac, why = threshold
        ok = not isinstance(frac, bool) and 0.0 <= float(frac) <= 1.0
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(f"choose_conv_kernel: threshold must be (fraction of zero weights in [0, 1], reason), "
                         f"e.g. (0.6, 'the default'), got {threshold!r}")
    return float(frac), str(why)


def run_conv(version, x, w, b, stride, pad, relu=False, pool2=False, alive_f=None, packed=None, tile=None):
    """Run one conv kernel; ``relu`` / ``pool2`` apply a ReLU / 2x2 max pool after it.

    ``alive_f`` (v3, v4 and v5) marks filters to compute; the others output their bias (v6, v7 and the sparse
    kernel are given the live filters' weights alone, so they need no mask).  ``packed``
    (v6 and v7): the weights already packed for it (``functional.pack_filters_lanes`` / ``pack_filters_tile``);
    ``tile`` (v7): the tile's size, measured for ``x``'s shape when not given (``tuning.choose_tile``).
    """
    if version == "reference":
        out = ref.conv2d_forward_reference(x, w, b, stride, pad)
        if relu:
            out = ref.relu_forward_reference(out)
        return ref.maxpool2d_forward_reference(out, 2, 2) if pool2 else out
    if version == "sparse":
        return sparse.conv2d_forward_sparse_lanes(x, w, b, 1, pad, relu=relu, pool2=pool2)
    if version == "v7":
        if tile is None:
            tile, _ = tuning.choose_tile(x.shape[1], x.shape[2], x.shape[3], w.shape[0], w.shape[2], w.shape[3], pad)
        return tuning.run(x, w, b, pad, tile, packed)
    if version == "v6":
        return fn.conv2d_relu_maxpool2_lanes(x, w, b, pad, packed=packed)
    if version == "v5":
        return fn.conv2d_relu_maxpool2_tiled(x, w, b, pad, alive_f=alive_f)
    if version == "v4":
        return fn.conv2d_relu_maxpool2_numba(x, w, b, pad, alive_f=alive_f)
    return fn.conv2d_forward_numba(x, w, b, stride, pad, alive_f=alive_f, relu=relu)


def conv_forward(conv, x):
    """One Conv2d on its own (training, or a layer called directly): every input channel,
    dead filters skipped in ``'auto'`` mode (their planes are their bias).

    Returns ``(out, KernelChoice)``.
    """
    w = conv.weight
    b = conv.bias if conv.bias is not None else np.zeros(conv.out_channels, np.float32)
    alive = conv.alive_filters() if conv.kernels == "auto" else np.ones(conv.out_channels, bool)
    version, reason = choose_conv_kernel(conv.kernels, w[alive], conv.stride, False)
    out = run_conv(version, x, w, b, conv.stride, conv.padding,
                   alive_f=None if alive.all() or version != "v3" else alive)
    return out, KernelChoice(version, (), int(alive.sum()), conv.out_channels, conv.in_channels,
                             conv.in_channels, reason)


def computed_filters(version, live, tile=""):
    """How many filters a kernel really computes for ``live`` live ones: v5 and v6 pack the filters into
    16-wide register blocks and one 8-wide tail (``functional.pack_filters_lanes``), so 12 live filters are
    computed as 16 and skipping 4 of 16 saves nothing; v7 works in whole blocks of its ``tile``'s lanes
    (``tuning.computed_filters``); the other kernels compute the live filters only.

    Examples
    --------
    >>> [computed_filters("v6", f) for f in (32, 24, 16, 12, 8, 3)]
    [32, 24, 16, 16, 8, 8]
    >>> computed_filters("v7", 24, "8x32"), computed_filters("v7", 24, "8x16+8x8")
    (32, 24)
    """
    if version == "v7" and live:
        return tuning.computed_filters(tuning.parse_tile(tile), live)
    if version not in ("v5", "v6") or live == 0:
        return live
    blocks = live // 16 + (1 if live % 16 > 8 else 0)
    return 16 * blocks + (8 if live - 16 * blocks > 0 else 0)


def alive_rows(w):
    """``(w.shape[0],)`` bool: which output rows (filters, units) of ``w`` have a non-zero weight:
    the dead-filter rule, for a conv's filters and a linear layer's output units alike."""
    return np.any(w.reshape(w.shape[0], -1) != 0, axis=1)
