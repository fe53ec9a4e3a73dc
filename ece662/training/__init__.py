"""Training: losses and optimisers (``optim``), evaluation (``evaluate``), the ``Trainer`` that holds pruning
masks while it fine-tunes (``trainer``), the pruning schedules built on it (``schedules``: one-shot, iterative,
gradual, rewinding, each with optional distillation), pruning at initialization (``at_init``: SNIP, SynFlow),
lottery tickets with their controls (``lottery``) and dynamic sparse training (``dynamic``: SET, RigL).

It stands above ``ece662.layers``, ``ece662.pruning`` and ``ece662.data`` and is imported by neither.
"""
from ece662.training.at_init import snip, synflow
from ece662.training.evaluate import predict_logits
from ece662.training.optim import SGD, Adam, distillation_loss, one_cycle_lr, softmax_cross_entropy
from ece662.training.trainer import Trainer, TrainingDiverged

__all__ = ["Adam", "SGD", "Trainer", "TrainingDiverged", "distillation_loss", "one_cycle_lr",
           "predict_logits", "snip", "softmax_cross_entropy", "synflow"]
