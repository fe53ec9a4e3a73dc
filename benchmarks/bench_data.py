"""Data loading at CINIC-10 scale: decode + cache a 90,000-image split, cached load, peak memory.

    python benchmarks/bench_data.py [--per-class 9000] [--workdir /tmp/ece662-bench-data]
    python benchmarks/bench_data.py --compare-hit main [--tree ../shared/datasets/cinic10_png_sample]

Full CINIC-10 cannot be downloaded on the course machines, so this writes a synthetic tree
with the real layout and size (test/<class>/*.png, 9,000 random 32x32 RGB PNGs per class),
then measures, each in a fresh process:
1. the first load (decode every PNG, build the uint8 cache),
2. a cached load (memory-mapped), target < 2 s,
3. peak RSS of a cached load + evaluating the shipped model on the whole split, target < 600 MB.

``--compare-hit REF`` instead times the cache-hit load of a PNG tree (all three splits) with
``ece662/data_utils.py`` as it is in git revision REF and as it is in the working copy, in one
process, interleaved (the order alternates every round), and prints each one's median with its
quartiles and the median of the per-round ratios (working copy / REF) with its quartiles.
"""
import argparse
import os
import subprocess
import sys
import time

import numpy as np

CHILD = r"""
import resource, sys, time
t0 = time.perf_counter()
from ece662.data_utils import get_CINIC10_data
data = get_CINIC10_data(sys.argv[1], splits=("test",), progress=False)
t_load = time.perf_counter() - t0
acc = None
if sys.argv[2] == "eval":
    from ece662.pruning_helper import load_model, test_model
    acc = test_model(load_model(), [data["X_test"], data["y_test"]], batch_size=500, verbose=False)
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(f"{t_load:.3f} {rss:.0f} {len(data['y_test'])} {acc}")
"""


def make_tree(root, per_class):
    from PIL import Image
    from ece662.data_utils import CLASSES
    rng = np.random.default_rng(0)
    for split in ("train", "valid", "test"):
        for cls in CLASSES:
            os.makedirs(os.path.join(root, split, cls), exist_ok=True)
    for cls in CLASSES:
        d = os.path.join(root, "test", cls)
        if len(os.listdir(d)) == per_class:
            continue
        imgs = rng.integers(0, 256, (per_class, 32, 32, 3), dtype=np.uint8)
        for i in range(per_class):
            Image.fromarray(imgs[i]).save(os.path.join(d, f"cifar10-test-{i}.png"), compress_level=1)
    for split in ("train", "valid"):          # the loader lists them; keep them tiny
        for cls in CLASSES:
            p = os.path.join(root, split, cls, "cifar10-x-0.png")
            if not os.path.exists(p):
                Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(p)


def child(path, mode, env):
    out = subprocess.run([sys.executable, "-c", CHILD, path, mode], capture_output=True, text=True, env=env,
                         check=True).stdout.split()
    return float(out[0]), float(out[1]), int(out[2])


def compare_hit(ref, tree, workdir, rounds):
    """Cache-hit load time of ``tree``: data_utils at git ``ref`` vs the working copy, interleaved."""
    import importlib.util
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    os.makedirs(workdir, exist_ok=True)
    old_src = subprocess.run(["git", "show", f"{ref}:ece662/data_utils.py"], cwd=repo, check=True,
                             capture_output=True, text=True).stdout
    old_path = os.path.join(workdir, "data_utils_ref.py")
    with open(old_path, "w") as f:
        f.write(old_src)
    spec = importlib.util.spec_from_file_location("data_utils_ref", old_path)
    old = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(old)
    sys.path.insert(0, repo)
    from ece662 import data_utils as new
    versions = {"ref": old, "new": new}
    caches = {name: os.path.join(workdir, f"cache-{name}") for name in versions}
    times = {name: [] for name in versions}

    def load(name):
        os.environ["ECE662_CACHE"] = caches[name]
        t0 = time.perf_counter()
        d = versions[name].get_CINIC10_data(tree, progress=False)
        dt = time.perf_counter() - t0
        assert len(d["y_train"]) + len(d["y_val"]) + len(d["y_test"]) > 0
        return dt

    import shutil
    for name in versions:
        shutil.rmtree(caches[name], ignore_errors=True)
        load(name)                    # build the cache
        load(name)                    # warm-up hit
    for r in range(rounds):
        for name in (("ref", "new") if r % 2 == 0 else ("new", "ref")):
            times[name].append(load(name))
    q = lambda a: np.percentile(a, [25, 50, 75])
    for name in versions:
        lo, med, hi = q(times[name]) * 1e3
        print(f"{name:>3} ({ref if name == 'ref' else 'working copy'}): cache-hit load {med:.2f} ms "
              f"(quartiles {lo:.2f}..{hi:.2f}) over {rounds} rounds")
    lo, med, hi = q(np.array(times["new"]) / np.array(times["ref"]))
    print(f"ratio new/ref per round: median {med:.2f} (quartiles {lo:.2f}..{hi:.2f})")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--per-class", type=int, default=9000)
    ap.add_argument("--workdir", default="/tmp/ece662-bench-data")
    ap.add_argument("--compare-hit", metavar="REF", help="git revision whose data_utils.py to compare against")
    ap.add_argument("--tree", default=os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
        os.path.abspath(__file__)))), "shared", "datasets", "cinic10_png_sample"))
    ap.add_argument("--rounds", type=int, default=40)
    args = ap.parse_args()
    if args.compare_hit:
        compare_hit(args.compare_hit, args.tree, os.path.join(args.workdir, "compare-hit"), args.rounds)
        return
    root = os.path.join(args.workdir, "cinic-10")
    t0 = time.perf_counter()
    make_tree(root, args.per_class)
    print(f"synthetic tree ready ({10 * args.per_class} test PNGs) in {time.perf_counter() - t0:.1f} s")
    env = dict(os.environ, ECE662_CACHE=os.path.join(args.workdir, "cache"))
    import shutil
    shutil.rmtree(env["ECE662_CACHE"], ignore_errors=True)
    t_first, rss_first, n = child(root, "load", env)
    print(f"first load (decode {n} PNGs + build cache): {t_first:.1f} s, peak RSS {rss_first:.0f} MB")
    t_cached, rss_cached, _ = child(root, "load", env)
    print(f"cached load: {t_cached:.3f} s (target < 2 s), peak RSS {rss_cached:.0f} MB")
    t_eval, rss_eval, _ = child(root, "eval", env)
    print(f"cached load + evaluate the shipped model on all {n} images: peak RSS {rss_eval:.0f} MB "
          f"(target < 600 MB; the split as float32 would be {n * 3 * 32 * 32 * 4 / 2 ** 20:.0f} MB)")


if __name__ == "__main__":
    main()
