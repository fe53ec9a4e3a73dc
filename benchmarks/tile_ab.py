"""What ``bench_hint.py`` and ``bench_compile.py`` share: two builds of the v7 tiles, side by side in one process.

Each benchmark writes the tiles it compares as scratch modules (Numba compiles only functions that live in a
file), feeds both the same inputs (``functional.tile_input``, as the library does) and times them in
interleaved rounds, so that a busy moment of the shared machine falls on both.
"""
import importlib.util
import os
import time

import numpy as np

from ece662.layers import functional as fn


def scratch_module(folder, name, source):
    """``source`` as the module ``name``, written into ``folder`` and imported from there (not cached: the
    folder is thrown away after the run)."""
    path = os.path.join(folder, name + ".py")
    with open(path, "w", encoding="utf-8") as f:
        f.write(source.replace("cache=True", "cache=False"))
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def layer(rng, images, C, H, F, k, pad):
    """Random ``x (images, C, H, H)``, ``w (F, C, k, k)`` and ``b (F,)``, and the conv's useful FLOPs."""
    x = rng.standard_normal((images, C, H, H)).astype(np.float32)
    w = rng.standard_normal((F, C, k, k)).astype(np.float32)
    b = rng.standard_normal(F).astype(np.float32)
    return x, w, b, 2.0 * images * (H + 2 * pad - k + 1) ** 2 * F * C * k * k


def tile_arguments(x, w, b, pad, tile):
    """The arguments of one tile's kernel without its scratch: ``(xflat, offs, Wp, wp, bp, first, count)``,
    and a zeroed output for it."""
    N, F = x.shape[0], w.shape[0]
    k = w.shape[2]
    xflat, offs, Wp, extra = fn.tile_input(x, k, k, pad, (tile,))
    ((_, _, first, count, wp, bp),) = fn.pack_filters_tile(w, b, (tile,))
    Hq = (x.shape[2] + 2 * pad - k + 1) // 2
    Wq = (x.shape[3] + 2 * pad - k + 1) // 2
    return (xflat, offs, Wp, wp, bp, first, count), np.zeros((N, F, Hq, Wq + extra), np.float32)


def interleaved(calls, rounds):
    """``{name: [seconds per round]}`` of the two callables in ``calls``, in turn, the order swapped every round."""
    names = list(calls)
    times = {name: [] for name in names}
    for r in range(rounds):
        for name in (names if r % 2 == 0 else names[::-1]):
            t0 = time.perf_counter()
            calls[name]()
            times[name].append(time.perf_counter() - t0)
    return times
