"""Does pruning make inference faster?  Measured, in one run, against the FLOP-count ideal.

    python benchmarks/bench_pruning.py [--images 2000] [--repeats 7] [--plot [FILE]]   (default FILE: runs/bench/speedup.png)

Every ece662 speedup is a paired, repeated measurement (``ece662.timing.PairedTimer``): the
dense model and the pruned variants run back to back, interleaved, ``--repeats`` rounds; the
table gives the median ratio and its interquartile range, and flags (``ece662.timing.flag_reason``)
a ratio whose whole interval is above the FLOP ideal or a "masks only" interval that misses 1x.

1. Filter pruning (L2, dim 0) of both conv layers of the shipped model at 25/50/75%:
   whole-network time with the dense kernels on the masked weights ("masks alone"), with
   ece662's filter-skipping path, and physically shrunk; speedups over the dense run next
   to the FLOP ideal (dense FLOPs / FLOPs left, from ece662.pruning.report).  With torch:
   torch on the zeroed weights and torch on the shrunk network (channels_last, 2 threads),
   timed after all ece662 timings (best of several: torch's threads disturb whatever runs beside them).
2. Unstructured L1 pruning of conv1 and conv2 at 0-90%: each layer alone, conv + ReLU + 2x2 pool, the two
   kernels the plan chooses between: dense v6 and the sparse kernel (``ece662/layers/kernels_sparse.py``).
   ``benchmarks/bench_sparse.py`` measures the same choice in more detail (whole models, more amounts).
"""
import argparse
import os
import time

import numpy as np

import ece662.pruning as prune
from ece662.experiments import dense_twin
from ece662.layers import kernel_choice
from ece662.pruning_helper import load_model
from ece662.timing import PairedTimer


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


def _positive(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return value


def _cell(r):
    return f"{r.median:.2f}x [{r.q1:.2f}-{r.q3:.2f}]" + ("!" if r.flag else "")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=_positive, default=2000)
    ap.add_argument("--repeats", type=_positive, default=7, help="interleaved rounds per comparison")
    ap.add_argument("--plot", nargs="?", const="runs/bench/speedup.png", default=None,
                    help="write the figure (default runs/bench/speedup.png; the README's copy is docs/speedup.png)")
    args = ap.parse_args()
    x = np.random.default_rng(0).standard_normal((args.images, 3, 32, 32)).astype(np.float32)
    try:
        import torch
        torch.set_num_threads(2)
    except ImportError:
        torch = None

    # all ece662 timings first, then all torch timings: torch's OpenMP threads keep spinning for a
    # while after each call and slow down whatever runs next (measured: up to 2.5x on both sides)
    timer = PairedTimer(repeats=args.repeats)
    base = load_model()
    rows, models = [], []
    for amount in (0.25, 0.5, 0.75):
        m = load_model()
        for layer in (m.conv1, m.conv2):
            prune.ln_structured(layer, "weight", amount=amount, n=2, dim=0)
        rep = prune.report(m, verbose=False)[-1]
        small = prune.shrink(m)
        ideal = rep["flops_dense"] / rep["flops_skip"]
        r = timer.compare({"dense": dense_twin(base), "masked": dense_twin(m), "skip": m.eval(), "shrunk": small}, x)
        r["masked"].check(same_work=True)
        r["skip"].check(ideal=ideal)
        r["shrunk"].check(ideal=ideal)
        rows.append({"amount": amount, "ideal": ideal, **r})
        models.append((m, small))
    t_dense0 = float(np.median(timer.reference_times))
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
    print(f"{args.images} images, {args.repeats} interleaved rounds per comparison: median speedup [interquartile "
          f"range]; ! = flagged (see below)")
    print(f"unpruned: ece662 dense {t_dense0:.3f} s (median)" + (f", torch channels_last {t_torch0:.3f} s (best)" if torch else ""))
    print(f"\n{'filters pruned':>14} {'FLOP ideal':>10} {'masks only':>20} {'skip':>20} {'shrunk':>20} "
          f"{'skip/ideal':>10}" + (f" {'torch zeros':>12} {'torch shrunk':>12} {'skip vs tz':>10} {'shrunk vs ts':>12}" if torch else ""))
    for r in rows:
        line = (f"{r['amount']:>14.0%} {r['ideal']:>9.2f}x {_cell(r['masked']):>20} {_cell(r['skip']):>20} "
                f"{_cell(r['shrunk']):>20} {r['skip'].median / r['ideal']:>9.0%}")
        if torch:
            t_skip = r["skip"].times.min()
            t_small = r["shrunk"].times.min()
            line += (f" {r['tz']:>11.3f}s {r['ts']:>11.3f}s {r['tz'] / t_skip:>9.2f}x "
                     f"{r['ts'] / t_small:>11.2f}x")
        print(line)
    for r in rows:
        for k in ("masked", "skip", "shrunk"):
            if r[k].flag:
                print(f"! {r['amount']:.0%} {k}: {r[k].flag}")
    if timer.busy:
        print("(the machine was busy: the dense model's own rounds spread by more than 20%; the paired ratios "
              "hold, absolute seconds do not)")

    net = load_model()
    inputs = {"conv1": x[:2000]}
    inputs["conv2"] = net.pool1(net.relu1(net.conv1(x[:2000])))
    rng = np.random.default_rng(1)
    layer_timer = PairedTimer(repeats=args.repeats, warn=False)   # layer-sized rounds: a separate spread
    sparse_rows = []
    for layer_name in ("conv1", "conv2"):
        layer, h = getattr(net, layer_name), inputs[layer_name]
        w, b = layer.weight, layer.bias
        print(f"\n{layer_name + ' zeros':>12} {'sparse vs dense v6':>22}")
        for s in (0.0, 0.3, 0.5, 0.8, 0.9):
            mask = prune.masks.l1_unstructured(w * (1 + 0.01 * rng.random(w.shape)), s)
            ws = w * mask
            def conv(kernel):   # conv + ReLU + 2x2 pool with the masked weights, as the model runs this layer
                return lambda: kernel_choice.run_conv(kernel, h, ws, b, 1, layer.padding, relu=True, pool2=True)
            r = layer_timer.compare({"dense": conv("v6"), "sparse": conv("sparse")})["sparse"]
            print(f"{s:>12.0%} {_cell(r):>22}")
            if layer_name == "conv2":
                sparse_rows.append((s, r))

    if args.plot:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        os.makedirs(os.path.dirname(os.path.abspath(args.plot)), exist_ok=True)
        fig, ax = plt.subplots(figsize=(7, 4.6))
        a = [r["amount"] for r in rows]

        def bars(xs, rs, fmt, label):
            ok = [not r.flag for r in rs]
            med = np.array([r.median for r in rs])
            err = np.array([[r.median - r.q1 for r in rs], [r.q3 - r.median for r in rs]])
            xs, ok = np.asarray(xs), np.asarray(ok)
            ax.errorbar(xs[ok], med[ok], yerr=err[:, ok], fmt=fmt, capsize=3, label=label)
            if (~ok).any():
                ax.errorbar(xs[~ok], med[~ok], yerr=err[:, ~ok], fmt="o", mfc="white", mec="red", capsize=3,
                            label=f"{label}: FLAGGED, not a result")

        ax.plot(a, [r["ideal"] for r in rows], "k--", label="filters: FLOP ideal")
        # skip and shrunk are often equal: drawn slightly apart so neither hides the other
        bars([v - 0.008 for v in a], [r["skip"] for r in rows], "o-", "filters: skipping kernel")
        bars([v + 0.008 for v in a], [r["shrunk"] for r in rows], "s-", "filters: physically removed")
        bars(a, [r["masked"] for r in rows], "x-", "filters: masks only (dense kernel)")
        bars([s for s, _ in sparse_rows], [r for _, r in sparse_rows], "^-", "conv2 weights: sparse kernel")
        ax.axhline(1, color="grey", lw=0.8)
        ax.set_xlabel("fraction pruned (filters of each conv layer, or conv2's weights)")
        ax.set_ylabel("speedup over the dense kernel")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
        fig.text(0.5, 0.01, f"Median of {args.repeats} interleaved rounds, {args.images} images; bars: interquartile "
                 "range; dashed: FLOP ideal.", ha="center", va="bottom", fontsize=7, style="italic")
        fig.tight_layout(rect=(0, 0.05, 1, 1))
        fig.savefig(args.plot, dpi=110)
        print(f"\nwrote {args.plot}")


if __name__ == "__main__":
    main()
