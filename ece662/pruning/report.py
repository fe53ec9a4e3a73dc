"""``report(model)``: what pruning did to each layer, as records and a table.

For every Conv2d and Linear layer: parameters, zeros, sparsity, dead filters (Conv2d) or dead
output units (Linear: a row of weights all zero, an output that is its bias for every input; in
the last layer, a class the network can no longer recognise), and three
FLOP counts per image: *dense* (what a kernel that multiplies by zeros does), *skip*
(what ece662's filter-skipping path still does: only live filters, and only input
channels / features that are not constant because a dead filter upstream made them so --
the inference plan of ``ece662.layers.plan`` decides which, so the count is the plan's),
and *nonzero* (only the multiplications by non-zero weights: the ideal of a sparse kernel).  A
fourth, *kernel*, is what the chosen kernel really computes: v5 and v6 work in blocks of 16 and 8
filters, v7 in blocks of its tile's width, so 12 live filters can cost as much as 16 (``ece662.layers.kernel_choice.computed_filters``);
``flops_dense / flops_kernel`` is the speedup the kernel can reach, beside the arithmetic ideal
``flops_dense / flops_skip``.
"""
import sys

import numpy as np

from ece662.layers import Conv2d, Linear
from ece662.layers.kernel_choice import computed_filters
from ece662.layers.plan import build_plan


def report(model, input_shape=(3, 32, 32), file=None, verbose=True):
    """Per-layer and overall pruning statistics of a Sequential model.

    Parameters
    ----------
    model : Sequential
    input_shape : tuple
        One input without the batch axis.
    file : file-like, optional
        Where the table goes (default stdout).
    verbose : bool
        Print the table.

    Returns
    -------
    list of dict
        ``name, type, params, zeros, sparsity, dead_filters, dead_outputs, flops_dense, flops_skip,
        flops_kernel, flops_nonzero`` per Conv2d / Linear layer, then a ``total`` record.  ``dead_filters``
        counts a Conv2d's dead filters (0 for Linear); ``dead_outputs`` counts dead output
        channels of either kind: a Conv2d's dead filters, a Linear's dead output units.  The
        table's ``dead`` column shows ``dead_outputs``.

    Examples
    --------
    >>> from ece662.models import default_convnet
    >>> import ece662.pruning as prune
    >>> net = default_convnet()
    >>> _ = prune.ln_structured(net.conv1, "weight", amount=16, n=2, dim=0)
    >>> rows = report(net, verbose=False)
    >>> rows[0]["dead_filters"], rows[0]["flops_skip"] / rows[0]["flops_dense"]
    (16, 0.5)
    >>> import warnings
    >>> with warnings.catch_warnings():          # 3 classes die: prune warns (DeadClassWarning)
    ...     warnings.simplefilter("ignore", prune.DeadClassWarning)
    ...     _ = prune.ln_structured(net.fc, "weight", amount=3, n=2, dim=0)
    >>> rows = report(net, verbose=False)
    >>> rows[2]["name"], rows[2]["dead_outputs"], rows[-1]["dead_outputs"]
    ('fc', 3, 19)
    """
    # what the plan computes of each Conv2d / Linear: live filters x live inputs
    computed = {step.names[0]: step.kernel for step in build_plan(model, input_shape, kernels="auto")
                if step.kernel is not None}
    shape = (1,) + tuple(input_shape)
    rows = []
    for name, m in model.named_children():
        if isinstance(m, (Conv2d, Linear)):
            w = m.weight
            zeros = int(w.size - np.count_nonzero(w))
            params = int(w.size + (m.bias.size if m.bias is not None else 0))
            dense = m.flops(shape)
            k = computed.get(name)
            skip = dense if k is None else dense * k.live_filters * k.live_inputs // (k.filters * k.inputs)
            kernel = skip if k is None else \
                dense * min(computed_filters(k.version, k.live_filters, k.tile), k.filters) * k.live_inputs \
                // (k.filters * k.inputs)
            dead = int((~m.alive_filters()).sum()) if isinstance(m, Conv2d) else 0
            dead_outputs = dead if isinstance(m, Conv2d) else int((~m.alive_outputs()).sum())
            nonzero = dense * np.count_nonzero(w) // w.size
            rows.append({"name": name, "type": type(m).__name__, "params": params, "zeros": zeros,
                         "sparsity": zeros / w.size, "dead_filters": dead, "dead_outputs": dead_outputs,
                         "flops_dense": int(dense), "flops_skip": int(skip), "flops_kernel": int(kernel),
                         "flops_nonzero": int(nonzero)})
        shape = m.output_shape(shape)
    total = {"name": "total", "type": "", "params": sum(r["params"] for r in rows),
             "zeros": sum(r["zeros"] for r in rows), "dead_filters": sum(r["dead_filters"] for r in rows),
             "dead_outputs": sum(r["dead_outputs"] for r in rows),
             "flops_dense": sum(r["flops_dense"] for r in rows), "flops_skip": sum(r["flops_skip"] for r in rows),
             "flops_kernel": sum(r["flops_kernel"] for r in rows),
             "flops_nonzero": sum(r["flops_nonzero"] for r in rows)}
    weights = sum(int(m.weight.size) for _, m in model.named_children() if isinstance(m, (Conv2d, Linear)))
    total["sparsity"] = total["zeros"] / max(weights, 1)
    rows.append(total)
    if verbose:
        out = file or sys.stdout
        print(f"{'layer':<8} {'type':<7} {'params':>8} {'zeros':>8} {'sparsity':>9} {'dead':>5} "
              f"{'FLOPs dense':>12} {'FLOPs skip':>12} {'FLOPs kernel':>13}", file=out)
        for r in rows:
            print(f"{r['name']:<8} {r['type']:<7} {r['params']:>8,} {r['zeros']:>8,} {r['sparsity']:>9.3f} "
                  f"{r['dead_outputs']:>5} {r['flops_dense']:>12,} {r['flops_skip']:>12,} {r['flops_kernel']:>13,}",
                  file=out)
    return rows
