"""Physically remove dead filters: a smaller dense network that computes the same logits.

A filter whose weights are all masked still outputs its bias ``b`` at every position
(ece662 leaves the bias alone, as torch does, unless you prune it with ``prune_bias=True``).
Removing the filter must keep that constant's effect, and the network layout tells us
where it goes:

* ReLU turns the constant plane into ``relu(b)``, max pooling keeps it constant;
* the next conv (padding 0) sees, for each of its filters ``f``, the constant
  ``relu(b) * sum(w[f, c])`` at every position: it is added to that conv's bias;
* after Flatten, channel ``c`` owns features ``c*H*W ... (c+1)*H*W - 1``; a linear layer
  adds ``W[:, those] @ relu(b)`` to its bias.

With padding > 0 the border positions see zeros instead of the constant, so a dead
filter with a non-zero output cannot be removed exactly: ``shrink`` refuses and says so.
"""
from collections import OrderedDict

import numpy as np

from ece662.layers import Conv2d, Dropout, Flatten, Linear, MaxPool2d, ReLU, Sequential


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
    shape = (1,) + tuple(input_shape)
    keep, const = None, None          # channels kept, and the constant value of removed ones
    layers = OrderedDict()
    for name, m in model.named_children():
        out_shape = m.output_shape(shape)
        if isinstance(m, Conv2d):
            w = m.weight.astype(np.float32)
            b = m.bias.astype(np.float32) if m.bias is not None else np.zeros(m.out_channels, np.float32)
            if keep is not None:
                removed = ~keep
                if m.padding > 0 and np.any(const[removed] != 0):
                    raise ValueError(f"shrink: {name} has padding {m.padding}, so the constant output of the "
                                     f"dead filters before it cannot be folded into its bias exactly; prune "
                                     f"those filters with prune_bias=True (their output is then 0)")
                b = b + (w[:, removed].sum(axis=(2, 3)) @ const[removed]).astype(np.float32)
                w = w[:, keep]
            alive = m.alive_filters()
            if not alive.any():
                raise ValueError(f"shrink: every filter of {name} is dead; the network outputs constants")
            new = Conv2d(w.shape[1], int(alive.sum()), m.kernel_size, m.stride, m.padding,
                         bias=m.bias is not None or keep is not None)
            new.weight = np.ascontiguousarray(w[alive])
            if new.bias is not None:
                new.bias = np.ascontiguousarray(b[alive])
            keep, const = alive, np.where(alive, 0, b).astype(np.float32)
        elif isinstance(m, ReLU):
            new = ReLU()
            const = None if const is None else np.maximum(const, 0)
        elif isinstance(m, MaxPool2d):
            new = MaxPool2d(m.kernel_size, m.stride)
        elif isinstance(m, Dropout):
            new = Dropout(m.p)
        elif isinstance(m, Flatten):
            new = Flatten()
            if keep is not None:
                hw = int(np.prod(shape[2:]))
                keep, const = np.repeat(keep, hw), np.repeat(const, hw)
        elif isinstance(m, Linear):
            w = m.weight.astype(np.float32)
            b = m.bias.astype(np.float32) if m.bias is not None else np.zeros(m.out_features, np.float32)
            if keep is not None:
                b = b + (w[:, ~keep] @ const[~keep]).astype(np.float32)
                w = w[:, keep]
            new = Linear(w.shape[1], m.out_features, bias=m.bias is not None or keep is not None)
            new.weight = np.ascontiguousarray(w)
            if new.bias is not None:
                new.bias = b
            keep, const = None, None
        else:
            raise ValueError(f"shrink: does not know how to fold through layer {name} ({type(m).__name__})")
        layers[name] = new
        shape = out_shape
    return Sequential(layers).eval()
