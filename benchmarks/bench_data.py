"""Data loading at CINIC-10 scale: decode + cache a 90,000-image split, cached load, peak memory.

    python benchmarks/bench_data.py [--per-class 9000] [--workdir /tmp/ece662-bench-data]

Full CINIC-10 cannot be downloaded on the course machines, so this writes a synthetic tree
with the real layout and size (test/<class>/*.png, 9,000 random 32x32 RGB PNGs per class),
then measures, each in a fresh process:
1. the first load (decode every PNG, build the uint8 cache),
2. a cached load (memory-mapped), target < 2 s,
3. peak RSS of a cached load + evaluating the shipped model on the whole split, target < 600 MB.
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


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--per-class", type=int, default=9000)
    ap.add_argument("--workdir", default="/tmp/ece662-bench-data")
    args = ap.parse_args()
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
