"""Physically remove dead filters: a smaller dense network that computes the same logits.

A filter whose weights are all masked still outputs its bias ``b`` at every position
(ece662 leaves the bias alone, as torch does, unless you prune it with ``prune_bias=True``).
Removing the filter must keep that constant's effect.  Where it goes (ReLU makes it
``relu(b)``, pooling keeps it, the next conv or linear layer folds it into its bias) is
decided once, by the inference plan (``ece662.layers.plan``): ``shrink`` builds the plan's
live-only network for good, with the plan's weights and folded biases.  A BatchNorm right
after a conv (linear) layer is folded into that layer's weights and bias, as the plan runs it,
so the shrunk network has no such batch norm layer (it is an inference network).

With padding > 0 the border positions see zeros instead of the constant, so a dead
filter with a non-zero output cannot be removed exactly: ``shrink`` refuses and says so.
"""
from collections import OrderedDict

import numpy as np

from ece662.layers import BatchNorm1d, BatchNorm2d, Conv2d, Linear, Sequential
from ece662.layers.modules import LAYER_TYPES
from ece662.layers.plan import build_plan


def shrink(model, input_shape=(3, 32, 32)):
    """A new, smaller dense model without the dead filters of ``model`` (unchanged).

    Dead filters are removed with every input channel / feature that read them; their
    constant output is folded into the next layer's bias, so the logits stay the same.
    Masks are folded into the weights (the new model is not pruned, just smaller).

    Parameters
    ----------
    model : Sequential
    input_shape : tuple
        One input without the batch axis (needed to know the feature map size at Flatten).

    Returns
    -------
    Sequential, in eval mode

    Raises
    ------
    ValueError
        A conv layer with every filter dead, a dead filter with non-zero output feeding a
        padded conv, or a layer type the folding does not know.

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
    layers = OrderedDict()
    for step in build_plan(model, input_shape, kernels="auto"):
        name, m = step.names[0], step.module
        folded = step.live_in is not None          # constants from dead filters upstream
        if folded and step.full_input and step.op == "conv":
            raise ValueError(f"shrink: {name} has padding {m.padding}, so the constant output of the dead "
                             f"filters before it cannot be folded into its bias exactly; prune those "
                             f"filters with prune_bias=True (their output is then 0)")
        if folded and step.full_input:
            raise ValueError(f"shrink: does not know how to fold the constant channels of dead filters "
                             f"through layer {name} ({type(m).__name__})")
        if step.op == "conv":
            if step.kernel.live_filters == 0:
                raise ValueError(f"shrink: every filter of {name} is dead; the network outputs constants")
            new = Conv2d(step.weight.shape[1], step.weight.shape[0], m.kernel_size, m.stride, m.padding,
                         bias=m.bias is not None or folded)
        elif step.op == "linear":
            new = Linear(step.weight.shape[1], m.out_features, bias=m.bias is not None or folded)
        elif isinstance(m, (BatchNorm2d, BatchNorm1d)):
            new = _copy_batchnorm(m, step.live_in if step.op == "channels" else None)
        else:
            new = _copy_plain(name, m)
        if step.op in ("conv", "linear"):
            new.weight = step.weight.copy()
            if new.bias is not None:
                new.bias = step.bias.copy()
        layers[name] = new
        for fused_name, fused in zip(step.names[1:], step.fused):
            if not isinstance(fused, (BatchNorm2d, BatchNorm1d)):     # a batch norm is folded in
                layers[fused_name] = _copy_plain(fused_name, fused)
    return Sequential(layers).eval()


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
