"""What a first use on a new CPU costs, and what the two compile-time changes of kernel v7 are worth.

    python benchmarks/bench_compile.py [--repeat 2] [--images 256] [--rounds 15] [--before CHECKOUT]   (3-4 minutes)

Before the planner can time the tiles on a new CPU, Numba compiles all of them (``ece662/layers/tuning.py``).
Two things cut that compile, and this measures both, each against the way it was done before:

1. **Compile time per tile.** Each tile of ``tile_source.TILES`` is written into a scratch module three ways
   and compiled in a fresh Python process with an empty Numba cache, one tile per process, all three versions
   interleaved tile by tile:
   ``prange``: Numba's full pipeline and a ``prange`` driver (how the tiles were built until 2026-12-04);
   ``no-SSA + prange``: the body without Numba's two SSA passes (``numba_pipeline.WithoutSSA``);
   ``no-SSA + threads``: that body run by Python threads (``threads.py``), as ``kernels_tiles.py`` does now.
2. **Run time, threads against prange.** The same compiled body, driven by a ``prange`` loop or by Python
   threads, on the course CNN's two conv shapes (2 threads, ``--images`` per call), rounds interleaved; the
   outputs must be equal bit for bit.  Printed: the median of the per-round ratios (prange / threads) and its
   min-max: above 1 means the threads are faster.
3. **The whole first use**, ``--repeat`` times: a fresh process with empty Numba and tile caches imports
   ece662, then runs ``load_model()``, ``plan()`` and one forward of 256 images; both times and what the planner
   said on stderr.  With ``--before CHECKOUT`` (e.g. ``git worktree add /tmp/before 967886d``) the same first
   use of that checkout runs in turn with this one's.
"""
import argparse
import functools
import os
import re
import subprocess
import sys
import tempfile
import textwrap

import numpy as np
import numba

from ece662.layers import functional as fn
from ece662.layers import tile_source
from ece662.timing import cpu_description
from tile_ab import interleaved, layer, scratch_module, tile_arguments

LAYERS = {"conv1 3x32x32 -> 32 of 5x5": (3, 32, 32, 5, 2), "conv2 32x14x14 -> 32 of 3x3": (32, 14, 32, 3, 0)}
VERSIONS = ("prange", "no-SSA + prange", "no-SSA + threads")


def prange_driver(positions, lanes):
    """The ``tile_PxL`` of a ``prange`` loop around the body (kernel v7's driver until 2026-12-04)."""
    body = tile_source.body_name(positions, lanes)
    return textwrap.dedent(f"""
        @njit(parallel=True, cache=False)
        def {tile_source.tile_name(positions, lanes)}(xflat, offs, Wp, wp, bp, first, F, tmp, out):
            N = xflat.shape[0]
            T = tmp.shape[0]
            chunk = (N + T - 1) // T
            for t in prange(T):
                {body}(xflat, offs, Wp, wp, bp, first, F, tmp[t], t * chunk, min(N, (t + 1) * chunk), out)
        """)


def scratch_source(version):
    """Every tile as ``version`` builds it, as the text of one module."""
    parts = [tile_source.HEADER.replace("from numba import njit", "from numba import njit, prange")]
    for p, l in tile_source.TILES:
        source = tile_source.tile_kernel_source(p, l)
        if version != "no-SSA + threads":                  # cut the threads driver, put a prange one
            source = source[:source.index(f"def {tile_source.tile_name(p, l)}")] + prange_driver(p, l)
        if version == "prange":                              # exactly the decorator of the time
            source = source.replace(", pipeline_class=WithoutSSA", "").replace("nogil=True, ", "")
        parts.append(source)
    return "\n\n".join(parts)


def write_modules(folder):
    """{version: its scratch module}, each also a file in ``folder`` that the compile processes import."""
    return {version: scratch_module(folder, f"tiles_v{i}", scratch_source(version)) for i, version in enumerate(VERSIONS)}


COMPILE_ONE = """
import sys, time, numpy as np, numba
sys.path.insert(0, {folder!r})
from ece662.layers import functional as fn
import {module} as m
numba.config.SLP_VECTORIZE = 1
x = np.ones((2, 2 * 2 * 16 * 16), np.float32); offs = fn.tap_offsets(2, 3, 3, 16, 16)
wp = np.ones((18, 1, {lanes}), np.float32); bp = np.zeros((1, {lanes}), np.float32)
out = np.empty((2, {lanes}, 7, 7), np.float32); tmp = np.empty((2, {positions} // 4 * {lanes}), np.float32)
t = time.perf_counter()
m.{tile}(x, offs, 16, wp, bp, 0, {lanes}, tmp, out)
print(time.perf_counter() - t)
"""


def compile_times(folder, modules, repeat):
    """{(tile, version): [seconds, ...]} to compile one tile in a fresh process (Numba imported before the
    clock), ``repeat`` passes over every tile and version."""
    times = {}
    for _ in range(repeat):
        for p, l in tile_source.TILES:
            for version in VERSIONS:
                code = COMPILE_ONE.format(folder=folder, module=modules[version].__name__, positions=p, lanes=l,
                                          tile=tile_source.tile_name(p, l))
                done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
                times.setdefault(((p, l), version), []).append(float(done.stdout.split()[-1]))
    return times


def run_times(modules, images, rounds):
    """Per layer and tile: the per-round ratios prange time / threads time, same body, same batch."""
    numba.config.SLP_VECTORIZE = 1
    rng = np.random.default_rng(0)
    T = min(fn.thread_count(), images)
    rows = []
    for name, (C, H, F, k, pad) in LAYERS.items():
        x, w, b, _ = layer(rng, images, C, H, F, k, pad)
        for p, l in tile_source.TILES:
            arguments, out = tile_arguments(x, w, b, pad, (p, l))
            tile = tile_source.tile_name(p, l)
            kernels = {"prange": getattr(modules["no-SSA + prange"], tile),
                       "threads": getattr(modules["no-SSA + threads"], tile)}
            outs = {v: out.copy() for v in kernels}
            tmp = np.empty((T, p // 4 * l), np.float32)
            calls = {v: functools.partial(kernels[v], *arguments, tmp, outs[v]) for v in kernels}
            for call in calls.values():
                call()                                        # compile
            assert np.array_equal(outs["prange"], outs["threads"]), f"{p}x{l}: the threads changed the output"
            times = interleaved(calls, rounds)
            ratio = np.array(times["prange"]) / np.array(times["threads"])
            rows.append((name, f"{p}x{l}", min(times["prange"]), min(times["threads"]), ratio))
    return rows


FIRST_USE = """
import time
t0 = time.perf_counter()
import numpy as np
from ece662.pruning_helper import load_model
t1 = time.perf_counter()
model = load_model()
model.plan()
model(np.zeros((256, 3, 32, 32), np.float32))
print(t1 - t0, time.perf_counter() - t1)
"""


def checkout_of(module):
    """The folder that holds the ``ece662`` package ``module`` belongs to."""
    return os.path.dirname(os.path.dirname(os.path.abspath(module.__file__)))


def first_use(checkout):
    """(seconds importing, seconds after: load_model, plan, forward) of one first use of the ece662 in
    ``checkout`` (a fresh process with empty caches, run from an empty folder), and the planner's lines."""
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, NUMBA_CACHE_DIR=cache, ECE662_TILE_CACHE=os.path.join(cache, "tiles"),
                   PYTHONPATH=checkout)
        done = subprocess.run([sys.executable, "-c", FIRST_USE], capture_output=True, text=True, env=env,
                              cwd=cache, check=True)
    said = [re.sub(r" \(once per CPU.*", "", line) for line in done.stderr.splitlines() if line.startswith("ece662: timed")]
    imported, rest = map(float, done.stdout.split()[-2:])
    return imported, rest, said


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=2, help="passes of the compile table, and whole first uses to time")
    ap.add_argument("--images", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--before", metavar="CHECKOUT", help="another checkout of ece662 (e.g. a clone at an older "
                    "commit) whose first use is timed in turn with this one's, in part 3")
    args = ap.parse_args()
    print(f"{cpu_description()}; load average {os.getloadavg()[0]:.1f}")
    with tempfile.TemporaryDirectory() as folder:
        modules = write_modules(folder)
        print(f"\n1. compile time of one tile in a fresh process, seconds: fastest of {args.repeat} (slowest)")
        times = compile_times(folder, modules, args.repeat)
        print(f"{'tile':6s}" + "".join(f"{v:>20s}" for v in VERSIONS))
        for p, l in tile_source.TILES + (("all", ""),):
            cells = []
            for v in VERSIONS:
                runs = (np.sum([times[t, v] for t in tile_source.TILES], axis=0) if p == "all" else times[(p, l), v])
                cells.append(f"{min(runs):6.2f} ({max(runs):5.2f})")
            print(f"{p}{'x' if l else ''}{l!s:<4s}".ljust(6) + "".join(f"{c:>20s}" for c in cells))
        print(f"\n2. run time, prange / threads, {args.images} images, {fn.thread_count()} threads, "
              f"{args.rounds} interleaved rounds (above 1: threads faster)")
        for name, tile, t_prange, t_threads, ratio in run_times(modules, args.images, args.rounds):
            print(f"{name:28s} {tile:5s} {t_prange * 1e3:8.2f} ms {t_threads * 1e3:8.2f} ms   "
                  f"{np.median(ratio):.2f}x ({ratio.min():.2f}-{ratio.max():.2f})", flush=True)
    print(f"\n3. whole first use (empty caches; import, then load_model, plan and one forward of 256 images), "
          f"load average {os.getloadavg()[0]:.1f}")
    checkouts = {"this checkout": checkout_of(fn)}
    if args.before:
        checkouts["before (" + args.before + ")"] = os.path.abspath(args.before)
    for _ in range(args.repeat):
        for name, checkout in checkouts.items():
            imported, rest, said = first_use(checkout)
            print(f"{name}: import {imported:.1f} s, then {rest:.1f} s (total {imported + rest:.1f} s)")
            for line in said:
                print("   " + line)


if __name__ == "__main__":
    sys.exit(main())
