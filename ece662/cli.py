"""``python -m ece662 ...`` / ``ece662 ...``: the assignment's experiments from the command line.

    python -m ece662 sweep                 # the pruning study on the shipped model and the real data
    python -m ece662 evaluate --model m.pt --mode torch
    python -m ece662 compare --epochs 2      # pruning schedules at an equal training budget
"""
import argparse
import csv
import json
import os
import shutil
import signal
import sys
import tempfile
import time

import numpy as np


def _amounts(text):
    """Comma-separated pruning fractions in [0, 1): 1.0 would remove everything there is to prune."""
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated fractions such as 0.1,0.5, got {text!r}")
    if not values or any(not 0 <= v <= 1 for v in values):
        raise argparse.ArgumentTypeError(f"amounts must be fractions in [0, 1], got {text!r}")
    if any(v == 1 for v in values):
        raise argparse.ArgumentTypeError(f"amount 1.0 prunes every weight (or every filter) and leaves a model that "
                                         f"predicts one class; use fractions below 1, such as 0.9 or 0.99 (got {text!r})")
    return values


def _fractions(text):
    """``"0.5,0.8"`` -> ``[0.5, 0.8]``; whether each is a usable sparsity is the experiment's to say."""
    try:
        return [float(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated fractions such as 0.5,0.8,0.9, got {text!r}")


def _names(text):
    """``"snip,rigl"`` -> ``["snip", "rigl"]``; whether each is a known name is the experiment's to say."""
    names = [v.strip() for v in text.split(",") if v.strip()]
    if not names:
        raise argparse.ArgumentTypeError(f"expected comma-separated names, got {text!r}")
    return names


def _count(minimum):
    """An argparse type: a whole number >= ``minimum``."""
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}")
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected a whole number >= {minimum}, got {text!r}")
        return value
    return parse


def _positive_float(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}")
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def _parser():
    p = argparse.ArgumentParser(prog="ece662", description="Pruning small CNNs on CINIC-10.")
    sub = p.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--model", default=None, help="model file (default: the shipped pretrained model)")
    common.add_argument("--mode", default="numpy", choices=["numpy", "torch", "tensorflow", "onnx"],
                        help="model file format: ece662 .npz (numpy), a PyTorch state_dict (torch), a Keras .keras/.h5 "
                             "(tensorflow), an ONNX graph (onnx)")
    common.add_argument("--arch", default=None, metavar="JSON",
                        help="the network a --mode torch or tensorflow file's weights belong to, as JSON "
                             "(json.dump(model.spec(), f)); default: the course CNN")
    common.add_argument("--data", default=None,
                        help="CINIC-10 folder or .npz (default: $ECE662_DATA, datasets/, ../shared/datasets)")
    common.add_argument("--num-test", type=_count(1), default=None, help="evaluate on a class-balanced subset")
    common.add_argument("--normalize", default="cinic", choices=["cinic", "unit", "none"],
                        help="the input scaling the model was trained with: CINIC-10 mean/std (cinic, "
                             "ece662's models), pixels/255 in [0, 1] (unit), raw 0-255 floats (none)")
    sub.add_parser("evaluate", parents=[common], help="print the model's test accuracy")
    cmp = sub.add_parser("compare", help="pruning schedules (one-shot, iterative, gradual, rewinding), or with "
                                         "--methods every pruning method (before, during, after training), at an "
                                         "equal epoch budget",
                         description="Compare pruning schedules at an equal epoch budget; with --methods, compare "
                                     "pruning before, during and after training (SNIP, SynFlow, random, gradual, "
                                     "RigL, SET, one-shot, iterative, lottery ticket with its two controls, "
                                     "rewinding, a small dense network), each point over --seeds seeds.")
    cmp.add_argument("--data", default=None, help="data path (default: the library's lookup)")
    cmp.add_argument("--model", default=None, help="the trained model (default: the shipped one)")
    cmp.add_argument("--mode", default="numpy", choices=["numpy", "torch", "tensorflow", "onnx"],
                     help="the model file's format, as for `python -m ece662 sweep` (default: numpy)")
    cmp.add_argument("--sparsities", type=_fractions, default=[0.5, 0.8, 0.9],
                     help="fractions of the weights (or filters) to prune, comma-separated (default: 0.5,0.8,0.9)")
    cmp.add_argument("--epochs", type=int, default=3, help="the equal budget: epochs per run (default: 3)")
    cmp.add_argument("--train-images", type=_count(1), default=None, help="train on a class-balanced subset of N")
    cmp.add_argument("--structure", default="unstructured", choices=["unstructured", "filters"],
                     help="prune single weights or whole conv filters (default: unstructured)")
    cmp.add_argument("--scope", default="global", choices=["global", "layer"],
                     help="rank weights across all layers or within each (default: global)")
    cmp.add_argument("--distill", action="store_true", help="every schedule also learns from the unpruned model")
    cmp.add_argument("--methods", type=_names, default=None,
                     help="compare pruning before, during and after training instead of the schedules: "
                          "comma-separated names of snip, synflow, random, gradual, rigl, set, one-shot, iterative, "
                          "lottery, rewind, small-dense, dense-scratch (or 'all'); see experiments.compare_methods")
    cmp.add_argument("--seeds", type=_count(1), default=1, help="with --methods: runs per point, seeds 0..N-1 "
                                                                "(default: 1)")
    cmp.add_argument("--allocation", type=_names, default=["default"],
                     help="with --methods: the allocations to run where a method can use them, comma-separated "
                          "(global, lamp, erk, uniform), 'default' (each method's own) or 'all'")
    cmp.add_argument("--out", default=None, help="output path without extension (default: compare_schedules, or "
                                                 "compare_methods with --methods)")
    sw = sub.add_parser("sweep", parents=[common], help="unstructured and structured pruning sweeps")
    sw.add_argument("--out", default="runs/sweep", help="output folder for CSV, JSON and plots")
    sw.add_argument("--amounts", type=_amounts, default=[0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8],
                    help="unstructured (global L1) amounts, comma-separated")
    sw.add_argument("--filter-amounts", type=_amounts, default=[0.25, 0.5, 0.75],
                    help="structured (L2 filter) amounts per conv layer, comma-separated")
    sw.add_argument("--scope", choices=["layer", "global", "both"], default="layer",
                    help="filter pruning per conv layer (the notebook's way), ranked globally, or both")
    sw.add_argument("--finetune", type=_count(0), default=0, metavar="EPOCHS",
                    help="fine-tune every pruned model for EPOCHS epochs (masks held) and report both accuracies")
    sw.add_argument("--iterative", type=_count(0), default=0, metavar="STEPS",
                    help="also prune in STEPS rounds with fine-tuning between them (needs --finetune)")
    sw.add_argument("--finetune-images", type=_count(1), default=None,
                    help="fine-tune on a class-balanced subset of the training images")
    sw.add_argument("--finetune-lr", type=_positive_float, default=0.01, help="peak learning rate of fine-tuning")
    sw.add_argument("--timing-images", type=_count(0), default=100,
                    help="test images each timed round runs (0: no timing)")
    sw.add_argument("--timing-repeats", type=_count(1), default=35,
                    help="interleaved rounds (dense, pruned, ...) per pruned model, spread over the timing phase; "
                         "the median and its rerun interval come from these")
    sw.add_argument("--no-timing", action="store_true", help="accuracy only: skip the speed columns")
    sw.add_argument("--seed", type=_count(0), default=0)
    dc = sub.add_parser("compress", help="Deep Compression of the shipped pruned models: sparse storage, weight "
                                         "sharing, Huffman coding; bytes and accuracy per stage",
                        description="Deep Compression (Han, Mao & Dally, ICLR 2016) of the shipped pruned models.")
    dc.add_argument("--out", default="runs/compress", help="folder for the compressed models, the JSON and the "
                                                           "figure (default: runs/compress)")
    dc.add_argument("--data", default=None, help="data path (default: the library's lookup)")
    dc.add_argument("--models", default="pruned-80,pruned-90,filters-50",
                    help="shipped models, comma-separated (default: pruned-80,pruned-90,filters-50)")
    dc.add_argument("--bits", default="2,3,4,5,6,7,8,5/4",
                    help="index widths of the shared weights, comma-separated, each 1..8 (2 to 256 shared values "
                         "per layer); c/f gives conv layers c bits and linear ones f (default: 2,3,4,5,6,7,8,5/4)")
    dc.add_argument("--finetune-epochs", type=_count(1), default=1, help="epochs of centroid fine-tuning (default: 1)")
    dc.add_argument("--finetune-images", type=_count(1), default=None,
                    help="fine-tune on a class-balanced subset of the training images (default: all)")
    dc.add_argument("--finetune-lr", type=_positive_float, default=1e-3,
                    help="peak learning rate of the centroids' summed gradients (default: 0.001)")
    dc.add_argument("--num-test", type=_count(1), default=None,
                    help="evaluate on a class-balanced subset of this many test images (default: all)")
    dc.add_argument("--seed", type=_count(0), default=0,
                    help="seed of the fine-tuning's shuffles and augmentation, and of the training subset (default: 0)")
    return p


def _load(args):
    from ece662.data_utils import get_CINIC10_data
    from ece662.pruning_helper import load_model
    from ece662.io import read_architecture
    if args.arch and args.mode not in ("torch", "tensorflow"):
        raise ValueError(f"--arch gives the network of a --mode torch or tensorflow file; "
                         f"--mode {args.mode} files carry their own")
    from ece662.formats.torch_format import command_line_advice
    arch = read_architecture(args.arch) if args.arch else None
    try:
        model = load_model(args.model, mode=args.mode, model=arch)
    except ValueError as e:          # its advice in the terms of the command line: --arch, not model=
        raise ValueError(command_line_advice(str(e))) from None
    data = get_CINIC10_data(args.data, splits=("test",), num_test=args.num_test, normalize=args.normalize)
    _check_classifier(model, args.model, data["X_test"])
    return model, data


def _check_filter_amounts(model, amounts):
    """Refuse a per-layer filter amount that rounds to every live filter of some conv layer
    (0.99 of 32 filters is round(31.68) = 32): that layer would output only its biases, and the
    network would predict one class.  (``--scope global`` keeps one filter per layer itself.)"""
    from ece662 import experiments as E
    from ece662.layers import Conv2d
    from ece662.pruning.masks import amount_to_count
    live = {name: int(conv.alive_filters().sum()) for name, conv in E.prunable(model, (Conv2d,))}
    live = {name: n for name, n in live.items() if n}
    for a in amounts:
        for name, n in live.items():
            if amount_to_count(a, n) >= n:
                # the largest amount in steps of 0.01 that leaves every layer a filter
                top = max(b / 100 for b in range(100) if all(amount_to_count(b / 100, m) < m for m in live.values()))
                raise ValueError(f"--filter-amounts {a:g} prunes all {n} live filters of {name} "
                                 f"(round({a:g} x {n}) = {amount_to_count(a, n)}), leaving a layer with no "
                                 f"filter; use at most {top:.2f}, or --scope global, which keeps one per layer")


def _check_classifier(model, source, X):
    """Refuse a model that cannot score the images' classes (no layers, or not one score per class
    for each image), before its answers are compared with the labels."""
    where = source or "the shipped model"
    if not list(model.named_children()):
        raise ValueError(f"{where}: the model has no layers, so it computes no class scores; save the "
                         f"trained network (ece662.save_model(model, path)), not an empty Sequential()")
    out = model.output_shape((1,) + tuple(X.shape[1:]))
    if len(out) != 2 or out[1] < 2:
        raise ValueError(f"{where}: the model turns a {tuple(X.shape[1:])} image into an output of shape "
                         f"{tuple(out[1:])}, not one score per class; it must end in a classifier "
                         f"(e.g. Flatten and Linear(..., 10))")


def _warn_if_near_chance(model, accuracy, X):
    """The loaded model's accuracy near chance: say so, with the command-line fixes (a model
    loaded pruned may be near chance because of its pruning, so it is not warned about)."""
    import warnings
    from ece662.pruning import is_pruned
    from ece662.pruning_helper import NearChanceWarning, near_chance_message
    if is_pruned(model):
        return
    num_classes = model.output_shape((1,) + tuple(X.shape[1:]))[1]
    message = near_chance_message(accuracy, num_classes, len(X), where="cli", who="unpruned model")
    if message:
        warnings.warn(message, NearChanceWarning)


_SHORT = {"accuracy_finetuned": "acc_finetuned", "accuracy_imagenet": "acc_imagenet",
          "images_per_s_pruned": "img/s_pruned", "speedup_iqr": "speedup_IQR",
          "speedup_interval": "speedup_95%"}


def _cell(r, k):
    if k == "speedup_iqr":
        return f"{r['speedup_iqr_low']:.2f}-{r['speedup_iqr_high']:.2f}" if "speedup_iqr_low" in r else ""
    if k == "speedup_interval":
        return f"{r['speedup_low']:.2f}-{r['speedup_high']:.2f}" if "speedup_low" in r else ""
    if k == "flag":
        return "!" if r.get("speedup_flag") or r.get("masks_only_flag") else ""
    v = r.get(k, "")
    if isinstance(v, float):
        if k.startswith("images"):
            return f"{v:.0f}"
        if k in ("speedup", "masks_only", "flop_ideal"):
            return f"{v:.2f}x" if np.isfinite(v) else "no FLOPs"     # every filter pruned
        return f"{v:.4f}"
    return str(v)


# what every column of the sweep means: the legend under its table and the README beside results.csv
COLUMNS = {
    "method": "how the model was pruned: global_l1_unstructured (one magnitude threshold for all conv and linear "
              "weights), l1_unstructured (the same fraction of every layer), l2_structured_filters (whole conv "
              "filters by L2 norm, each conv layer), none (the unpruned model)",
    "target": "the fraction asked for: of the conv + linear weights for unstructured rows, of each conv layer's "
              "FILTERS for filter rows (so 0.25 of the filters is about 0.13 of the weights)",
    "sparsity": "the fraction of conv + linear weights that are zero (what target amounts to)",
    "accuracy": "test accuracy (accuracy_<origin>: on the images of that origin; accuracy_finetuned: after "
                "fine-tuning with the masks held)",
    "dead_filters": "conv filters whose weights are all zero (the kernels skip them)",
    "flop_ideal": "dense FLOPs / FLOPs left when dead filters and zero weights are skipped: the most any kernel "
                  "could gain",
    "speedup": "median ratio of the unpruned model's time to the pruned model's, timed interleaved round by round",
    "speedup_95%": "where a rerun's median speedup lands 19 times in 20 (speedup_low, speedup_high in the CSV)",
    "masks_only": "the same ratio for the dense kernels on the masked weights: the same work, so 1x within its "
                  "interval; only skipping pays",
    "img/s_pruned": "images per second of the pruned model in those rounds (unpaired: moves with the machine's load; "
                    "images_per_s_pruned and images_per_s_dense in the CSV)",
    "flag": "! when a ratio's whole interval is above its FLOP ideal, or a masks_only interval misses 1x: "
            "noise, not a result (the line under the table says which; speedup_flag and masks_only_flag in the "
            "CSV say why)",
    "finetune_epochs": "epochs of fine-tuning with the masks held, when asked (--finetune)",
    "sparsity_<layer>": "each layer's fraction of zero weights",
    "params_nonzero, flops_dense, flops_skip, flops_kernel, flops_nonzero": (
        "non-zero weights; FLOPs per image dense, skipping dead filters, what the kernels really compute (their "
        "tiles' padding to whole blocks of filters included: flops_dense / flops_kernel is the speedup they can "
        "reach), and "
        "counting non-zero weights only"),
    "*_iqr_low, *_iqr_high": "the single rounds' interquartile range",
    "kernels": "the kernel each conv ran (see model.plan())",
    "test_images, timing_images, timing_rounds": "how much each number rests on",
}


def _legend(keys):
    """One line per column shown, under the sweep's table."""
    shown = [_SHORT.get(k, k) for k in keys]
    return "\n".join(f"  {k}: {COLUMNS[k]}" for k in shown if k in COLUMNS)


def _readme(records):
    """The README written beside results.csv: what each column means."""
    lines = ["# The sweep's results", "",
             "`results.csv` and `results.json` hold one row per pruned model, written by `python -m ece662 sweep`.",
             "The columns:", ""]
    lines += [f"- `{k}`: {v}" for k, v in COLUMNS.items()]
    return "\n".join(lines) + "\n"


def _table(records, keys):
    """The sweep's table; flagged speeds get a "!" and a line below saying why."""
    widths = [22] + [max(9, len(_SHORT.get(k, k))) for k in keys[1:]]
    lines = ["  ".join(f"{_SHORT.get(k, k):>{w}}" for k, w in zip(keys, widths))]
    notes = []
    for r in records:
        lines.append("  ".join(f"{_cell(r, k):>{w}}" for k, w in zip(keys, widths)))
        for col in ("speedup_flag", "masks_only_flag"):
            if "flag" in keys and r.get(col):
                notes.append(f"! {r['method']} {r['target']:g}: {r[col]}")
    return "\n".join(lines + notes)


def _check_out(out):
    if os.path.exists(out) and not os.path.isdir(out):        # makedirs would only say "File exists"
        raise SystemExit(f"ece662: the output folder {out} exists and is not a folder: choose another --out")
    try:
        os.makedirs(out, exist_ok=True)
        probe = os.path.join(out, ".write-test")
        open(probe, "w").close()
        os.remove(probe)
    except OSError as e:
        raise SystemExit(f"ece662: cannot write to the output folder {out}: {e.strerror}")


# every file a sweep writes; a re-run removes the ones it did not write (they belonged to the run it replaces)
OUTPUTS = ("README.md", "results.csv", "results.json", "accuracy_vs_sparsity.png", "per_layer_sparsity.png",
           "speedup_vs_ideal.png", "weight_histograms.png", "conv1_filters_l2_50.png", "mask_global_l1_50.png")
INCOMPLETE = "incomplete"


def _save(records, folder):
    lead = ["method", "target", "sparsity", "accuracy"]
    keys = lead + sorted({k for r in records for k in r} - set(lead))
    tmp = os.path.join(folder, ".results.json.tmp")
    with open(tmp, "w") as f:
        json.dump(records, f, indent=1)
    os.replace(tmp, os.path.join(folder, "results.json"))
    tmp = os.path.join(folder, ".results.csv.tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(records)
    os.replace(tmp, os.path.join(folder, "results.csv"))
    with open(os.path.join(folder, ".README.md.tmp"), "w") as f:
        f.write(_readme(records))
    os.replace(os.path.join(folder, ".README.md.tmp"), os.path.join(folder, "README.md"))


class _Staging:
    """A run is written into a hidden folder inside ``out`` and moved into place only when complete.

    Until :meth:`commit`, ``out`` keeps the previous complete run untouched.  ``commit`` moves
    the new files over the old ones (``os.replace``: each file is either the old or the new one,
    never half written; ``results.json`` goes last and Ctrl-C is held off meanwhile) and removes
    the previous run's files this run did not write.  :meth:`keep_incomplete` moves an
    interrupted run's finished rows to ``out/incomplete/`` instead.
    """

    def __init__(self, out):
        self.out = out
        self.dir = tempfile.mkdtemp(prefix=".sweep-in-progress-", dir=out)

    def path(self, name):
        return os.path.join(self.dir, name)

    def commit(self):
        written = sorted(os.listdir(self.dir), key=lambda f: (f == "results.json", f))
        stale = [f for f in OUTPUTS if f not in written and os.path.exists(os.path.join(self.out, f))]
        held = signal.signal(signal.SIGINT, signal.SIG_IGN) if _main_thread() else None
        try:
            for f in written:
                os.replace(os.path.join(self.dir, f), os.path.join(self.out, f))
            for f in stale:
                os.remove(os.path.join(self.out, f))
            os.rmdir(self.dir)
        finally:
            if held is not None:
                signal.signal(signal.SIGINT, held)
        return sorted(written), stale

    def keep_incomplete(self):
        dest = os.path.join(self.out, INCOMPLETE)
        if os.path.isdir(dest):
            shutil.rmtree(dest)
        for f in os.listdir(self.dir):      # only the rows: half-drawn pictures are not kept
            if not f.startswith("results."):
                os.remove(os.path.join(self.dir, f))
        os.replace(self.dir, dest)
        return dest


def _main_thread():
    import threading
    return threading.current_thread() is threading.main_thread()


def _warn_in_one_line(message, category, *args, **kwargs):
    print(f"ece662: warning: {message}", file=sys.stderr)


def _sweep(args):
    import matplotlib
    matplotlib.use("Agg")  # the command line writes files and never opens windows
    from tqdm.auto import tqdm

    from ece662 import experiments as E
    from ece662 import plots
    from ece662.data_utils import get_CINIC10_data
    if args.iterative and not args.finetune:
        raise SystemExit("ece662: --iterative needs --finetune EPOCHS (the epochs between pruning steps)")
    if args.finetune and args.normalize != "cinic":
        raise SystemExit(f"ece662: --finetune trains on CINIC-10 mean/std scaled images, so it cannot "
                         f"fine-tune a model trained with --normalize {args.normalize}; drop --finetune "
                         f"(and --iterative), or use a model trained on CINIC-10's scaling")
    _check_out(args.out)
    t0 = time.perf_counter()
    model, data = _load(args)
    if args.scope in ("layer", "both"):
        _check_filter_amounts(model, args.filter_amounts)
    X, y, origin = data["X_test"], data["y_test"], data["origin_test"]
    print(f"data: {data['source']} ({len(y)} test images)")
    finetune_data = None
    if args.finetune:
        raw = get_CINIC10_data(args.data, splits=("train",), normalize=False, channels_first=False,
                               num_training=args.finetune_images, seed=args.seed)
        finetune_data = (np.asarray(raw["X_train"]), raw["y_train"])
        print(f"fine-tuning: {args.finetune} epoch(s) on {len(raw['y_train'])} training images per pruned model")
    timing_images = 0 if args.no_timing else min(args.timing_images, len(y))
    setup = E.Setup(X, y, origin, timing_images=timing_images, timing_repeats=args.timing_repeats,
                    finetune_data=finetune_data, finetune_epochs=args.finetune, finetune_lr=args.finetune_lr,
                    seed=args.seed, spread_timing=True)
    if timing_images:
        print(f"speed: each pruned model timed against the unpruned one, interleaved, {args.timing_repeats} rounds "
              f"of {timing_images} test images spread over the timing phase (median ratio; speedup_95%: where a "
              f"rerun's median lands 19 times in 20)")
    base = E.baseline(model, setup=setup)
    print(f"unpruned test accuracy: {base['accuracy']:.4f}")
    _warn_if_near_chance(model, base["accuracy"], X)
    records = [base]
    jobs = [("unstructured", a) for a in args.amounts]
    scopes = ["layer", "global"] if args.scope == "both" else [args.scope]
    jobs += [(f"structured-{sc}", a) for sc in scopes for a in args.filter_amounts]
    if args.iterative:
        jobs += [("iterative", a) for a in args.amounts]
    staging = _Staging(args.out)
    try:
        for kind, a in tqdm(jobs, desc="sweep", unit="model", leave=False):
            if kind == "unstructured":
                records += E.unstructured_sweep(model, amounts=[a], setup=setup)
            elif kind == "iterative":
                records += E.iterative_sweep(model, setup, amounts=[a], steps=args.iterative,
                                             epochs_per_step=args.finetune)
            else:
                records += E.structured_sweep(model, amounts=[a], scope=kind.split("-")[1], setup=setup)
        if timing_images:           # every model's rounds spread over one timing phase
            setup.time_all(progress=lambda rounds: tqdm(rounds, desc="timing", unit="round", leave=False))
        _save(records, staging.dir)
        _figures(model, records, base, staging, timing=bool(timing_images))
    except BaseException as e:  # an interrupted sweep keeps its finished rows apart; the last complete run stays
        _save(records, staging.dir)
        kept = staging.keep_incomplete()
        print(f"ece662: {'interrupted' if isinstance(e, KeyboardInterrupt) else 'stopped'}: the {len(records)} "
              f"rows finished are in {kept}/ ({args.out}/results.* are untouched)", file=sys.stderr)
        raise
    cols = ["method", "target", "sparsity", "accuracy"]
    if args.finetune:
        cols.append("accuracy_finetuned")
    cols += [c for c in ("accuracy_imagenet",) if any(c in r for r in records)]
    cols += ["dead_filters", "flop_ideal"]
    if timing_images:
        cols += ["speedup", "speedup_interval", "masks_only", "images_per_s_pruned", "flag"]
    print(_table(records, cols))
    print("what the columns mean (also in " + os.path.join(args.out, "README.md") + "):\n" + _legend(cols))
    written, stale = staging.commit()
    print(f"wrote {args.out}/: {', '.join(written)} in {time.perf_counter() - t0:.1f} s"
          + (f" (removed the previous run's {', '.join(stale)})" if stale else ""))
    return 0


def _figures(model, records, base, staging, timing):
    from ece662 import experiments as E
    from ece662 import plots
    from ece662 import pruning as prune
    from ece662.layers import Conv2d
    plots.accuracy_vs_sparsity(records[1:], base, staging.path("accuracy_vs_sparsity.png"))
    plots.per_layer_sparsity(records, staging.path("per_layer_sparsity.png"))
    if timing:
        plots.speedup_vs_ideal(records[1:], base, staging.path("speedup_vs_ideal.png"))
    plots.weight_histograms(model, (0.2, 0.5, 0.8), staging.path("weight_histograms.png"))
    # teaching pictures: the first conv's filters after 50% L2 filter pruning (if it sees RGB),
    # and which weights of the second prunable layer global L1 pruning at 50% removes
    example = E.copy_model(model)
    convs = E.prunable(example, (Conv2d,))
    if convs and convs[0][1].in_channels == 3:
        prune.ln_structured(convs[0][1], "weight", amount=0.5, n=2, dim=0)
        plots.conv_filters(convs[0][1], staging.path("conv1_filters_l2_50.png"))
    unstructured = E.copy_model(model)
    layers = [m for _, m in E.prunable(unstructured)]
    prune.global_unstructured([(m, "weight") for m in layers], pruning_method=prune.L1Unstructured, amount=0.5)
    layer = layers[min(1, len(layers) - 1)]
    plots.mask_image(layer, staging.path("mask_global_l1_50.png"),
                     title=f"{layer.name} after global L1 pruning at 50%: kept (white) "
                           f"{layer.weight_mask.mean():.0%}")


def _check_out_prefix(out):
    """Before any training: the folder of ``compare``'s ``--out`` prefix exists and takes files."""
    folder = os.path.dirname(os.path.abspath(out))
    if not os.path.isdir(folder):
        raise SystemExit(f"ece662: the folder of --out {out}, {folder}, does not exist; create it first "
                         f"(mkdir -p {folder}) or choose another --out")
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as e:
        raise SystemExit(f"ece662: cannot write to the folder of --out {out}, {folder}: {e.strerror}")


def _compare_inputs(args):
    """What both comparisons train and score: the training images (raw uint8, ``--train-images`` of them), the
    test split (normalised) and the trained model (``--model``, or the shipped one), checked to be a classifier
    of the test images."""
    from ece662.data_utils import get_CINIC10_data
    from ece662.pruning_helper import load_model
    raw = get_CINIC10_data(args.data, splits=("train",), num_training=args.train_images, normalize=False,
                           channels_first=False, progress=False)
    test = get_CINIC10_data(args.data, splits=("test",), progress=False)
    model = load_model(args.model, mode=args.mode if args.model else "numpy")
    _check_classifier(model, args.model, test["X_test"])
    return raw, test, model


def _compare(args, argv):
    """``python -m ece662 compare``: every schedule at the same epoch budget (``experiments.compare_schedules``);
    writes ``<out>.json`` (with the command that made it) and ``<out>.png``.

    The folder of ``--out`` is checked before anything is loaded or trained, and each file is written
    to a temporary name and renamed into place: a run that fails leaves the previous files whole.
    """
    if args.methods is not None:
        return _compare_methods(args, argv)
    if args.seeds != 1 or args.allocation != ["default"]:
        raise ValueError("--seeds and --allocation belong to the method comparison: add --methods NAMES (or all), "
                         "or drop them to compare the schedules")
    args.out = args.out or "compare_schedules"
    import matplotlib
    matplotlib.use("Agg")
    from ece662 import experiments as E
    from ece662 import plots
    from ece662.formats.common import atomic_write
    _check_out_prefix(args.out)
    raw, test, model = _compare_inputs(args)
    t0 = time.perf_counter()
    recs = E.compare_schedules(model, raw["X_train"], raw["y_train"], test["X_test"], test["y_test"],
                               sparsities=args.sparsities, epochs=args.epochs, structure=args.structure,
                               scope=args.scope, distill=args.distill,
                               progress=lambda r: print(f"{r['schedule']:>9s}  sparsity {r['sparsity']:.2f}  "
                                                        f"accuracy {r['accuracy']:.4f}  {r['seconds']:.0f} s",
                                                        flush=True))
    total = time.perf_counter() - t0
    text = json.dumps({"command": "python -m ece662 " + " ".join(argv),
                       "data": raw["source"], "train_images": int(len(raw["y_train"])),
                       "test_images": int(len(test["y_test"])), "seconds": round(total, 1), "records": recs},
                      indent=1)
    with atomic_write(args.out + ".json", "compare") as f:
        f.write(text.encode())
    with atomic_write(args.out + ".png", "compare") as f:
        plots.compare_schedules(recs, path=f)
    print(f"wrote {args.out}.json and {args.out}.png ({total:.0f} s)")
    return 0


def _compress(args, argv):
    """``python -m ece662 compress``: :func:`ece662.compress.table.compress_model` for each model; prints the
    tables, writes ``<name>-<bits>bits.npz`` (read back by ``load_model(path)``), ``compression.json`` and
    ``compression.png`` into ``--out``."""
    from ece662.compress.table import accuracy, compress_model, draw, render
    from ece662.data_utils import get_CINIC10_data
    from ece662.formats.common import atomic_write
    from ece662.io import load_model
    from ece662.models import SHIPPED
    from ece662.timing import cpu_description
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    unknown = [n for n in names if n not in SHIPPED]
    if not names or unknown:
        raise ValueError(f"--models: expected shipped model names from {sorted(SHIPPED)}, got {args.models!r}")
    try:
        bits = [tuple(int(v) for v in b.split("/")) if "/" in b else int(b) for b in args.bits.split(",")]
    except ValueError:
        raise ValueError(f"--bits: expected widths such as 2,4,8 or 5/4 (conv/linear), got {args.bits!r}") from None
    if any(not 1 <= v <= 8 for b in bits for v in (b if isinstance(b, tuple) else (b,))) or \
            any(isinstance(b, tuple) and len(b) != 2 for b in bits):
        raise ValueError(f"--bits: every width must lie in 1..8 and a pair be conv/linear, got {args.bits!r}")
    _check_out(args.out)
    t0 = time.perf_counter()
    test = get_CINIC10_data(args.data, splits=("test",), num_test=args.num_test, progress=False)
    raw = get_CINIC10_data(args.data, splits=("train",), num_training=args.finetune_images, normalize=False,
                           channels_first=False, seed=args.seed, progress=False)
    X_train = np.asarray(raw["X_train"])
    dense = load_model("dense")
    dense_params = int(sum(p.size for p in dense.parameters()))
    results = {"command": "python -m ece662 " + " ".join(argv), "data": test["source"],
               "test_images": int(len(test["y_test"])), "train_images": int(len(raw["y_train"])),
               "finetune_epochs": args.finetune_epochs, "finetune_lr": args.finetune_lr,
               "dense_params": dense_params, "dense_bytes": 4 * dense_params,
               "dense_accuracy": accuracy(dense, test["X_test"], test["y_test"]), "records": []}
    print(f"data: {test['source']} ({len(test['y_test'])} test images, fine-tuning on {len(raw['y_train'])} "
          f"training images, {args.finetune_epochs} epoch(s) per width)")
    for name in names:
        results["records"].append(compress_model(
            load_model(name), name, test["X_test"], test["y_test"], X_train, raw["y_train"], bits=bits,
            out=args.out, epochs=args.finetune_epochs, lr=args.finetune_lr, seed=args.seed,
            log=lambda line: print(line, flush=True)))
    head = "pruned-90" if "pruned-90" in names else names[0]
    label = "5/4" if any(b == (5, 4) for b in bits) else str(bits[-1] if not isinstance(bits[-1], tuple)
                                                              else "/".join(map(str, bits[-1])))
    results["headline"] = {"model": head, "bits": label}
    results["seconds"] = round(time.perf_counter() - t0, 1)
    results["cpu"] = cpu_description()
    with atomic_write(os.path.join(args.out, "compression.json"), "compress") as f:
        f.write(json.dumps(results, indent=1).encode())
    with atomic_write(os.path.join(args.out, "compression.png"), "compress") as f:
        draw(results, f)
    print(render(results))
    print(f"wrote {args.out}/: compression.json, compression.png and {sum(len(r['shared']) for r in results['records'])}"
          f" compressed models (load_model(path) reads each) in {results['seconds']:.1f} s")
    return 0


def _compare_methods(args, argv):
    """``python -m ece662 compare --methods ...``: pruning before, during and after training, every arm at the same
    epoch budget and each point over ``--seeds`` seeds (``experiments.compare_methods``); writes ``<out>.json``
    (the command, its time, the CPU and every run) and ``<out>.png`` (accuracy against sparsity, one line per
    method, the seeds' spread as error bars), each written whole or not at all."""
    import matplotlib
    matplotlib.use("Agg")
    import datetime
    from ece662 import experiments as E
    from ece662 import plots
    from ece662.formats.common import atomic_write
    from ece662.timing import cpu_description
    methods = list(E.METHODS) if args.methods == ["all"] else E.check_methods(args.methods)
    allocation = args.allocation[0] if args.allocation in (["default"], ["all"]) else args.allocation
    unknown = [a for a in ([] if isinstance(allocation, str) else allocation) if a not in E.ALLOCATIONS]
    if unknown:
        raise ValueError(f"--allocation: unknown {', '.join(map(repr, unknown))}; choose from "
                         f"{', '.join(E.ALLOCATIONS)}, or 'default' or 'all'")
    if args.structure != "unstructured" or args.scope != "global" or args.distill:
        raise ValueError("--structure, --scope and --distill belong to the schedule comparison; with --methods "
                         "each method prunes single weights, shared out by --allocation")
    args.out = args.out or "compare_methods"
    _check_out_prefix(args.out)
    raw, test, model = _compare_inputs(args)
    t0 = time.perf_counter()

    def show(r):
        print(f"{r['method']:>19s} {r['allocation']:>7s}  sparsity {r['sparsity']:.2f} (measured "
              f"{r['measured_sparsity']:.4f})  seed {r['seed']}  accuracy {r['accuracy']:.4f}  {r['seconds']:.0f} s",
              flush=True)
    import warnings
    from ece662.pruning import DeadClassWarning
    with warnings.catch_warnings(record=True) as caught:
        # a global threshold over a freshly initialised network can empty classifier rows: that is part of what
        # those arms do, and their accuracy shows it; the command says so once instead of advising code changes
        warnings.simplefilter("always", DeadClassWarning)
        recs = E.compare_methods(model, raw["X_train"], raw["y_train"], test["X_test"], test["y_test"],
                                 methods=methods, sparsities=args.sparsities, epochs=args.epochs,
                                 seeds=range(args.seeds), allocation=allocation, progress=show)
    for w in caught:
        if not issubclass(w.category, DeadClassWarning):
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)
    dead = sum(issubclass(w.category, DeadClassWarning) for w in caught)
    if dead:
        print(f"ece662: {dead} pruning step(s) emptied whole rows of the classifier (classes it can no longer "
              f"predict): a global magnitude threshold over a network whose classifier weights are small does "
              f"that; it is part of those arms and their accuracy includes it", file=sys.stderr)
    total = time.perf_counter() - t0
    summary = E.summarize_methods(recs)
    text = json.dumps({"command": "python -m ece662 " + " ".join(argv), "data": raw["source"],
                       "train_images": int(len(raw["y_train"])), "test_images": int(len(test["y_test"])),
                       "epochs": args.epochs, "seeds": args.seeds, "seconds": round(total, 1),
                       "cpu": cpu_description(), "threads": os.environ.get("NUMBA_NUM_THREADS", "all"),
                       "date": datetime.date.today().isoformat(), "records": recs, "summary": summary}, indent=1)
    with atomic_write(args.out + ".json", "compare") as f:
        f.write(text.encode())
    with atomic_write(args.out + ".png", "compare") as f:
        plots.compare_methods(summary, path=f)
    print(f"{'method':>19s} {'alloc':>7s} {'sparsity':>8s} {'mean':>6s} {'low-high':>13s} seeds")
    for r in summary:
        print(f"{r['method']:>19s} {r['allocation']:>7s} {r['sparsity']:8.2f} {r['mean']:.4f} "
              f"{r['low']:.4f}-{r['high']:.4f} {r['n']:5d}")
    print(f"wrote {args.out}.json and {args.out}.png ({total:.0f} s)")
    return 0


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    args = _parser().parse_args(argv)
    import warnings
    shown, warnings.showwarning = warnings.showwarning, _warn_in_one_line   # "the machine is busy": one line
    try:
        if args.command == "compare":
            return _compare(args, argv)
        if args.command == "compress":
            return _compress(args, argv)
        if args.command == "evaluate":
            from ece662.pruning_helper import NearChanceWarning, test_model
            model, data = _load(args)
            with warnings.catch_warnings():      # said below, with the command line's fixes
                warnings.simplefilter("ignore", NearChanceWarning)
                accuracy = test_model(model, [data["X_test"], data["y_test"]])
            _warn_if_near_chance(model, accuracy, data["X_test"])
            return 0
        return _sweep(args)
    except (FileNotFoundError, ValueError, TypeError, ImportError) as e:
        print(f"ece662: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"ece662: {e.strerror or e}" + (f": {e.filename}" if e.filename else ""), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ece662: interrupted", file=sys.stderr)
        return 130
    finally:
        warnings.showwarning = shown
