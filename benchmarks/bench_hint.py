"""What the compiler hint of kernel v7 is worth: each register tile with and without ``prefer_broadcast_loads()``.

    python benchmarks/bench_hint.py [--images 64] [--rounds 9]

The generated tiles (``ece662/layers/kernels_tiles.py``) start with ``prefer_broadcast_loads()``
(``ece662/layers/llvm_hints.py``): LLVM then loads each input of a tile with a broadcast, not with a gather
and a dozen shuffles.  Here every tile of ``tile_source.TILES`` is written twice, with and without the
hint, into two scratch modules; the serial body of each (``images_PxL``, one thread) runs the course CNN's two
conv shapes (conv + bias + ReLU + 2x2 max pool) on the same random batch, both versions interleaved round by
round.  Printed per tile and layer: the gathers in each version's machine code, GFLOP/s of each (fastest
round) and the median of the per-round speed ratios with their min-max.  The outputs of the two versions are
checked equal bit for bit (the hint chooses instructions, not arithmetic).
"""
import argparse
import functools
import os
import re
import sys
import tempfile

import numpy as np
import numba

from ece662.layers import tile_source
from ece662.timing import cpu_description
from tile_ab import interleaved, layer, scratch_module, tile_arguments

LAYERS = {"conv1 3x32x32 -> 32 of 5x5": (3, 32, 32, 5), "conv2 32x14x14 -> 32 of 3x3": (32, 14, 32, 3)}


def tiles_module(folder, hint):
    """Every tile, with or without the hint, as a scratch module of its own."""
    name = "tiles_hint" if hint else "tiles_plain"
    source = "\n".join([tile_source.HEADER] + [tile_source.tile_kernel_source(p, l, hint=hint)
                                               for p, l in tile_source.TILES])
    return scratch_module(folder, name, source)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=9)
    args = ap.parse_args()
    numba.config.SLP_VECTORIZE = 1           # as functional.slp_vectorizer() compiles the real tiles
    rng = np.random.default_rng(0)
    print(f"{cpu_description()}; one thread (the serial tile bodies); batch {args.images}; "
          f"{args.rounds} interleaved rounds; load average {os.getloadavg()[0]:.1f}")
    print(f"{'layer':28s} {'tile':5s} {'gathers':>9s} {'GFLOP/s plain':>14s} {'GFLOP/s hint':>13s}   hint / plain")
    with tempfile.TemporaryDirectory() as folder:
        tiles = {"plain": tiles_module(folder, hint=False), "hint": tiles_module(folder, hint=True)}
        for name, (C, H, F, k) in LAYERS.items():
            N = args.images
            x, w, b, flops = layer(rng, N, C, H, F, k, 0)
            for p, l in tile_source.TILES:
                arguments, out = tile_arguments(x, w, b, 0, (p, l))
                kernels = {v: getattr(module, tile_source.body_name(p, l)) for v, module in tiles.items()}
                outs = {v: out.copy() for v in kernels}
                best = np.empty(p // 4 * l, np.float32)
                calls = {v: functools.partial(kernels[v], *arguments, best, 0, N, outs[v]) for v in kernels}
                for call in calls.values():
                    call()                                    # compile
                assert np.array_equal(outs["plain"], outs["hint"]), f"{p}x{l}: the hint changed the output"
                gathers = {v: len(re.findall("vgather", k.inspect_asm(k.signatures[0]))) for v, k in kernels.items()}
                times = interleaved(calls, args.rounds)
                ratio = np.array(times["plain"]) / np.array(times["hint"])
                print(f"{name:28s} {p}x{l:<3d} {gathers['plain']:>4d} / {gathers['hint']:<2d} "
                      f"{flops / min(times['plain']) / 1e9:14.1f} {flops / min(times['hint']) / 1e9:13.1f}   "
                      f"{np.median(ratio):.2f}x ({ratio.min():.2f}-{ratio.max():.2f})", flush=True)


if __name__ == "__main__":
    sys.exit(main())
