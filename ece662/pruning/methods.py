"""The layer-facing pruning API, with ``torch.nn.utils.prune``'s names and semantics.

Pruning parameter ``weight`` of a module:

1. the first time, ``weight`` moves to a trainable ``weight_orig``;
2. a boolean buffer ``weight_mask`` of the same shape is (re)computed by a pure
   function of ``ece662.pruning.masks`` from the scores (default: the current
   effective weight) and the previous mask, so masks only shrink;
3. ``weight`` becomes a plain attribute equal to ``weight_orig * weight_mask``,
   recomputed by a forward pre-hook before every forward.

``remove(module, 'weight')`` folds the mask in for good.  A call that fails
(a bad amount, a bad dim) raises before anything is changed, so the module is
exactly as it was.

One thing torch does not do: a call that kills output rows of a classifier's last
layer -- whole classes -- warns (:class:`DeadClassWarning`); the mask is the same.
"""
import numbers
import os
import sys
import warnings

import numpy as np

from ece662.layers.kernel_choice import alive_rows
from ece662.layers.modules import Conv2d, Linear
from ece662.pruning import masks as M


class PruningContainer:
    """Every pruning method applied to one tensor, in order; also its forward pre-hook.

    As in torch, the container is what sits in ``module._forward_pre_hooks``: before
    every forward it sets ``module.<name> = <name>_orig * <name>_mask``.

    Examples
    --------
    >>> from ece662.layers import Linear
    >>> fc = Linear(4, 4, seed=0)
    >>> _ = l1_unstructured(fc, "weight", 0.5); _ = l1_unstructured(fc, "weight", 0.5)
    >>> c = pruning_history(fc, "weight")
    >>> [type(m).__name__ for m in c], int((~fc.weight_mask).sum())
    (['L1Unstructured', 'L1Unstructured'], 12)
    """

    refresh_on_load = True   # Module.load_state_dict recomputes the effective tensor through us

    def __init__(self, name, *methods):
        self._tensor_name = name
        self._pruning_methods = tuple(methods)

    def add_pruning_method(self, method):
        self._pruning_methods += (method,)

    def __len__(self):
        return len(self._pruning_methods)

    def __iter__(self):
        return iter(self._pruning_methods)

    def __getitem__(self, i):
        return self._pruning_methods[i]

    def compute_mask(self, t, default_mask):
        """Apply every method in turn, each to what the previous ones kept."""
        mask = default_mask
        for method in self._pruning_methods:
            mask = method.compute_mask(t * mask, default_mask=mask) & mask
        return mask

    def __call__(self, module, inputs):
        orig = module._parameters[self._tensor_name + "_orig"]
        mask = module._buffers[self._tensor_name + "_mask"]
        object.__setattr__(module, self._tensor_name, orig * mask)


def _is_dim0(dim, ndim):
    """True when ``dim`` names axis 0 (output rows) of an ``ndim``-D tensor (-2 of a Linear weight too)."""
    return isinstance(dim, (int, np.integer)) and ndim > 0 and dim % ndim == 0


def _hooks(module):
    if "_prune_hooks" not in module.__dict__:
        object.__setattr__(module, "_prune_hooks", {})
    return module.__dict__["_prune_hooks"]


def _is_param_pruned(module, name):
    return name + "_orig" in module._parameters and name + "_mask" in module._buffers


def _current(module, name):
    """The effective tensor and the previous mask (None before the first pruning)."""
    if _is_param_pruned(module, name):
        return module._parameters[name + "_orig"] * module._buffers[name + "_mask"], \
            module._buffers[name + "_mask"]
    p = module._parameters.get(name)
    if p is None:
        raise ValueError(f"{type(module).__name__} has no parameter named {name!r} to prune; "
                         f"it has {[k for k, v in module._parameters.items() if v is not None]}")
    return p, None


class DeadClassWarning(UserWarning):
    """Pruning killed output rows of the network's output layer: those classes' logits are now
    their bias for every input.  Silence it, when that is what you want, with
    ``warnings.filterwarnings("ignore", category=prune.DeadClassWarning)``."""


def _stacklevel_outside_pruning():
    """The ``stacklevel`` of the first caller outside ``ece662.pruning``, so that a warning
    points at the user's line however deep inside the package it is raised."""
    here = os.path.dirname(os.path.abspath(__file__))
    frame, level = sys._getframe(1), 1
    while frame is not None and os.path.dirname(os.path.abspath(frame.f_code.co_filename)) == here:
        frame, level = frame.f_back, level + 1
    return level


def _warn_if_classes_die(module, name, before, after, rows_asked):
    """Warn (:class:`DeadClassWarning`) when pruning ``module.<name>`` left output rows of the
    network's output layer dead that were alive ``before``.

    The rule, for a ``Linear`` layer's (or a ``Conv2d``'s) ``weight``:

    * in a ``Sequential`` (which records ``module._output_layer``): warn when the layer is the
      network's output layer -- no Conv2d or Linear after it -- whatever the method (structured
      along dim 0, unstructured, a mask) that emptied the rows; a hidden layer's dead units are
      ordinary structured pruning, so never warn for them;
    * a ``Linear`` on its own (never put in a ``Sequential``: nothing tells whether its outputs are
      classes): warn only when the call asked for whole output rows (structured pruning along
      dim 0, ``rows_asked``), the call this warning is about; rows that unstructured pruning
      happens to empty stay silent.  A lone ``Conv2d`` never warns.

    ``before`` and ``after`` are the effective tensors (``orig * mask``).
    """
    from ece662.layers import Conv2d, Linear
    if name != "weight" or not isinstance(module, (Conv2d, Linear)):
        return
    output_layer = getattr(module, "_output_layer", None)
    if output_layer is False or (output_layer is None and not (isinstance(module, Linear) and rows_asked)):
        return
    died = np.flatnonzero(alive_rows(before) & ~alive_rows(after))
    if died.size == 0:
        return
    where = module._where() if hasattr(module, "_where") else type(module).__name__
    role = ("the network's output layer" if output_layer else
            "a Linear layer on its own (a classifier's last layer?)")
    before_dead = int((~alive_rows(before)).sum())
    shown = ", ".join(map(str, died[:10])) + (", ..." if died.size > 10 else "")
    warnings.warn(
        f"{where} is {role}: this pruning kills {died.size} of its {before.shape[0]} outputs (classes "
        f"{shown}{f'; {before_dead} were dead already' if before_dead else ''}). A dead output's weights are "
        f"all zero, so its logit is its bias for every input: the network can no longer recognise those "
        f"classes (each is predicted only when every other logit is below that constant). To avoid it, "
        f"prune the hidden layers (conv filters, hidden Linear units) and not the classifier's rows, or "
        f"prune the classifier's inputs with dim=1; if it is what you want: "
        f"warnings.filterwarnings('ignore', category=prune.DeadClassWarning)",
        DeadClassWarning, stacklevel=_stacklevel_outside_pruning())


def _set_mask(module, name, mask, method=None, rows_asked=False):
    """Install ``mask`` (already computed and checked): every pruning call ends here, and only
    here (through :func:`_install_mask`) is the module changed.  Then warn if classes died.

    ``rows_asked``: the caller asked for whole output rows (structured along dim 0); it only
    decides whether a lone Linear warns (:func:`_warn_if_classes_die`).
    """
    before = _current(module, name)[0]
    _install_mask(module, name, mask, method)
    _warn_if_classes_die(module, name, before, module._parameters[name + "_orig"] * mask, rows_asked)
    return module


def _install_mask(module, name, mask, method):
    """Reparametrise ``module.<name>`` on first use, store ``mask``, record ``method``, and
    recompute the effective tensor."""
    if not _is_param_pruned(module, name):
        orig = module._parameters.pop(name)
        module._parameters[name + "_orig"] = orig
        module._buffers[name + "_mask"] = mask
        container = PruningContainer(name)
        _hooks(module)[name] = (container, module.register_forward_pre_hook(container))
    else:
        module._buffers[name + "_mask"] = mask
    container = _hooks(module)[name][0]
    if method is not None:
        container.add_pruning_method(method)
    container(module, None)
    return module


def pruning_history(module, name):
    """The :class:`PruningContainer` of ``module.<name>``: the methods applied so far.

    Raises
    ------
    ValueError
        If ``module.<name>`` is not pruned.
    """
    if not _is_param_pruned(module, name):
        raise ValueError(f"Parameter '{name}' of module {type(module).__name__} is not pruned")
    return _hooks(module)[name][0]


# ============================================================================ method classes
class BasePruningMethod:
    """A pruning method: ``compute_mask(t, default_mask)`` -> a boolean mask.

    ``t`` holds the importance scores (by default the effective weight) and
    ``default_mask`` the previous mask; the result must be a subset of it.
    Subclass it and implement ``compute_mask``; ``apply(module, name, ...)`` does the rest.
    """

    PRUNING_TYPE = "unstructured"

    def compute_mask(self, t, default_mask):
        raise NotImplementedError

    @classmethod
    def apply(cls, module, name, *args, importance_scores=None, **kwargs):
        """Prune ``module.<name>`` with this method; returns the module."""
        method = cls(*args, **kwargs)
        t, prev = _current(module, name)
        scores = t if importance_scores is None else np.asarray(importance_scores)
        if scores.shape != t.shape:
            raise ValueError(f"importance_scores of shape {scores.shape} do not match {name} of "
                             f"shape {t.shape}")
        default = np.ones(t.shape, dtype=bool) if prev is None else prev
        mask = np.asarray(method.compute_mask(scores, default_mask=default)).astype(bool)
        if mask.shape != t.shape:
            raise ValueError(f"{cls.__name__}.compute_mask returned shape {mask.shape}, expected {t.shape}")
        rows = method.PRUNING_TYPE == "structured" and _is_dim0(getattr(method, "dim", None), t.ndim)
        return _set_mask(module, name, mask & default, method, rows_asked=rows)


class Identity(BasePruningMethod):
    """Prunes nothing (but reparametrises, as torch's ``identity``)."""

    def compute_mask(self, t, default_mask):
        return default_mask.copy()


class L1Unstructured(BasePruningMethod):
    """The ``amount`` smallest-magnitude entries among those still kept."""

    def __init__(self, amount):
        M.validate_amount(amount)
        self.amount = amount

    def compute_mask(self, t, default_mask):
        return M.l1_unstructured(t, self.amount, default_mask)


class RandomUnstructured(BasePruningMethod):
    """``amount`` entries at random among those still kept (seeded)."""

    def __init__(self, amount, seed=None, rng=None):
        M.validate_amount(amount)
        self.amount, self.rng = amount, rng if rng is not None else np.random.default_rng(seed)

    def compute_mask(self, t, default_mask):
        return M.random_unstructured(t.shape, self.amount, self.rng, default_mask)


class LnStructured(BasePruningMethod):
    """Whole channels along ``dim`` with the smallest Ln norm (filters for ``dim=0``)."""

    PRUNING_TYPE = "structured"

    def __init__(self, amount, n, dim=-1):
        M.validate_amount(amount)
        self.amount, self.n, self.dim = amount, check_norm_order(n, "ln_structured"), dim

    def compute_mask(self, t, default_mask):
        return M.ln_structured(t, self.amount, self.n, self.dim, default_mask)


class RandomStructured(BasePruningMethod):
    """Whole channels along ``dim`` at random (seeded)."""

    PRUNING_TYPE = "structured"

    def __init__(self, amount, dim=-1, seed=None, rng=None):
        M.validate_amount(amount)
        self.amount, self.dim = amount, dim
        self.rng = rng if rng is not None else np.random.default_rng(seed)

    def compute_mask(self, t, default_mask):
        return M.random_structured(t.shape, self.amount, self.dim, self.rng, default_mask)


class CustomFromMask(BasePruningMethod):
    """A mask you give (combined with any previous mask)."""

    PRUNING_TYPE = "global"

    def __init__(self, mask):
        self.mask = np.asarray(mask).astype(bool)

    def compute_mask(self, t, default_mask):
        if self.mask.shape != t.shape:
            raise ValueError(f"mask of shape {self.mask.shape} does not match the parameter's shape {t.shape}")
        return default_mask & self.mask


class NMUnstructured(BasePruningMethod):
    """At most ``n`` of every ``m`` consecutive weights of each output row survive (N:M sparsity)."""

    def __init__(self, n, m):
        self.n, self.m = n, m

    def compute_mask(self, t, default_mask):
        return M.nm_unstructured(t, self.n, self.m, default_mask)


class BlockUnstructured(BasePruningMethod):
    """Whole ``block = (rows, cols)`` tiles of the (out, inputs) weight matrix, smallest L2 norm first."""

    def __init__(self, block, amount):
        M.validate_amount(amount)
        self.block, self.amount = tuple(block), amount

    def compute_mask(self, t, default_mask):
        return M.block_unstructured(t, self.block, self.amount, default_mask)


def check_norm_order(n, where):
    """The ``n`` of an Ln norm that ranks channels: a positive number, ``inf`` (or ``-inf``, the
    smallest magnitude), or ``'fro'`` (2), as ``torch.nn.utils.prune.ln_structured`` takes.

    NaN would make every norm NaN, and a NaN sorts as if equal to everything, so the *first*
    channels would be pruned whatever their weights; 0 counts non-zeros and negative orders
    are not norms.  All are refused.
    """
    if n == "fro":
        return n
    if (isinstance(n, (bool, np.bool_)) or not isinstance(n, numbers.Real)
            or not (n > 0 or n == -np.inf)):          # NaN fails every comparison
        raise ValueError(f"{where}: n must be a positive number, inf, -inf or 'fro' (the Ln norm that ranks "
                         f"the channels; 1 and 2 are usual), got {n!r}")
    return n


# ============================================================================ functions
def identity(module, name):
    """Reparametrise ``module.<name>`` with an all-True mask."""
    return Identity.apply(module, name)


def l1_unstructured(module, name, amount, importance_scores=None):
    """Prune the ``amount`` smallest-magnitude entries of ``module.<name>``.

    Examples
    --------
    >>> from ece662.layers import Linear
    >>> fc = Linear(4, 3, seed=0)
    >>> _ = l1_unstructured(fc, "weight", amount=0.5)
    >>> int(fc.weight_mask.sum()), fc.weight_mask.dtype, bool((fc.weight == fc.weight_orig * fc.weight_mask).all())
    (6, dtype('bool'), True)
    """
    return L1Unstructured.apply(module, name, amount, importance_scores=importance_scores)


def random_unstructured(module, name, amount, seed=None, rng=None):
    """Prune ``amount`` random entries of ``module.<name>``."""
    return RandomUnstructured.apply(module, name, amount, seed=seed, rng=rng)


def ln_structured(module, name, amount, n, dim, importance_scores=None, prune_bias=False):
    """Prune the ``amount`` channels along ``dim`` with the smallest Ln norm.

    ``dim=0`` of a conv weight ``(F, C, HH, WW)`` removes whole filters.  By default the
    bias is left alone, as in torch, so a dead filter still outputs ``bias`` (and
    ``relu(bias)`` after a ReLU).  ``prune_bias=True`` (``dim=0`` only) also prunes the
    bias entries of the filters that died, so their output is exactly 0.

    ``dim=0`` of a Linear weight ``(out_features, in_features)`` removes output units.  In the
    network's last layer those are classes, whose logits would be their bias for every input:
    that call warns (:class:`DeadClassWarning`; the rule is :func:`_warn_if_classes_die`'s), and
    prunes all the same, as torch does.  ``dim=1`` prunes the classifier's inputs instead.

    Examples
    --------
    >>> from ece662.layers import Conv2d
    >>> conv = Conv2d(3, 4, 3, seed=0)
    >>> _ = ln_structured(conv, "weight", amount=2, n=2, dim=0, prune_bias=True)
    >>> conv.alive_filters().tolist() == conv.bias_mask.tolist()
    True
    """
    _check_prune_bias(module, name, dim, prune_bias)
    LnStructured.apply(module, name, amount, n, dim, importance_scores=importance_scores)
    return _prune_dead_bias(module, name) if prune_bias else module


def random_structured(module, name, amount, dim, seed=None, rng=None, prune_bias=False):
    """Prune ``amount`` random channels along ``dim`` (``prune_bias`` as in :func:`ln_structured`)."""
    _check_prune_bias(module, name, dim, prune_bias)
    RandomStructured.apply(module, name, amount, dim, seed=seed, rng=rng)
    return _prune_dead_bias(module, name) if prune_bias else module


def _check_prune_bias(module, name, dim, prune_bias):
    if not prune_bias:
        return
    ndim = module._parameters.get(name + "_orig", module._parameters.get(name)).ndim
    if name != "weight" or not isinstance(dim, (int, np.integer)) or ndim < 2 or dim % ndim != 0:
        raise ValueError("prune_bias=True needs name='weight' and dim=0 (whole output filters)")
    if module._parameters.get("bias") is None and "bias_orig" not in module._parameters:
        raise ValueError(f"prune_bias=True, but {type(module).__name__} has no bias")


def _prune_dead_bias(module, name):
    """Prune the bias entries of output channels whose weights are all masked."""
    alive = module._buffers[name + "_mask"].reshape(module._buffers[name + "_mask"].shape[0], -1).any(axis=1)
    return custom_from_mask(module, "bias", alive)


def custom_from_mask(module, name, mask):
    """Prune ``module.<name>`` with a given boolean mask (combined with any previous one)."""
    return CustomFromMask.apply(module, name, mask)


def global_unstructured(parameters, pruning_method, importance_scores=None, **kwargs):
    """Rank the entries of several parameters together and prune them as one.

    Parameters
    ----------
    parameters : iterable of (module, name)
    pruning_method : L1Unstructured or RandomUnstructured (the class)
    importance_scores : dict {(module, name): scores}, optional
    **kwargs
        ``amount=``: counted over the entries of all the parameters that are still kept
        (so 0.5 twice prunes 75% overall, as in torch).

    Examples
    --------
    >>> from ece662.layers import Conv2d, Linear
    >>> from ece662.models import default_convnet
    >>> net = default_convnet()
    >>> params = [(m, "weight") for _, m in net.named_modules() if isinstance(m, (Conv2d, Linear))]
    >>> global_unstructured(params, pruning_method=L1Unstructured, amount=0.3)
    >>> total = sum(m.weight_mask.size for m, _ in params)
    >>> round(sum(int((~m.weight_mask).sum()) for m, _ in params) / total, 4)
    0.3
    """
    parameters = list(parameters)
    if not parameters:
        raise ValueError("global_unstructured: parameters is empty; pass [(module, 'weight'), ...]")
    if isinstance(importance_scores, (int, float, np.integer, np.floating)):
        raise TypeError(f"global_unstructured: the third argument is importance_scores (as in torch), "
                        f"got the number {importance_scores!r}; pass the amount by name: "
                        f"amount={importance_scores!r}")
    if "amount" not in kwargs:
        raise TypeError("global_unstructured: missing amount=, how much to prune: a fraction such as "
                        "amount=0.3 (prunes 30% of the weights not pruned yet) or a count such as amount=100")
    importance_scores = importance_scores or {}
    current = [_current(m, n) for m, n in parameters]
    scores = []
    for (m, n), (t, _) in zip(parameters, current):
        s = np.asarray(importance_scores.get((m, n), t))
        if s.shape != t.shape:
            raise ValueError(f"importance_scores for {n} have shape {s.shape}, expected {t.shape}")
        scores.append(s)
    prev = [p for _, p in current]
    if pruning_method is L1Unstructured:
        new = M.global_l1_unstructured(scores, kwargs["amount"], prev)
    elif pruning_method is RandomUnstructured:
        flat_prev = np.concatenate([(np.ones(s.shape, bool) if p is None else p).reshape(-1)
                                    for s, p in zip(scores, prev)])
        rng = kwargs.get("rng") or np.random.default_rng(kwargs.get("seed"))
        flat = M.random_unstructured(flat_prev.shape, kwargs["amount"], rng, flat_prev)
        new, start = [], 0
        for s in scores:
            new.append(flat[start:start + s.size].reshape(s.shape))
            start += s.size
    else:
        raise TypeError(f"global_unstructured supports L1Unstructured and RandomUnstructured, "
                        f"got {pruning_method!r}")
    for (m, n), mask in zip(parameters, new):
        _set_mask(m, n, mask, CustomFromMask(mask))


def global_structured(parameters, amount, n=2, dim=0, normalize=False, allow_empty_layers=False,
                      prune_bias=False):
    """Rank the channels (filters, for ``dim=0``) of several layers together; prune the weakest.

    Beyond torch.  ``amount`` counts over the live channels of all the parameters.

    Parameters
    ----------
    parameters : iterable of (module, name)
    amount : int or float
    n : 1, 2, inf or 'fro'
        The norm that scores a channel.
    normalize : bool
        Divide each layer's channel norms by their root mean square first, so layers
        whose weights have different scales (conv1 vs conv2) compete fairly.
    allow_empty_layers : bool
        Unless True, each layer keeps at least its strongest channel: a layer with no
        filter left would cut the network in two.
    prune_bias : bool
        Also prune the bias of the channels that die (see :func:`ln_structured`).

    Examples
    --------
    >>> from ece662.layers import Conv2d
    >>> from ece662.models import default_convnet
    >>> net = default_convnet()
    >>> convs = [(m, "weight") for _, m in net.named_modules() if isinstance(m, Conv2d)]
    >>> global_structured(convs, amount=0.5, n=2, dim=0, normalize=True)
    >>> sum(int((~m.alive_filters()).sum()) for m, _ in convs)
    32
    """
    parameters = list(parameters)
    if not parameters:
        raise ValueError("global_structured: parameters is empty; pass [(module, 'weight'), ...]")
    check_norm_order(n, "global_structured")
    for m, name in parameters:
        _check_prune_bias(m, name, dim, prune_bias)
    current = [_current(m, name) for m, name in parameters]
    new = M.global_ln_structured([t for t, _ in current], amount, n, dim, [p for _, p in current],
                                 normalize=normalize, keep_one_per_tensor=not allow_empty_layers)
    for (m, name), mask in zip(parameters, new):
        _set_mask(m, name, mask, CustomFromMask(mask), rows_asked=_is_dim0(dim, mask.ndim))
        if prune_bias:
            _prune_dead_bias(m, name)


def remove(module, name):
    """Make pruning permanent: ``<name> = <name>_orig * <name>_mask`` as a plain parameter.

    Raises
    ------
    ValueError
        If ``module.<name>`` is not pruned.
    """
    if not _is_param_pruned(module, name):
        raise ValueError(f"Parameter '{name}' of module {type(module).__name__} has to be pruned "
                         f"before pruning can be removed")
    folded = module._parameters.pop(name + "_orig") * module._buffers.pop(name + "_mask")
    _hooks(module).pop(name)[1].remove()
    module.__dict__.pop(name, None)
    module._parameters[name] = folded.astype(np.float32)
    return module


def refresh(module):
    """Recompute ``weight = weight_orig * weight_mask`` (every pruned parameter of ``module`` and its
    children) now, as the forward pre-hook does before each forward: for code that writes into
    ``weight_orig`` or a mask directly (rewinding, SynFlow's sign flip, dynamic sparse training) and
    reads ``module.weight`` before the next forward."""
    for _, m in module.named_modules():
        for hook in list(m._forward_pre_hooks.values()):
            if isinstance(hook, PruningContainer):
                hook(m, None)
    return module


def is_pruned(module):
    """True if ``module`` or any of its submodules has a pruned parameter."""
    return any(n.endswith("_mask") for _, m in module.named_modules() for n in m._buffers)


def prunable(model, types=(Conv2d, Linear)):
    """``[(name, module)]`` of ``model``'s layers of ``types`` (every Conv2d and Linear by default): the
    layers whose ``weight`` the sweeps, the schedules and the course's cells prune, in model order.

    Examples
    --------
    >>> from ece662.models import default_convnet
    >>> [name for name, _ in prunable(default_convnet())]
    ['conv1', 'conv2', 'fc']
    """
    return [(name, m) for name, m in model.named_modules() if isinstance(m, types)]


# ============================================================================ allocation: how much per layer
def global_lamp_unstructured(parameters, amount):
    """Global pruning ranked by LAMP scores (Lee et al., ICLR 2021; :func:`ece662.pruning.masks.lamp_scores`).

    Like ``global_unstructured(parameters, pruning_method=L1Unstructured, amount=...)``, but each weight is
    scored by its square over the squares of the weights at least as large in its own layer, so the
    allocation adapts per layer and the largest weight of every layer is the last to go.

    Examples
    --------
    >>> from ece662.models import default_convnet
    >>> net = default_convnet(seed=0)
    >>> params = [(m, "weight") for _, m in prunable(net)]
    >>> global_lamp_unstructured(params, amount=0.9)
    >>> [round(float((~m.weight_mask).mean()), 2) for m, _ in params]      # per-layer sparsity
    [0.73, 0.91, 0.93]
    """
    parameters = list(parameters)
    scores = {(m, n): M.lamp_scores(_current(m, n)[0]) for m, n in parameters}
    return global_unstructured(parameters, L1Unstructured, importance_scores=scores, amount=amount)


def layerwise_unstructured(parameters, amounts):
    """L1 (magnitude) pruning with an amount per layer: a number for all (uniform), or a list in the order
    of ``parameters``, or a dict ``{module: amount}``.  Each amount counts, as in torch, over what that
    layer still keeps.

    Examples
    --------
    >>> from ece662.models import default_convnet
    >>> net = default_convnet(seed=0)
    >>> layerwise_unstructured([(net.conv1, "weight"), (net.fc, "weight")], {net.conv1: 0.5, net.fc: 0.9})
    >>> float((~net.conv1.weight_mask).mean()), float((~net.fc.weight_mask).mean())
    (0.5, 0.9)
    """
    parameters = list(parameters)
    if isinstance(amounts, dict):
        missing = [type(m).__name__ for m, _ in parameters if m not in amounts]
        if missing:
            raise ValueError(f"layerwise_unstructured: amounts has no entry for {len(missing)} of the layers "
                             f"({', '.join(missing)}); key it by the modules themselves, e.g. {{net.conv1: 0.5}}")
        per = [amounts[m] for m, _ in parameters]
    elif isinstance(amounts, (list, tuple)):
        if len(amounts) != len(parameters):
            raise ValueError(f"layerwise_unstructured: {len(amounts)} amounts for {len(parameters)} parameters")
        per = list(amounts)
    else:
        per = [amounts] * len(parameters)
    for a in per:
        M.validate_amount(a)
    for (m, n), a in zip(parameters, per):
        l1_unstructured(m, n, amount=a)


def erk_unstructured(parameters, amount):
    """Magnitude pruning to an overall sparsity ``amount`` (a fraction of all the parameters' weights),
    shared out by Erdős-Rényi-Kernel densities (Evci et al., ICML 2020; :func:`ece662.pruning.masks.erk_densities`):
    each layer is pruned, by magnitude, until it holds its ERK share of zeros (more in large layers, fewer in
    small ones).  Weights already pruned count toward a layer's share.

    Examples
    --------
    >>> from ece662.models import default_convnet
    >>> net = default_convnet(seed=0)
    >>> params = [(m, "weight") for _, m in prunable(net)]
    >>> erk_unstructured(params, 0.9)
    >>> [round(float((~m.weight_mask).mean()), 3) for m, _ in params]
    [0.966, 0.986, 0.817]
    """
    parameters = list(parameters)
    amount = M.check_sparsity(amount, "amount", "erk_unstructured")
    shapes = [_current(m, n)[0].shape for m, n in parameters]
    densities = M.erk_densities(shapes, 1.0 - amount)
    for (m, n), shape, d in zip(parameters, shapes, densities):
        size = int(np.prod(shape))
        t, prev = _current(m, n)
        pruned = 0 if prev is None else int(size - prev.sum())
        target = int(round((1.0 - d) * size))
        l1_unstructured(m, n, amount=max(0, target - pruned))


def nm_unstructured(module, name, n, m, importance_scores=None):
    """Keep at most ``n`` of every ``m`` consecutive weights in each output row of ``module.<name>`` (e.g. 2:4),
    the ``n`` largest in magnitude; see :func:`ece662.pruning.masks.nm_unstructured`.

    No ece662 kernel exploits the pattern: the plan treats it as any unstructured mask (dense below
    the measured break-even fraction of zeros, ``ece662.layers.tuning.sparse_from``; 2:4 is 50%), and ``report`` counts its zeros as such.

    Examples
    --------
    >>> from ece662.layers import Linear
    >>> fc = Linear(8, 3, seed=0)
    >>> _ = nm_unstructured(fc, "weight", n=2, m=4)
    >>> fc.weight_mask.reshape(3, 2, 4).sum(axis=2).tolist()
    [[2, 2], [2, 2], [2, 2]]
    """
    return NMUnstructured.apply(module, name, n, m, importance_scores=importance_scores)


def block_unstructured(module, name, block, amount, importance_scores=None):
    """Prune ``amount`` of the ``block``-shaped tiles of ``module.<name>`` (as an (out, inputs) matrix) with the
    smallest L2 norm; see :func:`ece662.pruning.masks.block_unstructured`.  Like N:M masks, no ece662 kernel
    exploits blocks: the plan runs them as unstructured zeros.

    Examples
    --------
    >>> from ece662.layers import Linear
    >>> fc = Linear(8, 4, seed=0)
    >>> _ = block_unstructured(fc, "weight", block=(1, 4), amount=0.5)
    >>> blocks = fc.weight_mask.reshape(4, 2, 4)        # every 1x4 block is kept whole or pruned whole
    >>> int(blocks.all(axis=2).sum()), int((~blocks).all(axis=2).sum())
    (4, 4)
    """
    return BlockUnstructured.apply(module, name, block, amount, importance_scores=importance_scores)
