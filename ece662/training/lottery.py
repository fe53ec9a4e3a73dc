"""Lottery tickets: iterative magnitude pruning with rewinding, and the two controls that make the claim testable.

Frankle and Carbin ("The lottery ticket hypothesis: finding sparse, trainable neural networks", ICLR 2019):
train, prune the smallest weights, and *reset the survivors to their values at initialization*; repeat.  The
sparse network so found (the "ticket") trains to the dense network's accuracy, while the same mask with a
fresh random initialization, or a random mask of the same per-layer sparsity, does not.  Frankle, Dziugaite, Roy
and Carbin ("Linear mode connectivity and the lottery ticket hypothesis", ICML 2020) found that for larger
networks the reset must go to the weights of an early training step ``k`` instead of step 0 ("rewinding").

:func:`lottery_ticket` returns the ticket and both controls, rewound and untrained: train each the same way
(``Trainer(...).fit()``) and compare their accuracies; that comparison is the experiment.
"""
import copy

import numpy as np

from ece662 import pruning as prune
from ece662.pruning.masks import check_sparsity
from ece662.training.schedules import prune_to, sparsity_of
from ece662.training.trainer import Trainer


def _weights(model):
    """``{layer name: (module, trainable weight array)}`` of the conv and linear layers."""
    return {n: (m, m._parameters["weight_orig" if "weight_orig" in m._parameters else "weight"])
            for n, m in prune.prunable(model)}


def _state(model):
    """A copy of every trainable array of the prunable layers (weights, as stored, and biases)."""
    out = {}
    for n, (m, w) in _weights(model).items():
        out[n + ".weight"] = w.copy()
        if m._parameters.get("bias") is not None:
            out[n + ".bias"] = m._parameters["bias"].copy()
    return out


def _set_weights(m, w):
    """Write ``w`` into a layer's trainable weight, and the effective weight with it (a pruned layer's hook
    would refresh it only at the next forward)."""
    key = "weight_orig" if "weight_orig" in m._parameters else "weight"
    m._parameters[key][...] = w
    prune.refresh(m)


def rewind(model, state):
    """Reset every prunable layer's weights and biases to ``state`` (from :func:`_state`); masks stay."""
    for n, (m, _) in _weights(model).items():
        _set_weights(m, state[n + ".weight"])
        if n + ".bias" in state:
            m._parameters["bias"][...] = state[n + ".bias"]


class _SnapshotAt:
    """A ``Trainer(pruning=...)`` hook that prunes nothing: it records the weights before step ``k``."""

    def __init__(self, k):
        self.k, self.state = k, None

    def update(self, model, step):
        if step == self.k and self.state is None:
            self.state = _state(model)


def reinitialized(model, seed):
    """A copy of ``model`` with the same masks and a fresh random initialization (each layer's default: uniform
    in +-1/sqrt(fan_in), drawn from ``seed``): the first control."""
    fresh, rng = copy.deepcopy(model), np.random.default_rng(seed)
    for _, (m, w) in _weights(fresh).items():
        bound = 1.0 / np.sqrt(w[0].size)
        _set_weights(m, rng.uniform(-bound, bound, w.shape).astype(np.float32))
        if m._parameters.get("bias") is not None:
            m._parameters["bias"][...] = rng.uniform(-bound, bound, m._parameters["bias"].shape)
    return fresh


def random_mask_like(ticket, dense, seed):
    """A copy of the unpruned ``dense`` model (holding the ticket's rewound weights) with a random mask that
    prunes, in each layer, as many weights as the ``ticket``'s mask does: the second control."""
    out, rng = copy.deepcopy(dense), np.random.default_rng(seed)
    ticket_layers = dict(prune.prunable(ticket))
    for n, m in prune.prunable(out):
        mask = ticket_layers[n]._buffers.get("weight_mask")
        if mask is not None:
            prune.random_unstructured(m, "weight", amount=int((~mask).sum()), rng=rng)
    return out


def lottery_ticket(model, X, y, sparsity, rounds=3, epochs=1, rewind_step=0, seed=0, **trainer_kwargs):
    """Iterative magnitude pruning with rewinding; the ticket and its two controls, rewound and untrained.

    Each of ``rounds`` rounds trains ``epochs`` epochs, prunes (globally, by magnitude) up to
    ``1 - (1 - sparsity) ** (r / rounds)`` (the same fraction of what is left each round) and rewinds the
    surviving weights, and the biases, to their values before training step ``rewind_step`` of the first
    round (0: the initialization; Frankle et al. 2020 rewind to an early step instead).

    Parameters
    ----------
    model : Sequential
        Untrained (or at the state to rewind to); it becomes the ticket, in place.
    X, y : uint8 images (N, H, W, 3) and labels, as for :class:`~ece662.training.trainer.Trainer`
    sparsity : float in [0, 1)
    rewind_step : int
        The training step whose weights the survivors go back to (0 = initialization).
    **trainer_kwargs
        Passed to every :class:`~ece662.training.trainer.Trainer` (``batch_size``, ``max_lr``, ...).

    Returns
    -------
    dict
        ``ticket`` (``model``: the final mask, rewound weights), ``reinit`` (the same mask, fresh random
        weights), ``random_mask`` (the rewound weights, a random mask of the ticket's per-layer sparsity),
        ``rewind_state`` (the weights rewound to).
    """
    sparsity = check_sparsity(sparsity)
    if isinstance(rewind_step, bool) or not isinstance(rewind_step, (int, np.integer)) or rewind_step < 0:
        raise ValueError(f"lottery_ticket: rewind_step must be a whole number >= 0, got {rewind_step!r}")
    trainer_kwargs.setdefault("progress", False)
    dense = copy.deepcopy(model)
    state = _state(model) if rewind_step == 0 else None
    for r in range(1, rounds + 1):
        hook = _SnapshotAt(rewind_step) if state is None else None
        Trainer(model, X, y, epochs=epochs, seed=seed, pruning=hook, **trainer_kwargs).fit()
        if state is None:
            if hook.state is None:
                raise ValueError(f"lottery_ticket: rewind_step={rewind_step} is beyond the first round's "
                                 f"training steps; choose an earlier step")
            state = hook.state
        prune_to(model, 1.0 - (1.0 - sparsity) ** (r / rounds))
        rewind(model, state)
    rewind(dense, state)
    return {"ticket": model, "reinit": reinitialized(model, seed + 1),
            "random_mask": random_mask_like(model, dense, seed + 2), "rewind_state": state,
            "sparsity": sparsity_of(model)}
