"""``python -m ece662 ...`` / ``ece662 ...``: the assignment's experiments from the command line.

    python -m ece662 sweep                 # the pruning study on the shipped model and the real data
    python -m ece662 evaluate --model m.pt --mode torch
"""
import argparse
import csv
import json
import os
import sys
import time


def _amounts(text):
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated fractions such as 0.1,0.5, got {text!r}")
    bad = [v for v in values if not 0 <= v <= 1]
    if bad or not values:
        raise argparse.ArgumentTypeError(f"amounts must be fractions in [0, 1], got {text!r}")
    return values


def _parser():
    p = argparse.ArgumentParser(prog="ece662", description="Pruning small CNNs on CINIC-10.")
    sub = p.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--model", default=None, help="model file (default: the shipped pretrained model)")
    common.add_argument("--mode", default="numpy", choices=["numpy", "torch"],
                        help="model file format: ece662 .npz (numpy) or a PyTorch state_dict (torch)")
    common.add_argument("--data", default=None,
                        help="CINIC-10 folder or .npz (default: $ECE662_DATA, datasets/, ../shared/datasets)")
    common.add_argument("--num-test", type=int, default=None, help="evaluate on a class-balanced subset")
    sub.add_parser("evaluate", parents=[common], help="print the model's test accuracy")
    sw = sub.add_parser("sweep", parents=[common], help="unstructured and structured pruning sweeps")
    sw.add_argument("--out", default="runs/sweep", help="output folder for CSV, JSON and plots")
    sw.add_argument("--amounts", type=_amounts, default=[0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8],
                    help="unstructured (global L1) amounts, comma-separated")
    sw.add_argument("--filter-amounts", type=_amounts, default=[0.25, 0.5, 0.75],
                    help="structured (L2 filter) amounts per conv layer, comma-separated")
    return p


def _load(args):
    from ece662.data_utils import get_CINIC10_data
    from ece662.pruning_helper import load_model
    model = load_model(args.model, mode=args.mode)
    data = get_CINIC10_data(args.data, splits=("test",), num_test=args.num_test)
    return model, data


def _table(records, keys):
    lines = ["  ".join(f"{k:>22}" if i == 0 else f"{k:>12}" for i, k in enumerate(keys))]
    for r in records:
        cells = []
        for i, k in enumerate(keys):
            v = r.get(k, "")
            s = f"{v:.4f}" if isinstance(v, float) else str(v)
            cells.append(f"{s:>22}" if i == 0 else f"{s:>12}")
        lines.append("  ".join(cells))
    return "\n".join(lines)


def _sweep(args):
    from ece662 import experiments as E
    from ece662 import plots
    try:
        os.makedirs(args.out, exist_ok=True)
        probe = os.path.join(args.out, ".write-test")
        open(probe, "w").close()
        os.remove(probe)
    except OSError as e:
        raise SystemExit(f"ece662: cannot write to the output folder {args.out}: {e.strerror}")
    t0 = time.perf_counter()
    model, data = _load(args)
    X, y, origin = data["X_test"], data["y_test"], data["origin_test"]
    print(f"data: {data['source']} ({len(y)} test images)")
    base = E.baseline(model, X, y, origin)
    print(f"unpruned test accuracy: {base['accuracy']:.4f}")
    records = [base]
    try:
        records += E.unstructured_sweep(model, X, y, args.amounts, origin)
        records += E.structured_sweep(model, X, y, args.filter_amounts, origin=origin)
    finally:  # an interrupted sweep keeps the rows it finished
        lead = ["method", "target", "sparsity", "accuracy"]
        keys = lead + sorted({k for r in records for k in r} - set(lead))
        with open(os.path.join(args.out, "results.json"), "w") as f:
            json.dump(records, f, indent=1)
        with open(os.path.join(args.out, "results.csv"), "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=keys)
            w.writeheader()
            w.writerows(records)
    print(_table(records, ["method", "target", "sparsity", "accuracy", "dead_filters", "params_nonzero"]))
    plots.accuracy_vs_sparsity(records[1:], base, os.path.join(args.out, "accuracy_vs_sparsity.png"))
    print(f"wrote {args.out}/results.csv, results.json, accuracy_vs_sparsity.png "
          f"in {time.perf_counter() - t0:.1f} s")
    return 0


def main(argv=None):
    args = _parser().parse_args(argv)
    try:
        if args.command == "evaluate":
            from ece662.pruning_helper import test_model
            model, data = _load(args)
            test_model(model, [data["X_test"], data["y_test"]])
            return 0
        return _sweep(args)
    except (FileNotFoundError, ValueError, TypeError) as e:
        print(f"ece662: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ece662: interrupted", file=sys.stderr)
        return 130
