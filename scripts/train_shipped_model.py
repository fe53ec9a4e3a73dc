"""Train the model ece662 ships (ece662/models/default_convnet.npz), with ece662 itself.

    python scripts/train_shipped_model.py [--data ../shared/datasets/cifar10_real.npz] [--epochs 40]
        [--max-lr 0.05] [--weight-decay 1e-4] [--label-smoothing 0.1] [--cutout 0] [--out FILE]
    python scripts/train_shipped_model.py --holdout [options] [--out FILE]

``--holdout`` is how a recipe is chosen: it trains on the 20,000 train images only and
scores the 5,000 val images once, at the end; the test split is not read.

Recipe (the defaults; chosen with ``--holdout`` runs, see the model card): the default
course CNN, all 25,000 train + val images, 40 epochs, SGD with Nesterov momentum 0.9,
weight decay 1e-4, label smoothing 0.1, one-cycle learning rate peaking at 0.05, batch
128, random horizontal flip and 2-pixel reflect-padded crop, CINIC-10 normalisation,
seed 0.  Prints the test accuracy on the 10,000-image test split and writes the weights
and a JSON record of the run.  (The first shipped model, 0.7424, was the PyTorch
yardstick's recipe: 20 epochs, weight decay 5e-4, no label smoothing.)
"""
import argparse
import json
import os
import time

import numba
import numpy as np

from ece662.data_utils import get_CINIC10_data
from ece662.io import save_model
from ece662.models import default_convnet
from ece662.training.optim import SGD
from ece662.pruning_helper import test_model
from ece662.training.trainer import Trainer

HERE = os.path.dirname(os.path.abspath(__file__))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=None, help="data path (default: the library's lookup)")
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--max-lr", type=float, default=0.05, help="peak of the one-cycle learning rate")
    ap.add_argument("--weight-decay", type=float, default=1e-4, help="L2 weight decay of SGD")
    ap.add_argument("--label-smoothing", type=float, default=0.1)
    ap.add_argument("--cutout", type=int, default=0, help="side of the cutout square (0: none)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--filters", type=int, nargs=2, default=(32, 32), metavar=("CONV1", "CONV2"),
                    help="the conv layers' filter counts (default: the course's 32 32; e.g. 64 64 for a "
                         "wider teacher for train_pruned_models.py --teacher)")
    ap.add_argument("--train-images", type=int, default=None,
                    help="use only the first N train+val images (a quick determinism check)")
    ap.add_argument("--holdout", action="store_true",
                    help="train on the train split only, score the val split (choosing a recipe); "
                         "writes weights only if --out is given")
    ap.add_argument("--out", default=None,
                    help="weights file (default: ece662/models/default_convnet.npz; none with --holdout)")
    args = ap.parse_args()
    if args.out is None and not args.holdout:
        args.out = os.path.join(HERE, "..", "ece662", "models", "default_convnet.npz")
    raw = get_CINIC10_data(args.data, normalize=False, channels_first=False)
    if args.holdout:
        X, y = raw["X_train"], raw["y_train"]
    else:
        X = np.concatenate([raw["X_train"], raw["X_val"]])
        y = np.concatenate([raw["y_train"], raw["y_val"]])
    if args.train_images is not None:
        X, y = X[:args.train_images], y[:args.train_images]
    model = default_convnet(seed=args.seed, filters=args.filters)
    t0 = time.time()
    optimizer = SGD(args.max_lr, momentum=0.9, nesterov=True, weight_decay=args.weight_decay)
    trainer = Trainer(model, X, y, epochs=args.epochs, batch_size=128, max_lr=args.max_lr, seed=args.seed,
                      optimizer=optimizer, label_smoothing=args.label_smoothing, cutout=args.cutout)
    history = trainer.fit()
    train_time = time.time() - t0
    record = {"data": raw["source"], "train_images": int(len(y)), "epochs": args.epochs,
              "seed": args.seed, "threads": numba.get_num_threads(),  # see train_pruned_models.py
              "max_lr": args.max_lr, "weight_decay": args.weight_decay,
              "label_smoothing": args.label_smoothing, "cutout": args.cutout,
              "filters": list(args.filters),
              "train_seconds": round(train_time, 1)}
    if args.holdout:
        val = get_CINIC10_data(args.data, splits=("val",))
        record.update(val_images=int(len(val["y_val"])),
                      val_accuracy=test_model(model, [val["X_val"], val["y_val"]]))
        print(f"val accuracy {record['val_accuracy']:.4f} ({record['val_images']} images), "
              f"{train_time:.0f} s")
    else:
        test = get_CINIC10_data(args.data, splits=("test",))
        record.update(test_images=int(len(test["y_test"])),
                      test_accuracy=test_model(model, [test["X_test"], test["y_test"]]))
        print(f"test accuracy {record['test_accuracy']:.4f} ({record['test_images']} images), "
              f"{train_time:.0f} s")
    record["history"] = history
    if args.out is None:
        print(json.dumps({k: v for k, v in record.items() if k != "history"}))
        return
    save_model(model, args.out)
    with open(os.path.splitext(args.out)[0] + "_training.json", "w") as f:
        json.dump(record, f, indent=1)


if __name__ == "__main__":
    main()
