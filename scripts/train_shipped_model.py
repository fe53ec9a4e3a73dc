"""Train the model ece662 ships (ece662/models/default_convnet.npz), with ece662 itself.

    python scripts/train_shipped_model.py [--data ../shared/datasets/cifar10_real.npz] [--epochs 20]
        [--max-lr 0.05] [--label-smoothing 0.0] [--cutout 0] [--out FILE]

Recipe (the same as the PyTorch yardstick in the model card): the default course CNN,
all 25,000 train + val images, SGD with Nesterov momentum 0.9, weight decay 5e-4,
one-cycle learning rate peaking at 0.05, batch 128, random horizontal flip and 2-pixel
reflect-padded crop, CINIC-10 normalisation, seed 0.  Prints the test accuracy on the
10,000-image test split and writes the weights and a JSON record of the run.
"""
import argparse
import json
import os
import time

import numpy as np

from ece662.data_utils import get_CINIC10_data
from ece662.io import save_model
from ece662.models import default_convnet
from ece662.pruning_helper import test_model
from ece662.train import Trainer

HERE = os.path.dirname(os.path.abspath(__file__))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=None, help="data path (default: the library's lookup)")
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--max-lr", type=float, default=0.05, help="peak of the one-cycle learning rate")
    ap.add_argument("--label-smoothing", type=float, default=0.0)
    ap.add_argument("--cutout", type=int, default=0, help="side of the cutout square (0: none)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--train-images", type=int, default=None,
                    help="use only the first N train+val images (a quick determinism check)")
    ap.add_argument("--out", default=os.path.join(HERE, "..", "ece662", "models", "default_convnet.npz"))
    args = ap.parse_args()
    raw = get_CINIC10_data(args.data, normalize=False, channels_first=False)
    X = np.concatenate([raw["X_train"], raw["X_val"]])
    y = np.concatenate([raw["y_train"], raw["y_val"]])
    if args.train_images is not None:
        X, y = X[:args.train_images], y[:args.train_images]
    model = default_convnet(seed=args.seed)
    t0 = time.time()
    trainer = Trainer(model, X, y, epochs=args.epochs, batch_size=128, max_lr=args.max_lr, seed=args.seed,
                      label_smoothing=args.label_smoothing, cutout=args.cutout)
    history = trainer.fit()
    train_time = time.time() - t0
    test = get_CINIC10_data(args.data, splits=("test",))
    acc = test_model(model, [test["X_test"], test["y_test"]])
    save_model(model, args.out)
    record = {"data": raw["source"], "train_images": int(len(y)), "epochs": args.epochs,
              "seed": args.seed, "max_lr": args.max_lr, "label_smoothing": args.label_smoothing,
              "cutout": args.cutout, "train_seconds": round(train_time, 1), "test_images": int(len(test["y_test"])),
              "test_accuracy": acc, "history": history}
    with open(os.path.splitext(args.out)[0] + "_training.json", "w") as f:
        json.dump(record, f, indent=1)


if __name__ == "__main__":
    main()
