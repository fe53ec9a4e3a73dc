"""Training throughput of the course CNN (forward + backward + SGD update), ece662 vs PyTorch CPU.

    python benchmarks/bench_train.py [--steps 30] [--batch 128]

Both run in one process on the same random batch, 2 threads each, after warm-up steps;
the ratio of images/s is what to compare.
"""
import argparse
import time

import numpy as np

from ece662.models import default_convnet
from ece662.optim import SGD, softmax_cross_entropy


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--batch", type=int, default=128)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((args.batch, 3, 32, 32)).astype(np.float32)
    y = rng.integers(0, 10, args.batch)

    net = default_convnet(seed=0).train()
    opt = SGD(0.01, momentum=0.9, nesterov=True, weight_decay=5e-4)

    def ece_step():
        _, d = softmax_cross_entropy(net(x), y)
        net.zero_grad()
        net.backward(d, need_input_grad=False)
        opt.step(net)

    for _ in range(3):
        ece_step()
    t0 = time.perf_counter()
    for _ in range(args.steps):
        ece_step()
    ece = args.steps * args.batch / (time.perf_counter() - t0)
    print(f"ece662 : {ece:8.0f} images/s (batch {args.batch})")
    try:
        import torch
    except ImportError:
        return
    torch.set_num_threads(2)
    tn = torch.nn
    tnet = tn.Sequential(tn.Conv2d(3, 32, 5), tn.ReLU(), tn.MaxPool2d(2), tn.Conv2d(32, 32, 3), tn.ReLU(),
                         tn.MaxPool2d(2), tn.Flatten(), tn.Linear(1152, 10))
    topt = torch.optim.SGD(tnet.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=5e-4)
    tx, ty = torch.tensor(x), torch.tensor(y)

    def torch_step():
        topt.zero_grad()
        torch.nn.functional.cross_entropy(tnet(tx), ty).backward()
        topt.step()

    for _ in range(3):
        torch_step()
    t0 = time.perf_counter()
    for _ in range(args.steps):
        torch_step()
    tor = args.steps * args.batch / (time.perf_counter() - t0)
    print(f"torch  : {tor:8.0f} images/s (batch {args.batch}, 2 threads)")
    print(f"ece662 / torch: {ece / tor:.2f}x")


if __name__ == "__main__":
    main()
