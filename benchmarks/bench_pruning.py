"""Does pruning make inference faster?  Measured, in one run, against the FLOP-count ideal.

    python benchmarks/bench_pruning.py [--images 5000] [--repeats 3] [--plot docs/speedup.png]

1. Filter pruning (L2, dim 0) of both conv layers of the shipped model at 25/50/75%:
   whole-network time with the dense kernels on the masked weights ("masks alone"), with
   ece662's filter-skipping path, and physically shrunk; speedups over the dense run next
   to the FLOP ideal (dense FLOPs / FLOPs left, from ece662.pruning.report).  With torch:
   torch on the zeroed weights and torch on the shrunk network (channels_last, 2 threads).
2. Unstructured L1 pruning of conv1 and conv2 at 0-90%: each layer alone, dense v3 vs the sparse-taps kernel.
"""
import argparse
import time

import numpy as np

import ece662.pruning as prune
from ece662.experiments import dense_twin
from ece662.layers import functional as fn
from ece662.pruning_helper import load_model


def best_time(fn_, repeats):
    fn_()
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn_()
        ts.append(time.perf_counter() - t0)
    return min(ts)


def run_batched(model, x, bs=500):
    return lambda: [model(x[i:i + bs]) for i in range(0, len(x), bs)]


def torch_net(model):
    import torch
    tn = torch.nn
    c1, c2, fc = model.conv1, model.conv2, model.fc
    net = tn.Sequential(tn.Conv2d(c1.in_channels, c1.out_channels, 5), tn.ReLU(), tn.MaxPool2d(2),
                        tn.Conv2d(c2.in_channels, c2.out_channels, 3), tn.ReLU(), tn.MaxPool2d(2), tn.Flatten(),
                        tn.Linear(fc.in_features, fc.out_features)).eval()
    with torch.no_grad():
        for i, layer in ((0, c1), (3, c2), (7, fc)):
            net[i].weight.copy_(torch.tensor(np.ascontiguousarray(layer.weight)))
            net[i].bias.copy_(torch.tensor(layer.bias))
    return net.to(memory_format=torch.channels_last)


def torch_time(net, x, repeats, bs=128):
    """Best of more repeats than ours: torch's first runs of a new network are sometimes 2x slower."""
    import torch
    tx = torch.tensor(x).contiguous(memory_format=torch.channels_last)

    def run():
        with torch.no_grad():
            for i in range(0, len(tx), bs):
                net(tx[i:i + bs])
    run()
    return best_time(run, max(5, 2 * repeats))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=5000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--plot", default=None)
    args = ap.parse_args()
    x = np.random.default_rng(0).standard_normal((args.images, 3, 32, 32)).astype(np.float32)
    try:
        import torch
        torch.set_num_threads(2)
    except ImportError:
        torch = None

    # all ece662 timings first, then all torch timings: torch's OpenMP threads keep spinning for a
    # while after each call and slow down whatever runs next (measured: up to 2.5x on both sides)
    base = load_model()
    t_dense0 = best_time(run_batched(dense_twin(base), x), args.repeats)
    rows, models = [], []
    for amount in (0.25, 0.5, 0.75):
        m = load_model()
        for layer in (m.conv1, m.conv2):
            prune.ln_structured(layer, "weight", amount=amount, n=2, dim=0)
        rep = prune.report(m, verbose=False)[-1]
        small = prune.shrink(m)
        rows.append({"amount": amount, "ideal": rep["flops_dense"] / rep["flops_skip"],
                     "t_masked": best_time(run_batched(dense_twin(m), x), args.repeats),
                     "t_skip": best_time(run_batched(m.eval(), x), args.repeats),
                     "t_small": best_time(run_batched(small, x), args.repeats)})
        models.append((m, small))
    # the baseline again at the end, best of both: one slow first measurement would inflate every ratio
    t_dense0 = min(t_dense0, best_time(run_batched(dense_twin(base), x), args.repeats))
    for r in rows:
        r["masked"], r["skip"], r["shrunk"] = (t_dense0 / r["t_masked"], t_dense0 / r["t_skip"],
                                               t_dense0 / r["t_small"])
    t_torch0 = None
    if torch:
        t_torch0 = torch_time(torch_net(base), x, args.repeats)
        for r, (m, small) in zip(rows, models):
            r["tz"] = torch_time(torch_net(m), x, args.repeats)
            r["ts"] = torch_time(torch_net(small), x, args.repeats)
        # torch with zeroed filters does the same work at every amount (and as unpruned): its
        # fastest measurement is its speed; a slower one is its own noise (it has doubled here)
        t_zeros = min([t_torch0] + [r["tz"] for r in rows])
        for r in rows:
            r["tz"] = t_zeros
    print(f"unpruned: ece662 dense {t_dense0:.3f} s" + (f", torch channels_last {t_torch0:.3f} s" if torch else ""))
    print(f"\n{'filters pruned':>14} {'FLOP ideal':>10} {'masks only':>10} {'skip':>8} {'shrunk':>8} "
          f"{'skip/ideal':>10}" + (f" {'torch zeros':>12} {'torch shrunk':>12} {'skip vs tz':>10} {'shrunk vs ts':>12}" if torch else ""))
    for r in rows:
        line = (f"{r['amount']:>14.0%} {r['ideal']:>9.2f}x {r['masked']:>9.2f}x {r['skip']:>7.2f}x "
                f"{r['shrunk']:>7.2f}x {r['skip'] / r['ideal']:>9.0%}")
        if torch:
            line += (f" {r['tz']:>11.3f}s {r['ts']:>11.3f}s {r['tz'] / r['t_skip']:>9.2f}x "
                     f"{r['ts'] / r['t_small']:>11.2f}x")
        print(line)

    net = load_model()
    inputs = {"conv1": x[:2000]}
    inputs["conv2"] = net.pool1(net.relu1(net.conv1(x[:2000])))
    rng = np.random.default_rng(1)
    sparse_rows = []
    for layer_name in ("conv1", "conv2"):
        layer, h = getattr(net, layer_name), inputs[layer_name]
        w, b = layer.weight, layer.bias
        t_d = best_time(lambda: fn.conv2d_forward_numba(h, w, b), args.repeats)
        print(f"\n{layer_name + ' zeros':>12} {'sparse vs dense':>16}")
        for s in (0.0, 0.3, 0.5, 0.8, 0.9):
            mask = prune.masks.l1_unstructured(w * (1 + 0.01 * rng.random(w.shape)), s)
            ws = w * mask
            t_s = best_time(lambda: fn.conv2d_forward_sparse(h, ws, b), args.repeats)
            print(f"{s:>12.0%} {t_d / t_s:>15.2f}x")
            if layer_name == "conv2":
                sparse_rows.append((s, t_d / t_s))

    if args.plot:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        fig, ax = plt.subplots(figsize=(6, 4))
        a = [r["amount"] for r in rows]
        ax.plot(a, [r["ideal"] for r in rows], "k--", label="filters: FLOP ideal")
        ax.plot(a, [r["skip"] for r in rows], "o-", label="filters: skipping kernel")
        ax.plot(a, [r["shrunk"] for r in rows], "s-", label="filters: physically removed")
        ax.plot(a, [r["masked"] for r in rows], "x-", label="filters: masks only (dense kernel)")
        ax.plot([s for s, _ in sparse_rows], [v for _, v in sparse_rows], "^-", label="conv2 unstructured: sparse kernel")
        ax.axhline(1, color="grey", lw=0.8)
        ax.set_xlabel("fraction pruned (filters per conv layer, or conv2 weights)")
        ax.set_ylabel("speedup over the dense kernel")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(args.plot, dpi=110)
        print(f"\nwrote {args.plot}")


if __name__ == "__main__":
    main()
