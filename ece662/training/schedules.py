"""Pruning schedules: when to prune, how much, and how the network recovers.

Pruning once and fine-tuning briefly loses accuracy that a schedule keeps.  Each recipe
here is one call on a trained model and its uint8 training images; each runs through
:class:`ece662.training.trainer.Trainer`, whose optimisers keep pruned weights at exactly 0.

* :func:`prune_to` -- the one pruning step everything uses: shrink the masks until a
  given fraction of the weights (or of the conv filters) is pruned, by magnitude.
* :func:`one_shot` -- prune once, then fine-tune at a small constant learning rate
  (Han et al., 2015, "Learning both weights and connections").
* :func:`iterative` -- several rounds of prune + fine-tune, sparsity growing geometrically.
* :func:`gradual` / :class:`GradualPruning` -- prune *while* training, a little every
  ``frequency`` steps, on the cubic schedule of Zhu & Gupta (2017, "To prune, or not to
  prune"): fast at first, when many weights are redundant, slowly at the end.
* :func:`rewind` -- prune once, then retrain with the original learning-rate schedule
  (high rate, then decay) instead of a small constant rate: Renda, Frankle & Carbin
  (2020, "Comparing rewinding and fine-tuning in neural network pruning").

Every recipe takes ``teacher=``: the unpruned model, whose softened outputs the pruned
student also learns (Hinton, Vinyals & Dean, 2015, "Distilling the knowledge in a neural
network"; see :func:`ece662.training.optim.distillation_loss`).

``structure='unstructured'`` prunes single weights of every conv and linear layer (their
biases are never pruned); ``structure='filters'`` prunes whole output filters of the conv
layers (L2 norm), which :func:`ece662.pruning.shrink` then removes physically.
``scope='global'`` ranks all the layers together; ``scope='layer'`` gives every layer the
same sparsity; ``scope='lamp'`` ranks all the layers together by LAMP scores (Lee et al., 2021),
which share the sparsity out per layer by their own rule (single weights only).
"""
import numpy as np

from ece662.layers import Conv2d, Linear
from ece662.layers.checks import check_positive_int
from ece662.pruning import methods as P
from ece662.pruning.masks import check_sparsity
from ece662.training.trainer import Trainer

STRUCTURES = ("unstructured", "filters")
SCOPES = ("global", "layer", "lamp")   # lamp: unstructured only (Lee et al. 2021)


def _check_choice(value, choices, name):
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")
    return value


def _check_scope(scope, structure):
    _check_choice(structure, STRUCTURES, "structure")
    _check_choice(scope, SCOPES, "scope")
    if scope == "lamp" and structure != "unstructured":
        raise ValueError(f"scope='lamp' ranks single weights; it has no meaning for structure={structure!r} "
                         "(use scope='global' or 'layer' for filters)")
    return scope


def prunable_layers(model, structure="unstructured"):
    """``(name, module)`` of the layers a schedule prunes.

    ``'unstructured'``: every Conv2d and Linear (their ``weight``); ``'filters'``: every Conv2d.
    """
    _check_choice(structure, STRUCTURES, "structure")
    kinds = (Conv2d, Linear) if structure == "unstructured" else (Conv2d,)
    layers = P.prunable(model, kinds)
    if not layers:
        raise ValueError(f"the model has no {' or '.join(k.__name__ for k in kinds)} layer to prune")
    return layers


def _mask(m):
    """The weight mask, or all True when the weight is not pruned yet."""
    mask = m._buffers.get("weight_mask")
    return np.ones(m._parameters["weight"].shape, bool) if mask is None else mask


def _dead_filters(m):
    mask = _mask(m)
    return int((~mask.reshape(mask.shape[0], -1).any(axis=1)).sum())


def sparsity_of(model, structure="unstructured"):
    """The pruned fraction: of the weights (``'unstructured'``) or of the conv filters (``'filters'``).

    Examples
    --------
    >>> from ece662.models import default_convnet
    >>> net = default_convnet()
    >>> prune_to(net, 0.8, scope="layer")     # each layer 80% (a global threshold on random weights would empty fc)
    >>> round(sparsity_of(net), 4)
    0.8
    """
    layers = [m for _, m in prunable_layers(model, structure)]
    if structure == "unstructured":
        return sum(int((~_mask(m)).sum()) for m in layers) / sum(_mask(m).size for m in layers)
    return sum(_dead_filters(m) for m in layers) / sum(_mask(m).shape[0] for m in layers)


def prune_to(model, sparsity, scope="global", structure="unstructured"):
    """Prune the smallest weights (or weakest filters) until ``sparsity`` of them are pruned.

    Counts are rounded: ``round(sparsity * total)`` weights (or filters, per layer for
    ``scope='layer'``) end up pruned.  Masks only shrink: what is already pruned stays
    pruned, and a model already at or above the target is left as it is.

    Parameters
    ----------
    model : Sequential
    sparsity : float in [0, 1)
    scope : {'global', 'layer', 'lamp'}
        One magnitude threshold for all layers, the same fraction of each layer, or one threshold on
        LAMP scores (:func:`ece662.pruning.methods.global_lamp_unstructured`), which shares the
        sparsity out per layer by Lee et al.'s rule (unstructured only).
    structure : {'unstructured', 'filters'}
    """
    sparsity = check_sparsity(sparsity)
    _check_scope(scope, structure)
    layers = [m for _, m in prunable_layers(model, structure)]
    if structure == "unstructured":
        if scope in ("global", "lamp"):
            total = sum(_mask(m).size for m in layers)
            k = int(round(sparsity * total)) - sum(int((~_mask(m)).sum()) for m in layers)
            if scope == "lamp":
                P.global_lamp_unstructured([(m, "weight") for m in layers], amount=max(0, k))
            else:
                P.global_unstructured([(m, "weight") for m in layers], pruning_method=P.L1Unstructured,
                                      amount=max(0, k))
        else:
            for m in layers:     # each layer to the same fraction
                k = int(round(sparsity * _mask(m).size)) - int((~_mask(m)).sum())
                P.l1_unstructured(m, "weight", amount=max(0, k))
    else:
        if scope == "global":
            total = sum(_mask(m).shape[0] for m in layers)
            k = int(round(sparsity * total)) - sum(_dead_filters(m) for m in layers)
            P.global_structured([(m, "weight") for m in layers], amount=max(0, k), n=2, dim=0,
                                normalize=True)
        else:
            for m in layers:     # each conv layer loses the same fraction of its filters
                k = int(round(sparsity * _mask(m).shape[0])) - _dead_filters(m)
                P.ln_structured(m, "weight", amount=max(0, k), n=2, dim=0)


def cubic_sparsity(step, final_sparsity, start_step, end_step, frequency=1, initial_sparsity=0.0):
    """Zhu & Gupta's sparsity target at training step ``step``.

    The masks are updated at the steps ``t = t0 + k * dt`` (``t0 = start_step``,
    ``dt = frequency``) up to ``end_step``, which is always an update step; at an update
    step the sparsity is::

        s_t = s_f + (s_i - s_f) * (1 - (t - t0) / (end_step - t0)) ** 3

    (the paper writes ``end_step - t0 = n * dt``).  Between updates it holds the value of
    the last update; before ``t0`` nothing is pruned (0); from ``end_step`` on it is ``s_f``.

    Examples
    --------
    >>> [round(cubic_sparsity(t, 0.8, 0, 100, 25), 4) for t in (0, 10, 25, 50, 75, 100, 500)]
    [0.0, 0.0, 0.4625, 0.7, 0.7875, 0.8, 0.8]
    """
    if step < start_step:
        return 0.0
    if step >= end_step:
        return float(final_sparsity)
    last_update = start_step + (step - start_step) // frequency * frequency
    progress = (last_update - start_step) / (end_step - start_step)
    return float(final_sparsity + (initial_sparsity - final_sparsity) * (1.0 - progress) ** 3)


class GradualPruning:
    """Gradual magnitude pruning during training (Zhu & Gupta, 2017), a ``Trainer(pruning=...)`` hook.

    Before step ``t`` of training, if ``t`` is an update step (``start_step``, then every
    ``frequency`` steps, and ``end_step``), the masks shrink to :func:`cubic_sparsity`'s
    target by :func:`prune_to`; at every other step they are left exactly as they are.
    The weights pruned early keep being masked while the rest of the network learns to
    do without them, so later, smaller pruning steps find a network that has adapted.

    Parameters
    ----------
    final_sparsity : float in [0, 1)
    start_step, end_step : int
        The first and the last mask update (global step numbers, from 0).
    frequency : int
        Steps between updates.
    initial_sparsity : float
        The target at ``start_step`` (Zhu & Gupta's ``s_i``; 0 by default).
    scope, structure : see :func:`prune_to`

    Examples
    --------
    >>> from ece662.models import default_convnet
    >>> net, g = default_convnet(), GradualPruning(0.9, start_step=0, end_step=10, frequency=5, scope="layer")
    >>> for t in range(12):
    ...     g.update(net, t)
    >>> g.updates, round(sparsity_of(net), 3)
    ([(0, 0.0), (5, 0.7875), (10, 0.9)], 0.9)
    """

    def __init__(self, final_sparsity, start_step, end_step, frequency=100, initial_sparsity=0.0,
                 scope="global", structure="unstructured"):
        self.final_sparsity = check_sparsity(final_sparsity, "final_sparsity")
        self.initial_sparsity = check_sparsity(initial_sparsity, "initial_sparsity")
        for name, v in (("start_step", start_step), ("end_step", end_step), ("frequency", frequency)):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
                raise ValueError(f"GradualPruning: {name} must be a whole number >= 0, got {v!r}")
        if end_step <= start_step or frequency < 1:
            raise ValueError(f"GradualPruning: need start_step < end_step and frequency >= 1, got "
                             f"start_step={start_step}, end_step={end_step}, frequency={frequency}")
        self.start_step, self.end_step, self.frequency = int(start_step), int(end_step), int(frequency)
        self.structure = _check_choice(structure, STRUCTURES, "structure")
        self.scope = _check_scope(scope, structure)
        self.updates = []       # (step, target sparsity) of every mask update made

    def is_update_step(self, step):
        return step == self.end_step or (
            self.start_step <= step < self.end_step and (step - self.start_step) % self.frequency == 0)

    def sparsity_at(self, step):
        """The target sparsity in force at ``step`` (see :func:`cubic_sparsity`)."""
        return cubic_sparsity(step, self.final_sparsity, self.start_step, self.end_step, self.frequency,
                              self.initial_sparsity)

    def update(self, model, step):
        """Called by the Trainer before step ``step``: prune if it is an update step."""
        if self.is_update_step(step):
            target = self.sparsity_at(step)
            prune_to(model, target, self.scope, self.structure)
            self.updates.append((int(step), round(target, 6)))

    def done(self, step):
        """True once the last update (at ``end_step``) has been made, ``step`` steps in."""
        return step > self.end_step


# ============================================================================ one call per schedule
def _trainer(model, X, y, epochs, **kwargs):
    kwargs.setdefault("progress", False)
    return Trainer(model, X, y, epochs=epochs, **kwargs)


def check_epochs(epochs, name="epochs"):
    return check_positive_int(epochs, name, "schedule")


def one_shot(model, X, y, sparsity, epochs, lr=0.002, scope="global", structure="unstructured",
             teacher=None, **trainer_kwargs):
    """Prune once to ``sparsity``, then fine-tune ``epochs`` epochs at a constant small ``lr``.

    The classic after-training recipe: the network is trained, the smallest weights are
    cut, and a short fine-tuning at a fraction of the training rate lets the rest adapt.

    Parameters
    ----------
    model : Sequential, trained (it is pruned in place)
    X, y : uint8 (N, 32, 32, 3) images and their labels
    sparsity : float in [0, 1)
    epochs : int
    lr : float
        The constant fine-tuning learning rate.
    teacher : Sequential, optional
        Distil from it (normally a copy of ``model`` made before pruning).
    **trainer_kwargs
        Passed to :class:`ece662.training.trainer.Trainer` (``X_val``, ``y_val``, ``seed``, ``batch_size``, ...).

    Returns
    -------
    dict
        The Trainer's history.
    """
    epochs = check_epochs(epochs)
    prune_to(model, sparsity, scope, structure)
    return _trainer(model, X, y, epochs, max_lr=lr, schedule="constant", teacher=teacher,
                    **trainer_kwargs).fit()


def iterative(model, X, y, sparsity, epochs, rounds=3, lr=0.002, scope="global",
              structure="unstructured", teacher=None, **trainer_kwargs):
    """``rounds`` rounds of prune + fine-tune (Han et al., 2015), ``epochs`` in all.

    Round ``r`` of ``R`` prunes up to ``1 - (1 - sparsity) ** (r / R)``: each round removes
    the same fraction of what is left, and the last reaches ``sparsity``.  The epochs are
    shared out as evenly as possible (``epochs >= rounds``).

    Returns
    -------
    dict
        The histories of the rounds joined, with a ``'sparsity'`` list (one per epoch).
    """
    epochs = check_epochs(epochs)
    rounds = check_epochs(rounds, "rounds")
    if rounds > epochs:
        raise ValueError(f"iterative: {rounds} rounds need at least {rounds} epochs, got {epochs}")
    sparsity = check_sparsity(sparsity)
    joined = {}
    seed = trainer_kwargs.pop("seed", 0)
    for r in range(1, rounds + 1):    # each round: prune a bit more, then fine-tune
        target = 1.0 - (1.0 - sparsity) ** (r / rounds) if r < rounds else sparsity
        prune_to(model, target, scope, structure)
        round_epochs = epochs // rounds + (1 if r <= epochs % rounds else 0)
        h = _trainer(model, X, y, round_epochs, max_lr=lr, schedule="constant", teacher=teacher,
                     seed=seed + r, **trainer_kwargs).fit()
        h["sparsity"] = [target] * len(h["epoch"])
        for k, v in h.items():
            joined.setdefault(k, []).extend(v)
    return joined


def gradual(model, X, y, sparsity, epochs, max_lr=0.02, prune_until=0.6, updates=20, scope="global",
            structure="unstructured", teacher=None, batch_size=128, initial_sparsity=0.0, **trainer_kwargs):
    """Train ``epochs`` epochs while pruning gradually to ``sparsity`` (Zhu & Gupta, 2017).

    The masks follow :func:`cubic_sparsity` from the first step to the step at
    ``prune_until`` of the run, in ``updates`` updates; the rest of the run recovers
    at the final sparsity.  The learning rate follows a one-cycle schedule peaking at
    ``max_lr``, so it is decaying while the last, most delicate updates happen.
    ``initial_sparsity`` is the first update's target (Zhu & Gupta's ``s_i``): e.g. 0.8
    to continue from a model already pruned to 80%.

    Returns
    -------
    dict
        The Trainer's history, plus ``'updates'``: the (step, sparsity) of every mask update.
    """
    epochs = check_epochs(epochs)
    if not 0.0 < prune_until <= 1.0:
        raise ValueError(f"gradual: prune_until must be a fraction of the run in (0, 1], got {prune_until!r}")
    steps = -(-len(y) // batch_size) * epochs
    end = max(1, min(steps - 1, int(round(prune_until * steps))))
    schedule = GradualPruning(sparsity, 0, end, frequency=max(1, -(-end // check_epochs(updates, "updates"))),
                              initial_sparsity=initial_sparsity, scope=scope, structure=structure)
    h = _trainer(model, X, y, epochs, max_lr=max_lr, schedule="onecycle", pruning=schedule, teacher=teacher,
                 batch_size=batch_size, **trainer_kwargs).fit()
    h["updates"] = list(schedule.updates)
    return h


def rewind(model, X, y, sparsity, epochs, max_lr=0.05, scope="global", structure="unstructured",
           teacher=None, **trainer_kwargs):
    """Prune once, then retrain with the training learning-rate schedule (Renda et al., 2020).

    Learning-rate rewinding keeps the trained weights (unlike lottery-ticket *weight*
    rewinding) but, instead of fine-tuning at a small constant rate, replays the learning
    rate schedule the network was trained with.  Renda et al. found this recovers more
    accuracy than fine-tuning for the same number of epochs.  The shipped model was
    trained with a one-cycle schedule peaking at 0.05; within a budget of ``epochs`` the
    whole one-cycle shape is replayed, compressed into those epochs.

    Returns
    -------
    dict
        The Trainer's history.
    """
    epochs = check_epochs(epochs)
    prune_to(model, sparsity, scope, structure)
    return _trainer(model, X, y, epochs, max_lr=max_lr, schedule="onecycle", teacher=teacher,
                    **trainer_kwargs).fit()
