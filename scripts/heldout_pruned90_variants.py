"""Two more ways to reach pruned-90, scored on held-out data (the card's allocation runs of 2026-12-04).

    python scripts/heldout_pruned90_variants.py rewind  lamp 36 0.05 0 OUT.npz --dense DENSE_HO.npz
    python scripts/heldout_pruned90_variants.py gradual lamp 36 0.02 0 OUT.npz --dense DENSE_HO.npz

Arguments: the schedule (``rewind``: LAMP one-shot to 90%, then the one-cycle learning rate replayed, Renda et
al. 2020; ``gradual``: Zhu & Gupta's cubic schedule from 0 straight to 90%), the allocation (a ``scope`` of
``ece662.training.schedules.prune_to``), epochs, peak learning rate, seed, where to save the model.  Both train
on the 20,000 train images with the recipe's loss (distillation from the dense model, T = 4, weight 0.7; SGD
Nesterov, weight decay 5e-4) and score the 5,000 val images, from a dense model trained on the train split only
(``python scripts/train_shipped_model.py --holdout --out DENSE_HO.npz``): the same budget (36 epochs) as
``train_pruned_models.py --holdout``'s pruned-80 + pruned-90, which go through 80% first.  Prints one JSON line.
"""
import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ece662.data_utils import get_CINIC10_data  # noqa: E402
from ece662.experiments import copy_model  # noqa: E402
from ece662.io import load_model, save_model  # noqa: E402
from ece662.pruning_helper import test_model  # noqa: E402
from ece662.training import schedules as S  # noqa: E402
from ece662.training.optim import SGD  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("schedule", choices=["rewind", "gradual"])
    ap.add_argument("allocation", choices=list(S.SCOPES))
    ap.add_argument("epochs", type=int)
    ap.add_argument("max_lr", type=float)
    ap.add_argument("seed", type=int)
    ap.add_argument("out")
    ap.add_argument("--dense", required=True, help="a dense model trained on the train split only")
    ap.add_argument("--data", default=None)
    args = ap.parse_args()
    raw = get_CINIC10_data(args.data, normalize=False, channels_first=False)
    val = get_CINIC10_data(args.data, splits=("val",))
    dense = load_model(args.dense)
    model = copy_model(dense)
    kw = dict(seed=args.seed, teacher=copy_model(dense).eval(), temperature=4.0, distill_weight=0.7,
              optimizer=SGD(args.max_lr, momentum=0.9, nesterov=True, weight_decay=5e-4))
    t0 = time.time()
    if args.schedule == "rewind":
        S.rewind(model, raw["X_train"], raw["y_train"], 0.9, args.epochs, max_lr=args.max_lr, scope=args.allocation,
                 **kw)
    else:
        S.gradual(model, raw["X_train"], raw["y_train"], 0.9, args.epochs, max_lr=args.max_lr,
                  scope=args.allocation, **kw)
    acc = test_model(model, [val["X_val"], val["y_val"]], verbose=False)
    save_model(model, args.out)
    print(json.dumps({"schedule": args.schedule, "allocation": args.allocation, "epochs": args.epochs,
                      "max_lr": args.max_lr, "seed": args.seed, "val_accuracy": acc,
                      "sparsity": round(S.sparsity_of(model), 6), "seconds": round(time.time() - t0)}))


if __name__ == "__main__":
    main()
