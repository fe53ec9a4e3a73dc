"""The layers, with torch-compatible names, arguments and parameter shapes.

Each is a :class:`~ece662.layers.module.Module`.  Forward runs the fast kernels of
``ece662.layers.functional`` (a conv asks ``ece662.layers.kernel_choice`` which one); backward stores
gradients in ``module.grads[name]`` and returns the gradient of its input -- it never updates a weight
(that is ``ece662.training.optim``'s job).  ``Sequential`` is in ``ece662.layers.sequential``.
"""
import numpy as np

from ece662.layers import functional as fn
from ece662.layers import kernel_choice
from ece662.layers import kernels_train as kt
from ece662.layers.checks import (check_finite, check_float32, check_nchw,
                                  check_nonnegative_int, check_positive_int)
from ece662.layers.module import Module
from ece662.layers.shapes import conv_output_size


_FLOAT32_MAX = float(np.finfo(np.float32).max)


def _rng(seed, rng):
    if rng is not None:
        return rng
    return np.random.default_rng(seed)


def _vector(v, n, where):
    """``v`` as a float32 ``(n,)`` array (a bias given to ``from_weights``), or an error."""
    v = np.ascontiguousarray(v, dtype=np.float32)
    if v.shape != (n,):
        raise ValueError(f"{where}: expected bias of shape ({n},), got {v.shape}")
    return v


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
        self._configure(in_channels, out_channels, kernel_size, stride, padding)
        kh, kw = self.kernel_size
        rng = _rng(seed, rng)
        fan_in = self.in_channels * kh * kw
        bound = 1.0 / np.sqrt(fan_in)
        shape = (self.out_channels, self.in_channels, kh, kw)
        self.register_parameter("weight", rng.uniform(-bound, bound, shape).astype(np.float32))
        self.register_parameter(
            "bias", rng.uniform(-bound, bound, self.out_channels).astype(np.float32) if bias else None)

    @classmethod
    def from_weights(cls, weight, bias=None, stride=1, padding=0):
        """A Conv2d that computes with ``weight (F, C, HH, WW)`` and ``bias (F,)`` (or None) as float32.

        ``Conv2d(C, F, (HH, WW))`` would first draw random weights (in float64, twice the
        weights' size) only for them to be replaced; a file reader builds its layers here, so a
        layer costs its weights' memory once (torch's loaders skip the initialisation too).

        Examples
        --------
        >>> conv = Conv2d.from_weights(np.ones((8, 3, 5, 5), np.float32), padding=2)
        >>> conv.in_channels, conv.out_channels, conv.kernel_size, conv.bias is None
        (3, 8, (5, 5), True)
        """
        weight = np.ascontiguousarray(weight, dtype=np.float32)
        if weight.ndim != 4:
            raise ValueError(f"Conv2d.from_weights: expected weight of shape (F, C, HH, WW), got {weight.shape}")
        F, C, HH, WW = weight.shape
        conv = cls.__new__(cls)
        conv._configure(C, F, (HH, WW), stride, padding)
        conv.register_parameter("weight", weight)
        conv.register_parameter("bias", None if bias is None else _vector(bias, F, "Conv2d.from_weights"))
        return conv

    def _configure(self, in_channels, out_channels, kernel_size, stride, padding):
        """Check and store the sizes; no parameters yet (``__init__`` and ``from_weights`` add them)."""
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
        self.name = "Conv2d"
        self._cache = None
        self.last_kernel = None          # a kernel_choice.KernelChoice: which kernel the last forward ran, and why

    def _where(self):
        return f"{self.name} (Conv2d {self.in_channels}->{self.out_channels})"

    def alive_filters(self):
        """``(F,)`` bool: False for dead filters, those whose effective weights are all zero
        (pruned away by a mask, or zeroed for good by ``prune.remove``)."""
        return np.any(self.weight.reshape(self.out_channels, -1) != 0, axis=1)

    def check_input(self, x):
        """``x`` as a float32 C-contiguous ``(N, C, H, W)`` batch that fits the kernel, or an error."""
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
        return x

    def forward(self, x, relu_pool=False):
        """Convolve ``x (N, C, H, W)`` -> ``(N, F, H', W')``.

        Dead filters (all weights zero) are not computed in ``kernels='auto'`` mode: their
        planes are their bias.  ``last_kernel`` says which kernel ran and why.  In an eval-mode
        ``Sequential`` the model's plan runs this layer instead (``ece662.layers.plan``: live
        input channels only, a following ReLU / max pool fused into the kernel).

        ``relu_pool=True`` (training ``Sequential`` does it when :meth:`fuses_relu_pool`) runs
        this conv, a ReLU and a 2x2 max pool as one kernel and returns the pooled output; the
        next :meth:`backward` then takes the pooled output's gradient
        (``ece662.layers.kernels_train``).
        """
        x = self.check_input(x)
        if relu_pool:
            alive = self.alive_filters() if self.kernels == "auto" else None
            out, code = kt.conv2d_relu_maxpool2_train(x, self.weight, self.bias, self.padding, alive_f=alive)
            F, C = self.out_channels, self.in_channels
            live = F if alive is None else int(alive.sum())
            self.last_kernel = kernel_choice.KernelChoice("lanes", ("ReLU", "2x2 max pool"), live, F, C, C,
                                                 "training: ReLU and MaxPool2d(2) follow a stride-1 conv")
            self._cache = (x, code) if self.training else None
            return out
        out, self.last_kernel = kernel_choice.conv_forward(self, x)
        self._cache = x if self.training else None
        return out

    def fuses_relu_pool(self, following, x):
        """True when a training forward can run this conv and the ``following`` two layers, a
        ReLU and a MaxPool2d(2), as one kernel (stride 1, no hooks on them, not 'reference')."""
        if len(following) != 2 or not self.training or self.kernels == "reference" or self.stride != 1:
            return False
        relu, pool = following
        if (type(relu) is not ReLU or type(pool) is not MaxPool2d or pool.kernel_size != 2 or pool.stride != 2
                or relu._forward_pre_hooks or pool._forward_pre_hooks or np.ndim(x) != 4):
            return False
        H, W = np.shape(x)[2:]
        HH, WW = self.kernel_size
        return min(conv_output_size(H, HH, 1, self.padding), conv_output_size(W, WW, 1, self.padding)) >= 2

    def backward(self, dout, need_dx=True):
        """Store ``grads['weight']`` (or ``weight_orig``) and ``grads['bias']``; return dx
        (``None`` with ``need_dx=False``, which the first layer of a network uses)."""
        if self._cache is None:
            raise RuntimeError(f"{self._where()}: backward needs a forward in training mode "
                               f"first; call model.train() before the forward pass")
        if isinstance(self._cache, tuple):            # the forward ran with relu_pool=True
            x, code = self._cache
            dx, dw, db = kt.conv2d_relu_maxpool2_train_backward(dout, code, x, self.weight, self.padding,
                                                                need_dx=need_dx)
        elif self.stride == 1 and self.kernels != "reference":   # channels-last tiles: measured faster than v3
            dx, dw, db = kt.conv2d_backward_lanes_numba(dout, self._cache, self.weight, self.padding,
                                                        need_dx=need_dx)
        else:
            dx, dw, db = fn.conv2d_backward_numba(dout, self._cache, self.weight, self.stride, self.padding,
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
        self._configure(in_features, out_features)
        rng = _rng(seed, rng)
        bound = 1.0 / np.sqrt(self.in_features)
        self.register_parameter(
            "weight", rng.uniform(-bound, bound, (self.out_features, self.in_features)).astype(np.float32))
        self.register_parameter(
            "bias", rng.uniform(-bound, bound, self.out_features).astype(np.float32) if bias else None)

    @classmethod
    def from_weights(cls, weight, bias=None):
        """A Linear that computes with ``weight (out_features, in_features)`` and ``bias (out_features,)``
        (or None) as float32, without drawing random weights first (see ``Conv2d.from_weights``).

        Examples
        --------
        >>> fc = Linear.from_weights(np.ones((2, 4), np.float32), np.zeros(2, np.float32))
        >>> fc(np.ones((3, 4), dtype=np.float32)).tolist()
        [[4.0, 4.0], [4.0, 4.0], [4.0, 4.0]]
        """
        weight = np.ascontiguousarray(weight, dtype=np.float32)
        if weight.ndim != 2:
            raise ValueError(f"Linear.from_weights: expected weight of shape (out_features, in_features), "
                             f"got {weight.shape}")
        fc = cls.__new__(cls)
        fc._configure(weight.shape[1], weight.shape[0])
        fc.register_parameter("weight", weight)
        fc.register_parameter("bias", None if bias is None else _vector(bias, weight.shape[0], "Linear.from_weights"))
        return fc

    def _configure(self, in_features, out_features):
        """Check and store the sizes; no parameters yet (``__init__`` and ``from_weights`` add them)."""
        super().__init__()
        self.in_features = check_positive_int(in_features, "in_features", "Linear")
        self.out_features = check_positive_int(out_features, "out_features", "Linear")
        self.name = "Linear"
        self._cache = None
        self.last_kernel = None

    def _where(self):
        return f"{self.name} (Linear {self.in_features}->{self.out_features})"

    def alive_outputs(self):
        """``(out_features,)`` bool: False for dead output units, those whose effective weights
        (a row of ``weight``) are all zero; such a unit outputs its bias for every input.  The
        twin of ``Conv2d.alive_filters``.  In a classifier's last layer a dead unit is a class
        whose logit never changes (``ece662.pruning`` warns before that happens)."""
        return np.any(self.weight != 0, axis=1)

    def check_input(self, x):
        """``x`` as a float32 C-contiguous ``(N, in_features)`` batch, or an error."""
        where = self._where()
        x = check_float32(x, "x", where)
        if x.ndim != 2 or x.shape[1] != self.in_features:
            hint = (" (feature maps must be flattened first: add a Flatten layer)" if x.ndim > 2
                    and int(np.prod(x.shape[1:])) == self.in_features else "")
            raise ValueError(f"{where}: expected x of shape (N, {self.in_features}), got "
                             f"{x.shape}{hint}")
        check_finite(x, "x", where)
        return x

    def forward(self, x):
        """``x (N, in_features)`` -> ``(N, out_features)``."""
        x = self.check_input(x)
        out = fn.linear_forward_numba(x, self.weight, self.bias)
        self.last_kernel = kernel_choice.KernelChoice("linear", (), self.out_features, self.out_features,
                                             self.in_features, self.in_features, "dense")
        self._cache = x if self.training else None
        return out

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


class Pool2dBase(Module):
    """What max and average pooling share: ``kernel_size`` windows with torch's arguments
    (``stride`` defaults to ``kernel_size``; no padding).  A subclass names its kernels.

    Shapes: x ``(N, C, H, W)`` -> out ``(N, C, H', W')``, ``H' = 1 + (H - k) // stride``.
    """
    _forward_kernel = _backward_kernel = None     # functional.<kind>pool2d_{forward,backward}_numba

    def __init__(self, kernel_size, stride=None):
        super().__init__()
        name = type(self).__name__
        self.kernel_size = check_positive_int(kernel_size, "kernel_size", name)
        self.stride = self.kernel_size if stride is None else check_positive_int(stride, "stride", name)
        self._cache = None

    def forward(self, x):
        where = f"{type(self).__name__}(kernel_size={self.kernel_size})"
        x = check_float32(x, "x", where)
        check_nchw(x, where)
        if x.shape[2] < self.kernel_size or x.shape[3] < self.kernel_size:
            raise ValueError(f"{where}: the pooling window is larger than the input {x.shape}")
        out = self._forward_kernel(x, self.kernel_size, self.stride)
        self._cache = x if self.training else None
        return out

    def backward(self, dout):
        if self._cache is None:
            raise RuntimeError(f"{type(self).__name__}: backward needs a forward in training mode first")
        return self._backward_kernel(dout, self._cache, self.kernel_size, self.stride)

    def output_shape(self, input_shape):
        N, C, H, W = input_shape
        return (N, C, conv_output_size(H, self.kernel_size, self.stride),
                conv_output_size(W, self.kernel_size, self.stride))

    def extra_repr(self):
        return f"kernel_size={self.kernel_size}, stride={self.stride}"

    def spec(self):
        return {"type": type(self).__name__, "args": {"kernel_size": self.kernel_size, "stride": self.stride}}


class MaxPool2d(Pool2dBase):
    """Max pooling over ``kernel_size`` windows, ``torch.nn.MaxPool2d``'s arguments
    (``stride`` defaults to ``kernel_size``; no padding).

    Shapes: x ``(N, C, H, W)`` -> out ``(N, C, H', W')``, ``H' = 1 + (H - k) // stride``.
    """
    _forward_kernel = staticmethod(fn.maxpool2d_forward_numba)
    _backward_kernel = staticmethod(fn.maxpool2d_backward_numba)


class Flatten(Module):
    """``(N, C, H, W) -> (N, C*H*W)``, channel-major as in torch (channel c owns
    features ``c*H*W ... (c+1)*H*W - 1``)."""

    def __init__(self):
        super().__init__()
        self._shape = None

    def forward(self, x):
        self._shape = x.shape
        # the feature count comes from the shape, not from -1: numpy cannot infer -1 from an
        # empty batch (N = 0), which must still give (0, C*H*W)
        return x.reshape(x.shape[0], int(np.prod(x.shape[1:])))

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
        if not abs(negative_slope) <= _FLOAT32_MAX:     # NaN fails too; the kernels compute in float32
            raise ValueError(f"LeakyReLU: negative_slope={negative_slope!r} is not a finite float32 number")
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


class AvgPool2d(Pool2dBase):
    """Average pooling over ``kernel_size`` windows, ``torch.nn.AvgPool2d``'s arguments
    (``stride`` defaults to ``kernel_size``; no padding).

    Shapes: x ``(N, C, H, W)`` -> out ``(N, C, H', W')``, ``H' = 1 + (H - k) // stride``.
    """
    _forward_kernel = staticmethod(fn.avgpool2d_forward_numba)
    _backward_kernel = staticmethod(fn.avgpool2d_backward_numba)


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


class BatchNormBase(Module):
    """Batch normalisation over axis 1, ``torch.nn.BatchNorm2d`` / ``BatchNorm1d``'s arguments.

    Training mode normalises with the batch's mean and biased variance and updates the running
    statistics: ``running = (1 - momentum) * running + momentum * batch`` (the variance
    unbiased, ``* M / (M - 1)``, as torch does); eval mode uses the running statistics.
    Parameters ``weight`` (gamma) and ``bias`` (beta), buffers ``running_mean``, ``running_var``,
    ``num_batches_tracked``: torch's state-dict keys.  In an eval-mode ``Sequential`` a batch
    norm right after a Conv2d (Linear) is folded into that layer's weights and bias
    (``ece662.layers.plan``).  The spec is ``reference.batchnorm_forward_reference``.
    """
    _ndims = ()

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True, track_running_stats=True):
        super().__init__()
        where = type(self).__name__
        self.num_features = check_positive_int(num_features, "num_features", where)
        if not track_running_stats:
            raise ValueError(f"{where}: track_running_stats=False is not supported (eval mode would need the "
                             f"batch's statistics); use the default track_running_stats=True")
        if isinstance(momentum, bool) or not isinstance(momentum, (int, float)) or not 0 <= momentum <= 1:
            raise ValueError(f"{where}: expected momentum in [0, 1], got {momentum!r}")
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0 < eps <= _FLOAT32_MAX:
            raise ValueError(f"{where}: expected eps > 0, got {eps!r}")
        self.eps, self.momentum, self.affine = float(eps), float(momentum), bool(affine)
        C = self.num_features
        self.register_parameter("weight", np.ones(C, np.float32) if affine else None)
        self.register_parameter("bias", np.zeros(C, np.float32) if affine else None)
        self.register_buffer("running_mean", np.zeros(C, np.float32))
        self.register_buffer("running_var", np.ones(C, np.float32))
        self.register_buffer("num_batches_tracked", np.array(0, dtype=np.int64))
        self.name = where
        self._cache = None

    def gamma_beta(self):
        """``(gamma, beta)`` (C,): the affine parameters, ones and zeros when ``affine=False``."""
        C = self.num_features
        return (self.weight if self.weight is not None else np.ones(C, np.float32),
                self.bias if self.bias is not None else np.zeros(C, np.float32))

    def scale_shift(self):
        """``(scale, shift)`` (C,) of eval mode: ``bn(x) = x * scale + shift`` per channel."""
        gamma, beta = self.gamma_beta()
        return fn.batchnorm_scale_shift(gamma, beta, self.running_mean, self.running_var, self.eps)

    def forward(self, x):
        where = f"{self.name} ({type(self).__name__}({self.num_features}))"
        x = check_float32(x, "x", where)
        if x.ndim not in self._ndims or x.shape[1] != self.num_features:
            raise ValueError(f"{where}: expected x with {self.num_features} channels on axis 1 and "
                             f"{' or '.join(map(str, self._ndims))} dimensions, got shape {x.shape}")
        if not self.training:
            self._cache = None
            scale, shift = self.scale_shift()
            return fn.batchnorm_apply_numba(x, scale, shift)
        M = x.size // x.shape[1]
        if M < 2:
            raise ValueError(f"{where}: training needs more than 1 value per channel to estimate a "
                             f"variance, got x of shape {x.shape}")
        mean, var = fn.batchnorm_batch_stats_numba(x)
        m = np.float32(self.momentum)
        self.running_mean = ((1 - m) * self.running_mean + m * mean).astype(np.float32)
        self.running_var = ((1 - m) * self.running_var + m * var * np.float32(M / (M - 1))).astype(np.float32)
        self.num_batches_tracked = np.array(self.num_batches_tracked + 1, dtype=np.int64)
        self._cache = x
        gamma, beta = self.gamma_beta()
        return fn.batchnorm_forward_numba(x, gamma, beta, mean, var, self.eps)

    def backward(self, dout):
        if self._cache is None:
            raise RuntimeError(f"{self.name}: backward needs a forward in training mode first")
        gamma, _ = self.gamma_beta()
        dx, dgamma, dbeta = fn.batchnorm_backward_numba(dout, self._cache, gamma, self.eps)
        if self.affine:
            self._store_grad("weight", dgamma)
            self._store_grad("bias", dbeta)
        return dx

    def extra_repr(self):
        return (f"{self.num_features}, eps={self.eps}, momentum={self.momentum}"
                + ("" if self.affine else ", affine=False"))

    def spec(self):
        return {"type": type(self).__name__, "args": {"num_features": self.num_features, "eps": self.eps,
                                                      "momentum": self.momentum, "affine": self.affine}}


class BatchNorm2d(BatchNormBase):
    """Batch norm of feature maps: per channel over (N, H, W).  Shapes: x ``(N, C, H, W)``.

    Examples
    --------
    >>> bn = BatchNorm2d(2).train()
    >>> out = bn(np.arange(16, dtype=np.float32).reshape(2, 2, 2, 2))
    >>> bool(np.allclose(out.mean(axis=(0, 2, 3)), 0, atol=1e-6)), bn.running_mean
    (True, array([0.55, 0.95], dtype=float32))
    """
    _ndims = (4,)


class BatchNorm1d(BatchNormBase):
    """Batch norm of features: per feature over N (and L).  Shapes: x ``(N, C)`` or ``(N, C, L)``."""
    _ndims = (2, 3)
