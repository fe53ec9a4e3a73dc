"""Does filter pruning speed up a production runtime?  ece662's ONNX export in onnxruntime.

    pip install onnx onnxruntime
    python benchmarks/bench_onnx.py [--images 5000] [--repeats 15] [--threads 2]

The shipped model, and the same model with 50% of the filters of each conv pruned
(``ece662.pruning.ln_structured``, L2, dim 0) then physically removed (``ece662.pruning.shrink``),
are exported with ``ece662.formats.onnx_format.save_onnx`` and run in onnxruntime (CPU, ``--threads``
intra-op threads, spinning off so that it does not steal the cores from whatever runs next).
In the same run, ece662 runs the dense model, the pruned model (its live-only path) and the
shrunk model.  Before timing, onnxruntime's logits are checked against ece662's.

Every repeat times each configuration once, in a fresh random order (paired, interleaved), over
the same images in batches of ``--batch``.  Speedups are per-repeat ratios (dense time / shrunk
time of the same runtime in the same repeat), reported as median [min - max] over the repeats,
next to the FLOP ideal (dense FLOPs / shrunk FLOPs).
"""
import argparse
import os
import tempfile
import time

import numpy as np

import ece662.pruning as prune
from ece662.formats.onnx_format import save_onnx
from ece662.pruning_helper import load_model


def images(n):
    """Real test images when ``ECE662_DATA`` points at the data folder (tiled up to ``n``), else noise."""
    path = os.path.join(os.environ.get("ECE662_DATA", ""), "cifar10_real_small.npz")
    if os.path.isfile(path):
        from ece662.data_utils import get_CINIC10_data
        X = np.asarray(get_CINIC10_data(path, splits=("test",))["X_test"][:])
        return np.ascontiguousarray(np.resize(X, (n,) + X.shape[1:])), "real test images"
    return np.random.default_rng(0).standard_normal((n, 3, 32, 32)).astype(np.float32), "random images"


def ort_session(path, threads):
    import onnxruntime as ort
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    return lambda xb: sess.run(None, {name: xb})[0]


def batched(predict, x, bs):
    return lambda: [predict(x[i:i + bs]) for i in range(0, len(x), bs)]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=5000)
    ap.add_argument("--batch", type=int, default=500)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--threads", type=int, default=2, help="onnxruntime intra-op threads")
    ap.add_argument("--amount", type=float, default=0.5, help="fraction of each conv's filters pruned")
    args = ap.parse_args()

    import onnxruntime
    x, what = images(args.images)
    dense = load_model()
    pruned = load_model()
    for layer in (pruned.conv1, pruned.conv2):
        prune.ln_structured(layer, "weight", amount=args.amount, n=2, dim=0)
    pruned.eval()
    shrunk = prune.shrink(pruned)
    folder = tempfile.mkdtemp(prefix="ece662-bench-onnx-")
    save_onnx(dense, os.path.join(folder, "dense.onnx"))
    save_onnx(shrunk, os.path.join(folder, "shrunk.onnx"))
    ort_dense = ort_session(os.path.join(folder, "dense.onnx"), args.threads)
    ort_shrunk = ort_session(os.path.join(folder, "shrunk.onnx"), args.threads)

    probe = x[:64]
    for name, a, b in (("dense", ort_dense(probe), dense(probe)), ("shrunk", ort_shrunk(probe), pruned(probe))):
        err = float(np.abs(a - b).max())
        assert err < 1e-3, f"onnxruntime's {name} logits differ from ece662's by {err}"
        print(f"onnxruntime {name} vs ece662: max |logit difference| = {err:.2e}")

    runs = {"onnxruntime dense": batched(ort_dense, x, args.batch),
            "onnxruntime shrunk": batched(ort_shrunk, x, args.batch),
            "ece662 dense": batched(dense, x, args.batch),
            "ece662 pruned (live-only)": batched(pruned, x, args.batch),
            "ece662 shrunk": batched(shrunk, x, args.batch)}
    for run in runs.values():          # warm-up: JIT compilation, onnxruntime's first-run allocations
        run()
    times = {k: [] for k in runs}
    order = list(runs)
    rng = np.random.default_rng(0)
    for _ in range(args.repeats):
        rng.shuffle(order)
        for k in order:
            t0 = time.perf_counter()
            runs[k]()
            times[k].append(time.perf_counter() - t0)
    t = {k: np.array(v) for k, v in times.items()}

    ideal = dense.flops((1, 3, 32, 32)) / shrunk.flops((1, 3, 32, 32))
    print(f"\n{args.images} {what}, batch {args.batch}, {args.repeats} interleaved repeats; "
          f"onnxruntime {onnxruntime.__version__}, {args.threads} threads; "
          f"{args.amount:.0%} of the filters of conv1 and conv2 pruned, then shrunk")
    print(f"FLOP ideal (dense / shrunk FLOPs): {ideal:.2f}x\n")
    print("| configuration | median s | min - max s | images/s (median) |")
    print("|---|---:|---:|---:|")
    for k, v in t.items():
        print(f"| {k} | {np.median(v):.3f} | {v.min():.3f} - {v.max():.3f} | {args.images / np.median(v):,.0f} |")

    def ratio(label, num, den, ceiling=None):
        r = t[num] / t[den]
        flag = ""
        if ceiling is not None and np.any(r > ceiling):
            # a speedup above the FLOP ideal is noise (the other machine load changed mid-repeat)
            flag = f" ({int(np.sum(r > ceiling))} repeat(s) above the FLOP ideal {ceiling:.2f}x: noise)"
        print(f"| {label} | {np.median(r):.2f}x | {r.min():.2f}x - {r.max():.2f}x{flag} |")

    print("\n| per-repeat ratio | median | min - max |")
    print("|---|---:|---:|")
    ratio("onnxruntime: dense / shrunk (speedup from pruning)", "onnxruntime dense", "onnxruntime shrunk", ideal)
    ratio("ece662: dense / shrunk", "ece662 dense", "ece662 shrunk", ideal)
    ratio("ece662: dense / pruned live-only", "ece662 dense", "ece662 pruned (live-only)", ideal)
    ratio("shrunk: ece662 time / onnxruntime time", "ece662 shrunk", "onnxruntime shrunk")
    ratio("dense: ece662 time / onnxruntime time", "ece662 dense", "onnxruntime dense")


if __name__ == "__main__":
    main()
