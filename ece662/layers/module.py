"""``Module``: what every layer is, as in ``torch.nn.Module``.

A ``Module`` owns named parameters (float32 arrays), named buffers (e.g. a pruning mask), child modules,
a gradient per parameter after ``backward``, forward pre-hooks, a train/eval flag and the ``kernels``
switch.  It can list itself (``named_modules``, ``named_parameters``), save and load its state
(``state_dict`` / ``load_state_dict``) and describe its architecture (``spec``).

Pruning meets the layers at two points, exactly as in ``torch.nn.utils.prune``:

* a *forward pre-hook* recomputes the effective ``weight = weight_orig * weight_mask``
  before every forward, and
* ``_store_grad`` routes the gradient of the effective weight to ``weight_orig``
  multiplied by the mask, so a pruned weight gets a gradient of exactly 0.
"""
import threading
from collections import OrderedDict

import numpy as np

from ece662.layers import kernel_choice


# Numba's "workqueue" threading layer, which ece662 selects (``kernels.py``), cannot run two parallel kernels at
# once: when two Python threads enter them together it prints "Concurrent access has been detected" and ends the
# whole process.  A program that evaluates models from a thread pool (a TA grading notebooks) must not die for
# that, so a forward call holds this lock; a model's own layers re-enter it.
_RUNNING = threading.RLock()


class _HookHandle:
    """Returned by ``register_forward_pre_hook``; ``remove()`` unregisters the hook."""

    def __init__(self, hooks, key):
        self._hooks, self._key = hooks, key

    def remove(self):
        self._hooks.pop(self._key, None)


class Module:
    """Base class: parameters, buffers, gradients, hooks, train/eval, state dicts."""

    def __init__(self):
        object.__setattr__(self, "_parameters", OrderedDict())
        object.__setattr__(self, "_buffers", OrderedDict())
        object.__setattr__(self, "_modules", OrderedDict())
        object.__setattr__(self, "_forward_pre_hooks", OrderedDict())
        object.__setattr__(self, "_next_hook_id", 0)
        object.__setattr__(self, "_kernels", "auto")
        self.grads = {}
        self.training = True

    @property
    def kernels(self):
        """Which kernels run: ``'auto'`` (default: live-only, fused, the fastest measured kernel),
        ``'dense'`` (every filter, dead or not) or ``'reference'`` (the plain-loop twins in eval mode; in
        training only a conv's forward follows it, while ReLU, pooling, Linear and ``Conv2d.backward``
        keep their Numba kernels).

        Setting it on a model sets it on every layer; ``ece662.layers.plan`` explains the choice.
        """
        return self._kernels

    @kernels.setter
    def kernels(self, value):
        kernel_choice.check_mode(value)
        for _, m in self.named_modules():
            object.__setattr__(m, "_kernels", value)

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
        """Run the forward pass (after the pre-hooks).  Calls from several Python threads take turns
        (:data:`_RUNNING`): each call uses every core already."""
        with _RUNNING:
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
        array is ``name_orig`` and its gradient is ``g * mask``: a pruned entry gets 0.  The
        unmasked ``g`` is kept in ``dense_grads[name]``: what a pruned weight's gradient *would* be,
        which dynamic sparse training (RigL) grows by.
        """
        mask = self._buffers.get(name + "_mask")
        if mask is not None and name + "_orig" in self._parameters:
            self.dense_grads = {**getattr(self, "dense_grads", {}), name: g}
            self.grads[name + "_orig"] = g * mask
        else:
            self.grads[name] = g

    def train(self, mode=True):
        """Set training mode (caches activations for backward; Dropout drops) on every module."""
        for _, m in self.named_modules():
            object.__setattr__(m, "training", bool(mode))
        return self

    def eval(self):
        """Set evaluation mode: deterministic; no activations are kept for a backward pass."""
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
