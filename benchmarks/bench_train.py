"""Training throughput of the course CNN (forward + backward + SGD update), ece662 vs PyTorch CPU.

    python benchmarks/bench_train.py [--rounds 7] [--steps 10] [--batch 128] [--threads 2]
    python benchmarks/bench_train.py --threads 1
    python benchmarks/bench_train.py --profile [--steps 20]

Three contenders run in one process on the same random batch, interleaved: each round runs
``--steps`` training steps of every contender (the order rotates from round to round, so none
always follows torch's still-spinning OpenMP threads), and the per-round ratios are reported as
median (min-max), both per wall-clock second and per CPU second of the process (on a loaded
machine the second is the steadier; torch's OpenMP threads spin while they wait, which counts
against it there, so compare with ``--threads 1`` then):

* ``ece662``: what ``model(x)`` / ``model.backward`` do in training (conv + ReLU + 2x2 max pool
  fused, ``ece662.layers.kernels_train``);
* ``layer by layer``: the same model with every layer run on its own (v3 conv forward, separate ReLU
  and pool passes, the unfused channels-last backward; before 2026-11-25 19:25 the backward was v3's
  too, and this was exactly the previous training path);
* ``torch``: the same network in PyTorch (NCHW), ``--threads`` threads, SGD with the same settings.

``--profile`` times one ece662 training step piece by piece instead (median of ``--steps``
steps): per layer and direction, dw and dx separately, loss, optimizer, and the trainer's
per-batch data work (augmentation, normalisation).
"""
import argparse
import os
import time

import numpy as np

from ece662.models import default_convnet
from ece662.training.optim import SGD, softmax_cross_entropy


def make_ece(seed=0):
    net = default_convnet(seed=seed).train()
    return net, SGD(0.01, momentum=0.9, nesterov=True, weight_decay=5e-4)


def ece_step(net, opt, x, y):
    _, d = softmax_cross_entropy(net(x), y)
    net.zero_grad()
    net.backward(d, need_input_grad=False)
    opt.step(net)


def layer_by_layer_step(net, opt, x, y):
    """Every layer on its own (no fusion): what training ran before kernels_train (but the backward)."""
    layers = list(net)
    h = x
    for m in layers:
        h = m(h)
    _, d = softmax_cross_entropy(h, y)
    net.zero_grad()
    for i in range(len(layers) - 1, 0, -1):
        d = layers[i].backward(d)
    layers[0].backward(d, need_dx=False)
    opt.step(net)


def make_torch(threads):
    import torch
    torch.set_num_threads(threads)
    tn = torch.nn
    tnet = tn.Sequential(tn.Conv2d(3, 32, 5), tn.ReLU(), tn.MaxPool2d(2), tn.Conv2d(32, 32, 3), tn.ReLU(),
                         tn.MaxPool2d(2), tn.Flatten(), tn.Linear(1152, 10))
    topt = torch.optim.SGD(tnet.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=5e-4)

    def step(tx, ty):
        topt.zero_grad()
        torch.nn.functional.cross_entropy(tnet(tx), ty).backward()
        topt.step()
    return step


def compare(args, x, y):
    net, opt = make_ece()
    net2, opt2 = make_ece()
    runs = {"ece662": lambda: ece_step(net, opt, x, y),
            "layer by layer": lambda: layer_by_layer_step(net2, opt2, x, y)}
    try:
        import torch
        tstep = make_torch(args.threads)
        tx, ty = torch.tensor(x), torch.tensor(y)
        runs["torch"] = lambda: tstep(tx, ty)
    except ImportError:
        print("torch is not installed: ece662 only")
    names = list(runs)
    for name in names:                                   # warm-up (and numba compiles / cache loads)
        for _ in range(3):
            runs[name]()
    rates = {name: [] for name in names}
    cpu_rates = {name: [] for name in names}
    for r in range(args.rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            t0, c0 = time.perf_counter(), time.process_time()
            for _ in range(args.steps):
                runs[name]()
            rates[name].append(args.steps * args.batch / (time.perf_counter() - t0))
            cpu_rates[name].append(args.steps * args.batch / (time.process_time() - c0))
    print(f"batch {args.batch}, {args.rounds} rounds x {args.steps} steps, {args.threads} thread(s) each; "
          f"load average before / after: {LOAD0} / {load()}")
    for label, r in (("wall clock", rates), ("per CPU second (all threads)", cpu_rates)):
        print(f"-- {label}")
        for name in names:
            v = np.array(r[name])
            print(f"{name:15s}: {np.median(v):8.0f} images/s  (rounds {v.min():.0f}-{v.max():.0f})")
        base = np.array(r["ece662"])
        for name in names[1:]:
            ratio = base / np.array(r[name])           # same round: paired
            print(f"ece662 / {name:14s}: {np.median(ratio):.2f}x  (rounds {ratio.min():.2f}-{ratio.max():.2f})")


def profile(args, x, y):
    """Median wall time of each piece of one training step."""
    from ece662.layers import kernels_train as kt
    from ece662.training.trainer import augment_batch
    from ece662.data_utils import normalize_images
    net, opt = make_ece()
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (args.batch, 32, 32, 3), dtype=np.uint8)
    times = {}

    def tm(name, f, *a, **k):
        t0, c0 = time.perf_counter(), time.process_time()
        r = f(*a, **k)
        times.setdefault(name, []).append((time.perf_counter() - t0, time.process_time() - c0))
        return r

    c1, c2, fc = net.conv1, net.conv2, net.fc
    for s in range(args.steps + 3):
        if s == 3:
            times.clear()
        xb = tm("data: augment_batch", augment_batch, images, rng)
        tm("data: normalize_images", normalize_images, xb)
        h = tm("conv1+relu1+pool1 forward", c1, x, relu_pool=True)
        h = tm("conv2+relu2+pool2 forward", c2, h, relu_pool=True)
        h = net.flatten(h)
        logits = tm("fc forward", fc, h)
        _, d = tm("loss", softmax_cross_entropy, logits, y)
        net.zero_grad()
        d = tm("fc backward", fc.backward, d)
        d = net.flatten.backward(d)
        x2, code2 = c2._cache
        tm("conv2 group backward: dw+db (pool, ReLU inside)", kt.conv2d_relu_maxpool2_train_backward,
           d, code2, x2, c2.weight, need_dx=False)
        tm("conv2 group backward: dx (pool, ReLU inside)", kt._input_grad, d, code2, True, c2.weight, 0, 14, 14)
        d = tm("conv2 group backward (as the layer runs it)", c2.backward, d)
        tm("conv1 group backward: dw+db (no dx)", c1.backward, d, need_dx=False)
        tm("optimizer (SGD, Nesterov, weight decay)", opt.step, net)
        tm("trainer: state_dict copy", net.state_dict)
    step_parts = ["conv1+relu1+pool1 forward", "conv2+relu2+pool2 forward", "fc forward", "loss", "fc backward",
                  "conv2 group backward (as the layer runs it)", "conv1 group backward: dw+db (no dx)",
                  "optimizer (SGD, Nesterov, weight decay)"]
    wall = {k: np.median([w for w, _ in v]) * 1e3 for k, v in times.items()}
    cpu = {k: np.median([c for _, c in v]) * 1e3 for k, v in times.items()}
    total, total_cpu = sum(wall[k] for k in step_parts), sum(cpu[k] for k in step_parts)
    print(f"batch {args.batch}, median of {args.steps} steps; load average before / after: {LOAD0} / {load()}")
    print(f"{'':50s} {'wall':>8s}      {'share':>6s} {'CPU (all threads)':>18s} {'share':>6s}")
    for k in wall:
        share = (f"{100 * wall[k] / total:5.1f}%", f"{100 * cpu[k] / total_cpu:5.1f}%") if k in step_parts else ("  (-)",) * 2
        print(f"{k:50s} {wall[k]:8.2f} ms  {share[0]:>6s} {cpu[k]:15.2f} ms {share[1]:>6s}")
    print(f"{'step total (the parts with a share)':50s} {total:8.2f} ms  = {args.batch / total * 1e3:.0f} images/s; "
          f"CPU {total_cpu:.2f} ms")


def load():
    return " ".join(f"{v:.1f}" for v in os.getloadavg())


def main():
    global LOAD0
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2, help="threads of numba and of torch")
    ap.add_argument("--profile", action="store_true")
    args = ap.parse_args()
    LOAD0 = load()
    import numba
    numba.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((args.batch, 3, 32, 32)).astype(np.float32)
    y = rng.integers(0, 10, args.batch)
    (profile if args.profile else compare)(args, x, y)


if __name__ == "__main__":
    main()
