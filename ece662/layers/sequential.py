"""``Sequential``: children run in order; in eval mode the whole network runs as one plan.

It stands above the plan (``ece662.layers.plan``), which stands above the layers it plans
(``ece662.layers.modules``): no file of the three imports one above it.  ``from_spec`` rebuilds a
``Sequential`` from ``Module.spec()`` output (the architecture that model files carry).
"""
from collections import OrderedDict

import numpy as np  # noqa: F401  (the doctests use np)

from ece662.layers import plan
from ece662.layers.checks import check_float32
from ece662.layers.module import Module
from ece662.layers.modules import (AdaptiveAvgPool2d, AvgPool2d, BatchNorm1d, BatchNorm2d, Conv2d, Dropout,
                                   Dropout2d, Flatten, LeakyReLU, Linear, MaxPool2d, ReLU)


class Sequential(Module):
    """Children run in order; each has a name (``"0"``, ``"1"``, ... or the keys given).

    Parameters
    ----------
    *layers : Module, or one ``OrderedDict`` / list of ``(name, Module)`` pairs

    Each Conv2d and Linear layer learns here whether its outputs are the network's outputs:
    ``layer._output_layer`` is True when no Conv2d or Linear follows it (in this Sequential and,
    for a nested one, in every enclosing one), False otherwise; a layer never put in a Sequential
    has no such attribute.  ``ece662.pruning`` reads it to warn before a classifier's output rows,
    its classes, are pruned.

    Examples
    --------
    >>> net = Sequential(OrderedDict([("fc", Linear(4, 2, seed=0)), ("relu", ReLU())]))
    >>> [name for name, _ in net.named_modules()]
    ['', 'fc', 'relu']
    >>> net(np.ones((1, 4), dtype=np.float32)).shape
    (1, 2)
    """

    def __init__(self, *layers):
        super().__init__()
        if len(layers) == 1 and isinstance(layers[0], (OrderedDict, dict)):
            items = list(layers[0].items())
        elif len(layers) == 1 and isinstance(layers[0], list):
            items = list(layers[0])
        else:
            items = [(str(i), m) for i, m in enumerate(layers)]
        for name, m in items:
            if not isinstance(m, Module):
                raise TypeError(f"Sequential: layer {name!r} is a {type(m).__name__}, expected an "
                                f"ece662 Module (Conv2d, Linear, ReLU, ...)")
            if not isinstance(name, str) or not name or "." in name:
                raise ValueError(f"Sequential: layer names must be non-empty strings without dots, "
                                 f"got {name!r}")
            self._modules[name] = m
            if hasattr(m, "name"):
                m.name = name
        # which layers make the network's outputs: no Conv2d or Linear after them.  An inner
        # Sequential is built first, so a layer it marked False stays False; one it marked True
        # becomes False here if weighted layers follow the inner Sequential.
        children = list(self._modules.values())
        for i, child in enumerate(children):
            followed = any(isinstance(d, (Conv2d, Linear))
                           for later in children[i + 1:] for d in later.modules())
            for d in child.modules():
                if isinstance(d, (Conv2d, Linear)) and (followed or not hasattr(d, "_output_layer")):
                    object.__setattr__(d, "_output_layer", not followed)

    def __getitem__(self, i):
        if isinstance(i, str):
            return self._modules[i]
        return list(self._modules.values())[i]

    def __len__(self):
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules.values())

    def forward(self, x):
        """Run the layers in order.

        In training mode every layer runs on its own and keeps what its backward needs.  In
        eval mode the model's plan runs (``ece662.layers.plan``; ``print(model.plan())`` shows
        it): dead filters and the channels they make constant are not computed, and a conv
        runs its following ReLU (and 2x2 max pool) inside its kernel.  ``model.kernels``
        switches that off (``'dense'``) or runs the plain-loop references (``'reference'``).

        In both modes ``x`` is checked before any layer runs (``_check_input``): an input of the
        wrong size says which size the network expects.  An empty batch (N = 0) gives an empty
        output, ``(0, ...)``.
        """
        x = self._check_input(x, shapes=self.training)     # in eval mode the plan walks the shapes
        if self.training:
            layers = list(self._modules.values())
            self._fused_train = set()                # layers run inside the conv before them
            i = 0
            while i < len(layers):
                m = layers[i]
                if isinstance(m, Conv2d) and m.fuses_relu_pool(layers[i + 1:i + 3], x):
                    x = m(x, relu_pool=True)         # conv + ReLU + 2x2 max pool, one kernel
                    self._fused_train = self._fused_train | {i + 1, i + 2}
                    i += 3
                else:
                    x = m(x)
                    i += 1
            return x
        return self.plan(x.shape[1:])(x)

    def _check_input(self, x, shapes=True):
        """``x`` checked before any layer runs, in training and eval mode: first by the first
        layer (dtype, layout, channels: its errors name it), then, with ``shapes``, every layer's
        shape (``plan.check_input_shape``: a 16x16 image for a 32x32 network says so; in eval mode
        ``plan.build_plan`` makes the same walk, so it is not made twice)."""
        first = next(iter(self._modules.values()), None)
        if hasattr(first, "check_input"):
            x = first.check_input(x)
        x = check_float32(x, "x", "Sequential")
        if shapes and x.ndim >= 2:
            plan.check_input_shape(self, x.shape[1:])
        return x

    def plan(self, input_shape=(3, 32, 32)):
        """The eval-mode plan for inputs of ``input_shape`` (no batch axis): per layer, live and
        constant channels, fusion, and the kernel with its reason.  ``print`` it to read it.
        """
        return plan.build_plan(self, input_shape)

    def backward(self, dout, need_input_grad=True):
        """Backpropagate ``dout`` through every layer, last to first; return the input's
        gradient, or ``None`` with ``need_input_grad=False`` (then a first Conv2d skips
        computing it, which training does)."""
        layers = list(self._modules.values())
        fused = getattr(self, "_fused_train", set())
        for i in range(len(layers) - 1, -1, -1):
            m = layers[i]
            if i in fused:                       # its backward runs inside the conv's
                continue
            if i == 0 and not need_input_grad and isinstance(m, Conv2d):
                return m.backward(dout, need_dx=False)
            dout = m.backward(dout)
        return dout

    def output_shape(self, input_shape):
        for m in self._modules.values():
            input_shape = m.output_shape(input_shape)
        return input_shape

    def flops(self, input_shape):
        total = 0
        for m in self._modules.values():
            total += m.flops(input_shape)
            input_shape = m.output_shape(input_shape)
        return total

    def summary(self, input_shape=(3, 32, 32), file=None):
        """Print and return one record per layer: name, type, output shape, parameters, FLOPs.

        Parameters
        ----------
        input_shape : tuple
            The shape of one input without the batch axis, e.g. ``(3, 32, 32)``.

        Returns
        -------
        list of dict
            ``{"name", "type", "output_shape", "params", "flops"}`` per layer (output shapes
            without the batch axis; FLOPs per image), then a ``"total"`` record.
        """
        import sys
        shape = (1,) + tuple(input_shape)
        rows = []
        for name, m in self._modules.items():
            flops = m.flops(shape)
            shape = m.output_shape(shape)
            params = sum(int(p.size) for _, p in m.named_parameters())
            rows.append({"name": name, "type": type(m).__name__, "output_shape": shape[1:],
                         "params": params, "flops": flops})
        rows.append({"name": "total", "type": "", "output_shape": shape[1:],
                     "params": sum(r["params"] for r in rows), "flops": sum(r["flops"] for r in rows)})
        out = file or sys.stdout
        print(f"{'layer':<10} {'type':<10} {'output shape':<16} {'params':>10} {'FLOPs':>12}", file=out)
        for r in rows:
            print(f"{r['name']:<10} {r['type']:<10} {str(r['output_shape']):<16} "
                  f"{r['params']:>10,} {r['flops']:>12,}", file=out)
        return rows

    def spec(self):
        return {"type": "Sequential",
                "layers": [[name, m.spec()] for name, m in self._modules.items()]}


LAYER_TYPES = {cls.__name__: cls for cls in (Conv2d, Linear, ReLU, MaxPool2d, Flatten, Dropout, Dropout2d,
                                              LeakyReLU, AvgPool2d, AdaptiveAvgPool2d, BatchNorm2d,
                                              BatchNorm1d)}


def from_spec(spec):
    """Rebuild a model from ``Module.spec()`` output (weights are not part of a spec).

    Raises
    ------
    ValueError
        For an unknown layer type or arguments that do not fit it.
    """
    if not isinstance(spec, dict) or spec.get("type") != "Sequential":
        raise ValueError(f"expected a Sequential spec {{'type': 'Sequential', 'layers': [...]}}, "
                         f"got {str(spec)[:80]}")
    layers = OrderedDict()
    for name, layer_spec in spec["layers"]:
        cls = LAYER_TYPES.get(layer_spec.get("type"))
        if cls is None:
            raise ValueError(f"layer {name!r}: unknown type {layer_spec.get('type')!r}; "
                             f"known types are {sorted(LAYER_TYPES)}")
        args = dict(layer_spec.get("args", {}))
        if "kernel_size" in args and isinstance(args["kernel_size"], list):
            args["kernel_size"] = tuple(args["kernel_size"])
        try:
            layers[name] = cls(**args)
        except TypeError as e:
            raise ValueError(f"layer {name!r}: arguments {args} do not fit {cls.__name__}: {e}") from None
    return Sequential(layers)
