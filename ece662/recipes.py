"""The course's question as an experiment: prune after training, or while training?

:func:`compare_schedules` starts every run from a copy of the same trained model, gives
every schedule the *same number of training epochs* on the same images with the same seed,
and measures test accuracy at each sparsity.  The schedules (``ece662.training.schedules``):

``one-shot``   prune once after training, fine-tune at a small constant rate;
``iterative``  ``rounds`` x (prune a geometric step, fine-tune), the epochs shared out;
``gradual``    prune during training, on Zhu & Gupta's cubic schedule, one-cycle rate;
``rewind``     prune once, retrain with the original (one-cycle) rate, Renda et al.

Nothing here prints or plots; :func:`plot_compare_schedules` draws the records.  A record
is a flat dict: ``schedule, structure, scope, sparsity`` (asked), ``measured_sparsity``,
``epochs, accuracy, dense_accuracy, seconds`` (training time of that run), ``distill``.
"""
import time

import numpy as np

from ece662.experiments import copy_model, evaluate
from ece662.training import schedules as S

SCHEDULES = ("one-shot", "iterative", "gradual", "rewind")


def _run(name, model, X, y, sparsity, epochs, structure, scope, teacher, seed, rounds, finetune_lr, max_lr,
         batch_size):
    common = dict(scope=scope, structure=structure, teacher=teacher, seed=seed, batch_size=batch_size)
    if name == "one-shot":
        return S.one_shot(model, X, y, sparsity, epochs, lr=finetune_lr, **common)
    if name == "iterative":
        return S.iterative(model, X, y, sparsity, epochs, rounds=min(rounds, epochs), lr=finetune_lr, **common)
    if name == "gradual":
        return S.gradual(model, X, y, sparsity, epochs, max_lr=max_lr, **common)
    return S.rewind(model, X, y, sparsity, epochs, max_lr=max_lr, **common)


def compare_schedules(model, X_train, y_train, X_test, y_test, sparsities=(0.5, 0.8, 0.9), epochs=3,
                      schedules=SCHEDULES, structure="unstructured", scope="global", rounds=3, distill=False,
                      finetune_lr=0.002, max_lr=0.02, batch_size=128, seed=0, progress=None):
    """Accuracy against sparsity for each pruning schedule, at one equal epoch budget.

    Parameters
    ----------
    model : Sequential
        The trained, unpruned model (not modified: each run prunes a copy).
    X_train : uint8 (N, 32, 32, 3), y_train : (N,)
        The images every schedule trains on (``get_CINIC10_data(normalize=False,
        channels_first=False)``).
    X_test : (M, 3, 32, 32) float32 normalised (or lazy), y_test : (M,)
        Where accuracy is measured (``get_CINIC10_data()['X_test']``).
    sparsities : sequence of float in [0, 1)
        Fractions of the weights (or, for ``structure='filters'``, of the conv filters) pruned.
    epochs : int
        The budget: training epochs per run, the same for every schedule.
    schedules : subset of ``SCHEDULES``
    structure, scope : see :func:`ece662.training.schedules.prune_to`
    rounds : int
        Prune/fine-tune rounds of ``iterative`` (at most ``epochs``).
    distill : bool
        Every schedule also learns from the unpruned model (Hinton et al., 2015).
    finetune_lr : float
        The constant rate of ``one-shot`` and ``iterative`` fine-tuning.
    max_lr : float
        The one-cycle peak of ``gradual`` and ``rewind``.
    progress : callable, optional
        Called with each record as it is made (e.g. ``print``).

    Returns
    -------
    list of dict
        One record per (schedule, sparsity), plus one ``schedule='dense'`` record.

    Examples
    --------
    >>> from ece662.models import default_convnet
    >>> rng = np.random.default_rng(0)
    >>> X = rng.integers(0, 256, (32, 32, 32, 3), dtype=np.uint8); y = rng.integers(0, 10, 32)
    >>> Xt = rng.standard_normal((16, 3, 32, 32)).astype(np.float32); yt = rng.integers(0, 10, 16)
    >>> recs = compare_schedules(default_convnet(), X, y, Xt, yt, sparsities=(0.5,), epochs=1, batch_size=16)
    >>> [(r["schedule"], r["measured_sparsity"]) for r in recs]
    [('dense', 0.0), ('one-shot', 0.5), ('iterative', 0.5), ('gradual', 0.5), ('rewind', 0.5)]
    """
    for name in schedules:
        if name not in SCHEDULES:
            raise ValueError(f"compare_schedules: unknown schedule {name!r}; choose from {SCHEDULES}")
    epochs = S._check_epochs(epochs)
    for s in sparsities:
        S._check_sparsity(s)
    dense_acc = evaluate(model, X_test, y_test)["accuracy"]
    base = dict(structure=structure, scope=scope, epochs=epochs, distill=bool(distill),
                dense_accuracy=dense_acc)
    records = [dict(base, schedule="dense", sparsity=0.0, measured_sparsity=0.0, accuracy=dense_acc,
                    seconds=0.0)]
    if progress:
        progress(records[0])
    teacher = copy_model(model).eval() if distill else None
    for name in schedules:
        for s in sparsities:    # each point: a fresh copy of the trained model, the same seed and budget
            m = copy_model(model)
            t0 = time.perf_counter()
            _run(name, m, X_train, y_train, s, epochs, structure, scope, teacher, seed, rounds, finetune_lr,
                 max_lr, batch_size)
            seconds = time.perf_counter() - t0
            rec = dict(base, schedule=name, sparsity=float(s),
                       measured_sparsity=round(S.sparsity_of(m, structure), 6),
                       accuracy=evaluate(m, X_test, y_test)["accuracy"], seconds=round(seconds, 1))
            records.append(rec)
            if progress:
                progress(rec)
    return records


def plot_compare_schedules(records, path=None, title=None):
    """One plot: test accuracy against sparsity, a line per schedule, the dense model dotted.

    Returns the figure; given ``path``, saves it as a PNG and closes it.
    """
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    names = [n for n in dict.fromkeys(r["schedule"] for r in records) if n != "dense"]
    for i, name in enumerate(names):
        rs = sorted((r for r in records if r["schedule"] == name), key=lambda r: r["sparsity"])
        ax.plot([r["sparsity"] for r in rs], [r["accuracy"] for r in rs], "o-", color=f"C{i}", label=name)
    dense = [r for r in records if r["schedule"] == "dense"]
    if dense:
        ax.axhline(dense[0]["accuracy"], color="grey", ls=":", label="unpruned")
    what = "conv filters" if records and records[0].get("structure") == "filters" else "conv + linear weights"
    ax.set_xlabel(f"fraction of {what} pruned")
    ax.set_ylabel("test accuracy")
    if records:
        e = records[0]["epochs"]
        ax.set_title(title or f"equal budget: {e} epoch{'s' if e != 1 else ''} per run"
                     + (", distilled" if records[0].get("distill") else ""), fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    if path:
        fig.savefig(path, dpi=110)
        plt.close(fig)
    return fig


def _fractions(text):
    """``"0.5,0.8"`` -> ``[0.5, 0.8]``, or a ValueError that shows what was given."""
    try:
        return [float(s) for s in text.split(",")]
    except ValueError:
        raise ValueError(f"--sparsities: expected comma-separated fractions such as 0.5,0.8,0.9, "
                         f"got {text!r}") from None


def main(argv=None, prog="python -m ece662.recipes"):
    """``python -m ece662 compare`` (or ``python -m ece662.recipes``): run the comparison, write
    ``<out>.json`` and ``<out>.png``."""
    import argparse
    import json
    import sys

    from ece662.data_utils import get_CINIC10_data
    from ece662.pruning_helper import load_model
    ap = argparse.ArgumentParser(prog=prog,
                                 description="Compare pruning schedules at an equal epoch budget.")
    ap.add_argument("--data", default=None, help="data path (default: the library's lookup)")
    ap.add_argument("--model", default=None, help="the trained model (default: the shipped one)")
    ap.add_argument("--mode", default="numpy", choices=["numpy", "torch", "tensorflow", "onnx"],
                    help="the model file's format, as for `python -m ece662 sweep` (default: numpy)")
    ap.add_argument("--sparsities", default="0.5,0.8,0.9",
                    help="fractions of the weights (or filters) to prune, comma-separated (default: 0.5,0.8,0.9)")
    ap.add_argument("--epochs", type=int, default=3, help="the equal budget: epochs per run (default: 3)")
    ap.add_argument("--train-images", type=int, default=None, help="train on a class-balanced subset of N")
    ap.add_argument("--structure", default="unstructured", choices=["unstructured", "filters"],
                    help="prune single weights or whole conv filters (default: unstructured)")
    ap.add_argument("--scope", default="global", choices=["global", "layer"],
                    help="rank weights across all layers or within each (default: global)")
    ap.add_argument("--distill", action="store_true")
    ap.add_argument("--out", default="compare_schedules", help="output path without extension")
    args = ap.parse_args(argv)
    raw = get_CINIC10_data(args.data, splits=("train",), num_training=args.train_images, normalize=False,
                           channels_first=False, progress=False)
    test = get_CINIC10_data(args.data, splits=("test",), progress=False)
    t0 = time.perf_counter()
    recs = compare_schedules(load_model(args.model, mode=args.mode if args.model else 'numpy'), raw["X_train"], raw["y_train"],
                             test["X_test"], test["y_test"],
                             sparsities=_fractions(args.sparsities), epochs=args.epochs,
                             structure=args.structure, scope=args.scope, distill=args.distill,
                             progress=lambda r: print(f"{r['schedule']:>9s}  sparsity {r['sparsity']:.2f}  "
                                                      f"accuracy {r['accuracy']:.4f}  {r['seconds']:.0f} s",
                                                      flush=True))
    total = time.perf_counter() - t0
    with open(args.out + ".json", "w") as f:
        argv = argv if argv is not None else sys.argv[1:]
        json.dump({"command": prog + " " + " ".join(argv),
                   "data": raw["source"], "train_images": int(len(raw["y_train"])),
                   "test_images": int(len(test["y_test"])), "seconds": round(total, 1), "records": recs},
                  f, indent=1)
    plot_compare_schedules(recs, path=args.out + ".png")
    print(f"wrote {args.out}.json and {args.out}.png ({total:.0f} s)")


if __name__ == "__main__":
    main()
