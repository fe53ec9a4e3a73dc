"""The Deep Compression pipeline, measured stage by stage and layer by layer, in the paper's shape.

Han, Mao & Dally (ICLR 2016) report each network as a table: per layer, the weights, the fraction that survive
pruning, the bits per weight and per index after quantization (P+Q) and after Huffman coding (P+Q+H), and the
compression against the float32 dense network.  :func:`compress_model` runs the pipeline on one model for each
index width ``bits`` and returns such records; :func:`render` writes them as Markdown tables (the
``python -m ece662 compress`` command prints them, ``docs/compression.md`` shows a recorded run) and
:func:`draw` plots accuracy against bits and against bytes.

Bytes, per layer (biases and any other array are counted once, as float32, in a row of their own):

* ``dense``: every weight as float32, zeros included (what a masked model saves);
* ``relative``: the paper's sparse storage, each survivor a float32 and each entry a fixed-width relative
  index (8 bits conv, 5 fc; fillers included, :mod:`ece662.compress.sparse_index`); ``bitmask``: float32
  survivors and one bit per position;
* ``int8``: survivors as int8, one float32 scale per output channel, the same fixed-width positions;
* ``shared``: survivors as ``bits``-bit indices, the codebook of ``2**bits`` float32, the same positions (P+Q);
* ``huffman``: the arrays of the compressed file, counted from the arrays themselves (P+Q+H).

A layer that is not pruned (``filters-50`` shrank instead) needs no positions: its sparse stages are its
dense bytes and its indices cover every weight.
"""
import os
import time

import numpy as np

from ece662.compress.file import INDEX_BITS, MEMBERS, compressed_arrays, load_compressed, save_compressed
from ece662.compress.int8 import quantize_int8
from ece662.compress.sharing import finetune_centroids, share_weights
from ece662.compress.sparse_index import bitmask_bytes, relative_index_bytes, relative_indices
from ece662.formats.common import effective, load_with_masks
from ece662.layers import Conv2d, Linear, from_spec
from ece662.pruning.methods import prunable
from ece662.training.evaluate import predict_logits

STAGES = ("dense", "relative", "bitmask", "int8", "shared", "huffman")


def accuracy(model, X, y):
    """Fraction of ``X``'s images (float32 NCHW) that ``model`` classifies as ``y`` says."""
    return float(np.mean(predict_logits(model, X).argmax(1) == np.asarray(y)))


def copy_model(model):
    """An independent copy (architecture, weights, masks).  ``ece662.experiments.copy_model`` does the same
    a few floors up, where this part cannot reach."""
    clone = from_spec(model.spec())
    load_with_masks(clone, model.state_dict(), source="copy_model")
    return clone.eval()


def layer_sizes(model, bits=None, arrays=None):
    """Bytes of every stage (see the module docstring) for each Conv2d / Linear weight of ``model``, and a row
    ``'other'`` for the remaining arrays.

    Parameters
    ----------
    model : Sequential
    bits : int or dict, optional
        The shared-weight index width (or ``{layer name: width}``), for the ``shared`` stage.
    arrays : dict, optional
        The compressed file's arrays (:func:`ece662.compress.file.compressed_arrays`), for the ``huffman``
        stage and the bits per weight after Huffman coding.

    Returns
    -------
    list of dict
        One per layer, in model order, then ``'other'``.
    """
    rows, coded = [], set()
    for name, m in prunable(model, (Conv2d, Linear)):
        key = f"{name}.weight"
        coded |= {key, key + "_orig", key + "_mask"}
        w = effective(m, "weight")
        mask = m._buffers.get("weight_mask")
        index_bits = INDEX_BITS[type(m)]
        survivors = w.size if mask is None else int(np.count_nonzero(mask))
        entries = 0 if mask is None else len(relative_indices(mask, index_bits))
        channels = w.shape[0]

        def sparse(value_bits):      # the survivors at value_bits each, and their fixed-width positions
            if mask is None:
                return -(-w.size * value_bits // 8)
            return relative_index_bytes(mask, index_bits, value_bits)
        row = {"layer": name, "params": int(w.size), "survivors": survivors, "index_bits": index_bits,
               "entries": entries, "dense": 4 * w.size, "relative": sparse(32),
               "bitmask": 4 * w.size if mask is None else bitmask_bytes(mask, 32),
               "int8": sparse(8) + 4 * channels}
        if bits is not None:
            b = bits[name] if isinstance(bits, dict) else bits
            row["bits"], row["shared"] = b, sparse(b) + 4 * 2 ** b
        if arrays is not None:
            row["huffman"] = int(sum(arrays[f"{key}.{s}"].nbytes for s in MEMBERS if f"{key}.{s}" in arrays))
            counts = arrays[f"{key}.counts"]
            row["code_bits_per_weight"] = float(counts[1]) / survivors
            row["position_bits_per_weight"] = float(counts[3]) / survivors
        rows.append(row)
    others = {k: v for k, v in model.state_dict().items() if k not in coded}
    plain = int(sum(4 * v.size for v in others.values() if v.dtype.kind == "f"))
    other = {"layer": "other", "params": int(sum(v.size for v in others.values() if v.dtype.kind == "f")),
             "survivors": None, **{s: plain for s in STAGES[:4]}}
    if bits is not None:
        other["shared"] = plain
    if arrays is not None:
        other["huffman"] = int(sum(a.nbytes for k, a in arrays.items() if k.rpartition(".")[2] not in MEMBERS))
    rows.append(other)
    return rows


def totals(rows):
    """``{stage: bytes}`` summed over the rows (layers and 'other')."""
    return {s: int(sum(r[s] for r in rows)) for s in STAGES if all(s in r for r in rows)}


def compress_model(model, name, X_test, y_test, X_train, y_train, bits=(2, 3, 4, 5, 6, 7, 8), out=None,
                   epochs=1, lr=1e-3, seed=0, log=print):
    """Run Deep Compression on ``model`` for each index width in ``bits``; one record for the model.

    Parameters
    ----------
    model : Sequential
        Pruned (masks) or not; left unchanged.
    name : str
        Names the record and the files (``<out>/<name>-<b>bits.npz``).
    X_test, y_test : float32 (N, 3, 32, 32), int (N,)
    X_train, y_train : uint8 (M, 32, 32, 3), int (M,)
        For the centroids' fine-tuning.
    bits : sequence of int or (int, int)
        Index widths; a pair ``(c, f)`` gives the conv layers ``c`` bits and the linear layers ``f`` (the paper
        gives conv layers more bits than fully connected ones).
    out : str, optional
        The folder for the compressed files (default: a temporary one, removed).
    epochs, lr, seed
        Of the fine-tuning (:func:`ece662.compress.sharing.finetune_centroids`).
    log : callable
        Receives one line per width.

    Returns
    -------
    dict
        ``model``, ``accuracy_pruned``, ``accuracy_int8``, ``layers`` (bytes per stage without sharing),
        ``totals``, and ``shared``: per width, the accuracies after k-means, after fine-tuning and of the
        file read back, its layers and totals, the file's size and the seconds of fine-tuning.
    """
    import tempfile
    folder = out or tempfile.mkdtemp(prefix="ece662-compress-")
    rows = layer_sizes(model)
    int8 = copy_model(model)
    quantize_int8(int8)
    record = {"model": name, "accuracy_pruned": accuracy(model, X_test, y_test),
              "accuracy_int8": accuracy(int8, X_test, y_test), "layers": rows, "totals": totals(rows),
              "shared": []}
    for b in bits:
        net = copy_model(model)
        widths, label = per_layer_bits(net, b)
        shared = share_weights(net, widths)
        before = accuracy(net, X_test, y_test)
        t0 = time.perf_counter()
        finetune_centroids(net, shared, X_train, y_train, epochs=epochs, lr=lr, seed=seed)
        seconds = time.perf_counter() - t0
        path = os.path.join(folder, f"{name}-{label.replace('/', '-')}bits.npz")
        save_compressed(net, path)
        back = load_compressed(path)
        identical = all(np.array_equal(v.view(np.uint8), back.state_dict()[k].view(np.uint8))
                        for k, v in net.state_dict().items())
        rows_b = layer_sizes(net, bits=widths, arrays=compressed_arrays(net))
        entry = {"bits": label, "accuracy_kmeans": before, "accuracy_finetuned": accuracy(net, X_test, y_test),
                 "accuracy_file": accuracy(back, X_test, y_test), "identical_after_loading": identical,
                 "layers": rows_b, "totals": totals(rows_b), "file_bytes": os.path.getsize(path),
                 "file": os.path.basename(path), "finetune_seconds": round(seconds, 1)}
        record["shared"].append(entry)
        log(f"{name:>10s}  {label:>3s} bits  k-means {before:.4f}  fine-tuned {entry['accuracy_finetuned']:.4f}  "
            f"file {entry['accuracy_file']:.4f}  {entry['totals']['huffman']:,} bytes  ({seconds:.0f} s)")
    if out is None:
        import shutil
        shutil.rmtree(folder)
    return record


def per_layer_bits(model, bits):
    """``({layer name: width}, label)`` for a width ``b`` (every layer; label ``'4'``) or a pair ``(c, f)`` (conv
    layers ``c``, linear layers ``f``; label ``'5/4'``)."""
    layers = prunable(model, (Conv2d, Linear))
    if isinstance(bits, (tuple, list)):
        conv, fc = bits
        return {n: conv if isinstance(m, Conv2d) else fc for n, m in layers}, f"{conv}/{fc}"
    return {n: bits for n, _ in layers}, str(bits)


# ----------------------------------------------------------------------------------------------- the tables
def _ratio(dense, size):
    return f"{dense / size:.1f}x"


def render(results):
    """The Markdown tables of a run (``results``: the JSON ``python -m ece662 compress`` writes)."""
    dense, acc_dense = results["dense_bytes"], results["dense_accuracy"]
    lines = [f"Float32 dense reference: the shipped `dense` model, {results['dense_params']:,} parameters = "
             f"{dense:,} bytes, test accuracy {acc_dense:.4f}. Bytes are the stored numbers (weights, "
             f"biases, codebooks, code tables, counts), as the paper counts them; \"file\" is the `.npz` on disk "
             f"(zip and `.npy` headers and the architecture included).", ""]
    for rec in results["records"]:
        t = rec["totals"]
        lines += [f"### {rec['model']} (test accuracy {rec['accuracy_pruned']:.4f})", "",
                  "| stage | bytes | vs dense float32 | test accuracy |", "|---|---|---|---|",
                  f"| stored dense, float32 (zeros included) | {t['dense']:,} | {_ratio(dense, t['dense'])} | "
                  f"{rec['accuracy_pruned']:.4f} |",
                  f"| pruned: float32 + relative index (8-bit conv, 5-bit fc) | {t['relative']:,} | "
                  f"{_ratio(dense, t['relative'])} | {rec['accuracy_pruned']:.4f} |",
                  f"| pruned: float32 + bitmask | {t['bitmask']:,} | {_ratio(dense, t['bitmask'])} | "
                  f"{rec['accuracy_pruned']:.4f} |",
                  f"| int8 per channel + relative index (no training) | {t['int8']:,} | "
                  f"{_ratio(dense, t['int8'])} | {rec['accuracy_int8']:.4f} |"]
        for s in rec["shared"]:
            st = s["totals"]
            lines.append(f"| shared {s['bits']} bits (P+Q) | {st['shared']:,} | {_ratio(dense, st['shared'])} | "
                         f"{s['accuracy_kmeans']:.4f} k-means, {s['accuracy_finetuned']:.4f} fine-tuned |")
            lines.append(f"| shared {s['bits']} bits + Huffman (P+Q+H), file {s['file_bytes']:,} | "
                         f"{st['huffman']:,} | {_ratio(dense, st['huffman'])} | {s['accuracy_file']:.4f} |")
        lines.append("")
    head = results.get("headline")
    if head:
        rec = next(r for r in results["records"] if r["model"] == head["model"])
        s = next(x for x in rec["shared"] if x["bits"] == head["bits"])
        lines += [f"### Per layer: {head['model']}, {head['bits']} bits, in the paper's shape", "",
                  "| layer | weights | kept | weight bits P+Q | weight bits P+Q+H | index bits P+Q | "
                  "index bits P+Q+H | bytes P+Q+H | vs float32 |", "|---|---|---|---|---|---|---|---|---|"]
        for r in s["layers"]:
            if r["layer"] == "other":
                lines.append(f"| biases | {r['params']:,} | 100% | 32 | 32 | - | - | {r['huffman']:,} | 1.0x |")
                continue
            # both index columns per survivor, fillers included (a filler costs index bits and holds no weight)
            index = f"{r['entries'] * r['index_bits'] / r['survivors']:.2f}" if r["entries"] else "-"
            index_h = f"{r['position_bits_per_weight']:.2f}" if r["entries"] else "-"
            lines.append(f"| {r['layer']} | {r['params']:,} | {r['survivors'] / r['params']:.1%} | {r['bits']} | "
                         f"{r['code_bits_per_weight']:.2f} | {index} | {index_h} | {r['huffman']:,} | "
                         f"{_ratio(4 * r['params'], r['huffman'])} |")
        st = s["totals"]
        lines += [f"| total | {sum(r['params'] for r in s['layers']):,} | | | | | | {st['huffman']:,} | "
                  f"{_ratio(dense, st['huffman'])} |", ""]
        lines.append("(Index bits per survivor, fillers included: P+Q is the fixed width (8 conv, 5 fc) times the "
                     "entries per survivor. P+Q+H bytes include each layer's codebook and code tables.)")
    return "\n".join(lines).rstrip("\n")


def draw(results, path):
    """Two panels: test accuracy against bits per shared weight, and against stored bytes (log scale)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for rec in results["records"]:
        uniform = [s for s in rec["shared"] if s["bits"].isdigit()]      # '5/4' (conv/fc) has no place on this axis
        bits = [int(s["bits"]) for s in uniform]
        line, = left.plot(bits, [s["accuracy_finetuned"] for s in uniform], "o-", label=rec["model"])
        left.plot(bits, [s["accuracy_kmeans"] for s in uniform], "x:", color=line.get_color())
        left.axhline(rec["accuracy_pruned"], color=line.get_color(), lw=0.8, ls="--")
        sizes = [rec["totals"]["relative"], rec["totals"]["int8"]] + [s["totals"]["huffman"] for s in rec["shared"]]
        accs = [rec["accuracy_pruned"], rec["accuracy_int8"]] + [s["accuracy_file"] for s in rec["shared"]]
        right.plot(sizes[2:], accs[2:], "o-", color=line.get_color(), label=f"{rec['model']}: shared + Huffman")
        right.plot(sizes[:1], accs[:1], "s", color=line.get_color(), ms=8)
        right.plot(sizes[1:2], accs[1:2], "^", color=line.get_color(), ms=8)
    right.plot([results["dense_bytes"]], [results["dense_accuracy"]], "k*", ms=12, label="dense float32")
    left.set(xlabel="bits per shared weight (index width)", ylabel="test accuracy",
             title="after k-means (x, dotted) and fine-tuning (o); pruned model dashed")
    right.set(xscale="log", xlabel="stored bytes", ylabel="test accuracy",
              title="square: pruned, float32 + relative index; triangle: int8")
    left.legend(fontsize=8)
    right.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
