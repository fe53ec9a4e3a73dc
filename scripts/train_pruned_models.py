"""Train the pruned models ece662 ships (ece662/models/pruned_80.npz, pruned_90.npz, filters_50.npz).

    python scripts/train_pruned_models.py [--data ../shared/datasets/cifar10_real.npz] [--which all]

Recipe (``ece662.pruning.schedules``), from the shipped dense model, on the same 25,000
train + val images it was trained on, seed 0, test split evaluated once at the end:

* ``pruned-80``: 12 epochs of gradual global magnitude pruning of every conv and linear
  weight to 80% on Zhu & Gupta's cubic schedule over the first 60% of the run, with
  distillation from the dense model (T = 4, weight 0.7), one-cycle learning rate peaking
  at 0.02;
* ``pruned-90``: the same recipe, 8 epochs, continued from ``pruned-80`` (cubic from 80% to 90%);
* ``filters-50``: 10 epochs of gradual L2 filter pruning of each conv layer to 50% of its
  filters with distillation, then the dead filters removed (``ece662.pruning.shrink``) and
  the smaller network fine-tuned 6 epochs with distillation.

The epoch budgets (``EPOCHS``; ``--epochs-80`` etc. override them) were set by the time
available, not searched; ``--which`` makes one model (``pruned-90`` reads ``pruned_80.npz``
from ``--out-dir``), with the same result as the ``all`` run.

The run is deterministic (seeded): it reproduces the shipped files bit for bit.

Writes ``<name>.npz`` and ``<name>_training.json`` (accuracy, time, history) per model.
"""
import argparse
import json
import os
import time

import numpy as np

import ece662.pruning as prune
from ece662.data_utils import get_CINIC10_data
from ece662.experiments import copy_model, images_per_second
from ece662.io import load_model, save_model
from ece662.models import SHIPPED, models_dir
from ece662.pruning.schedules import gradual, sparsity_of
from ece662.pruning_helper import shipped_model_path, test_model
from ece662.train import Trainer

DISTILL = dict(temperature=4.0, distill_weight=0.7)
EPOCHS = {"pruned-80": 12, "pruned-90": 8, "filters-50": 10, "shrunk": 6}   # the shipped files' budgets


def speed_ratio(small, dense, X, rounds=5):
    """Inference images/s of ``small`` over ``dense``: interleaved rounds, median and range."""
    ratios = []
    for _ in range(rounds):       # dense and small alternate so that machine noise hits both
        d = images_per_second(dense, X)
        s = images_per_second(small, X)
        ratios.append(s / d)
    return float(np.median(ratios)), float(min(ratios)), float(max(ratios))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=None, help="data path (default: the library's lookup)")
    ap.add_argument("--dense", default=shipped_model_path(), help="the dense model to prune")
    ap.add_argument("--which", default="all", choices=["all", "pruned-80", "pruned-90", "filters-50"])
    ap.add_argument("--epochs", type=int, default=None,
                    help="epochs of every gradual run (overrides the three options below; for quick checks)")
    ap.add_argument("--epochs-80", type=int, default=EPOCHS["pruned-80"], help="epochs of pruned-80's run")
    ap.add_argument("--epochs-90", type=int, default=EPOCHS["pruned-90"],
                    help="epochs of pruned-90's run (continued from pruned-80)")
    ap.add_argument("--epochs-filters", type=int, default=EPOCHS["filters-50"],
                    help="epochs of filters-50's gradual run (before shrinking)")
    ap.add_argument("--shrunk-epochs", type=int, default=EPOCHS["shrunk"],
                    help="fine-tuning epochs of the shrunk filters-50")
    ap.add_argument("--train-images", type=int, default=None, help="use only the first N images (quick check)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out-dir", default=models_dir())
    args = ap.parse_args()
    if args.epochs is not None:
        args.epochs_80 = args.epochs_90 = args.epochs_filters = args.epochs
    raw = get_CINIC10_data(args.data, normalize=False, channels_first=False)
    X = np.concatenate([raw["X_train"], raw["X_val"]])
    y = np.concatenate([raw["y_train"], raw["y_val"]])
    if args.train_images is not None:
        X, y = X[:args.train_images], y[:args.train_images]
    test = get_CINIC10_data(args.data, splits=("test",))
    dense = load_model(args.dense)
    teacher = copy_model(dense).eval()
    dense_acc = test_model(dense, [test["X_test"], test["y_test"]], verbose=False)
    print(f"dense model {args.dense}: test accuracy {dense_acc:.4f}")
    common = dict(max_lr=0.02, seed=args.seed, teacher=teacher, progress=True, **DISTILL)

    def finish(name, model, seconds, history, made_from, recipe, structure, extra=None):
        acc = test_model(model, [test["X_test"], test["y_test"]], verbose=False)
        path = os.path.join(args.out_dir, SHIPPED[name])
        save_model(model, path)
        rec = {"name": name, "data": raw["source"], "train_images": int(len(y)), "made_from": made_from,
               "dense_test_accuracy": dense_acc, "recipe": recipe, "seed": args.seed,
               "train_seconds": round(seconds, 1), "test_images": int(len(test["y_test"])),
               "test_accuracy": acc, "sparsity": round(sparsity_of(model, structure), 6)
               if structure else None, **(extra or {}), "history": history}
        with open(os.path.splitext(path)[0] + "_training.json", "w") as f:
            json.dump(rec, f, indent=1)
        print(f"{name}: test accuracy {acc:.4f} (dense {dense_acc:.4f}), {seconds:.0f} s -> {path}", flush=True)
        return model

    if args.which in ("all", "pruned-80"):
        m = copy_model(dense)
        t0 = time.time()
        h = gradual(m, X, y, 0.8, args.epochs_80, **common)
        finish("pruned-80", m, time.time() - t0, h, os.path.basename(args.dense),
               f"gradual global unstructured to 0.8, {args.epochs_80} epochs, cubic over the first 60%, "
               f"distilled (T=4, w=0.7), one-cycle peak 0.02", "unstructured")
    if args.which in ("all", "pruned-90"):
        m = load_model(os.path.join(args.out_dir, SHIPPED["pruned-80"]))
        t0 = time.time()
        h = gradual(m, X, y, 0.9, args.epochs_90, initial_sparsity=0.8, **common)
        finish("pruned-90", m, time.time() - t0, h, SHIPPED["pruned-80"],
               f"from pruned-80: gradual global unstructured 0.8 -> 0.9, {args.epochs_90} epochs, cubic over "
               f"the first 60%, distilled (T=4, w=0.7), one-cycle peak 0.02", "unstructured")
    if args.which in ("all", "filters-50"):
        m = copy_model(dense)
        t0 = time.time()
        h1 = gradual(m, X, y, 0.5, args.epochs_filters, scope="layer", structure="filters", **common)
        small = prune.shrink(m)
        h2 = Trainer(small, X, y, epochs=args.shrunk_epochs, batch_size=128, **common).fit()
        seconds = time.time() - t0
        ratio = speed_ratio(small, copy_model(dense).eval(), np.asarray(test["X_test"][:2000]))
        finish("filters-50", small, seconds, {"gradual": h1, "shrunk": h2}, os.path.basename(args.dense),
               f"gradual L2 filter pruning of each conv layer to 0.5, {args.epochs_filters} epochs, cubic "
               f"over the first 60%, distilled (T=4, w=0.7), one-cycle peak 0.02; shrunk; then "
               f"{args.shrunk_epochs} epochs fine-tuning of the shrunk model, distilled, one-cycle peak 0.02",
               None,
               {"conv_filters": [int(small.conv1.weight.shape[0]), int(small.conv2.weight.shape[0])],
                "parameters": int(sum(p.size for p in small.parameters())),
                "inference_speedup_vs_dense": {"median": round(ratio[0], 3), "min": round(ratio[1], 3),
                                               "max": round(ratio[2], 3), "rounds": 5, "images": 2000}})


if __name__ == "__main__":
    main()
