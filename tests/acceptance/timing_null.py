"""The null experiment: the unpruned model timed against itself (identical work), over and over.

    python tests/acceptance/timing_null.py --times 12                       # the sweep's old procedure: 7 rounds of 500 images
    python tests/acceptance/timing_null.py --times 12 --rounds 35 --images 100

Each time it does what a sweep row does (``ece662.experiments.speedups``: the dense twin, the
masks-only twin and the model itself, interleaved, order flipped every round) after evaluating
the model on 2,000 test images, for the unpruned model and for 10% global L1 pruning (FLOP ideal
1.08x, but the same dense kernel: about 1x).  If the procedure were biased, the medians would
centre away from 1x; if the reported spread were honest, it would hold 1x about as often as it
claims.  It prints each run and a summary.
"""
import argparse

import numpy as np

from ece662 import experiments as E
from ece662 import pruning as prune
from ece662 import timing
from ece662.data_utils import get_CINIC10_data
from ece662.pruning_helper import load_model


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--times", type=int, default=12, help="how many times to repeat the whole measurement")
    p.add_argument("--rounds", type=int, default=7, help="interleaved rounds per measurement")
    p.add_argument("--images", type=int, default=500, help="test images per round")
    p.add_argument("--data", default=None)
    args = p.parse_args(argv)
    model = load_model(None)
    data = get_CINIC10_data(args.data, splits=("test",), num_test=2000)
    X, y = np.asarray(data["X_test"]), data["y_test"]
    p10 = E.copy_model(model)
    prune.global_unstructured([(m, "weight") for _, m in E.prunable(p10)], pruning_method=prune.L1Unstructured,
                              amount=0.1)
    rows = {"unpruned vs itself": (model, 1.0), "10% unstructured": (p10, 1.08)}
    out = {name: [] for name in rows}
    for k in range(args.times):
        for name, (m, ideal) in rows.items():
            E.evaluate(m, X, y)
            c = E.speedups(m, model, X[:args.images], timing.PairedTimer(args.rounds, warn=False), ideal=ideal)
            out[name].append(c)
            print(f"{k:2d} {name:18s} speedup {c['speedup']:.3f} (interval {c['speedup_low']:.2f}-{c['speedup_high']:.2f}, "
                  f"IQR {c['speedup_iqr_low']:.2f}-{c['speedup_iqr_high']:.2f})  masks only {c['masks_only']:.3f}", flush=True)
    for name, cs in out.items():
        s = np.array([c["speedup"] for c in cs])
        mo = np.array([c["masks_only"] for c in cs])
        iqr_miss = np.mean([not c["speedup_iqr_low"] <= 1 <= c["speedup_iqr_high"] for c in cs])
        int_miss = np.mean([not c["speedup_low"] <= 1 <= c["speedup_high"] for c in cs])
        print(f"{name}: speedup medians average {s.mean():.3f} (sd {s.std():.3f}, {s.min():.2f}-{s.max():.2f}); "
              f"masks only average {mo.mean():.3f} (sd {mo.std():.3f}); 1x outside the IQR {iqr_miss:.0%} of the "
              f"times, outside the rerun interval {int_miss:.0%}; above {rows[name][1]:.2f}x: "
              f"{int(np.sum(s > rows[name][1]))}/{len(s)}")


if __name__ == "__main__":
    main()
