"""Matplotlib figures of models and of the experiment records (``ece662.experiments``).

Every function returns the figure and, given ``path``, saves it as a PNG and closes it.
"""
import matplotlib.pyplot as plt
import numpy as np

from ece662.pruning import prunable
from ece662.pruning.masks import amount_to_count


def _save(fig, path, caption=None):
    """Lay out, add the one-line ``caption`` under the axes, save (if ``path``) and close."""
    if caption:
        fig.text(0.5, 0.01, caption, ha="center", va="bottom", fontsize=7, style="italic")
        fig.tight_layout(rect=(0, 0.07, 1, 1))
    else:
        fig.tight_layout()
    if path:
        fig.savefig(path, dpi=110)
        plt.close(fig)
    return fig


def describe(method, finetune_epochs=None):
    """A sweep method in plain words, e.g. ``"global magnitude, pruned once"`` or
    ``"filters (L2), fine-tuned 1 epoch"`` (``finetune_epochs`` given)."""
    import re
    it = re.fullmatch(r"global_l1_iterative_(\d+)x(\d+)ep", method)
    if it:
        steps, ep = int(it.group(1)), int(it.group(2))
        return f"global magnitude, {steps} rounds of prune + fine-tune {ep} epoch{'s' * (ep != 1)}"
    what = {"none": "unpruned", "global_l1_unstructured": "global magnitude",
            "l2_structured_filters": "filters (L2)",
            "l2_structured_filters_global": "filters (L2, ranked globally)"}.get(method, method)
    if method == "none":
        return what
    if finetune_epochs:
        return f"{what}, fine-tuned {finetune_epochs} epoch{'s' * (finetune_epochs != 1)}"
    return f"{what}, pruned once"


def _is_filters(method):
    return "structured_filters" in method


def _label_filters(ax, rs, ys, color, below=False):
    """Write "25% of filters" next to each structured point: its x axis is weight sparsity.  Labels alternate
    above and below their points and sit on a pale box, so that neighbouring markers do not hide them."""
    for i, (r, y) in enumerate(zip(rs, ys)):
        up = (i % 2 == 0) != below
        ax.annotate(f"{r['target']:.0%} of filters", (r["sparsity"], y), textcoords="offset points",
                    xytext=(6, 5 if up else -12), fontsize=7, color=color,
                    bbox=dict(boxstyle="round,pad=0.15", fc="white", ec="none", alpha=0.75))


def accuracy_vs_sparsity(records, baseline=None, path=None):
    """Test accuracy against the fraction of zero weights, one colour per method.

    Pruned once: filled circles, solid; after fine-tuning with the masks held: hollow squares,
    dashed (when the records have ``accuracy_finetuned``); pruning in rounds: triangles.
    Filter-pruning points say which fraction of each conv layer's filters went.
    """
    fig, ax = plt.subplots(figsize=(10, 4.6))
    methods = list(dict.fromkeys(r["method"] for r in records if r["method"] != "none"))
    for i, method in enumerate(methods):
        rs = sorted((r for r in records if r["method"] == method), key=lambda r: r["sparsity"])
        color = f"C{i}"
        x = [r["sparsity"] for r in rs]
        marker = "^-" if "iterative" in method else "o-"
        ax.plot(x, [r["accuracy"] for r in rs], marker, color=color, label=describe(method))
        if _is_filters(method):
            _label_filters(ax, rs, [r["accuracy"] for r in rs], color, below="global" in method)
        if all("accuracy_finetuned" in r for r in rs):
            ax.plot(x, [r["accuracy_finetuned"] for r in rs], "s--", color=color, mfc="white",
                    label=describe(method, rs[0].get("finetune_epochs", 1)))
    if baseline is not None:
        ax.axhline(baseline["accuracy"], color="grey", ls=":", label=f"unpruned ({baseline['accuracy']:.4f})")
    ax.set_xlabel("fraction of conv + linear weights that are zero")
    ax.set_ylabel("test accuracy")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))   # outside: it hides no point
    n = baseline.get("test_images") if baseline else None
    return _save(fig, path, "Each point: one pruned copy of the unpruned model, tested"
                 + (f" on {n} images" if n else "") + "; labels: the share of the conv filters removed.")


def per_layer_sparsity(records, path=None):
    """Where the zeros are: each layer's sparsity against the target amount, one panel per method.

    Layers with equal sparsity (filter pruning takes the same fraction from every conv layer)
    would hide each other: each layer gets its own marker and line style and a small
    sideways offset, so every line stays visible.
    """
    layers = sorted({k[len("sparsity_"):] for r in records for k in r if k.startswith("sparsity_")})
    methods = list(dict.fromkeys(r["method"] for r in records if r["method"] != "none"))
    fig, axes = plt.subplots(1, len(methods), figsize=(4.4 * len(methods), 3.9), squeeze=False)
    markers, styles = "osD^v<>", ["-", "--", ":", "-."]
    for ax, method in zip(axes[0], methods):
        rs = sorted((r for r in records if r["method"] == method), key=lambda r: r["target"])
        targets = [r["target"] for r in rs]
        step = (max(targets) - min(targets)) / max(len(targets) - 1, 1) if len(targets) > 1 else 0.1
        for j, layer in enumerate(layers):
            dx = (j - (len(layers) - 1) / 2) * 0.06 * step
            ax.plot([t + dx for t in targets], [r.get(f"sparsity_{layer}", np.nan) for r in rs],
                    marker=markers[j % len(markers)], ls=styles[j % len(styles)], mfc="white" if j % 2 else None,
                    label=layer)
        ax.set_title(describe(method), fontsize=9)
        ax.set_xlabel("filters removed, all conv layers ranked together" if "global" in method and _is_filters(method)
                      else "filters removed per conv layer" if _is_filters(method) else "target amount (all weights)")
        ax.set_ylabel("fraction of the layer's weights that are zero")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return _save(fig, path, "One line per layer; lines that coincide are drawn slightly apart so none hides another.")


def _bounds(r, key):
    """``(low, high)`` of a speed column: its rerun interval (older results: the interquartile range)."""
    return (r[f"{key}_low"], r[f"{key}_high"]) if f"{key}_low" in r else (r[f"{key}_iqr_low"], r[f"{key}_iqr_high"])


def _errorbar(ax, rs, x, key, color, marker, label, filled=True):
    """Median with its rerun interval as the error bar; flagged points hollow and outlined in red."""
    med = np.array([r[key] for r in rs])
    err = np.array([[r[key] - _bounds(r, key)[0] for r in rs], [_bounds(r, key)[1] - r[key] for r in rs]])
    ok = np.array([not r.get(f"{key}_flag") for r in rs])
    x = np.asarray(x)
    if ok.any():
        ax.errorbar(x[ok], med[ok], yerr=err[:, ok], fmt=marker, color=color, capsize=3, label=label,
                    mfc=color if filled else "white", ms=6)
    if (~ok).any():
        ax.errorbar(x[~ok], med[~ok], yerr=err[:, ~ok], fmt=marker, color=color, capsize=3, mfc="white",
                    mec="red", ms=8, alpha=0.6, label=f"{label}: FLAGGED, not a result" if ok.any() else label)


def speedup_vs_ideal(records, baseline=None, path=None):
    """Measured inference speedup over the unpruned model against the FLOP-count ideal.

    Each point is the median of interleaved rounds (pruned model, unpruned model, ...; see
    ``ece662.timing``) with its rerun interval as the error bar (a rerun's median lands inside
    it about 19 times in 20; older results: the interquartile range); the dashed line is the
    FLOP ideal (dense FLOPs over the FLOPs left when zero weights and dead filters are
    skipped); grey crosses are "masks only" (the dense kernels on the masked weights, which
    should stay at 1x).  Flagged points (``ece662.timing.flag_reason``: the whole interval above the
    ideal, or a masks-only interval that misses 1x) are drawn hollow in red: they are noise, not results.
    """
    fig, ax = plt.subplots(figsize=(9.5, 4.6))
    timed = [r for r in records if "speedup" in r and r["method"] != "none"]
    methods = list(dict.fromkeys(r["method"] for r in timed))
    for i, method in enumerate(methods):
        rs = sorted((r for r in timed if r["method"] == method), key=lambda r: r["sparsity"])
        x = [r["sparsity"] for r in rs]
        color = f"C{i}"
        ax.plot(x, [r["flop_ideal"] for r in rs], "--", color=color, alpha=0.7, label=f"{describe(method)}: FLOP ideal")
        _errorbar(ax, rs, x, "speedup", color, "o", f"{describe(method)}: measured")
        _errorbar(ax, rs, x, "masks_only", "grey", "x", "masks only (dense kernels)" if i == 0 else None)
        if _is_filters(method):
            _label_filters(ax, rs, [r["speedup"] for r in rs], color, below="global" in method)
    ax.axhline(1, color="grey", lw=0.8)
    ax.set_yscale("log", base=2)
    # room above every ideal and every error bar (an ideal past 64x is drawn off the top, said in the legend)
    top = 1.25 * max([4.0] + [_bounds(r, "speedup")[1] for r in timed] + [min(r["flop_ideal"], 64) for r in timed])
    ax.set_ylim(min([0.5] + [_bounds(r, "masks_only")[0] * 0.8 for r in timed]), top)
    from matplotlib.ticker import FuncFormatter
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}x"))
    ax.set_xlabel("fraction of conv + linear weights that are zero")
    ax.set_ylabel("speedup over the unpruned model (log scale)")
    ax.grid(alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    keep = [(h, l) for h, l in zip(handles, labels) if l and not l.startswith("_")]
    ax.legend(*zip(*keep), fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    rounds = timed[0].get("timing_rounds") if timed else None
    bars = ("where a rerun's median lands 19 times in 20" if timed and "speedup_low" in timed[0]
            else "interquartile range")
    return _save(fig, path, f"Median of {rounds or 'the'} interleaved rounds vs the unpruned model; "
                 f"bars: {bars}; dashed: FLOP ideal; hollow red: flagged, not a result.")


def conv_filters(conv, path=None, title=None):
    """A first conv layer's filters as RGB tiles; pruned filters crossed out in red.

    Each filter (3, HH, WW) is scaled to [0, 1] with one scale for the whole layer, so
    strong and weak filters can be compared.
    """
    w = conv.weight_orig if "weight_orig" in conv._parameters else conv.weight
    if w.shape[1] != 3:
        raise ValueError(f"conv_filters draws RGB filters; this layer has {w.shape[1]} input channels")
    alive = conv.alive_filters()
    F = w.shape[0]
    cols = int(np.ceil(np.sqrt(F)))
    rows = int(np.ceil(F / cols))
    lim = np.abs(w).max() or 1.0
    fig, axes = plt.subplots(rows, cols, figsize=(1.1 * cols, 1.1 * rows + 0.4), squeeze=False)
    for f, ax in enumerate(axes.ravel()):
        ax.axis("off")
        if f >= F:
            continue
        ax.imshow((w[f].transpose(1, 2, 0) / lim + 1) / 2, interpolation="nearest")
        if not alive[f]:
            HH, WW = w.shape[2:]
            ax.plot([-0.5, WW - 0.5], [-0.5, HH - 0.5], "r-", lw=2)
            ax.plot([-0.5, WW - 0.5], [HH - 0.5, -0.5], "r-", lw=2)
    fig.suptitle(title or f"{conv.name}: {int(alive.sum())}/{F} filters alive (red: pruned)", fontsize=9)
    return _save(fig, path, "One tile per filter, colours on one scale for the whole layer.")


def weight_histograms(model, amounts=(0.2, 0.5, 0.8), path=None):
    """|weight| per layer on a log scale, with the global L1 threshold of each amount drawn.

    Global pruning with ``amount`` removes every weight left of its line, whichever layer
    it lives in: the picture shows why layers with small weights lose the most.
    """
    layers = prunable(model)
    mags = [np.abs(m.weight).ravel() for _, m in layers]
    allw = np.sort(np.concatenate(mags))
    fig, axes = plt.subplots(1, len(layers), figsize=(4 * len(layers), 3.2), squeeze=False)
    positive = allw[allw > 0]          # a model whose weights are all zero has no magnitude to draw
    low = max(positive.min(), 1e-6) if positive.size else 1e-6
    bins = np.logspace(np.log10(low), np.log10(max(allw.max(), 10 * low)), 60)
    for ax, (name, _), mag in zip(axes[0], layers, mags):
        ax.hist(mag[mag > 0], bins=bins, color="C0", alpha=0.8)
        ax.set_xscale("log")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("|weight|")
        for i, a in enumerate(amounts):
            k = amount_to_count(a, allw.size)
            if k:
                ax.axvline(allw[k - 1], color=f"C{i + 1}", ls="--", label=f"{a:.0%} global threshold")
    axes[0][0].set_ylabel("weights")
    axes[0][-1].legend(fontsize=7)
    return _save(fig, path, "Global pruning removes every weight left of a line, in whichever layer it is.")


def mask_image(module, path=None, title=None):
    """Which weights went: a layer's mask as an image, one row per output unit (filter)."""
    mask = module._buffers.get("weight_mask")
    if mask is None:
        mask = module.weight != 0
    img = mask.reshape(mask.shape[0], -1)
    fig, ax = plt.subplots(figsize=(7, 2.8))
    ax.imshow(img, aspect="auto", cmap="gray", interpolation="nearest", vmin=0, vmax=1)
    ax.set_xlabel("weight index within the filter (c, kh, kw)" if mask.ndim == 4 else "input feature")
    ax.set_ylabel("filter" if mask.ndim == 4 else "output unit")
    ax.set_title(title or f"{getattr(module, 'name', '')}: kept (white) {img.mean():.0%} of weights", fontsize=9)
    return _save(fig, path, "One row per output unit; black: pruned weights.")


def compare_schedules(records, path=None, title=None):
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


def sensitivity(records, path=None):
    """One line per layer: test accuracy when that layer alone is pruned, against the amount."""
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    layers = list(dict.fromkeys(r["layer"] for r in records))
    for i, name in enumerate(layers):
        rs = sorted((r for r in records if r["layer"] == name), key=lambda r: r["amount"])
        ax.plot([r["amount"] for r in rs], [r["accuracy"] for r in rs], "o-", color=f"C{i}", label=name)
    what = "filters" if records and records[0].get("method") == "filters" else "weights"
    ax.set_xlabel(f"fraction of the layer's {what} pruned (that layer alone)")
    ax.set_ylabel("test accuracy")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path, "A flat line: a layer that can lose more. A steep one: a layer to spare.")


PHASE_STYLE = {"before": ("v", "--"), "during": ("s", "-."), "after": ("o", "-"), "control": ("x", ":"),
               "reference": ("", ":")}


def compare_methods(summary, path=None, title=None):
    """Test accuracy against sparsity, a line per (method, allocation), from ``experiments.summarize_methods``.

    The x axis is the fraction of weights *kept*, on a log scale and reversed, so 90%, 95% and 98% sparsity are
    evenly apart and sparsity grows to the right.  Points: the mean over seeds; error bars: the lowest and
    highest seed.  The phase is the marker and the line style (before: triangles, dashed; during: squares,
    dash-dot; after: circles, solid; controls: crosses, dotted); the trained model unpruned is a grey line.
    """
    fig, ax = plt.subplots(figsize=(9, 5))
    curves = [k for k in dict.fromkeys((r["method"], r["allocation"]) for r in summary)
              if k[0] not in ("dense", "dense-scratch")]
    width = min(0.15, 0.006 * len(curves))
    for i, (method, alloc) in enumerate(curves):
        rs = sorted((r for r in summary if (r["method"], r["allocation"]) == (method, alloc)),
                    key=lambda r: r["sparsity"])
        marker, ls = PHASE_STYLE.get(rs[0]["phase"], ("o", "-"))
        shift = 1.0 + width * (i / max(1, len(curves) - 1) - 0.5)      # spread the error bars apart
        x = [(1.0 - r["sparsity"]) * shift for r in rs]
        y = [r["mean"] for r in rs]
        # max(0, ...): the mean of equal accuracies can exceed them by a rounding error
        err = [[max(0.0, r["mean"] - r["low"]) for r in rs], [max(0.0, r["high"] - r["mean"]) for r in rs]]
        label = method if alloc in ("-", "dense") else f"{method} ({alloc})"
        ax.errorbar(x, y, yerr=err, marker=marker, ls=ls, color=f"C{i % 10}",
                    mfc="white" if i >= 10 else None, capsize=2, ms=5, lw=1.2,
                    label=f"{label} [{rs[0]['phase']}]")
    dense = [r for r in summary if r["method"] == "dense"]
    if dense:
        ax.axhline(dense[0]["mean"], color="grey", ls=":", lw=1, label="trained model, unpruned")
    scratch = [r for r in summary if r["method"] == "dense-scratch"]
    if scratch:        # the unpruned network trained the same epochs: a band from the lowest to the highest seed
        r = scratch[0]
        ax.axhspan(r["low"], r["high"], color="grey", alpha=0.15)
        ax.axhline(r["mean"], color="grey", ls="--", lw=1, label="unpruned, trained from scratch the same epochs")
    ax.axhline(0.1, color="black", lw=0.6, alpha=0.4)
    ax.set_xscale("log")
    ax.invert_xaxis()
    kept = sorted({1.0 - r["sparsity"] for r in summary if r["method"] not in ("dense", "dense-scratch")})
    ax.set_xticks(kept)
    ax.set_xticklabels([f"{1 - k:.0%}" for k in kept])
    ax.minorticks_off()
    ax.set_xlabel("sparsity: fraction of conv + linear weights pruned (log scale of the weights kept)")
    ax.set_ylabel("test accuracy (mean over seeds; bars: lowest to highest seed)")
    ax.set_title(title or "prune before, during or after training, at an equal epoch budget", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    return _save(fig, path, "Chance is 0.1 (the black line). Small-dense: a dense network with about as many "
                             "weights, trained from scratch.")
