"""Physically remove dead filters: a smaller dense network that computes the same logits.

A filter whose weights are all masked still outputs its bias ``b`` at every position
(ece662 leaves the bias alone, as torch does, unless you prune it with ``prune_bias=True``).
Removing the filter must keep that constant's effect.  Where it goes (ReLU makes it
``relu(b)``, pooling keeps it, the next conv or linear layer folds it into its bias) is
decided once, by the inference plan (``ece662.layers.plan``): ``shrink`` builds the plan's
live-only network for good, with the plan's weights and folded biases.  A BatchNorm right
after a conv (linear) layer is folded into that layer's weights and bias, as the plan runs it,
so the shrunk network has no such batch norm layer (it is an inference network).

**Constants before a padded conv.**  With padding > 0 the border positions of the next conv
see zeros instead of the constant, so the constant cannot go into that conv's bias.  This is
the usual case with BatchNorm: a dead filter followed by BatchNorm outputs
``beta - gamma * mean / sqrt(var + eps)`` (through the ReLU), which is not 0 even with
``prune_bias=True``.  ``shrink`` then keeps *one* of those dead channels as a **carrier**: a
filter with no weights whose bias is its constant ``u``, so it outputs ``u`` inside the image,
and the padding around it is 0, exactly like every other dead channel.  All the dead channels'
contributions to the padded conv are one weight slice on the carrier,
``sum_c const_c * w[:, c] / u``: the same numbers at every position, border included.  The
shrunk network has one channel there instead of every dead one.
"""
from collections import OrderedDict

import numpy as np

from ece662.layers import BatchNorm1d, BatchNorm2d, Conv2d, Linear, Sequential
from ece662.layers import LAYER_TYPES
from ece662.layers.plan import build_plan


def shrink(model, input_shape=(3, 32, 32)):
    """A new, smaller dense model without the dead filters of ``model`` (unchanged).

    Dead filters are removed with every input channel / feature that read them; their
    constant output is folded into the next layer's bias, so the logits stay the same
    (before a padded conv, one dead channel carries the constants: see the module docstring).
    Masks and eval-mode BatchNorm layers right after a conv or linear layer are folded into
    the weights (the new model is not pruned, just smaller).

    Parameters
    ----------
    model : Sequential
        In eval mode where it has BatchNorm layers (their running statistics are what is folded).
    input_shape : tuple
        One input without the batch axis (needed to know the feature map size at Flatten).

    Returns
    -------
    Sequential, in eval mode

    Raises
    ------
    ValueError
        A conv layer with every filter dead, or constant channels of dead filters reaching a
        layer the folding does not know (the message says which, and what would make it exact).

    Examples
    --------
    >>> import ece662.pruning as prune
    >>> from ece662.models import default_convnet
    >>> net = default_convnet(seed=0)
    >>> _ = prune.ln_structured(net.conv1, "weight", amount=16, n=2, dim=0)
    >>> small = shrink(net)
    >>> small.conv1.weight.shape, small.conv2.weight.shape
    ((16, 3, 5, 5), (32, 16, 3, 3))
    >>> x = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    >>> bool(np.allclose(small(x), net.eval()(x), atol=1e-5))
    True
    """
    if not isinstance(model, Sequential):
        raise TypeError(f"shrink: expected an ece662 Sequential, got {type(model).__name__}")
    steps = list(build_plan(model, input_shape, kernels="auto"))
    keep, carriers = _carriers(steps)
    layers = OrderedDict()
    for i, step in enumerate(steps):
        name, m = step.names[0], step.module
        if step.live_in is not None and step.full_input and step.op != "conv":
            raise ValueError(_cannot_fold(name, m))
        if step.op == "conv":
            if step.kernel.live_filters == 0:
                raise ValueError(f"shrink: every filter of {name} is dead; the network outputs constants")
            w, b = _conv_weights(step, keep[i], carriers.get(i))
            new = Conv2d(w.shape[1], w.shape[0], m.kernel_size, m.stride, m.padding,
                         bias=m.bias is not None or bool(np.any(b != 0)))
        elif step.op == "linear":
            w, b = step.weight, step.bias
            new = Linear(w.shape[1], m.out_features, bias=m.bias is not None or bool(np.any(b != 0)))
        elif isinstance(m, (BatchNorm2d, BatchNorm1d)):
            new = _copy_batchnorm(m, keep[i] if step.op == "channels" else None)
        else:
            new = _copy_plain(name, m)
        if step.op in ("conv", "linear"):
            new.weight = np.ascontiguousarray(w, dtype=np.float32)
            if new.bias is not None:
                new.bias = np.ascontiguousarray(b, dtype=np.float32)
        layers[name] = new
        for fused_name, fused in zip(step.names[1:], step.fused):
            if not isinstance(fused, (BatchNorm2d, BatchNorm1d)):     # a batch norm is folded in
                layers[fused_name] = _copy_plain(fused_name, fused)
    return Sequential(layers).eval()


def _carriers(steps):
    """Which channels the shrunk network computes after each step (``keep``, a bool array or
    None for all), and, per padded conv that reads constant channels, the dead channel that
    carries them (``carriers``: step index -> channel).

    A padded conv reading non-zero constants (the plan puts them back: ``full_input``) gets as
    carrier its dead input channel with the largest constant (dividing by it loses the least).
    That channel is kept from the conv that made it dead, through the per-channel steps between.
    """
    keep = [None if s.live_out is None else s.live_out.copy() for s in steps]
    carriers = {}
    for j, s in enumerate(steps):
        if not (s.op == "conv" and s.full_input and s.live_in is not None):
            continue
        size = np.where(s.live_in, 0, np.abs(s.const_in))
        if not np.any(size > 0):
            continue
        c = carriers[j] = int(np.argmax(size))
        k = j - 1                           # back to the conv whose dead filter c is
        while True:
            keep[k][c] = True
            if steps[k].op == "conv":
                break
            k -= 1
    return keep, carriers


def _conv_weights(step, keep_out, carrier=None):
    """The shrunk conv's ``(w, b)``: the plan's weights and biases for the live filters, a
    zero-weight filter for each carrier kept in ``keep_out`` (its bias is its constant), and, when
    this conv reads a ``carrier``, the constant input channels as one weight slice on it."""
    w, b = step.weight, step.bias                  # (live filters, inputs the plan reads, HH, WW)
    if carrier is not None:
        # the plan reads the full input here; keep the live channels and the carrier, which
        # stands for every constant channel c: const_c * w[:, c] = (const_c / u) * (u * w[:, c])
        live, const = step.live_in, step.const_in
        cols = live.copy()
        cols[carrier] = True
        on_carrier = np.einsum("fchw,c->fhw", w[:, ~live], const[~live] / const[carrier])
        w = w[:, cols].copy()
        w[:, int(np.sum(cols[:carrier]))] = on_carrier
    alive = step.live_out if step.live_out is not None else np.ones(len(b), bool)
    if keep_out is None or np.array_equal(keep_out, alive):
        return w, b
    # a carrier among this conv's dead filters: no weights, its constant as the bias (the fused
    # ReLU and pooling keep a constant that is already past a ReLU)
    rows = alive[keep_out]
    full_w = np.zeros((int(keep_out.sum()),) + w.shape[1:], np.float32)
    full_b = step.const_out[keep_out].astype(np.float32)
    full_w[rows], full_b[rows] = w, b
    return full_w, full_b


def _cannot_fold(name, m):
    """What a student can do when constant channels reach a layer the plan cannot carry them through."""
    what = f"shrink: the constant channels of dead filters reach {name} ({type(m).__name__}), which"
    if isinstance(m, (BatchNorm2d, BatchNorm1d)) and m.training:
        return (f"{what} is in training mode (it would normalise with batch statistics, so nothing "
                f"constant can be folded); call model.eval() before shrink")
    if isinstance(m, (Conv2d, Linear)):
        return (f"{what} has a forward hook of its own, so it must see its full input; remove that hook "
                f"(pruning hooks are fine) to shrink exactly")
    return (f"{what} is not a per-channel layer the folding knows (BatchNorm in eval mode, ReLU, "
            f"LeakyReLU, pooling, Dropout); shrink is exact only when such layers alone sit between a "
            f"pruned conv and the next conv or linear layer")


def _copy_plain(name, m):
    """A fresh copy of a layer without parameters (ReLU, pooling, Flatten, Dropout, ...)."""
    cls = LAYER_TYPES.get(type(m).__name__)
    if cls is None or any(True for _ in m.named_parameters()):
        raise ValueError(f"shrink: does not know how to fold through layer {name} ({type(m).__name__})")
    return cls(**m.spec()["args"])


def _copy_batchnorm(bn, live=None):
    """A copy of a batch norm layer, of its ``live`` channels only when given."""
    keep = np.ones(bn.num_features, bool) if live is None else live
    new = type(bn)(int(keep.sum()), eps=bn.eps, momentum=bn.momentum, affine=bn.affine)
    for key in ("weight", "bias", "running_mean", "running_var"):
        if getattr(bn, key) is not None:
            setattr(new, key, np.ascontiguousarray(getattr(bn, key)[keep]))
    new.num_batches_tracked = bn.num_batches_tracked.copy()
    return new.eval()
