"""Where does the unstructured-sparse conv kernel overtake the dense one?  Measured in one run.

    python benchmarks/bench_sparse.py [--images 1000] [--rounds 7] [--amounts 0 0.3 0.5 0.6 0.7 0.8 0.9 0.95]
                                      [--model-amounts 0.5 0.7 0.8 0.9]

The shipped model's conv layers, each as the inference plan runs it (conv + bias + ReLU + 2x2 max
pool fused, the dead filters left out), with L1 unstructured pruning at each amount, two ways:
``per-layer`` (``prune.l1_unstructured`` on conv1 and conv2, the amount of each) and ``global``
(``prune.global_unstructured`` over conv1, conv2 and fc together: each layer gets its own share of
zeros, printed).  Five kernels run on the same weights and inputs, interleaved (a, b, ... | ..., b, a
| ...), ``--rounds`` rounds after a warm-up, batches of 500:

* ``v7``     dense kernel v7 with the tile measured for the layer (``kernel_choice.run_conv('v7', ...)``),
             the plan's dense choice (v6 until 2026-12-04: the break-evens recorded before then are against v6);
* ``lanes``  the sparse kernel with output positions as the vector lanes
             (``kernels_sparse.conv2d_forward_sparse_lanes``, ReLU and pool fused);
* ``taps``   the older sparse-taps kernel (``functional.conv2d_forward_sparse``), then ReLU and
             ``maxpool2d_forward_numba`` as separate passes, as the plan ran it before;
* ``v3`` and ``lanes, no pool``: the conv + ReLU alone (what the plan runs for a conv that no 2x2
             pool follows): dense kernel v3 against the sparse kernel.

Each cell is the median of the per-round ratios ``time(dense) / time(sparse)`` (> 1: the sparse
kernel is faster) with their min-max in brackets, paired round by round.  The break-even lines
interpolate, per layer, the zero fraction where the median crosses 1x.  The planner's own estimate of each break-even
(``tuning.sparse_from``) is printed beside them.  Then the whole model
(``kernels='auto'``, which picks the sparse kernel from that estimate on) against
the same weights on the dense kernels (``kernels='dense'``), at ``--model-amounts`` (none: skipped).
"""
import argparse
import os

import numpy as np

import ece662.pruning as prune
from ece662.experiments import dense_twin
from ece662.layers import functional as fn
from ece662.layers import kernels_sparse as ks
from ece662.layers import kernel_choice, tuning
from ece662.pruning_helper import load_model
from ece662.timing import PairedTimer

BATCH = 500


def pruned_model(scheme, amount):
    """The shipped model with L1 unstructured masks on conv1 and conv2 (``per-layer``), or on conv1,
    conv2 and fc ranked together (``global``)."""
    m = load_model()
    if amount == 0:
        return m
    if scheme == "per-layer":
        for layer in (m.conv1, m.conv2):
            prune.l1_unstructured(layer, "weight", amount=amount)
    else:
        prune.global_unstructured([(m.conv1, "weight"), (m.conv2, "weight"), (m.fc, "weight")],
                                  pruning_method=prune.L1Unstructured, amount=amount)
    return m


def in_batches(f, h):
    return lambda: [f(h[i:i + BATCH]) for i in range(0, len(h), BATCH)]


def layer_runs(layer, h):
    """{kernel: callable} for one conv layer + ReLU + 2x2 pool on the inputs ``h``, live filters only."""
    w, b = layer.weight, layer.bias
    alive = np.any(w.reshape(w.shape[0], -1) != 0, axis=1)
    w, b = np.ascontiguousarray(w[alive]), np.ascontiguousarray(b[alive])
    pad = layer.padding

    def taps(x):
        out = fn.conv2d_forward_sparse(x, w, b, 1, pad)
        np.maximum(out, 0, out=out)
        return fn.maxpool2d_forward_numba(out, 2, 2)
    return {"v7": in_batches(lambda x: kernel_choice.run_conv("v7", x, w, b, 1, pad, relu=True, pool2=True), h),
            "lanes": in_batches(lambda x: ks.conv2d_forward_sparse_lanes(x, w, b, 1, pad, relu=True, pool2=True), h),
            "taps": in_batches(taps, h),
            "v3": in_batches(lambda x: fn.conv2d_forward_numba(x, w, b, 1, pad, relu=True), h),
            "lanes, no pool": in_batches(lambda x: ks.conv2d_forward_sparse_lanes(x, w, b, 1, pad, relu=True), h)}


def paired(dense, sparse):
    """(median, min, max) of the per-round ratios time(dense) / time(sparse)."""
    r = dense.times / sparse.times
    return float(np.median(r)), float(r.min()), float(r.max())


def cell(m):
    return f"{m[0]:.2f}x [{m[1]:.2f}-{m[2]:.2f}]"


def zeros(layer):
    return 1.0 - np.count_nonzero(layer.weight) / layer.weight.size


def break_even(points):
    """The zero fraction where the median ratio first reaches 1x (linear between measured points);
    None when it never does, the first point when it is already there."""
    points = sorted(points)
    for (z0, r0), (z1, r1) in zip([points[0]] + points, points):
        if r1 >= 1.0:
            return z1 if r0 >= 1.0 or z1 == z0 else z0 + (1.0 - r0) * (z1 - z0) / (r1 - r0)
    return None


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=7, help="interleaved rounds per comparison")
    ap.add_argument("--amounts", type=float, nargs="*", default=[0.0, 0.3, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95],
                    help="amounts of the per-layer table (none: skipped)")
    ap.add_argument("--model-amounts", type=float, nargs="*", default=[0.5, 0.7, 0.8, 0.9])
    args = ap.parse_args()
    x = np.random.default_rng(0).standard_normal((args.images, 3, 32, 32)).astype(np.float32)
    base = load_model()
    inputs = {"conv1": x, "conv2": base.pool1(base.relu1(base.conv1(x)))}
    timer = PairedTimer(repeats=args.rounds, warn=False)
    print(f"{args.images} images in batches of {BATCH}, {args.rounds} interleaved rounds; median of the "
          f"per-round ratios time(v7) / time(kernel) [min-max]; load average before: "
          f"{', '.join(f'{v:.1f}' for v in os.getloadavg())}")
    curves = {}
    for scheme in ("per-layer", "global") if args.amounts else ():
        print(f"\n{scheme:>9} {'layer':>5} {'zeros':>6} {'lanes vs v7':>20} {'taps vs v7':>20} {'lanes vs taps':>20} "
              f"{'no pool: lanes vs v3':>21}")
        for amount in args.amounts:
            m = pruned_model(scheme, amount)
            for name in ("conv1", "conv2"):
                layer = getattr(m, name)
                r = timer.compare(layer_runs(layer, inputs[name]))
                z = zeros(layer)
                cells = (paired(r["v7"], r["lanes"]), paired(r["v7"], r["taps"]), paired(r["taps"], r["lanes"]),
                         paired(r["v3"], r["lanes, no pool"]))
                curves.setdefault((scheme, name, "lanes vs v7"), []).append((z, cells[0][0]))
                curves.setdefault((scheme, name, "no pool: lanes vs v3"), []).append((z, cells[3][0]))
                print(f"{amount:>9.0%} {name:>5} {z:>6.1%} " + " ".join(f"{cell(c):>20}" for c in cells),
                      flush=True)
    print("\nbreak-even (zero fraction where the median reaches 1x, interpolated between measured points):")
    for (scheme, name, what), pts in curves.items():
        be = break_even(pts)
        text = "not reached" if be is None else f"{be:.0%}"
        if be is not None and be == min(pts)[0]:
            text = f"at or below {be:.0%} (the least sparse point already wins)"
        print(f"  {scheme:>9} {name} {what}: {text}")
    print("the planner's own estimate for the unpruned shapes (ece662.layers.tuning.sparse_from: the lanes kernel "
          "timed dense and at 75% zeros, the line through them against the measured tile):")
    thresholds = {}
    for name in ("conv1", "conv2"):
        layer, h = getattr(base, name), inputs[name]
        F, C, KH, KW = layer.weight.shape
        thresholds[name] = tuning.sparse_from(C, h.shape[2], h.shape[3], F, KH, KW, layer.padding)
        print(f"  {name}: {thresholds[name][0]:.0%} ({thresholds[name][1]})")
    print(f"load average after: {', '.join(f'{v:.1f}' for v in os.getloadavg())}")

    if not args.model_amounts:
        return
    print("\nwhole model, kernels='auto' (the sparse kernel from the break-even measured for each layer, "
          "tuning.sparse_from) vs kernels='dense', same weights:")
    print(f"{'scheme':>9} {'amount':>6} {'conv1 / conv2 zeros':>20} {'kernels chosen':>16} {'auto vs dense':>20}")
    for scheme in ("per-layer", "global"):
        for amount in args.model_amounts:
            m = pruned_model(scheme, amount).eval()
            chosen = [step.kernel.version for step in m.plan((3, 32, 32)) if step.op == "conv"]
            r = timer.compare({"dense": dense_twin(m), "auto": m}, x)
            print(f"{scheme:>9} {amount:>6.0%} {zeros(m.conv1):>9.0%} / {zeros(m.conv2):<8.0%} "
                  f"{' '.join(chosen):>16} {cell(paired(r['dense'], r['auto'])):>20}", flush=True)
    print(f"load average at the end: {', '.join(f'{v:.1f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
