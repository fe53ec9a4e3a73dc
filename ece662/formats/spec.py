"""An architecture as data: ``Module.spec()``'s JSON, checked before any layer is built.

A spec is ``{"type": "Sequential", "layers": [[name, {"type": ..., "args": {...}}], ...]}``.  It travels inside
ece662's ``.npz`` model files and, on its own, as the ``--arch net.json`` file that says which network a PyTorch
state_dict's weights belong to.  Both are untrusted input: :func:`check_spec` bounds every count and size (and the
weights they would allocate, by :data:`~ece662.formats.common.MAX_PARAMETERS`) before a layer is made.
"""
import json
import os

import numpy as np

from ece662.formats import common
from ece662.layers import LAYER_TYPES, from_spec

MAX_SPEC_CHARS = 1_000_000        # a spec is a few hundred characters per layer
_MAX_LAYERS = 1000
_MAX_DIM = 2 ** 20                # no size argument of a layer (channels, features, kernel) exceeds this
_FLOAT32_MAX = float(np.finfo(np.float32).max)   # a float argument (a slope, an eps) must be finite as float32


def read_architecture(path):
    """An untrained model built from a JSON architecture file (the format of ``Module.spec()``).

    A PyTorch state_dict holds weights but not the network they belong to; this file says it,
    e.g. for ``python -m ece662 evaluate --model net.pt --mode torch --arch net.json``.
    Write one with ``json.dump(model.spec(), f)``.  Checked like an ``.npz`` model's spec
    (:func:`check_spec`) before any layer is made.

    Examples
    --------
    >>> import json, os, tempfile
    >>> from ece662.models import default_convnet
    >>> path = os.path.join(tempfile.mkdtemp(), "net.json")
    >>> with open(path, "w") as f:
    ...     json.dump(default_convnet().spec(), f)
    >>> [name for name, _ in read_architecture(path).named_children()][:3]
    ['conv1', 'relu1', 'pool1']
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no architecture file at {path}")
    with open(path, "rb") as f:
        text = f.read(MAX_SPEC_CHARS + 1)
    if len(text) > MAX_SPEC_CHARS:
        raise ValueError(f"{path}: an architecture file is at most {MAX_SPEC_CHARS:,} bytes; this one is larger")
    try:
        spec = json.loads(text)
    except (ValueError, RecursionError) as e:     # bad JSON or UTF-8, or an integer of over 4,300 digits
        raise ValueError(f"{path} is not a JSON architecture ({str(e)[:200]}); write one with "
                         f"json.dump(model.spec(), f)") from None
    check_spec(spec, path)
    return from_spec(spec)


def check_spec(spec, source="spec"):
    """Check an architecture spec (``Module.spec()`` output) without building it.

    Raises
    ------
    ValueError
        Not ``{"type": "Sequential", "layers": [[name, {"type", "args"}], ...]}``, an unknown
        layer type, an argument of the wrong type or absurd size (a float that is not finite as
        float32, a conv padding not smaller than its kernel), or more than
        :data:`MAX_PARAMETERS` weights in all; the message names the layer.
    """
    if not isinstance(spec, dict) or spec.get("type") != "Sequential":
        raise ValueError(f"{source}: expected a spec {{'type': 'Sequential', 'layers': [...]}}, "
                         f"got {str(spec)[:80]}")
    layers = spec.get("layers")
    if not isinstance(layers, list):
        raise ValueError(f"{source}: the spec has no list of 'layers' (got {str(layers)[:60]})")
    if len(layers) > _MAX_LAYERS:
        raise ValueError(f"{source}: the spec has {len(layers):,} layers, more than {_MAX_LAYERS}")
    names, weights = set(), 0
    for i, entry in enumerate(layers):
        if not (isinstance(entry, list) and len(entry) == 2 and isinstance(entry[0], str)
                and isinstance(entry[1], dict)):
            raise ValueError(f"{source}: layer {i} of the spec is not a [name, {{'type': ..., "
                             f"'args': {{...}}}}] pair: {str(entry)[:80]}")
        name, layer = entry
        if not name or "." in name or name in names:
            raise ValueError(f"{source}: layer {i} has the name {name!r}; names must be unique, "
                             f"non-empty and without dots")
        names.add(name)
        if layer.get("type") not in LAYER_TYPES:
            raise ValueError(f"{source}: layer {name!r}: unknown type {str(layer.get('type'))[:40]!r}; "
                             f"known types are {sorted(LAYER_TYPES)}")
        args = layer.get("args", {})
        if not isinstance(args, dict):
            raise ValueError(f"{source}: layer {name!r}: args must be an object, got {str(args)[:60]}")
        for k, v in args.items():
            values = v if isinstance(v, list) and len(v) <= 2 else [v]
            for x in values:
                if not (x is None or isinstance(x, (bool, int, float, str))):
                    raise ValueError(f"{source}: layer {name!r}: argument {k!r} = {str(v)[:60]} is "
                                     f"not a number, string or pair of numbers")
                if isinstance(x, int) and not isinstance(x, bool) and not 0 <= x <= _MAX_DIM:
                    raise ValueError(f"{source}: layer {name!r}: argument {k!r} = {x} is out of "
                                     f"range (0 .. {_MAX_DIM:,})")
                if isinstance(x, float) and not abs(x) <= _FLOAT32_MAX:     # the layers compute in float32
                    raise ValueError(f"{source}: layer {name!r}: argument {k!r} is {x}, not a finite "
                                     f"float32 number")
        problem = _padding_problem(layer["type"], args)
        if problem:
            raise ValueError(f"{source}: layer {name!r}: {problem}")
        weights += _spec_weights(layer["type"], args)
        if weights > common.MAX_PARAMETERS:
            raise ValueError(f"{source}: the spec's layers (up to {name!r}) need {weights:,} weights, "
                             f"more than the {common.MAX_PARAMETERS:,} ece662 loads (ece662.formats.common.MAX_PARAMETERS)")


def _padding_problem(layer_type, args):
    """What is wrong with a Conv2d's padding, or None.  A padding of at least the kernel's size
    only adds outputs that see nothing but zeros: no trained network has one, and a padding of
    3000 in a 4 kB file would make gigabytes of activations, so it is refused when the file is read."""
    if layer_type != "Conv2d":
        return None
    kernel, padding = args.get("kernel_size", 1), args.get("padding", 0)
    sizes = [x for x in (kernel if isinstance(kernel, list) else [kernel]) if isinstance(x, int)]
    if isinstance(padding, int) and sizes and padding >= max(sizes):
        return (f"padding {padding} with kernel_size {kernel}; ece662 reads paddings smaller than the "
                f"kernel (at most {max(sizes) - 1}): a wider padding only adds outputs that see nothing "
                f"but zeros")
    return None


def _spec_weights(layer_type, args):
    """How many weights a layer of a spec allocates (an upper bound), from its arguments alone."""
    def number(key):
        v = args.get(key, 1)
        v = v if isinstance(v, list) else [v]
        out = 1
        for x in v:
            out *= x if isinstance(x, int) and not isinstance(x, bool) else 1
        return out
    if layer_type == "Conv2d":
        return number("out_channels") * (number("in_channels") * number("kernel_size") + 1)
    if layer_type == "Linear":
        return number("out_features") * (number("in_features") + 1)
    return 4 * number("num_features") if "num_features" in args else 0
