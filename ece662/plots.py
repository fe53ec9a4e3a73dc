"""Matplotlib figures of models and of the experiment records (``ece662.experiments``).

Every function returns the figure and, given ``path``, saves it as a PNG and closes it.
"""
import matplotlib.pyplot as plt
import numpy as np


def _save(fig, path):
    fig.tight_layout()
    if path:
        fig.savefig(path, dpi=110)
        plt.close(fig)
    return fig


def accuracy_vs_sparsity(records, baseline=None, path=None):
    """Test accuracy against the fraction of zero weights: one line per method, dashed after
    fine-tuning (when the records have ``accuracy_finetuned``)."""
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    methods = list(dict.fromkeys(r["method"] for r in records))
    for i, method in enumerate(methods):
        rs = sorted((r for r in records if r["method"] == method), key=lambda r: r["sparsity"])
        color = f"C{i}"
        ax.plot([r["sparsity"] for r in rs], [r["accuracy"] for r in rs], "o-", color=color, label=method)
        if all("accuracy_finetuned" in r for r in rs):
            ax.plot([r["sparsity"] for r in rs], [r["accuracy_finetuned"] for r in rs], "o--", color=color,
                    label=method + " + fine-tuning")
    if baseline is not None:
        ax.axhline(baseline["accuracy"], color="grey", ls=":", label="unpruned")
    ax.set_xlabel("fraction of conv + linear weights that are zero")
    ax.set_ylabel("test accuracy")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def per_layer_sparsity(records, path=None):
    """Where the zeros are: each layer's sparsity against the overall sparsity, per method."""
    layers = sorted({k[len("sparsity_"):] for r in records for k in r if k.startswith("sparsity_")})
    methods = list(dict.fromkeys(r["method"] for r in records if r["method"] != "none"))
    fig, axes = plt.subplots(1, len(methods), figsize=(4.2 * len(methods), 3.6), squeeze=False)
    for ax, method in zip(axes[0], methods):
        rs = sorted((r for r in records if r["method"] == method), key=lambda r: r["target"])
        for layer in layers:
            ax.plot([r["target"] for r in rs], [r.get(f"sparsity_{layer}", np.nan) for r in rs], "o-", label=layer)
        ax.set_title(method, fontsize=9)
        ax.set_xlabel("target amount")
        ax.set_ylabel("fraction of the layer's weights that are zero")
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return _save(fig, path)


def speedup_vs_ideal(records, baseline, path=None):
    """Measured inference speedup over the unpruned dense model, next to the FLOP-count ideal
    (dense FLOPs over the FLOPs left when every zero weight and dead filter is skipped)."""
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    base = baseline.get("images_per_s_dense")
    methods = list(dict.fromkeys(r["method"] for r in records if "images_per_s_pruned" in r))
    for i, method in enumerate(methods):
        rs = sorted((r for r in records if r["method"] == method), key=lambda r: r["sparsity"])
        x = [r["sparsity"] for r in rs]
        ax.plot(x, [r["flops_dense"] / min(r["flops_skip"], r["flops_nonzero"]) for r in rs], "--",
                color=f"C{i}", alpha=0.6, label=f"{method}: FLOP ideal")
        ax.plot(x, [r["images_per_s_pruned"] / base for r in rs], "o-", color=f"C{i}", label=f"{method}: measured")
        ax.plot(x, [r["images_per_s_dense"] / base for r in rs], "x:", color=f"C{i}", alpha=0.6,
                label=f"{method}: masks only")
    ax.axhline(1, color="grey", lw=0.8)
    ax.set_xlabel("fraction of conv + linear weights that are zero")
    ax.set_ylabel("speedup over the unpruned model")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return _save(fig, path)


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
    return _save(fig, path)


def weight_histograms(model, amounts=(0.2, 0.5, 0.8), path=None):
    """|weight| per layer on a log scale, with the global L1 threshold of each amount drawn.

    Global pruning with ``amount`` removes every weight left of its line, whichever layer
    it lives in: the picture shows why layers with small weights lose the most.
    """
    from ece662.experiments import prunable
    from ece662.pruning.masks import amount_to_count
    layers = prunable(model)
    mags = [np.abs(m.weight).ravel() for _, m in layers]
    allw = np.sort(np.concatenate(mags))
    fig, axes = plt.subplots(1, len(layers), figsize=(4 * len(layers), 3.2), squeeze=False)
    bins = np.logspace(np.log10(max(allw[allw > 0].min(), 1e-6)), np.log10(allw.max()), 60)
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
    return _save(fig, path)


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
    return _save(fig, path)
