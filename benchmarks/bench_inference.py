"""Inference of the course CNN: ece662 (kernel v7, with its measured tile, and v6) vs PyTorch channels_last vs ONNX Runtime,
and filter skipping against its FLOP ideal and against torch running the shrunk network.

    python benchmarks/bench_inference.py [--images 10000] [--rounds 5] [--threads 2] [--skip-pruning]
    python benchmarks/bench_inference.py --profile [--batch 500] [--rounds 7]   (per-layer CPU time)

The machine is shared and noisy, so every number is a ratio measured in one run: each round
times every contender once on the same images, one after the other (torch last, then a pause,
because its OpenMP threads keep spinning after a call), and the table reports the median over
rounds of the per-round ratio with its min-max spread.  Every contender that is compared with another runs at
each batch of ``--batches`` (default 32, 64, 128, 256, 500) and is compared at its best: in each round, its
fastest batch; the table says which batch won most often, so no side is held to a batch that suits the other.  ``--cpu-time`` times the CPU each
contender used instead of the wall clock, one thread each, for a machine busy with other work.  torch and onnxruntime are benchmark-only
dependencies (the course CNN is exported with ``torch.onnx.export``).
"""
import argparse
import os
import tempfile
import time

import numpy as np

import ece662.layers.kernel_choice as kernel_choice
import ece662.layers.plan as plan
import ece662.pruning as prune
from ece662.experiments import dense_twin
from ece662.models import default_convnet
from ece662.pruning_helper import load_model
from ece662.timing import cpu_description


THREADS = [2]
BATCHES = [(32, 64, 128, 256, 500)]
CLOCK = [time.perf_counter]            # --cpu-time: time.process_time


def timed(fn):
    t0 = CLOCK[0]()
    fn()
    return CLOCK[0]() - t0


def batched(f, x, bs):
    return lambda: [f(x[i:i + bs]) for i in range(0, len(x), bs)]


def torch_net(sd, channels=(32, 32)):
    import torch
    tn = torch.nn
    c1, c2 = channels
    net = tn.Sequential(tn.Conv2d(3, c1, 5), tn.ReLU(), tn.MaxPool2d(2), tn.Conv2d(c1, c2, 3), tn.ReLU(),
                        tn.MaxPool2d(2), tn.Flatten(), tn.Linear(c2 * 36, 10)).eval()
    names = {"conv1": "0", "conv2": "3", "fc": "7"}
    net.load_state_dict({names[k.split(".")[0]] + "." + k.split(".")[1]: torch.tensor(v) for k, v in sd.items()})
    return net.to(memory_format=torch.channels_last)


def torch_runner(net, x, bs):
    import torch
    tx = torch.tensor(x)

    def run():
        with torch.no_grad():
            for i in range(0, len(tx), bs):
                net(tx[i:i + bs].contiguous(memory_format=torch.channels_last))
    return run


def onnx_runner(tnet, x, bs, folder):
    import onnxruntime as ort
    import torch
    path = os.path.join(folder, "course_cnn.onnx")
    torch.onnx.export(tnet, torch.zeros(1, 3, 32, 32), path, input_names=["x"], output_names=["logits"],
                      dynamic_axes={"x": {0: "batch"}, "logits": {0: "batch"}}, dynamo=False)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = THREADS[0]
    sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    return (lambda: [sess.run(None, {"x": x[i:i + bs]}) for i in range(0, len(x), bs)],
            sess.run(None, {"x": x[:8]})[0])


def rounds(contenders, n_rounds, torch_names=()):
    """``{name: [seconds per round]}``; every contender once per round, after one warm-up."""
    for fn in contenders.values():
        fn()
    times = {name: [] for name in contenders}
    for _ in range(n_rounds):
        for name, fn in contenders.items():
            times[name].append(timed(fn))
            if name in torch_names and CLOCK[0] is time.perf_counter:
                time.sleep(0.3)              # let torch's spinning threads go to sleep
    return {k: np.array(v) for k, v in times.items()}


def best_batch(t, prefix):
    """Per round, the fastest of the contenders named ``prefix batch N``: (seconds per round, winning batch)."""
    names = [n for n in t if n.startswith(prefix + " batch ")]
    stack = np.stack([t[n] for n in names])
    wins = np.bincount(stack.argmin(axis=0), minlength=len(names))
    return stack.min(axis=0), names[int(wins.argmax())].rsplit(" ", 1)[1]


def ratio_text(a, b):
    """median and min-max of the per-round ratio a/b (speed of b relative to a's time)."""
    r = a / b
    return f"{np.median(r):.2f}x ({r.min():.2f}-{r.max():.2f})"


def dense(args, x):
    net = default_convnet(seed=0).eval()
    sd = net.state_dict()
    tnet = torch_net(sd)

    def ece(kernel, bs):
        def run():
            before, kernel_choice.FUSED_POOL_KERNEL = kernel_choice.FUSED_POOL_KERNEL, kernel
            try:
                batched(net, x, bs)()
            finally:
                kernel_choice.FUSED_POOL_KERNEL = before
        return run

    with tempfile.TemporaryDirectory() as folder:
        ort_run, ort_logits = onnx_runner(tnet, x, 500, folder)
        np.testing.assert_allclose(ort_logits, net(x[:8]), rtol=1e-3, atol=1e-4)
        contenders = {}
        for bs in BATCHES[0]:
            contenders[f"ece662 v7 batch {bs}"] = ece("v7", bs)
        for bs in BATCHES[0]:
            contenders[f"ece662 v6 batch {bs}"] = ece("v6", bs)
        for bs in BATCHES[0]:
            contenders[f"onnxruntime batch {bs}"] = onnx_runner(tnet, x, bs, folder)[0]
        for bs in BATCHES[0]:
            contenders[f"torch channels_last batch {bs}"] = torch_runner(tnet, x, bs)
        t = rounds(contenders, args.rounds, torch_names={n for n in contenders if n.startswith("torch")})
    torch_best, torch_bs = best_batch(t, "torch channels_last")
    ece_best, ece_bs = best_batch(t, "ece662 v7")
    v6_best, v6_bs = best_batch(t, "ece662 v6")
    ort_best, ort_bs = best_batch(t, "onnxruntime")
    tiles = [s.kernel.tile for s in net.plan((3, 32, 32)).steps if s.op == "conv"]
    print(f"Dense inference, {len(x)} images, {args.rounds} interleaved rounds (median, min-max)")
    print(f"{'configuration':<32} {'images/s':>10} {'vs torch best (same round)':>28}")
    for name, v in t.items():
        print(f"{name:<32} {len(x) / np.median(v):10,.0f} {ratio_text(torch_best, v):>28}")
    print(f"\neach at its best batch (most often): ece662 v7 {ece_bs} (tiles {', '.join(tiles)}), ece662 v6 {v6_bs}, "
          f"torch {torch_bs}, onnxruntime {ort_bs}")
    print(f"ece662 v7 best / torch channels_last best: {ratio_text(torch_best, ece_best)}")
    print(f"ece662 v7 best / onnxruntime best:         {ratio_text(ort_best, ece_best)}")
    print(f"ece662 v7 best / v6 best:                  {ratio_text(v6_best, ece_best)}")


def pruning(args, x):
    """Filter pruning of both convs at 25/50/75%: skipping (live-only, kernels='auto') vs the dense
    kernels on the masked weights, against the FLOP ideal, and vs torch running the shrunk net."""
    print(f"\nFilter skipping, {len(x)} images, {args.rounds} interleaved rounds; against itself at batch 500, "
          f"against torch with each side at its best batch of {BATCHES[0]}")
    print(f"{'pruned':>7} {'FLOP ideal':>11} {'skip vs dense':>22} {'% of ideal':>11} {'skip vs torch shrunk':>24} "
          f"{'shrunk vs dense':>22} {'shrunk vs torch shrunk':>24}  best batches (skip, shrunk, torch)")
    for amount in (0.25, 0.5, 0.75):
        model = load_model()
        for m in (model.conv1, model.conv2):
            prune.ln_structured(m, "weight", amount=amount, n=2, dim=0)
        model.eval()
        twin = dense_twin(model)                  # the same masked weights, kernels='dense'
        small = prune.shrink(model)
        total = prune.report(model, verbose=False)[-1]
        ideal = total["flops_dense"] / total["flops_skip"]
        tsmall = torch_net(small.state_dict(), (small.conv1.out_channels, small.conv2.out_channels))
        contenders = {"dense batch 500": batched(twin, x, 500)}
        for bs in BATCHES[0]:
            contenders[f"skip batch {bs}"] = batched(model, x, bs)
            contenders[f"shrunk batch {bs}"] = batched(small, x, bs)
            contenders[f"torch batch {bs}"] = torch_runner(tsmall, x, bs)
        t = rounds(contenders, args.rounds, torch_names={n for n in contenders if n.startswith("torch")})
        dense_t, skip500 = t["dense batch 500"], t["skip batch 500"]
        skip, skip_bs = best_batch(t, "skip")
        shrunk, shrunk_bs = best_batch(t, "shrunk")
        torch_t, torch_bs = best_batch(t, "torch")
        speed = np.median(dense_t / skip500)
        print(f"{amount:>7.0%} {ideal:>10.2f}x {ratio_text(dense_t, skip500):>22} "
              f"{speed / ideal:>10.0%} {ratio_text(torch_t, skip):>24} "
              f"{ratio_text(dense_t, t['shrunk batch 500']):>22} {ratio_text(torch_t, shrunk):>24}"
              f"  {skip_bs}, {shrunk_bs}, {torch_bs}")


def profile(args, x):
    """Where an eval forward's time goes, per step of the plan, for the dense model, the model with
    25/50/75% of both convs' filters pruned (live-only path) and its shrunk network, and the shipped
    filters-50.  CPU time of one thread (``time.process_time``, numba at 1 thread), so other processes
    on the machine do not count; median of ``--rounds`` runs after a warm-up, in ms per batch."""
    import numba
    from ece662.models import load_named
    numba.set_num_threads(1)
    xb = x[:args.batch]
    models = {"dense": load_model().eval()}
    for amount in (0.25, 0.5, 0.75):
        m = load_model()
        for layer in (m.conv1, m.conv2):
            prune.ln_structured(layer, "weight", amount=amount, n=2, dim=0)
        models[f"skip {amount:.0%}"] = m.eval()
        models[f"shrunk {amount:.0%}"] = prune.shrink(m).eval()
    models["filters-50"] = load_named("filters-50").eval()

    def cpu_ms(f):
        f()
        ts = []
        for _ in range(args.rounds):
            t0 = time.process_time()
            f()
            ts.append(time.process_time() - t0)
        return 1e3 * float(np.median(ts))

    print(f"\nProfile of one eval forward, batch {len(xb)}: CPU ms of 1 thread (median of {args.rounds}); "
          f"kernel {kernel_choice.FUSED_POOL_KERNEL} for conv + ReLU + pool")
    print(f"{'model':<12} {'total':>7} {'checks':>7} {'plan':>6} {'conv1':>7} {'conv2':>7} {'fc':>6} {'rest':>6}")
    for name, m in models.items():
        p = m.plan(xb.shape[1:])
        row = {"total": cpu_ms(lambda: m(xb)), "checks": cpu_ms(lambda: m.conv1.check_input(xb)),
               "plan": cpu_ms(lambda: m.plan(xb.shape[1:]))}
        h, steps = xb, {}
        for s_ in p.steps:
            steps[s_.names[0]] = cpu_ms(lambda: plan.run_step(s_, h))
            h = plan.run_step(s_, h)
        row.update(conv1=steps["conv1"], conv2=steps["conv2"], fc=steps["fc"])
        row["rest"] = row["total"] - sum(row[k] for k in ("checks", "plan", "conv1", "conv2", "fc"))
        print(f"{name:<12} " + " ".join(f"{row[k]:>{w}.2f}" for k, w in
                                        (("total", 7), ("checks", 7), ("plan", 6), ("conv1", 7), ("conv2", 7),
                                         ("fc", 6), ("rest", 6))))
    numba.set_num_threads(args.threads)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=10000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--skip-pruning", action="store_true")
    ap.add_argument("--profile", action="store_true",
                    help="only the per-layer profile (CPU time of one thread) with kernel v6 and v7")
    ap.add_argument("--batch", type=int, default=500, help="batch of the profile")
    ap.add_argument("--threads", type=int, default=2, help="threads for every contender (numba, torch, ort)")
    ap.add_argument("--batches", default="32,64,128,256,500",
                    help="the batch sizes every compared contender runs at; each is compared at its best")
    ap.add_argument("--cpu-time", action="store_true",
                    help="time the CPU the process used (time.process_time), one thread each: on a machine "
                         "shared with other work, waiting for a core then does not count")
    args = ap.parse_args()
    if args.cpu_time:
        args.threads, CLOCK[0] = 1, time.process_time
    import numba
    import torch
    THREADS[0] = args.threads
    BATCHES[0] = tuple(int(b) for b in args.batches.split(","))
    numba.set_num_threads(args.threads)
    torch.set_num_threads(args.threads)
    print(f"{cpu_description()}; {args.threads} thread(s) each; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"
          + ("; CPU time" if args.cpu_time else "; wall-clock time"))
    x = np.random.default_rng(0).standard_normal((args.images, 3, 32, 32)).astype(np.float32)
    if args.profile:
        for kernel in ("v6", "v7"):
            kernel_choice.FUSED_POOL_KERNEL = kernel
            profile(args, x)
        kernel_choice.FUSED_POOL_KERNEL = "v7"
        return
    dense(args, x)
    if not args.skip_pruning:
        pruning(args, x)


if __name__ == "__main__":
    main()
