"""Layers with torch-compatible names, arguments and parameter shapes.

A ``Module`` owns named parameters (float32 arrays), named buffers (e.g. a
pruning mask), a gradient per parameter after ``backward``, and a train/eval
flag.  Forward runs the fast kernels of ``ece662.layers.functional``;
backward stores gradients in ``module.grads[name]`` and returns the gradient
of its input -- it never updates a weight (that is ``ece662.optim``'s job).

Pruning meets the layers at two points, exactly as in ``torch.nn.utils.prune``:

* a *forward pre-hook* recomputes the effective ``weight = weight_orig * weight_mask``
  before every forward, and
* ``_store_grad`` routes the gradient of the effective weight to ``weight_orig``
  multiplied by the mask, so a pruned weight gets a gradient of exactly 0.
"""
from collections import OrderedDict

import numpy as np

from ece662.layers import functional as fn
from ece662.layers.checks import (check_finite, check_float32, check_nchw,
                                  check_nonnegative_int, check_positive_int)
from ece662.layers.shapes import conv_output_size

# Conv2d uses the sparse-taps kernel for a layer whose live weights are at least this sparse.
# Measured on the course machine (python benchmarks/bench_pruning.py, table in
# benchmarks/RESULTS.md): against the dense v3 kernel the sparse one runs at 0.33x (conv1) /
# 0.17x (conv2) with no zeros, 1.28x / 0.76x at 80% and 1.96x / 1.35x at 90%: break-even
# near 60-70% (conv1) and 85% (conv2).
SPARSE_THRESHOLD = 0.85


class _HookHandle:
    """Returned by ``register_forward_pre_hook``; ``remove()`` unregisters the hook."""

    def __init__(self, hooks, key):
        self._hooks, self._key = hooks, key

    def remove(self):
        self._hooks.pop(self._key, None)


def _rng(seed, rng):
    if rng is not None:
        return rng
    return np.random.default_rng(seed)


class Module:
    """Base class: parameters, buffers, gradients, hooks, train/eval, state dicts."""

    def __init__(self):
        object.__setattr__(self, "_parameters", OrderedDict())
        object.__setattr__(self, "_buffers", OrderedDict())
        object.__setattr__(self, "_modules", OrderedDict())
        object.__setattr__(self, "_forward_pre_hooks", OrderedDict())
        object.__setattr__(self, "_next_hook_id", 0)
        self.grads = {}
        self.training = True

    # -- attribute access: parameters and buffers read like plain attributes
    def __getattr__(self, name):
        for store in ("_parameters", "_buffers", "_modules"):
            d = self.__dict__.get(store)
            if d is not None and name in d:
                return d[name]
        raise AttributeError(f"{type(self).__name__} has no attribute {name!r}")

    def __setattr__(self, name, value):
        if name in self._parameters:
            self._parameters[name] = value
        elif name in self._buffers:
            self._buffers[name] = value
        else:
            object.__setattr__(self, name, value)

    def __delattr__(self, name):
        for store in (self._parameters, self._buffers, self._modules):
            if name in store:
                del store[name]
                return
        object.__delattr__(self, name)

    def register_parameter(self, name, value):
        """Add a float32 parameter named ``name`` (``None`` is allowed, as for a missing bias)."""
        self.__dict__.pop(name, None)
        self._parameters[name] = value

    def register_buffer(self, name, value):
        """Add a non-trainable array (a pruning mask) that is saved in the state dict."""
        self.__dict__.pop(name, None)
        self._buffers[name] = value

    def register_forward_pre_hook(self, hook):
        """Call ``hook(module, inputs)`` before every forward; returns a handle with ``remove()``."""
        key = self._next_hook_id
        object.__setattr__(self, "_next_hook_id", key + 1)
        self._forward_pre_hooks[key] = hook
        return _HookHandle(self._forward_pre_hooks, key)

    # -- running
    def __call__(self, x, **kwargs):
        for hook in list(self._forward_pre_hooks.values()):
            hook(self, (x,))
        return self.forward(x, **kwargs)

    def forward(self, x):
        raise NotImplementedError

    def backward(self, dout):
        raise NotImplementedError

    def _store_grad(self, name, g):
        """Record the gradient of the *effective* parameter ``name``.

        When ``name`` is pruned (``name_orig`` and ``name_mask`` exist) the trainable
        array is ``name_orig`` and its gradient is ``g * mask``: a pruned entry gets 0.
        """
        mask = self._buffers.get(name + "_mask")
        if mask is not None and name + "_orig" in self._parameters:
            self.grads[name + "_orig"] = g * mask
        else:
            self.grads[name] = g

    def train(self, mode=True):
        """Set training mode (caches activations for backward; Dropout drops) on every module."""
        for _, m in self.named_modules():
            object.__setattr__(m, "training", bool(mode))
        return self

    def eval(self):
        """Set evaluation mode: deterministic, nothing cached."""
        return self.train(False)

    def zero_grad(self):
        for _, m in self.named_modules():
            m.grads = {}

    # -- traversal, with torch's names
    def named_children(self):
        return iter(self._modules.items())

    def children(self):
        return (m for _, m in self.named_children())

    def named_modules(self, prefix=""):
        """Yield ``(name, module)`` for this module (name ``prefix``) and every descendant."""
        yield prefix, self
        for name, child in self._modules.items():
            yield from child.named_modules(prefix + "." + name if prefix else name)

    def modules(self):
        return (m for _, m in self.named_modules())

    def named_parameters(self, prefix="", recurse=True):
        """Yield ``(dotted name, array)`` for every trainable parameter (``weight_orig`` once pruned)."""
        mods = self.named_modules(prefix) if recurse else [(prefix, self)]
        for mod_name, m in mods:
            for name, p in m._parameters.items():
                if p is not None:
                    yield (mod_name + "." + name if mod_name else name), p

    def parameters(self, recurse=True):
        return (p for _, p in self.named_parameters(recurse=recurse))

    def named_buffers(self, prefix=""):
        for mod_name, m in self.named_modules(prefix):
            for name, b in m._buffers.items():
                if b is not None:
                    yield (mod_name + "." + name if mod_name else name), b

    def named_grads(self):
        """Yield ``(dotted name, gradient)`` matching ``named_parameters`` after a backward."""
        for mod_name, m in self.named_modules():
            for name in m._parameters:
                if name in m.grads:
                    yield (mod_name + "." + name if mod_name else name), m.grads[name]

    # -- state dicts, torch-style keys ("conv1.weight", "conv1.weight_mask")
    def state_dict(self):
        """An ordered ``{dotted name: copy of array}`` of parameters and buffers."""
        sd = OrderedDict()
        for name, p in self.named_parameters():
            sd[name] = p.copy()
        for name, b in self.named_buffers():
            sd[name] = b.copy()
        return sd

    def load_state_dict(self, state_dict, strict=True):
        """Copy arrays into this model's parameters and buffers.

        Every key and shape is checked before anything is assigned, so a
        failing load leaves the model exactly as it was.

        Raises
        ------
        KeyError
            Missing or unexpected keys (with ``strict=True``), listing both.
        ValueError
            A shape that does not fit, naming the key and both shapes.
        """
        own = OrderedDict()
        for mod_name, m in self.named_modules():
            for store in (m._parameters, m._buffers):
                for name, arr in store.items():
                    if arr is not None:
                        own[(mod_name + "." + name) if mod_name else name] = (m, store, name, arr)
        missing = [k for k in own if k not in state_dict]
        unexpected = [k for k in state_dict if k not in own]
        if strict and (missing or unexpected):
            raise KeyError(
                f"state_dict does not match the model: missing keys {missing}, unexpected keys "
                f"{unexpected}; the model expects {list(own)}. If the file holds a pruned model, "
                f"prune the same parameters first or load it with ece662.load_model")
        staged = []
        for key, (m, store, name, arr) in own.items():
            if key not in state_dict:
                continue
            value = np.asarray(state_dict[key])
            if value.shape != arr.shape:
                raise ValueError(f"state_dict['{key}'] has shape {value.shape}, but the model's "
                                 f"{key} has shape {arr.shape}")
            staged.append((m, store, name, value.astype(arr.dtype, copy=True)))
        for m, store, name, value in staged:
            store[name] = value
        # pruned parameters recompute their effective weights from the new arrays; only hooks
        # that ask for it (ece662.pruning's PruningContainer) are called, never a user's hook
        for _, m in self.named_modules():
            for hook in list(m._forward_pre_hooks.values()):
                if getattr(hook, "refresh_on_load", False):
                    hook(m, None)
        return self

    # -- description
    def extra_repr(self):
        return ""

    def __repr__(self):
        if not self._modules:
            return f"{type(self).__name__}({self.extra_repr()})"
        lines = [f"{type(self).__name__}("]
        for name, child in self._modules.items():
            child_repr = repr(child).replace("\n", "\n  ")
            lines.append(f"  ({name}): {child_repr}")
        lines.append(")")
        return "\n".join(lines)

    def output_shape(self, input_shape):
        """Shape of the output for an input of ``input_shape`` (batch axis included)."""
        return tuple(input_shape)

    def flops(self, input_shape):
        """Floating-point operations for one input of ``input_shape``: 2 per multiply-add
        of conv and linear layers; 0 for ReLU, pooling, flatten and dropout."""
        return 0

    def spec(self):
        """``{"type": ..., "args": {...}}``: enough to rebuild the layer (``ece662.io``)."""
        return {"type": type(self).__name__, "args": {}}


class Conv2d(Module):
    """2-D convolution, ``torch.nn.Conv2d``'s arguments and shapes.

    Parameters
    ----------
    in_channels, out_channels : int
        C and F.
    kernel_size : int or (int, int)
        HH, WW.
    stride, padding : int
    bias : bool
    seed, rng : optional
        Initialisation randomness: ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))`` for the
        weight and the bias, as torch's default gives.

    Shapes: x ``(N, C, H, W)`` -> out ``(N, F, H', W')``;
    ``weight (F, C, HH, WW)``, ``bias (F,)``.

    Examples
    --------
    >>> conv = Conv2d(3, 8, 3, padding=1, seed=0)
    >>> conv(np.zeros((2, 3, 5, 5), dtype=np.float32)).shape
    (2, 8, 5, 5)
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, bias=True,
                 seed=None, rng=None):
        super().__init__()
        where = "Conv2d"
        self.in_channels = check_positive_int(in_channels, "in_channels", where)
        self.out_channels = check_positive_int(out_channels, "out_channels", where)
        if isinstance(kernel_size, (tuple, list)):
            kh, kw = kernel_size
        else:
            kh = kw = kernel_size
        self.kernel_size = (check_positive_int(kh, "kernel_size", where),
                            check_positive_int(kw, "kernel_size", where))
        self.stride = check_positive_int(stride, "stride", where)
        self.padding = check_nonnegative_int(padding, "padding", where)
        rng = _rng(seed, rng)
        fan_in = self.in_channels * kh * kw
        bound = 1.0 / np.sqrt(fan_in)
        shape = (self.out_channels, self.in_channels, kh, kw)
        self.register_parameter("weight", rng.uniform(-bound, bound, shape).astype(np.float32))
        self.register_parameter(
            "bias", rng.uniform(-bound, bound, self.out_channels).astype(np.float32) if bias else None)
        self.name = "Conv2d"
        self._cache = None
        self.skip_dead = True            # dead filters (all weights zero) are not computed
        self.sparse_threshold = SPARSE_THRESHOLD
        self.last_kernel = None          # which kernel the last forward used, and why

    def _where(self):
        return f"{self.name} (Conv2d {self.in_channels}->{self.out_channels})"

    def alive_filters(self):
        """``(F,)`` bool: False for dead filters, those whose effective weights are all zero
        (pruned away by a mask, or zeroed for good by ``prune.remove``)."""
        return np.any(self.weight.reshape(self.out_channels, -1) != 0, axis=1)

    def forward(self, x, relu=False, pool2=False):
        """Convolve ``x (N, C, H, W)`` -> ``(N, F, H', W')``, choosing the kernel.

        Dead filters (all weights zero) are skipped; their planes are their bias.
        ``relu=True`` returns ``max(conv, 0)`` with the ReLU fused into the kernel, and
        ``pool2=True`` (with ``relu``) also 2x2 max pooling with stride 2 (kernel v4): an
        eval-mode ``Sequential`` asks for them when a ReLU (and a ``MaxPool2d(2)``) follow.
        The kernel choice is :meth:`_convolve`'s; ``last_kernel`` says which one ran.
        """
        where = self._where()
        x = check_float32(x, "x", where)
        check_nchw(x, where, channels=self.in_channels)
        check_finite(x, "x", where)
        H, W = x.shape[2], x.shape[3]
        HH, WW = self.kernel_size
        if H + 2 * self.padding < HH or W + 2 * self.padding < WW:
            raise ValueError(f"{where}: kernel {HH}x{WW} is larger than the padded input "
                             f"{H + 2 * self.padding}x{W + 2 * self.padding} (x of shape {x.shape}); "
                             f"use a smaller kernel, more padding or larger images")
        b = self.bias if self.bias is not None else np.zeros(self.out_channels, np.float32)
        alive = self.alive_filters() if self.skip_dead else np.ones(self.out_channels, bool)
        out, kernel = self._convolve(x, self.weight, b, alive, relu, pool2)
        if kernel == "v3" and alive.all():
            kernel = "dense v3"
        elif not kernel.startswith("sparse"):
            kernel = ("skip v3" if kernel == "v3" else kernel) + (
                f" ({int(alive.sum())}/{self.out_channels} filters, "
                f"{self.in_channels}/{self.in_channels} input channels)")
        self.last_kernel = kernel + self._fused_suffix(relu, pool2)
        self._cache = x if self.training else None
        return out

    def _convolve(self, x, w, b, alive, relu, pool2):
        """Run the kernel that suits ``w``; returns ``(out, kernel name)``.

        * sparse taps: stride 1 and a fraction of zeros among the weights of live filters
          >= ``sparse_threshold`` (the measured break-even; ``None`` turns it off);
        * v4: ``pool2`` -- conv + ReLU + 2x2 max pool in one kernel;
        * v3: everything else, over the live filters only (dead ones get their bias plane).
        """
        live = w if alive.all() else w[alive]
        sparsity = 1.0 - np.count_nonzero(live) / max(live.size, 1)
        if self.sparse_threshold is not None and self.stride == 1 and sparsity >= self.sparse_threshold:
            out = fn.conv2d_forward_sparse(x, w, b, 1, self.padding)
            if relu:
                np.maximum(out, 0, out=out)
            if pool2:
                out = fn.maxpool2d_forward_numba(out, 2, 2)
            return out, f"sparse taps ({sparsity:.0%} of live weights zero)"
        alive_f = None if alive.all() else alive
        if pool2:
            return fn.conv2d_relu_maxpool2_numba(x, w, b, self.padding, alive_f=alive_f), "v4"
        return fn.conv2d_forward_numba(x, w, b, self.stride, self.padding, alive_f=alive_f, relu=relu), "v3"

    @staticmethod
    def _fused_suffix(relu, pool2):
        return (" + fused ReLU" if relu else "") + (" + 2x2 max pool" if pool2 else "")

    def constant_outputs(self):
        """``(is_constant (F,), value (F,))``: dead filters output their bias everywhere."""
        dead = ~self.alive_filters()
        b = self.bias if self.bias is not None else np.zeros(self.out_channels, np.float32)
        return dead, np.where(dead, b, 0).astype(np.float32)

    def forward_live(self, x_live, live_in, const_in, relu=False, pool2=False):
        """Inference on live channels only: the network shrunk on the fly.

        Parameters
        ----------
        x_live : ndarray, (N, C_live, H, W)
            The input channels ``live_in`` of the full input, in order.
        live_in : ndarray of bool, (C,)
        const_in : ndarray, (C,)
            The value of every channel that is not live (a constant plane).

        Returns
        -------
        out_live : ndarray, (N, F_live, H', W')   only the live filters' planes
        live_out : ndarray of bool, (F,)
        const_out : ndarray, (F,)                 a dead filter's plane is its bias
                                                  (``relu(bias)`` with ``relu=True``)
        """
        where = self._where()
        x_live = check_float32(x_live, "x", where)
        if self.padding > 0 and np.any(const_in[~live_in] != 0):
            raise ValueError(f"{where}: the constant planes of dead filters upstream cannot be folded "
                             f"into this layer's bias with padding {self.padding} (the border sees zeros); "
                             f"prune those filters with prune_bias=True, or set model.skip_dead = False")
        w = self.weight
        b = self.bias if self.bias is not None else np.zeros(self.out_channels, np.float32)
        if not live_in.all():
            # a constant plane v_c adds v_c * sum(w[f, c]) at every output position
            b = b + (w[:, ~live_in].sum(axis=(2, 3)) @ const_in[~live_in]).astype(np.float32)
            w = w[:, live_in]
        alive = self.alive_filters()
        w_live, b_live = np.ascontiguousarray(w[alive]), np.ascontiguousarray(b[alive])
        out, kernel = self._convolve(x_live, w_live, b_live, np.ones(len(w_live), bool), relu, pool2)
        self.last_kernel = (f"live-only {kernel} ({int(alive.sum())}/{self.out_channels} filters, "
                            f"{int(live_in.sum())}/{self.in_channels} input channels)"
                            + self._fused_suffix(relu, pool2))
        const_out = np.where(alive, 0, b).astype(np.float32)
        return out, alive, (np.maximum(const_out, 0) if relu else const_out)

    def backward(self, dout, need_dx=True):
        """Store ``grads['weight']`` (or ``weight_orig``) and ``grads['bias']``; return dx
        (``None`` with ``need_dx=False``, which the first layer of a network uses)."""
        if self._cache is None:
            raise RuntimeError(f"{self._where()}: backward needs a forward in training mode "
                               f"first; call model.train() before the forward pass")
        x = self._cache
        dx, dw, db = fn.conv2d_backward_numba(dout, x, self.weight, self.stride, self.padding,
                                              need_dx=need_dx)
        self._store_grad("weight", dw)
        if self.bias is not None:
            self._store_grad("bias", db)
        return dx

    def output_shape(self, input_shape):
        N, C, H, W = input_shape
        HH, WW = self.kernel_size
        return (N, self.out_channels, conv_output_size(H, HH, self.stride, self.padding),
                conv_output_size(W, WW, self.stride, self.padding))

    def flops(self, input_shape):
        _, F, Ho, Wo = self.output_shape(input_shape)
        HH, WW = self.kernel_size
        return 2 * F * self.in_channels * HH * WW * Ho * Wo

    def extra_repr(self):
        s = (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
             f"stride={self.stride}, padding={self.padding}")
        return s + (", bias=False" if self._parameters.get("bias") is None
                    and "bias_orig" not in self._parameters else "")

    def spec(self):
        has_bias = self._parameters.get("bias") is not None or "bias_orig" in self._parameters
        return {"type": "Conv2d", "args": {
            "in_channels": self.in_channels, "out_channels": self.out_channels,
            "kernel_size": list(self.kernel_size), "stride": self.stride,
            "padding": self.padding, "bias": has_bias}}


class Linear(Module):
    """Fully connected layer, ``torch.nn.Linear``'s arguments and shapes.

    Shapes: x ``(N, in_features)`` -> out ``(N, out_features)``;
    ``weight (out_features, in_features)``, ``bias (out_features,)``.

    Examples
    --------
    >>> fc = Linear(4, 2, seed=0)
    >>> fc(np.ones((3, 4), dtype=np.float32)).shape
    (3, 2)
    """

    def __init__(self, in_features, out_features, bias=True, seed=None, rng=None):
        super().__init__()
        self.in_features = check_positive_int(in_features, "in_features", "Linear")
        self.out_features = check_positive_int(out_features, "out_features", "Linear")
        rng = _rng(seed, rng)
        bound = 1.0 / np.sqrt(self.in_features)
        self.register_parameter(
            "weight", rng.uniform(-bound, bound, (self.out_features, self.in_features)).astype(np.float32))
        self.register_parameter(
            "bias", rng.uniform(-bound, bound, self.out_features).astype(np.float32) if bias else None)
        self.name = "Linear"
        self._cache = None
        self.last_kernel = None

    def _where(self):
        return f"{self.name} (Linear {self.in_features}->{self.out_features})"

    def forward(self, x):
        """``x (N, in_features)`` -> ``(N, out_features)``."""
        where = self._where()
        x = check_float32(x, "x", where)
        if x.ndim != 2 or x.shape[1] != self.in_features:
            hint = (" (feature maps must be flattened first: add a Flatten layer)" if x.ndim > 2
                    and int(np.prod(x.shape[1:])) == self.in_features else "")
            raise ValueError(f"{where}: expected x of shape (N, {self.in_features}), got "
                             f"{x.shape}{hint}")
        check_finite(x, "x", where)
        out = fn.linear_forward_numba(x, self.weight, self.bias)
        self.last_kernel = "dense"
        self._cache = x if self.training else None
        return out

    def forward_live(self, x_live, live_in, const_in):
        """Inference reading only the live input features; the constant ones are folded
        into the bias (see ``Conv2d.forward_live``).  Returns the full output."""
        b = self.bias if self.bias is not None else np.zeros(self.out_features, np.float32)
        w = self.weight
        if not live_in.all():
            b = b + (w[:, ~live_in] @ const_in[~live_in]).astype(np.float32)
            w = np.ascontiguousarray(w[:, live_in])
        self.last_kernel = f"live-only ({int(live_in.sum())}/{self.in_features} input features)"
        return fn.linear_forward_numba(x_live, w, b)

    def backward(self, dout):
        if self._cache is None:
            raise RuntimeError(f"{self._where()}: backward needs a forward in training mode "
                               f"first; call model.train() before the forward pass")
        dx, dw, db = fn.linear_backward_numba(dout, self._cache, self.weight)
        self._store_grad("weight", dw)
        if self.bias is not None:
            self._store_grad("bias", db)
        return dx

    def output_shape(self, input_shape):
        return (input_shape[0], self.out_features)

    def flops(self, input_shape):
        return 2 * self.in_features * self.out_features

    def extra_repr(self):
        return f"in_features={self.in_features}, out_features={self.out_features}"

    def spec(self):
        has_bias = self._parameters.get("bias") is not None or "bias_orig" in self._parameters
        return {"type": "Linear", "args": {"in_features": self.in_features,
                                           "out_features": self.out_features, "bias": has_bias}}


class ReLU(Module):
    """``max(x, 0)`` elementwise, any shape."""

    def __init__(self):
        super().__init__()
        self._cache = None

    def forward(self, x):
        out = fn.relu_forward_numba(x)
        self._cache = x if self.training else None
        return out

    def backward(self, dout):
        if self._cache is None:
            raise RuntimeError("ReLU: backward needs a forward in training mode first")
        return fn.relu_backward_numba(dout, self._cache)


class MaxPool2d(Module):
    """Max pooling over ``kernel_size`` windows, ``torch.nn.MaxPool2d``'s arguments
    (``stride`` defaults to ``kernel_size``; no padding).

    Shapes: x ``(N, C, H, W)`` -> out ``(N, C, H', W')``, ``H' = 1 + (H - k) // stride``.
    """

    def __init__(self, kernel_size, stride=None):
        super().__init__()
        self.kernel_size = check_positive_int(kernel_size, "kernel_size", "MaxPool2d")
        self.stride = self.kernel_size if stride is None else check_positive_int(
            stride, "stride", "MaxPool2d")
        self._cache = None

    def forward(self, x):
        where = f"MaxPool2d(kernel_size={self.kernel_size})"
        x = check_float32(x, "x", where)
        check_nchw(x, where)
        if x.shape[2] < self.kernel_size or x.shape[3] < self.kernel_size:
            raise ValueError(f"{where}: the pooling window is larger than the input {x.shape}")
        out = fn.maxpool2d_forward_numba(x, self.kernel_size, self.stride)
        self._cache = x if self.training else None
        return out

    def backward(self, dout):
        if self._cache is None:
            raise RuntimeError("MaxPool2d: backward needs a forward in training mode first")
        return fn.maxpool2d_backward_numba(dout, self._cache, self.kernel_size, self.stride)

    def output_shape(self, input_shape):
        N, C, H, W = input_shape
        return (N, C, conv_output_size(H, self.kernel_size, self.stride),
                conv_output_size(W, self.kernel_size, self.stride))

    def extra_repr(self):
        return f"kernel_size={self.kernel_size}, stride={self.stride}"

    def spec(self):
        return {"type": "MaxPool2d", "args": {"kernel_size": self.kernel_size, "stride": self.stride}}


class Flatten(Module):
    """``(N, C, H, W) -> (N, C*H*W)``, channel-major as in torch (channel c owns
    features ``c*H*W ... (c+1)*H*W - 1``)."""

    def __init__(self):
        super().__init__()
        self._shape = None

    def forward(self, x):
        self._shape = x.shape
        return x.reshape(x.shape[0], -1)

    def backward(self, dout):
        return dout.reshape(self._shape)

    def output_shape(self, input_shape):
        return (input_shape[0], int(np.prod(input_shape[1:])))


class Dropout(Module):
    """Inverted dropout: in training, zero each entry with probability ``p`` and scale the
    rest by ``1/(1-p)``; in eval mode the identity."""

    def __init__(self, p=0.5, seed=None, rng=None):
        super().__init__()
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p < 1:
            raise ValueError(f"Dropout: expected p in [0, 1), got {p!r}")
        self.p = float(p)
        self._rng = _rng(seed, rng)
        self._keep = None

    def forward(self, x):
        if not self.training or self.p == 0:
            self._keep = None
            return x
        self._keep = (self._rng.random(x.shape) >= self.p).astype(np.float32) / (1 - self.p)
        return x * self._keep

    def backward(self, dout):
        return dout if self._keep is None else dout * self._keep

    def extra_repr(self):
        return f"p={self.p}"

    def spec(self):
        return {"type": "Dropout", "args": {"p": self.p}}


class Dropout2d(Module):
    """Channel dropout (``torch.nn.Dropout2d``): in training, zero each whole channel plane
    ``(n, c)`` with probability ``p`` and scale the kept planes by ``1/(1-p)``; in eval mode
    the identity.  The spec with a given draw is ``reference.dropout2d_forward_reference``.

    Shapes: x ``(N, C, H, W)`` -> out ``(N, C, H, W)``.

    Examples
    --------
    >>> d = Dropout2d(0.5, seed=0).train()
    >>> out = d(np.ones((1, 4, 2, 2), dtype=np.float32))
    >>> out[0, :, 0, 0]          # whole planes are zeroed, the rest doubled
    array([2., 0., 0., 0.], dtype=float32)
    """

    def __init__(self, p=0.5, seed=None, rng=None):
        super().__init__()
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p < 1:
            raise ValueError(f"Dropout2d: expected p in [0, 1), got {p!r}")
        self.p = float(p)
        self._rng = _rng(seed, rng)
        self._scale = None

    def forward(self, x):
        if not self.training or self.p == 0:
            self._scale = None
            return x
        check_nchw(x, "Dropout2d")
        keep = self._rng.random(x.shape[:2]) >= self.p            # one draw per (image, channel)
        self._scale = (keep.astype(np.float32) / np.float32(1 - self.p))[:, :, None, None]
        return x * self._scale

    def backward(self, dout):
        return dout if self._scale is None else dout * self._scale

    def extra_repr(self):
        return f"p={self.p}"

    def spec(self):
        return {"type": "Dropout2d", "args": {"p": self.p}}


class LeakyReLU(Module):
    """``x`` where ``x > 0``, else ``negative_slope * x`` (``torch.nn.LeakyReLU``), any shape."""

    def __init__(self, negative_slope=0.01):
        super().__init__()
        if isinstance(negative_slope, bool) or not isinstance(negative_slope, (int, float)):
            raise ValueError(f"LeakyReLU: expected a number for negative_slope, got {negative_slope!r}")
        self.negative_slope = float(negative_slope)
        self._cache = None

    def forward(self, x):
        out = fn.leaky_relu_forward_numba(x, self.negative_slope)
        self._cache = x if self.training else None
        return out

    def backward(self, dout):
        if self._cache is None:
            raise RuntimeError("LeakyReLU: backward needs a forward in training mode first")
        return fn.leaky_relu_backward_numba(dout, self._cache, self.negative_slope)

    def extra_repr(self):
        return f"negative_slope={self.negative_slope}"

    def spec(self):
        return {"type": "LeakyReLU", "args": {"negative_slope": self.negative_slope}}


class AvgPool2d(Module):
    """Average pooling over ``kernel_size`` windows, ``torch.nn.AvgPool2d``'s arguments
    (``stride`` defaults to ``kernel_size``; no padding).

    Shapes: x ``(N, C, H, W)`` -> out ``(N, C, H', W')``, ``H' = 1 + (H - k) // stride``.
    """

    def __init__(self, kernel_size, stride=None):
        super().__init__()
        self.kernel_size = check_positive_int(kernel_size, "kernel_size", "AvgPool2d")
        self.stride = self.kernel_size if stride is None else check_positive_int(
            stride, "stride", "AvgPool2d")
        self._cache = None

    def forward(self, x):
        where = f"AvgPool2d(kernel_size={self.kernel_size})"
        x = check_float32(x, "x", where)
        check_nchw(x, where)
        if x.shape[2] < self.kernel_size or x.shape[3] < self.kernel_size:
            raise ValueError(f"{where}: the pooling window is larger than the input {x.shape}")
        out = fn.avgpool2d_forward_numba(x, self.kernel_size, self.stride)
        self._cache = x if self.training else None
        return out

    def backward(self, dout):
        if self._cache is None:
            raise RuntimeError("AvgPool2d: backward needs a forward in training mode first")
        return fn.avgpool2d_backward_numba(dout, self._cache, self.kernel_size, self.stride)

    def output_shape(self, input_shape):
        N, C, H, W = input_shape
        return (N, C, conv_output_size(H, self.kernel_size, self.stride),
                conv_output_size(W, self.kernel_size, self.stride))

    def extra_repr(self):
        return f"kernel_size={self.kernel_size}, stride={self.stride}"

    def spec(self):
        return {"type": "AvgPool2d", "args": {"kernel_size": self.kernel_size, "stride": self.stride}}


class AdaptiveAvgPool2d(Module):
    """Global average pooling, ``torch.nn.AdaptiveAvgPool2d(1)``: the mean of every channel.

    Only ``output_size=1`` (or ``(1, 1)``) is supported, the one small CNNs use before
    their classifier.  Shapes: x ``(N, C, H, W)`` -> out ``(N, C, 1, 1)``.
    """

    def __init__(self, output_size=1):
        super().__init__()
        if output_size not in (1, (1, 1), [1, 1]):
            raise ValueError(f"AdaptiveAvgPool2d: only output_size=1 (global average pooling) is "
                             f"supported, got {output_size!r}; use AvgPool2d for other sizes")
        self.output_size = 1
        self._cache = None

    def forward(self, x):
        where = "AdaptiveAvgPool2d(1)"
        x = check_float32(x, "x", where)
        check_nchw(x, where)
        out = fn.global_avgpool_forward_numba(x)
        self._cache = x if self.training else None
        return out

    def backward(self, dout):
        if self._cache is None:
            raise RuntimeError("AdaptiveAvgPool2d: backward needs a forward in training mode first")
        return fn.global_avgpool_backward_numba(dout, self._cache)

    def output_shape(self, input_shape):
        return tuple(input_shape[:2]) + (1, 1)

    def extra_repr(self):
        return "output_size=1"

    def spec(self):
        return {"type": "AdaptiveAvgPool2d", "args": {"output_size": 1}}


class Sequential(Module):
    """Children run in order; each has a name (``"0"``, ``"1"``, ... or the keys given).

    Parameters
    ----------
    *layers : Module, or one ``OrderedDict`` / list of ``(name, Module)`` pairs

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
        self.skip_dead = True
        self.fuse_relu = True

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

        In eval mode, a network with dead filters runs *live-only* (see :meth:`forward_live`;
        ``skip_dead = False`` turns that off), and a Conv2d runs its following ReLU (and 2x2
        max pool) inside its own kernel (``fuse_relu = False`` turns that off).  In training
        mode every layer runs on its own and keeps what its backward needs.
        """
        if not self.training and self.skip_dead and self._has_dead_filters():
            return self.forward_live(x)
        layers = list(self._modules.values())
        fuse = self._fusable(layers)
        skip = 0
        for i, m in enumerate(layers):
            if skip:                          # this ReLU (or pool) already ran inside the conv
                skip -= 1
            elif i in fuse:
                skip = fuse[i]
                x = m(x, relu=True, pool2=skip == 2)
            else:
                x = m(x)
        return x

    def _fusable(self, layers):
        """``{index of a Conv2d: how many following layers run inside its kernel}``.

        In eval mode only (training keeps every activation for backward): a ReLU after a
        Conv2d is fused (1), and a ``MaxPool2d(2)`` after that too (2) when the conv has
        stride 1 and an even output size.  Layers with hooks of their own are not fused.
        """
        if self.training or not self.fuse_relu:
            return {}
        fused = {}
        for i in range(len(layers) - 1):
            conv, nxt = layers[i], layers[i + 1]
            if not (isinstance(conv, Conv2d) and isinstance(nxt, ReLU) and not nxt._forward_pre_hooks):
                continue
            fused[i] = 1
            pool = layers[i + 2] if i + 2 < len(layers) else None
            if (isinstance(pool, MaxPool2d) and pool.kernel_size == 2 and pool.stride == 2
                    and conv.stride == 1 and not pool._forward_pre_hooks):
                fused[i] = 2
        return fused

    def _has_dead_filters(self):
        return any(isinstance(m, Conv2d) and m.skip_dead and not m.alive_filters().all()
                   for m in self._modules.values())

    def forward_live(self, x):
        """Inference that computes only what dead filters do not decide: the network is
        shrunk on the fly, with the same weights.

        After a conv, only its live filters' planes are computed and carried on; a dead
        filter's plane is the constant ``bias`` (ReLU makes it ``relu(bias)``, max pooling
        keeps it).  ReLU and pooling run on the live planes only; the next conv never reads
        the constant planes and adds their effect to its bias instead (exact with padding 0);
        after Flatten, a linear layer reads only the live features.  A layer of another kind
        gets the full tensor back.  ``ece662.pruning.shrink`` builds the same network for good.

        Returns
        -------
        ndarray, the same as :meth:`forward` on the masked weights (float32 tolerance)
        """
        live, const = None, None      # which channels (or features) of x are real, the rest's values
        layers = list(self._modules.values())
        fuse = self._fusable(layers)
        skip = 0
        for i, m in enumerate(layers):
            if skip:                      # this ReLU (or pool) already ran inside the conv
                skip -= 1
                continue
            relu, pool2 = i in fuse, fuse.get(i) == 2
            if relu:
                skip = fuse[i]
            if live is None:
                if isinstance(m, Conv2d):
                    x, live, const = m.forward_live(x, np.ones(m.in_channels, bool),
                                                    np.zeros(m.in_channels, np.float32), relu=relu,
                                                    pool2=pool2)
                else:
                    x = m(x)
                continue
            if isinstance(m, Conv2d) and (m.padding == 0 or not np.any(const[~live])):
                x, live, const = m.forward_live(x, live, const, relu=relu, pool2=pool2)
            elif isinstance(m, ReLU):
                x = m(x)
                const = np.maximum(const, 0)
            elif isinstance(m, MaxPool2d) or (isinstance(m, Dropout) and not m.training):
                x = m(x)
            elif isinstance(m, Flatten):
                hw = int(np.prod(x.shape[2:]))
                x = m(x)
                live, const = np.repeat(live, hw), np.repeat(const, hw)
            elif isinstance(m, Linear):
                x = m.forward_live(x, live, const)
                live, const = None, None
            else:                      # back to full tensors for anything else
                x = self._expand(x, live, const)
                live, const = None, None
                if relu:               # a conv that cannot run live-only, with its ReLU fused
                    x = m(x, relu=True, pool2=pool2)
                else:
                    x = m(x)
        return x if live is None else self._expand(x, live, const)

    @staticmethod
    def _expand(x, live, const):
        """Put the live channels (or features) back among the constant ones."""
        full = np.empty((x.shape[0], live.size) + x.shape[2:], dtype=np.float32)
        full[:, live] = x
        full[:, ~live] = const[~live].reshape((-1,) + (1,) * (x.ndim - 2))
        return full

    def backward(self, dout, need_input_grad=True):
        """Backpropagate ``dout`` through every layer, last to first; return the input's
        gradient, or ``None`` with ``need_input_grad=False`` (then a first Conv2d skips
        computing it, which training does)."""
        layers = list(self._modules.values())
        for i in range(len(layers) - 1, -1, -1):
            m = layers[i]
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
                                              LeakyReLU, AvgPool2d, AdaptiveAvgPool2d)}


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
