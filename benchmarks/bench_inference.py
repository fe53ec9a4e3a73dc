"""Dense inference of the course CNN over 10,000 images: ece662 vs plain NumPy im2col vs PyTorch.

    python benchmarks/bench_inference.py [--images 10000] [--repeats 3]

All contenders run in one process, one after the other, each warmed up first; the
best of ``--repeats`` runs counts.  Ratios (images/s relative to PyTorch's best
configuration) are what to compare across machines; the machine is shared and noisy.
"""
import argparse
import time

import numpy as np

from ece662.models import default_convnet


def best_time(fn, repeats):
    fn()  # warm-up (Numba compiles or loads its cache; torch picks its kernels)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def numpy_im2col_forward(sd, x):
    """The textbook baseline: im2col + one BLAS matmul per conv, NumPy only."""
    def conv(x, w, b):
        N, C, H, W = x.shape
        F, _, HH, WW = w.shape
        Ho, Wo = H - HH + 1, W - WW + 1
        cols = np.lib.stride_tricks.sliding_window_view(x, (HH, WW), axis=(2, 3))  # N,C,Ho,Wo,HH,WW
        cols = cols.transpose(0, 2, 3, 1, 4, 5).reshape(N * Ho * Wo, C * HH * WW)
        out = cols @ w.reshape(F, -1).T + b
        return out.reshape(N, Ho, Wo, F).transpose(0, 3, 1, 2)

    def pool(x):
        N, C, H, W = x.shape
        return x.reshape(N, C, H // 2, 2, W // 2, 2).max(axis=(3, 5))

    h = pool(np.maximum(conv(x, sd["conv1.weight"], sd["conv1.bias"]), 0))
    h = pool(np.maximum(conv(h, sd["conv2.weight"], sd["conv2.bias"]), 0))
    return h.reshape(len(h), -1) @ sd["fc.weight"].T + sd["fc.bias"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=10000)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    x = np.random.default_rng(0).standard_normal((args.images, 3, 32, 32)).astype(np.float32)
    net = default_convnet(seed=0).eval()
    sd = net.state_dict()
    rows = []

    def batched(f, bs):
        return lambda: [f(x[i:i + bs]) for i in range(0, len(x), bs)]

    for bs in (128, 500, 2000):
        rows.append((f"ece662 (fused v4 kernels) batch {bs}", best_time(batched(net, bs), args.repeats)))
    rows.append(("numpy im2col batch 500", best_time(batched(lambda b: numpy_im2col_forward(sd, b), 500),
                                                      args.repeats)))
    np.testing.assert_allclose(numpy_im2col_forward(sd, x[:8]), net(x[:8]), rtol=1e-3, atol=1e-4)
    torch_best = None
    try:
        import torch
        torch.set_num_threads(2)
        tn = torch.nn
        tnet = tn.Sequential(tn.Conv2d(3, 32, 5), tn.ReLU(), tn.MaxPool2d(2), tn.Conv2d(32, 32, 3),
                             tn.ReLU(), tn.MaxPool2d(2), tn.Flatten(), tn.Linear(1152, 10)).eval()
        tnet.load_state_dict({k.replace("conv1", "0").replace("conv2", "3").replace("fc", "7"): torch.tensor(v)
                              for k, v in sd.items()})
        tx = torch.tensor(x)
        for cl in (False, True):
            m = tnet.to(memory_format=torch.channels_last) if cl else tnet
            for bs in (128, 500, 2000):
                def run(bs=bs, cl=cl):
                    with torch.no_grad():
                        for i in range(0, len(tx), bs):
                            xb = tx[i:i + bs]
                            m(xb.contiguous(memory_format=torch.channels_last) if cl else xb)
                t = best_time(run, args.repeats)
                rows.append((f"torch {'channels_last' if cl else 'eager NCHW'} batch {bs}", t))
                torch_best = t if torch_best is None else min(torch_best, t)
    except ImportError:
        pass
    ece_best = min(t for name, t in rows if name.startswith("ece662"))
    print(f"{'configuration':<36} {'seconds':>8} {'images/s':>10} {'vs torch best':>14}")
    for name, t in rows:
        ratio = f"{torch_best / t:.2f}x" if torch_best else "-"
        print(f"{name:<36} {t:8.3f} {args.images / t:10.0f} {ratio:>14}")
    if torch_best:
        print(f"\nece662 best / torch best (throughput ratio): {torch_best / ece_best:.2f}")


if __name__ == "__main__":
    main()
