"""Pruning with explicit boolean masks, speaking ``torch.nn.utils.prune``'s language.

``import ece662.pruning as prune`` and then, as in the course notebook::

    prune.global_unstructured(params, pruning_method=prune.L1Unstructured, amount=0.3)
    prune.ln_structured(module, 'weight', amount=8, n=2, dim=0)
    prune.remove(module, 'weight')

* ``masks``   -- pure functions: scores + amount (+ previous mask) -> boolean mask
* ``methods`` -- the torch-like API on layers (weight_orig, weight_mask, hooks)
* ``shrink``  -- physically remove dead filters (a smaller dense model, same logits)
* ``report``  -- per-layer parameters, zeros, dead filters, FLOPs dense vs filter-skipping

When and how much to prune while the network trains (gradual, rewinding, distillation) needs a trainer, so it
lives a floor above, in :mod:`ece662.training.schedules`.
"""
from ece662.pruning.masks import amount_to_count
from ece662.pruning.methods import (BasePruningMethod, BlockUnstructured, CustomFromMask, block_unstructured, DeadClassWarning, Identity,
                                    L1Unstructured, LnStructured, NMUnstructured, RandomStructured,
                                    RandomUnstructured, erk_unstructured, global_lamp_unstructured,
                                    layerwise_unstructured, nm_unstructured,
                                    PruningContainer, custom_from_mask, global_structured,
                                    global_unstructured, identity, is_pruned, l1_unstructured,
                                    ln_structured, prunable, pruning_history, random_structured,
                                    random_unstructured, refresh, remove)
from ece662.pruning.report import report
from ece662.pruning.shrink import shrink

__all__ = ["BasePruningMethod", "BlockUnstructured", "block_unstructured", "CustomFromMask", "DeadClassWarning", "Identity", "L1Unstructured",
           "LnStructured", "NMUnstructured", "erk_unstructured", "global_lamp_unstructured",
           "layerwise_unstructured", "nm_unstructured",
           "RandomStructured", "RandomUnstructured", "PruningContainer", "amount_to_count",
           "global_structured", "pruning_history", "report", "shrink", "custom_from_mask",
           "global_unstructured", "identity", "is_pruned", "l1_unstructured", "ln_structured", "prunable",
           "random_structured", "random_unstructured", "refresh", "remove"]
