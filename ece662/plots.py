"""Matplotlib figures of the experiment records (``ece662.experiments``)."""
import matplotlib

matplotlib.use("Agg")  # files, not windows: works on a laptop, a server or in CI
import matplotlib.pyplot as plt  # noqa: E402


def accuracy_vs_sparsity(records, baseline=None, path=None):
    """One line per pruning method: test accuracy against the fraction of weights that are zero."""
    fig, ax = plt.subplots(figsize=(6, 4))
    methods = sorted({r["method"] for r in records})
    for method in methods:
        rs = sorted((r for r in records if r["method"] == method), key=lambda r: r["sparsity"])
        ax.plot([r["sparsity"] for r in rs], [r["accuracy"] for r in rs], "o-", label=method)
    if baseline is not None:
        ax.axhline(baseline["accuracy"], color="grey", ls="--", label="unpruned")
    ax.set_xlabel("fraction of conv + linear weights that are zero")
    ax.set_ylabel("test accuracy")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    if path:
        fig.savefig(path, dpi=110)
        plt.close(fig)
    return fig
