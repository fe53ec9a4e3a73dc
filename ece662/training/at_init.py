"""Pruning at initialization: choose the mask before any training, from one batch (SNIP) or from no data at
all (SynFlow).  The masks are ordinary ``ece662.pruning`` masks (``weight_orig`` / ``weight_mask``), so the
network then trains sparse with the ``Trainer`` like any pruned model.

* **SNIP** (Lee, Ajanthan and Torr, "SNIP: single-shot network pruning based on connection sensitivity",
  ICLR 2019): a weight's score is ``|dL/dw * w|`` on one batch of training data, the first-order change of the
  loss if it were removed; the lowest scores across all layers go.
* **SynFlow** (Tanaka, Kunin, Yamins and Ganguli, "Pruning neural networks without any data by iteratively
  conserving synaptic flow", NeurIPS 2020): make every weight positive (``|w|``), feed an input of ones, and
  score each weight by ``dR/dw * |w|`` with ``R`` the sum of the outputs.  In a chain of linear layers every
  layer's scores add up to the same ``R`` (the "conservation" the paper proves), so no layer is emptied before
  the others; pruning a little and rescoring, ``rounds`` times, on an exponential schedule keeps it so.

Both live here, above ``ece662.pruning``, because they need gradients (SNIP also a loss).
"""
import numpy as np

from ece662 import pruning as prune
from ece662.layers import BatchNorm1d, BatchNorm2d, Dropout, Dropout2d
from ece662.pruning.masks import check_sparsity
from ece662.training.optim import softmax_cross_entropy


def _weights(model):
    return [(m, "weight") for _, m in prune.prunable(model)]


def _weight_grad(m):
    """The gradient of the effective weight (pruned entries: 0)."""
    return m.grads["weight_orig"] if "weight_orig" in m.grads else m.grads["weight"]


def _gradients(model, x, dout_of):
    """Forward ``x`` in training mode, backward ``dout_of(logits)``; the model's mode is restored."""
    was = model.training
    model.train()
    try:
        model.zero_grad()
        out = model(x)
        model.backward(dout_of(out), need_input_grad=False)
    finally:
        model.train(was)


def snip_scores(model, X, y):
    """``{(module, 'weight'): |dL/dw * w|}`` for every conv and linear layer, the cross-entropy ``L`` of one
    batch ``X (N, C, H, W)``, ``y (N,)``.

    Examples
    --------
    >>> from ece662.models import default_convnet
    >>> net = default_convnet(seed=0)
    >>> X = np.random.default_rng(0).standard_normal((4, 3, 32, 32)).astype(np.float32)
    >>> s = snip_scores(net, X, np.arange(4))
    >>> s[(net.fc, "weight")].shape, bool((s[(net.fc, "weight")] >= 0).all())
    ((10, 1152), True)
    """
    X = np.asarray(X, dtype=np.float32)
    _gradients(model, X, lambda logits: softmax_cross_entropy(logits, np.asarray(y))[1])
    return {(m, n): np.abs(_weight_grad(m) * m.weight).astype(np.float64) for m, n in _weights(model)}


def snip(model, X, y, amount):
    """Prune ``amount`` of ``model``'s conv and linear weights (globally) by SNIP scores on the batch ``X, y``."""
    scores = snip_scores(model, X, y)
    prune.global_unstructured(list(scores), pruning_method=prune.L1Unstructured, importance_scores=scores,
                              amount=amount)
    return model


def synflow_scores(model, input_shape=(3, 32, 32)):
    """``{(module, 'weight'): dR/dw * |w|}`` with every weight made positive and an input of ones, ``R`` the sum of
    the outputs; the weights' signs are restored afterwards.  Data-free.

    Raises
    ------
    ValueError
        A BatchNorm or Dropout layer: with one all-ones image their training-mode forward is not the linear
        "flow" SynFlow measures; this implementation covers conv / linear / ReLU / pooling networks.
    """
    for name, m in model.named_modules():
        if isinstance(m, (BatchNorm2d, BatchNorm1d, Dropout, Dropout2d)):
            raise ValueError(f"synflow: layer {name!r} is a {type(m).__name__}; SynFlow here scores "
                             f"conv / linear / ReLU / pooling networks (prune before adding it, or use snip)")
    params = _weights(model)
    originals = []
    for m, _ in params:                               # linearise: every weight positive
        key = "weight_orig" if "weight_orig" in m._parameters else "weight"
        originals.append((m, key, m._parameters[key].copy()))
        m._parameters[key][...] = np.abs(m._parameters[key])
    try:
        ones = np.ones((1,) + tuple(input_shape), dtype=np.float32)
        _gradients(model, ones, lambda out: np.ones_like(out))
        return {(m, n): (_weight_grad(m) * np.abs(m.weight)).astype(np.float64) for m, n in params}
    finally:
        for m, key, w in originals:                   # the signs come back, whatever happened
            m._parameters[key][...] = w
            prune.refresh(m)                          # and the effective weight with them, not at the next forward


def synflow(model, amount, rounds=100, input_shape=(3, 32, 32)):
    """Prune ``model``'s conv and linear weights to an overall sparsity ``amount`` with SynFlow: ``rounds``
    rounds, round ``k`` pruning (globally, lowest scores first) up to ``1 - (1 - amount) ** (k / rounds)``, the
    paper's exponential schedule, and rescoring in between.

    Examples
    --------
    >>> from ece662.models import default_convnet
    >>> net = synflow(default_convnet(seed=0), 0.9, rounds=10)
    >>> total = sum(m.weight.size for _, m in prune.prunable(net))
    >>> round(sum(int((~m.weight_mask).sum()) for _, m in prune.prunable(net)) / total, 3)
    0.9
    """
    amount = check_sparsity(amount, "amount", "synflow")
    if isinstance(rounds, bool) or not isinstance(rounds, (int, np.integer)) or rounds < 1:
        raise ValueError(f"synflow: rounds must be a positive whole number, got {rounds!r}")
    params = _weights(model)
    total = sum(m.weight.size for m, _ in params)
    for k in range(1, rounds + 1):
        target = int(round(total * (1.0 - (1.0 - amount) ** (k / rounds))))
        pruned = sum(int((~m.weight_mask).sum()) if "weight_mask" in m._buffers else 0 for m, _ in params)
        scores = synflow_scores(model, input_shape)
        prune.global_unstructured(params, pruning_method=prune.L1Unstructured, importance_scores=scores,
                                  amount=max(0, target - pruned))
    return model
