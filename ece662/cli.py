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

import numpy as np


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
    common.add_argument("--mode", default="numpy", choices=["numpy", "torch", "tensorflow"],
                        help="model file format: ece662 .npz (numpy), a PyTorch state_dict (torch), a Keras .keras/.h5 (tensorflow)")
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
    sw.add_argument("--scope", choices=["layer", "global", "both"], default="layer",
                    help="filter pruning per conv layer (the notebook's way), ranked globally, or both")
    sw.add_argument("--finetune", type=int, default=0, metavar="EPOCHS",
                    help="fine-tune every pruned model for EPOCHS epochs (masks held) and report both accuracies")
    sw.add_argument("--iterative", type=int, default=0, metavar="STEPS",
                    help="also prune in STEPS rounds with fine-tuning between them (needs --finetune)")
    sw.add_argument("--finetune-images", type=int, default=None,
                    help="fine-tune on a class-balanced subset of the training images")
    sw.add_argument("--timing-images", type=int, default=2000,
                    help="test images the speed columns are measured on (0: no timing)")
    sw.add_argument("--seed", type=int, default=0)
    return p


def _load(args):
    from ece662.data_utils import get_CINIC10_data
    from ece662.pruning_helper import load_model
    model = load_model(args.model, mode=args.mode)
    data = get_CINIC10_data(args.data, splits=("test",), num_test=args.num_test)
    return model, data


def _table(records, keys):
    short = {"accuracy_finetuned": "acc_finetuned", "accuracy_imagenet": "acc_imagenet",
             "images_per_s_dense": "img/s_dense", "images_per_s_pruned": "img/s_pruned"}
    lines = ["  ".join(f"{short.get(k, k):>22}" if i == 0 else f"{short.get(k, k):>13}"
                       for i, k in enumerate(keys))]
    for r in records:
        cells = []
        for i, k in enumerate(keys):
            v = r.get(k, "")
            s = (f"{v:.0f}" if isinstance(v, float) and k.startswith("images") else
                 f"{v:.4f}" if isinstance(v, float) else str(v))
            cells.append(f"{s:>22}" if i == 0 else f"{s:>13}")
        lines.append("  ".join(cells))
    return "\n".join(lines)


def _check_out(out):
    try:
        os.makedirs(out, exist_ok=True)
        probe = os.path.join(out, ".write-test")
        open(probe, "w").close()
        os.remove(probe)
    except OSError as e:
        raise SystemExit(f"ece662: cannot write to the output folder {out}: {e.strerror}")


def _save(records, out):
    lead = ["method", "target", "sparsity", "accuracy"]
    keys = lead + sorted({k for r in records for k in r} - set(lead))
    tmp = os.path.join(out, ".results.json.tmp")
    with open(tmp, "w") as f:
        json.dump(records, f, indent=1)
    os.replace(tmp, os.path.join(out, "results.json"))
    tmp = os.path.join(out, ".results.csv.tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(records)
    os.replace(tmp, os.path.join(out, "results.csv"))


def _sweep(args):
    import matplotlib
    matplotlib.use("Agg")  # the command line writes files and never opens windows
    from tqdm.auto import tqdm

    from ece662 import experiments as E
    from ece662 import plots
    from ece662 import pruning as prune
    from ece662.data_utils import get_CINIC10_data
    from ece662.layers import Conv2d
    if args.iterative and not args.finetune:
        raise SystemExit("ece662: --iterative needs --finetune EPOCHS (the epochs between pruning steps)")
    _check_out(args.out)
    t0 = time.perf_counter()
    model, data = _load(args)
    X, y, origin = data["X_test"], data["y_test"], data["origin_test"]
    print(f"data: {data['source']} ({len(y)} test images)")
    finetune_data = None
    if args.finetune:
        raw = get_CINIC10_data(args.data, splits=("train",), normalize=False, channels_first=False,
                               num_training=args.finetune_images, seed=args.seed)
        finetune_data = (np.asarray(raw["X_train"]), raw["y_train"])
        print(f"fine-tuning: {args.finetune} epoch(s) on {len(raw['y_train'])} training images per pruned model")
    setup = E.Setup(X, y, origin, timing_images=min(args.timing_images, len(y)), finetune_data=finetune_data,
                    finetune_epochs=args.finetune, seed=args.seed)
    base = E.baseline(model, setup=setup)
    print(f"unpruned test accuracy: {base['accuracy']:.4f}")
    records = [base]
    jobs = [("unstructured", a) for a in args.amounts]
    scopes = ["layer", "global"] if args.scope == "both" else [args.scope]
    jobs += [(f"structured-{sc}", a) for sc in scopes for a in args.filter_amounts]
    if args.iterative:
        jobs += [("iterative", a) for a in args.amounts]
    try:
        for kind, a in tqdm(jobs, desc="sweep", unit="model", leave=False):
            if kind == "unstructured":
                records += E.unstructured_sweep(model, amounts=[a], setup=setup)
            elif kind == "iterative":
                records += E.iterative_sweep(model, setup, amounts=[a], steps=args.iterative,
                                             epochs_per_step=args.finetune)
            else:
                records += E.structured_sweep(model, amounts=[a], scope=kind.split("-")[1], setup=setup)
    finally:  # an interrupted sweep keeps the rows it finished
        _save(records, args.out)
    cols = ["method", "target", "sparsity", "accuracy"]
    if args.finetune:
        cols.append("accuracy_finetuned")
    cols += [c for c in ("accuracy_imagenet",) if any(c in r for r in records)]
    cols += ["dead_filters", "flops_skip"]
    if args.timing_images:
        cols += ["images_per_s_dense", "images_per_s_pruned"]
    print(_table(records, cols))
    plots.accuracy_vs_sparsity(records[1:], base, os.path.join(args.out, "accuracy_vs_sparsity.png"))
    plots.per_layer_sparsity(records, os.path.join(args.out, "per_layer_sparsity.png"))
    if args.timing_images:
        plots.speedup_vs_ideal(records[1:], base, os.path.join(args.out, "speedup_vs_ideal.png"))
    plots.weight_histograms(model, (0.2, 0.5, 0.8), os.path.join(args.out, "weight_histograms.png"))
    # teaching pictures: the first conv's filters after 50% L2 filter pruning (if it sees RGB),
    # and which weights of the second prunable layer global L1 pruning at 50% removes
    example = E.copy_model(model)
    convs = E.prunable(example, (Conv2d,))
    if convs and convs[0][1].in_channels == 3:
        prune.ln_structured(convs[0][1], "weight", amount=0.5, n=2, dim=0)
        plots.conv_filters(convs[0][1], os.path.join(args.out, "conv1_filters_l2_50.png"))
    unstructured = E.copy_model(model)
    layers = [m for _, m in E.prunable(unstructured)]
    prune.global_unstructured([(m, "weight") for m in layers], pruning_method=prune.L1Unstructured, amount=0.5)
    layer = layers[min(1, len(layers) - 1)]
    plots.mask_image(layer, os.path.join(args.out, "mask_global_l1_50.png"),
                     title=f"{layer.name} after global L1 pruning at 50%: kept (white) "
                           f"{layer.weight_mask.mean():.0%}")
    pngs = sorted(f for f in os.listdir(args.out) if f.endswith(".png"))
    print(f"wrote {args.out}/: results.csv, results.json, {', '.join(pngs)} in {time.perf_counter() - t0:.1f} s")
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
    except (FileNotFoundError, ValueError, TypeError, ImportError) as e:
        print(f"ece662: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ece662: interrupted", file=sys.stderr)
        return 130
