"""Dynamic sparse training: the network trains sparse from the start and moves its weights as it learns.

Every ``update_every`` steps each layer drops its ``k`` smallest-magnitude active weights and grows ``k`` of the
inactive ones, so the number of weights never changes (a test holds it exactly):

* **SET** (Mocanu et al., "Scalable training of artificial neural networks with adaptive sparse connectivity
  inspired by network science", Nature Communications 2018) grows at random;
* **RigL** (Evci, Gale, Menick, Castro and Elsen, "Rigging the lottery: making all tickets winners", ICML 2020)
  grows where the gradient is largest in magnitude: the dense gradient of the last step's batch, which the
  layers keep for pruned weights in ``module.dense_grads``.

``k`` is ``fraction * alpha(t)`` of the layer's active weights, with the paper's cosine decay
``alpha(t) = (1 + cos(pi * t / end_step)) / 2`` and no update after ``end_step``; grown weights start at zero,
and a weight is grown only among those inactive before the update (one just dropped is not grown back at once).
The starting masks are random with Erdős-Rényi-Kernel densities (``ece662.pruning.masks.erk_densities``) or the
same density in every layer.

This is the one place where a mask grows back: every other mask of ece662 only shrinks.  It writes the masks
directly, because growing is what ``torch.nn.utils.prune``'s API (and so ``ece662.pruning``'s) never does.

Use: ``dst = DynamicSparsity(model, 0.9, grow="gradient")`` then ``Trainer(model, X, y, pruning=dst).fit()``.
"""
import numpy as np

from ece662 import pruning as prune
from ece662.pruning import masks as M

GROW = ("gradient", "random")        # RigL, SET


class DynamicSparsity:
    """A ``Trainer(pruning=...)`` hook: SET (``grow='random'``) or RigL (``grow='gradient'``).

    Parameters
    ----------
    model : Sequential
        Unpruned; its conv and linear weights get random masks of overall ``sparsity`` here.
    sparsity : float in [0, 1)
    grow : {'gradient', 'random'}
    update_every : int
        Steps between updates (RigL's Delta T; 100 in the paper).
    fraction : float in (0, 1]
        The share of active weights moved at the first update (RigL's alpha, 0.3).
    end_step : int
        The last step that moves weights (the paper stops at 75% of training).
    allocation : {'erk', 'uniform'}
    seed : int
    """

    def __init__(self, model, sparsity, grow="gradient", update_every=100, fraction=0.3, end_step=1000,
                 allocation="erk", seed=0):
        if grow not in GROW:
            raise ValueError(f"DynamicSparsity: grow must be one of {GROW}, got {grow!r}")
        if allocation not in ("erk", "uniform"):
            raise ValueError(f"DynamicSparsity: allocation must be 'erk' or 'uniform', got {allocation!r}")
        sparsity = M.check_sparsity(sparsity, "sparsity", "DynamicSparsity")
        if not 0 < fraction <= 1:
            raise ValueError(f"DynamicSparsity: fraction must lie in (0, 1], got {fraction!r}")
        self.grow, self.update_every, self.fraction = grow, int(update_every), float(fraction)
        self.end_step, self.rng = int(end_step), np.random.default_rng(seed)
        self.layers = [m for _, m in prune.prunable(model)]
        if any("weight_mask" in m._buffers for m in self.layers):
            raise ValueError("DynamicSparsity: the model is already pruned; start from an unpruned one")
        shapes = [m.weight.shape for m in self.layers]
        densities = (M.erk_densities(shapes, 1.0 - sparsity) if allocation == "erk"
                     else [1.0 - sparsity] * len(shapes))
        for m, d in zip(self.layers, densities):      # random starting masks, an exact count per layer
            prune.random_unstructured(m, "weight", amount=int(round((1 - d) * m.weight.size)), rng=self.rng)
        self.history = []                             # (step, weights moved) per update

    def alpha(self, step):
        """The share of each layer's active weights moved at ``step`` (cosine decay to 0 at ``end_step``)."""
        return self.fraction * 0.5 * (1.0 + np.cos(np.pi * step / self.end_step))

    def update(self, model, step):
        if step == 0 or step % self.update_every or step > self.end_step:
            return
        moved = 0
        for m in self.layers:
            mask = m._buffers["weight_mask"]
            active = np.flatnonzero(mask)
            k = int(self.alpha(step) * active.size)
            inactive = np.flatnonzero(~mask)
            k = min(k, inactive.size)
            if k == 0:
                continue
            w = m._parameters["weight_orig"].reshape(-1)
            drop = active[np.argsort(np.abs(w[active]), kind="stable")[:k]]
            if self.grow == "gradient":
                g = getattr(m, "dense_grads", {}).get("weight")
                if g is None:
                    raise ValueError("DynamicSparsity(grow='gradient'): no gradient yet; the first update must "
                                     "come after at least one training step (update_every >= 1)")
                grow = inactive[np.argsort(-np.abs(g.reshape(-1)[inactive]), kind="stable")[:k]]
            else:
                grow = self.rng.choice(inactive, size=k, replace=False)
            flat = mask.reshape(-1)
            flat[drop], flat[grow] = False, True
            w[grow] = 0.0                                  # grown weights start at zero
            prune.refresh(m)
            moved += k
        self.history.append((step, moved))
