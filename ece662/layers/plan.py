"""How an eval-mode network runs: the inference plan.

One walk over the layers of a ``Sequential`` decides, per layer,

* which channels of its input are *live* (computed) and which are *constant planes*,
  and the value of each constant.  A dead filter (all weights zero) outputs its bias
  ``b`` at every position; ReLU makes that ``relu(b)``, pooling and dropout keep it, and
  the next conv never reads it: a constant plane ``v_c`` adds ``v_c * sum(w[f, c])`` to
  filter ``f`` at every position, so it is folded into that conv's bias (exact with
  padding 0 -- with padding, the border sees zeros, so the plane is put back instead).
  After Flatten, a linear layer reads only the live features and folds the rest into its
  bias the same way.  **This is the only place the rule is written**: ``Sequential``'s
  eval forward runs the plan, ``ece662.pruning.shrink`` builds the plan's network for
  good, and ``ece662.pruning.report`` counts its FLOPs.
* which following layers run inside a conv's kernel (an eval-mode ``BatchNorm2d``, folded into its
  weights and bias; ``ReLU``; and a ``MaxPool2d(2)`` after it when the conv has stride 1: kernel v7,
  :data:`~ece662.layers.kernel_choice.FUSED_POOL_KERNEL`, with the register tile measured fastest on this
  CPU for the layer's shape, ``ece662.layers.tuning``), and
* which kernel runs and why (:class:`KernelChoice`, what ``layer.last_kernel`` holds).

Before any of that, :func:`check_input_shape` walks every layer's shape (``output_shape``), so an
input the network cannot take (a 16x16 image for the 32x32 course CNN) is refused with the size
the network expects, before a kernel runs; ``Sequential.forward`` does the same in training mode.

One switch decides what runs: ``model.kernels`` (every layer has it; setting it on a
model sets it on every layer)

* ``'auto'`` (default): live-only inference, fusion, and the fastest measured kernel
  (kernel v7 for conv + ReLU + 2x2 pool, the sparse conv of ``kernels_sparse`` for weights that
  are at least the break-even fraction of zeros measured for the layer on this CPU, ``tuning.sparse_from``);
* ``'dense'``: every filter computed with the dense kernels, dead or not ("masks only");
* ``'reference'``: every layer through its plain-loop twin of ``ece662.layers.reference``
  (the spec; slow), no fusion.

Examples
--------
>>> import ece662.pruning as prune
>>> from ece662.models import default_convnet
>>> net = default_convnet(seed=0)
>>> _ = prune.ln_structured(net.conv1, "weight", amount=16, n=2, dim=0)
>>> print(net.plan((3, 32, 32)))          # doctest: +NORMALIZE_WHITESPACE +ELLIPSIS
conv1+relu1+pool1  (32, 14, 14)  16/32 filters live, 3/3 input channels -> v7 tile ... skip, fused ReLU + 2x2 max pool (0% zeros, fewer than ...% (...); ReLU and MaxPool2d(2) follow a stride-1 conv; tile ...: measured fastest on ...)
conv2+relu2+pool2  (32, 6, 6)    32/32 filters live, 16/32 input channels -> v7 tile ... skip, fused ReLU + 2x2 max pool (0% zeros, fewer than ...% (...); ReLU and MaxPool2d(2) follow a stride-1 conv; tile ...: measured fastest on ...)
flatten            (1152,)
fc                 (10,)         1152/1152 input features -> linear (kernels='auto')
"""
import math

import numpy as np

from ece662.layers import functional as fn
from ece662.layers import reference as ref
from ece662.layers import kernel_choice, tuning
from ece662.layers.kernel_choice import (KernelChoice, alive_rows, check_mode, choose_conv_kernel,
                                         computed_filters, run_conv)
from ece662.layers.modules import (AdaptiveAvgPool2d, AvgPool2d, BatchNorm1d, BatchNorm2d, BatchNormBase, Conv2d,
                                   Dropout, Dropout2d, Flatten, LeakyReLU, Linear, MaxPool2d, Pool2dBase, ReLU)


# ============================================================================ the plan
class Step:
    """One entry of a :class:`Plan`: a layer (or a conv with the layers fused into it).

    Attributes
    ----------
    names : tuple of str        the layers this step runs
    op : str                    'conv', 'linear', 'channels' (a per-channel layer run on the
                                live channels), 'flatten', 'full' (a layer run on the whole tensor)
                                or 'reference'
    module : Module             the (first) layer
    live_in, const_in           which input channels / features are computed (bool), and the
                                values of the others; ``None`` when every one is computed
    live_out, const_out         the same for the output
    full_input : bool           the constant planes are put back before this step runs
    kernel : KernelChoice       for 'conv' and 'linear' steps
    weight, bias                what the kernel multiplies: live filters x live inputs, with the
                                constant inputs folded into the bias
    packed                      ``weight`` and ``bias`` packed for kernel v6 or v7, once per plan
    tile                        kernel v7's tile size (``ece662.layers.tuning``), e.g. ``((8, 32),)``
    out_shape : tuple           the full output shape for one input (batch axis 1)
    """

    def __init__(self, names, op, module, live_in, const_in, full_input=False):
        self.names, self.op, self.module = tuple(names), op, module
        self.live_in, self.const_in, self.full_input = live_in, const_in, full_input
        self.live_out, self.const_out = None, None
        self.kernel, self.weight, self.bias, self.fused, self.packed, self.tile = None, None, None, (), None, None
        self.relu, self.pool2 = False, False        # a conv step: ReLU / 2x2 max pool run inside its kernel
        self.out_shape = None

    def describe(self):
        """One line a student can read."""
        if self.op == "conv":
            k = self.kernel
            computed = computed_filters(k.version, k.live_filters, k.tile)
            padded = ""
            if computed > k.live_filters:     # the tile's width, not the mask, decides the work
                blocks = "its lanes" if k.tile else "16 and 8 filters"
                padded = (f" (computed as {computed}: the {k.version} tile works in blocks of {blocks}"
                          + (", so skipping saves nothing here" if computed >= k.filters else "") + ")")
            return (f"{k.live_filters}/{k.filters} filters live{padded}, {k.live_inputs}/{k.inputs} input channels "
                    f"-> {k} ({k.reason})")
        if self.op == "linear":
            k = self.kernel
            return f"{k.live_inputs}/{k.inputs} input features{self.dead_outputs_note()} -> {k} ({k.reason})"
        if self.op == "flatten" and self.live_out is not None:
            return f"{int(self.live_out.sum())}/{self.live_out.size} features live"
        if self.live_out is not None:
            return f"{int(self.live_out.sum())}/{self.live_out.size} channels live"
        if self.op == "full" and self.full_input:
            return "constant planes put back; runs on the full tensor"
        if self.op == "reference":    # a linear layer's dead outputs are noted in every mode
            return "reference" + (self.dead_outputs_note() if self.kernel is not None else "")
        return ""

    def dead_outputs_note(self):
        """For a linear step: ``", 3/10 outputs dead (3, 5, 9: always their bias)"``, or ``""``
        when every output unit has a non-zero weight.  Dead units are still computed (it costs
        little); the note is there because in a classifier's last layer they are classes the
        network can no longer recognise."""
        alive = alive_rows(self.module.weight)
        dead = np.flatnonzero(~alive)
        if dead.size == 0:
            return ""
        shown = ", ".join(map(str, dead[:8])) + (", ..." if dead.size > 8 else "")
        return f", {dead.size}/{alive.size} outputs dead ({shown}: always their bias)"


class Plan:
    """The steps of an eval-mode forward pass; ``print(plan)`` shows them, ``plan(x)`` runs them."""

    def __init__(self, steps, input_shape):
        self.steps, self.input_shape = steps, input_shape

    def __iter__(self):
        return iter(self.steps)

    def __str__(self):
        width = max((len("+".join(s.names)) for s in self.steps), default=0) + 1
        shapes = [str(s.out_shape[1:]) for s in self.steps]
        sw = max((len(t) for t in shapes), default=0) + 1
        return "\n".join(f"{'+'.join(s.names):<{width}} {t:<{sw}} {s.describe()}".rstrip()
                         for s, t in zip(self.steps, shapes))

    __repr__ = __str__

    def __call__(self, x):
        live, const = None, None
        for s in self.steps:
            if s.full_input and live is not None:
                x = expand(x, live, const)
            x = run_step(s, x)
            live, const = s.live_out, s.const_out
        return x if live is None else expand(x, live, const)


def expand(x, live, const):
    """Put the live channels (or features) ``x`` back among the constant ones.

    x : (N, live.sum(), ...) -> (N, live.size, ...)
    """
    full = np.empty((x.shape[0], live.size) + x.shape[2:], dtype=np.float32)
    full[:, live] = x
    full[:, ~live] = const[~live].reshape((-1,) + (1,) * (x.ndim - 2))
    return full


def _no_hooks(m):
    return not m._forward_pre_hooks


def _only_pruning_hooks(m):
    return all(getattr(h, "refresh_on_load", False) for h in m._forward_pre_hooks.values())


def _fusion(layers, i, conv, mode):
    """How many layers after the conv at ``layers[i]`` run inside its kernel: a BatchNorm2d
    (folded into the weights), then a ReLU, then a ``MaxPool2d(2)`` when the conv has stride 1.
    Layers with hooks of their own are not fused; nothing is in 'reference' mode."""
    if mode == "reference":
        return 0
    nxt = [m for _, m in layers[i + 1:i + 4]] + [None] * 3
    n = 0
    if type(nxt[0]) is BatchNorm2d and _no_hooks(nxt[0]) and not nxt[0].training:
        n = 1
    if not (type(nxt[n]) is ReLU and _no_hooks(nxt[n])):
        return n
    pool = nxt[n + 1]
    if (type(pool) is MaxPool2d and pool.kernel_size == 2 and pool.stride == 2 and conv.stride == 1
            and _no_hooks(pool)):
        return n + 2
    return n + 1


def _folded_batchnorm(w, b, bn):
    """``(w, b)`` of a conv or linear layer with the eval-mode batch norm ``bn`` after it folded
    in: ``bn(w*x + b) = (scale*w)*x + (scale*(b - mean) + beta)`` per output channel (exact)."""
    scale, shift = bn.scale_shift()
    w = (w * scale.reshape((-1,) + (1,) * (w.ndim - 1))).astype(np.float32)
    return w, (b * scale + shift).astype(np.float32)


def _constant_through(m, const):
    """The value a constant plane has after the per-channel layer ``m`` (None: ``m`` is not
    per-channel, so the plan cannot carry constants through it)."""
    if type(m) in (BatchNorm2d, BatchNorm1d) and not m.training:
        scale, shift = m.scale_shift()
        return (const * scale + shift).astype(np.float32)
    if type(m) is ReLU:
        return np.maximum(const, 0)
    if type(m) is LeakyReLU:
        return np.where(const > 0, const, np.float32(m.negative_slope) * const).astype(np.float32)
    if type(m) in (MaxPool2d, AvgPool2d, AdaptiveAvgPool2d, Dropout, Dropout2d):
        return const                   # pooling a constant plane (or dropout in eval) keeps it
    return None


# ============================================================================ shapes, before anything runs
# the most values one activation may hold for one input (batch axis 1): 2**24 float32 are 64 MiB per
# image, 600 times the course CNN's largest (32 x 28 x 28); a layer that would make more (a conv with
# padding 3000, say) is refused before anything runs, instead of a MemoryError deep inside numpy
MAX_ACTIVATION_VALUES = 2 ** 24


def _shape_problem(m, shape):
    """What is wrong with giving layer ``m`` an input of ``shape`` (batch axis included), or None.
    Only layers whose input size matters are checked: Conv2d, Linear, pooling, batch norm."""
    if isinstance(m, Conv2d):
        if len(shape) != 4 or shape[1] != m.in_channels:
            return f"expects (N, {m.in_channels}, H, W) but gets {shape[1:]}"
        (HH, WW), p = m.kernel_size, m.padding
        if shape[2] + 2 * p < HH or shape[3] + 2 * p < WW:
            return (f"gets {shape[2]}x{shape[3]} feature maps, smaller than its {HH}x{WW} kernel "
                    f"(padding {p})")
    elif isinstance(m, Linear):
        if len(shape) != 2:
            return f"expects (N, {m.in_features}) but gets {shape[1:]} (feature maps: add a Flatten layer)"
        if shape[1] != m.in_features:
            return f"expects {m.in_features} input features but gets {shape[1]}"
    elif isinstance(m, Pool2dBase):
        if len(shape) != 4 or min(shape[2:]) < m.kernel_size:
            return f"gets {shape[1:]}, smaller than its {m.kernel_size}x{m.kernel_size} window"
    elif isinstance(m, BatchNormBase):
        if len(shape) not in m._ndims or shape[1] != m.num_features:
            return f"expects {m.num_features} channels but gets {shape[1:]}"
    return None


def first_misfit(model, input_shape):
    """The first layer of ``model`` that one input of ``input_shape`` (no batch axis) does not fit.

    Returns
    -------
    (name, module, shape, problem) or None
        The layer, the shape it would get (batch axis 1) and what is wrong; ``None`` when the
        input fits every layer.
    """
    shape = (1,) + tuple(input_shape)
    for name, m in model.named_children():
        problem = _shape_problem(m, shape)
        if problem is not None:
            return name, m, shape, problem
        shape = m.output_shape(shape)
    return None


def first_oversized(model, input_shape):
    """The first layer of ``model`` that, for one input of ``input_shape`` (no batch axis), makes an
    activation of more than :data:`MAX_ACTIVATION_VALUES` values: its output, or a Conv2d's
    zero-padded input (the kernels pad a copy).  Call it once :func:`first_misfit` found nothing.

    Returns
    -------
    (name, module, what, shape) or None
        ``what`` is ``'output'`` or ``'zero-padded input'``, ``shape`` that activation's (batch axis 1).
    """
    shape = (1,) + tuple(int(d) for d in input_shape)
    for name, m in model.named_children():
        if isinstance(m, Conv2d) and m.padding:
            p = m.padding
            padded = shape[:2] + (shape[2] + 2 * p, shape[3] + 2 * p)
            if math.prod(padded) > MAX_ACTIVATION_VALUES:
                return name, m, "zero-padded input", padded
        shape = m.output_shape(shape)
        if math.prod(shape) > MAX_ACTIVATION_VALUES:
            return name, m, "output", shape
    return None


def expected_image_size(model, channels, largest=1024):
    """The smallest ``S`` for which ``(channels, S, S)`` images fit every layer of ``model``, or
    None (no square image up to ``largest`` fits).  Pooling floors, so larger sizes may fit too
    (33x33 reaches the course CNN's fc as 32x32 does); the smallest is the one it was built for.

    Examples
    --------
    >>> from ece662.models import default_convnet
    >>> expected_image_size(default_convnet(), 3)
    32
    """
    for S in range(1, largest + 1):
        if first_misfit(model, (channels, S, S)) is None:
            return S
    return None


def check_input_shape(model, input_shape):
    """Raise a ValueError that names the input ``model`` expects, if ``input_shape`` (one input,
    no batch axis) does not reach every layer with a shape it takes.

    The shapes are known before anything runs (each layer's ``output_shape``), so a 16x16 image
    given to the 32x32 course CNN is refused here, with the size the network expects, rather
    than deep inside its Linear layer.  An input that fits but would make one activation larger
    than :data:`MAX_ACTIVATION_VALUES` values (a conv with an absurd padding) is refused here too,
    before a kernel allocates it.  ``Sequential.forward`` calls it in training and eval
    mode, after the first layer's own checks (dtype, layout, channels); :func:`build_plan` too.

    Examples
    --------
    >>> from ece662.models import default_convnet
    >>> check_input_shape(default_convnet(), (3, 16, 16))
    Traceback (most recent call last):
    ...
    ValueError: this network expects 32x32 images with 3 channels, x of shape (N, 3, 32, 32), but got 16x16 images (x of shape (N, 3, 16, 16)): fc (Linear) expects 1152 input features but gets 128; resize or crop the images to 32x32, or build the network for 16x16 inputs
    """
    misfit = first_misfit(model, input_shape)
    if misfit is None:
        oversized = first_oversized(model, input_shape)
        if oversized is not None:
            name, m, what, shape = oversized
            article = "an" if what == "output" else "a"
            raise ValueError(f"{name} ({type(m).__name__}) would make {article} {what} of shape (N, "
                             f"{', '.join(map(str, shape[1:]))}): {math.prod(shape):,} values per input, more "
                             f"than the {MAX_ACTIVATION_VALUES:,} (64 MiB of float32) ece662 allows for one "
                             f"activation (ece662.layers.plan.MAX_ACTIVATION_VALUES); check the layer's "
                             f"padding and sizes, or give smaller inputs")
        return
    name, m, _, problem = misfit
    where = f"{name} ({type(m).__name__}) {problem}"
    got = tuple(int(d) for d in input_shape)
    first = next(iter(model.children()), None)
    if len(got) == 3:
        C, H, W = got
        C_want = first.in_channels if isinstance(first, Conv2d) else C
        S = expected_image_size(model, C_want)
        if S is not None:
            # a global average pool takes any size from S up: then S is a minimum, not the size
            at_least = "at least " if first_misfit(model, (C_want, 4 * S, 4 * S)) is None else ""
            fixes = ([f"give {C_want}-channel images"] if C != C_want else []) + \
                    ([f"resize or crop the images to {at_least}{S}x{S}, or build the network for {H}x{W} "
                      f"inputs"] if (H, W) != (S, S) else [])
            channels = f" with {C} channels" if C != C_want else ""
            raise ValueError(f"this network expects {at_least}{S}x{S} images with {C_want} channels, x of "
                             f"shape (N, {C_want}, {S}, {S}), but got {H}x{W} images{channels} (x of shape "
                             f"(N, {C}, {H}, {W})): {where}; {'; '.join(fixes) or 'check the layers'}")
    raise ValueError(f"x of shape (N, {', '.join(map(str, got))}) does not fit this network: {where}; "
                     f"give inputs of the shape the network was built for, or check that each layer's "
                     f"in_channels / in_features match what the layer before it gives")


# ============================================================================ what the plan computes with
def check_finite_computation(model, source):
    """Refuse a model whose eval forward would compute with NaN or infinity, naming the layer.

    A file's weights may be finite as stored and still not as computed: float64 weights of 1e39
    are infinite once cast to float32, a batch norm's ``running_var < 0`` puts a NaN in
    ``1 / sqrt(var + eps)``, and folding a batch norm into the conv before it multiplies two
    finite numbers into an infinite one.  So this checks what the plan multiplies, after every
    cast and fold: each layer's parameters and buffers (as the layer holds them, float32), a
    batch norm's running variance (at least 0) and its ``scale`` and ``shift``, a batch norm folded
    into the Conv2d or Linear before it, and a LeakyReLU's slope as float32.  Model readers call it
    before they return a model.

    Raises
    ------
    ValueError
        ``"{source}: layer 'bn1' (BatchNorm2d): running_var holds 2 negative values ..."``.

    Examples
    --------
    >>> from ece662.models import default_convnet
    >>> check_finite_computation(default_convnet(seed=0), "net.npz")       # nothing to say
    """
    layers = list(model.named_children())
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        for i, (name, m) in enumerate(layers):
            where = f"{source}: layer {name!r} ({type(m).__name__})"
            arrays = dict(m._parameters, **m._buffers)
            if isinstance(m, (Conv2d, Linear)) and m.weight is not None:
                arrays["weight (effective)"] = m.weight       # weight_orig * weight_mask when pruned
            for key, value in arrays.items():
                if value is not None and np.asarray(value).dtype.kind == "f":
                    _refuse_nonfinite(np.asarray(value, dtype=np.float32), f"{where}: {key}")
            if isinstance(m, BatchNormBase):
                negative = int(np.count_nonzero(m.running_var < 0))
                if negative:
                    raise ValueError(f"{where}: running_var holds {negative} negative value(s); a variance is "
                                     f"at least 0 (the file is damaged)")
                scale, shift = m.scale_shift()
                _refuse_nonfinite(scale, f"{where}: its scale gamma / sqrt(running_var + eps)")
                _refuse_nonfinite(shift, f"{where}: its shift beta - mean * scale")
                prev = layers[i - 1][1] if i > 0 else None
                if isinstance(prev, (Conv2d, Linear)) and prev.weight.shape[0] == m.num_features:
                    b = prev.bias if prev.bias is not None else np.zeros(m.num_features, np.float32)
                    w, b = _folded_batchnorm(prev.weight, b, m)
                    _refuse_nonfinite(w, f"{where}: folded into {layers[i - 1][0]!r}, the weights")
                    _refuse_nonfinite(b, f"{where}: folded into {layers[i - 1][0]!r}, the bias")
            if isinstance(m, LeakyReLU) and not np.isfinite(np.float32(m.negative_slope)):
                raise ValueError(f"{where}: negative_slope {m.negative_slope} is not finite as float32")


def _refuse_nonfinite(a, what):
    bad = int(a.size - np.count_nonzero(np.isfinite(a)))
    if bad:
        raise ValueError(f"{what} holds {bad} NaN or infinite value(s) of {a.size} as the network computes "
                         f"them (float32); the model cannot be evaluated (the file is damaged)")


def build_plan(model, input_shape, kernels=None):
    """Walk the layers of ``model`` (eval mode) once and decide how each runs.

    Parameters
    ----------
    model : Sequential
    input_shape : tuple
        One input without the batch axis, e.g. ``(3, 32, 32)``.
    kernels : {'auto', 'dense', 'reference'}, optional
        Override every layer's own ``kernels`` setting (``shrink`` and ``report`` use 'auto').

    Returns
    -------
    Plan
    """
    check_input_shape(model, input_shape)       # every layer's shape is known before anything runs
    layers = list(model.named_children())
    for _, m in layers:                # pruned layers recompute weight = weight_orig * weight_mask
        for hook in list(m._forward_pre_hooks.values()):
            if getattr(hook, "refresh_on_load", False):
                hook(m, None)
    shape = (1,) + tuple(input_shape)
    steps = []
    live, const = None, None          # live channels (features) of the current activation; None: all
    i = 0
    while i < len(layers):
        name, m = layers[i]
        mode = check_mode(kernels or m.kernels)
        if isinstance(m, (Conv2d, Linear)) and not _only_pruning_hooks(m):
            step = Step([name], "full", m, live, const, full_input=True)    # a user's hook sees x
        elif isinstance(m, Conv2d):
            n_fused = _fusion(layers, i, m, mode)
            step = _conv_step(layers[i:i + 1 + n_fused], mode, live, const, shape)
        elif isinstance(m, Linear):
            bn = layers[i + 1][1] if i + 1 < len(layers) else None
            fuse_bn = (type(bn) is BatchNorm1d and _no_hooks(bn) and not bn.training and mode != "reference")
            step = _linear_step(layers[i:i + 1 + fuse_bn], mode, live, const)
        elif mode == "reference":
            step = Step([name], "reference", m, live, const, full_input=True)
        elif isinstance(m, Flatten):
            step = Step([name], "flatten", m, live, const)
            if live is not None:
                hw = int(np.prod(shape[2:]))  # channel c owns features c*H*W ... (c+1)*H*W - 1
                step.live_out, step.const_out = np.repeat(live, hw), np.repeat(const, hw)
        elif live is not None and _constant_through(m, const) is not None:
            step = Step([name], "channels", m, live, const)
            step.live_out, step.const_out = live, _constant_through(m, const)
            if isinstance(m, (BatchNorm2d, BatchNorm1d)):   # normalise the live channels only
                scale, shift = m.scale_shift()
                step.weight, step.bias = scale[live], shift[live]
        else:                          # anything else gets the full tensor back
            step = Step([name], "full", m, live, const, full_input=True)
        for _, layer in layers[i:i + len(step.names)]:
            shape = layer.output_shape(shape)
        step.out_shape = shape
        live, const = step.live_out, step.const_out
        steps.append(step)
        i += len(step.names)
    return Plan(steps, tuple(input_shape))


def _conv_step(group, mode, live, const, in_shape):
    """The step of a conv (``group[0]``) and the layers fused after it (BatchNorm2d, ReLU, pool);
    ``in_shape`` is its input's shape, ``(1, C, H, W)``."""
    (name, conv), fused = group[0], [m for _, m in group[1:]]
    relu = any(type(m) is ReLU for m in fused)
    pool2 = any(type(m) is MaxPool2d for m in fused)
    w = conv.weight
    b = conv.bias if conv.bias is not None else np.zeros(conv.out_channels, np.float32)
    names = []
    if fused and type(fused[0]) is BatchNorm2d:
        w, b = _folded_batchnorm(w, b, fused[0])
        names.append("BatchNorm2d folded")
    full_input = live is not None and (mode != "auto" or (conv.padding > 0 and np.any(const[~live] != 0)))
    step = Step([n for n, _ in group], "conv", conv, live, const, full_input)
    if live is not None and not full_input:
        # the constant planes: v_c * sum(w[f, c]) at every position, folded into the bias
        b = b + (w[:, ~live].sum(axis=(2, 3)) @ const[~live]).astype(np.float32)
        w = w[:, live]
    # a filter with no weight on a computed channel outputs the constant (folded) bias
    alive = alive_rows(w) if mode == "auto" else np.ones(conv.out_channels, bool)
    step.weight, step.bias = np.ascontiguousarray(w[alive]), np.ascontiguousarray(b[alive])
    F, C, KH, KW = step.weight.shape
    # the sparse kernel's break-even against the v7 tile, measured for this shape on this CPU
    measured = mode == "auto" and pool2 and conv.stride == 1 and F > 0 and kernel_choice.FUSED_POOL_KERNEL == "v7"
    threshold = tuning.sparse_from(C, in_shape[2], in_shape[3], F, KH, KW, conv.padding) if measured else None
    version, reason = choose_conv_kernel(mode, step.weight, conv.stride, pool2, threshold)
    tile = ""
    if version == "v6":
        step.packed = fn.pack_filters_lanes(step.weight, step.bias)
    if version == "v7":             # the tile measured fastest on this CPU for this shape
        step.tile, why = tuning.choose_tile(C, in_shape[2], in_shape[3], F, KH, KW, conv.padding)
        step.packed = tuning.pack(step.weight, step.bias, step.tile)
        tile = tuning.format_tile(step.tile)
        reason += f"; tile {tuning.describe(step.tile)}: {why}"
    step.fused, step.relu, step.pool2 = tuple(fused), relu, pool2
    names += (["ReLU"] if relu else []) + (["2x2 max pool"] if pool2 else [])
    step.kernel = KernelChoice(version, tuple(names), int(alive.sum()), conv.out_channels, w.shape[1],
                               conv.in_channels, reason, tile)
    if not alive.all():
        c = np.where(alive, 0, b).astype(np.float32)
        step.live_out, step.const_out = alive, (np.maximum(c, 0) if relu else c)
    return step


def _linear_step(group, mode, live, const):
    """The step of a linear layer (and a BatchNorm1d after it, folded into its weights)."""
    (name, m), fused = group[0], [bn for _, bn in group[1:]]
    w = m.weight
    b = m.bias if m.bias is not None else np.zeros(m.out_features, np.float32)
    if fused:
        w, b = _folded_batchnorm(w, b, fused[0])
    full_input = live is not None and mode != "auto"
    step = Step([n for n, _ in group], "linear" if mode != "reference" else "reference", m, live, const,
                full_input)
    if live is not None and not full_input:
        b = b + (w[:, ~live] @ const[~live]).astype(np.float32)
        w = w[:, live]
    step.weight, step.bias = np.ascontiguousarray(w), np.ascontiguousarray(b, dtype=np.float32)
    step.fused = tuple(fused)
    version = "reference" if mode == "reference" else "linear"
    step.kernel = KernelChoice(version, ("BatchNorm1d folded",) if fused else (), m.out_features,
                               m.out_features, w.shape[1], m.in_features,
                               "constant features folded into the bias" if w.shape[1] < m.in_features
                               else f"kernels={mode!r}")
    return step


def _reference_batchnorm(m, x):
    gamma, beta = m.gamma_beta()
    return ref.batchnorm_forward_reference(x, gamma, beta, m.running_mean, m.running_var, m.eps)


REFERENCE_OPS = {      # layer type -> its plain-loop twin, for kernels='reference'
    BatchNorm2d: _reference_batchnorm,
    BatchNorm1d: _reference_batchnorm,
    ReLU: lambda m, x: ref.relu_forward_reference(x),
    LeakyReLU: lambda m, x: ref.leaky_relu_forward_reference(x, np.float32(m.negative_slope)),
    MaxPool2d: lambda m, x: ref.maxpool2d_forward_reference(x, m.kernel_size, m.stride),
    AvgPool2d: lambda m, x: ref.avgpool2d_forward_reference(x, m.kernel_size, m.stride),
    AdaptiveAvgPool2d: lambda m, x: ref.global_avgpool_forward_reference(x),
}


def run_step(s, x):
    """Run one step on ``x`` (its live channels; inputs were checked by ``Sequential``)."""
    m = s.module
    if s.op == "conv":
        out = run_conv(s.kernel.version, x, s.weight, s.bias, m.stride, m.padding,
                       relu=s.relu, pool2=s.pool2, packed=s.packed, tile=s.tile)
        m.last_kernel = s.kernel
        return out
    if s.op == "linear" or (s.op == "reference" and s.kernel is not None):
        m.last_kernel = s.kernel
        if s.kernel.version == "reference":
            return ref.linear_forward_reference(x, s.weight, s.bias)
        return fn.linear_forward_numba(x, s.weight, s.bias)
    if s.op == "reference" and type(m) in REFERENCE_OPS:
        return REFERENCE_OPS[type(m)](m, x)
    if s.op == "channels" and s.weight is not None:        # a batch norm on the live channels
        return fn.batchnorm_apply_numba(x, s.weight, s.bias)
    return m(x)                        # flatten, per-channel layers on live channels, anything else
