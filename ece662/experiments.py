"""The course notebook's experiments as library calls that return plain records.

Nothing here prints or plots (``ece662.plots`` and ``ece662.cli`` do).  Every
sweep point starts from a fresh copy of the unpruned model, so the model you
pass in is never modified.
"""
import time

import numpy as np

from ece662 import pruning as prune
from ece662.io import _load_with_masks
from ece662.layers import Conv2d, Linear, from_spec
from ece662.pruning_helper import predict_logits

UNSTRUCTURED_AMOUNTS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8)
STRUCTURED_AMOUNTS = (0.25, 0.5, 0.75)


def copy_model(model):
    """An independent copy of ``model`` (architecture, weights and masks)."""
    clone = from_spec(model.spec())
    _load_with_masks(clone, model.state_dict(), source="copy_model")
    return clone.train(model.training)


def prunable(model, types=(Conv2d, Linear)):
    """``[(name, module)]`` of the layers whose weights the sweeps prune."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, types)]


def sparsity(model, types=(Conv2d, Linear)):
    """Overall and per-layer fraction of zero weights among ``types`` layers.

    Returns
    -------
    overall : float
    per_layer : dict {name: float}
    """
    per, zeros, total = {}, 0, 0
    for name, m in prunable(model, types):
        w = m.weight
        z = int(w.size - np.count_nonzero(w))
        per[name] = z / w.size
        zeros, total = zeros + z, total + w.size
    return zeros / max(total, 1), per


def evaluate(model, X, y, batch_size=1000, origin=None):
    """Accuracy overall (and per origin, when ``origin`` is given), and the time it took."""
    t0 = time.perf_counter()
    pred = predict_logits(model, X, batch_size).argmax(1)
    seconds = time.perf_counter() - t0
    y = np.asarray(y)
    rec = {"accuracy": float(np.mean(pred == y)), "eval_seconds": seconds}
    if origin is not None:
        for o in np.unique(origin):
            sel = np.asarray(origin) == o
            rec[f"accuracy_{o}"] = float(np.mean(pred[sel] == y[sel]))
    return rec


def _record(kind, target, model, X, y, origin, batch_size):
    overall, per_layer = sparsity(model)
    rec = {"method": kind, "target": target, "sparsity": overall}
    rec.update({f"sparsity_{k}": v for k, v in per_layer.items()})
    rec["params_nonzero"] = int(sum(np.count_nonzero(m.weight) for _, m in prunable(model)))
    rec["dead_filters"] = int(sum((~m.alive_filters()).sum() for _, m in prunable(model, (Conv2d,))))
    rec.update(evaluate(model, X, y, batch_size, origin))
    return rec


def baseline(model, X, y, origin=None, batch_size=1000):
    """The unpruned model's record."""
    return _record("none", 0.0, model, X, y, origin, batch_size)


def unstructured_sweep(model, X, y, amounts=UNSTRUCTURED_AMOUNTS, origin=None, batch_size=1000):
    """Global L1 unstructured pruning of every conv and linear weight, one record per amount.

    Examples
    --------
    >>> from ece662.models import default_convnet
    >>> X = np.zeros((4, 3, 32, 32), np.float32); y = np.zeros(4, int)
    >>> [round(r["sparsity"], 2) for r in unstructured_sweep(default_convnet(), X, y, amounts=(0.1, 0.5))]
    [0.1, 0.5]
    """
    records = []
    for a in amounts:
        m = copy_model(model)
        prune.global_unstructured([(layer, "weight") for _, layer in prunable(m)],
                                  pruning_method=prune.L1Unstructured, amount=a)
        records.append(_record("global_l1_unstructured", a, m, X, y, origin, batch_size))
    return records


def structured_sweep(model, X, y, amounts=STRUCTURED_AMOUNTS, n=2, origin=None, batch_size=1000,
                     scope="layer"):
    """Ln filter pruning (dim 0) of the conv layers, one record per amount.

    ``scope='layer'`` prunes each conv layer by ``amount`` (the course notebook's way);
    ``scope='global'`` ranks the filters of all conv layers together, with norms
    normalised per layer (``ece662.pruning.global_structured``).
    """
    if scope not in ("layer", "global"):
        raise ValueError(f"scope must be 'layer' or 'global', got {scope!r}")
    records = []
    for a in amounts:
        m = copy_model(model)
        convs = prunable(m, (Conv2d,))
        if scope == "layer":
            for _, conv in convs:
                prune.ln_structured(conv, "weight", amount=a, n=n, dim=0)
        else:
            prune.global_structured([(conv, "weight") for _, conv in convs], amount=a, n=n, dim=0,
                                    normalize=True)
        method = f"l{n}_structured_filters" + ("_global" if scope == "global" else "")
        records.append(_record(method, a, m, X, y, origin, batch_size))
    return records
