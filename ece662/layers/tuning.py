"""Which register tile kernel v7 runs on this CPU: chosen by measuring, like FFTW's planner.

Kernel v7 (``functional.conv2d_relu_maxpool2_tuned``) is one tile written for any size
(``tile_source.py``); which size is fastest depends on the CPU: on an AVX2 CPU (sixteen 8-lane registers)
v6's 4 positions x 16 filters, on an AVX-512 CPU (thirty-two 16-lane registers) a tile of 8 positions x 32
filters is about twice as fast (``benchmarks/RESULTS.md``, "Kernel v7").  One more candidate turns the
layout round: :data:`LANES`, output positions as the vector lanes (the kernel of ``kernels_sparse``, which
multiplies by every non-zero weight), which wins for layers with few filters (8 or 16 live ones fill one
register or half of one when the filters are the lanes).  Rather than guess from the CPU's name,
:func:`choose_tile` times every candidate on the layer's own shape, once per CPU, and keeps the fastest:

1. ``ECE662_TILE=8x32`` (or ``8x16+8x8``: 16-wide blocks, the rest in 8-wide ones) forces a tile, for a
   benchmark or to compare two;
2. with ``NUMBA_DISABLE_JIT=1`` nothing is timed (plain Python would measure the interpreter): the default
   tile, v6's shape;
3. otherwise the choice recorded for this CPU and shape, in memory or in the cache file
   (:func:`cache_path`: beside Numba's cache when ``NUMBA_CACHE_DIR`` is set, else in the user's cache
   folder; ``ECE662_TILE_CACHE`` names another folder; one file per CPU and set of candidates);
4. otherwise a measurement: every candidate of :func:`candidates` on a synthetic batch of the layer's
   shape, in interleaved rounds, the fastest round per candidate (other work on the machine only ever adds
   time, so the minimum is the estimate it disturbs least: with the median, a busy machine once picked a
   tile 1.2x slower); the fastest candidate is recorded.  It says so on stderr;
   it costs well under a second per shape once the tiles are compiled (Numba compiles them once per CPU).

The same measurement answers a second question: from how many zero weights on does the sparse kernel
(``kernels_sparse``, work proportional to the non-zero weights) beat the chosen tile?  It also times
:data:`LANES` on the same weights with :data:`SPARSE_PROBE` of them zeroed at random, and
:func:`break_even` draws the line through the two lanes timings (its time falls with the non-zeros) to where
it meets the chosen tile's: :func:`sparse_from`.  On the AVX2 EPYC the break-even was about 0.5, on Zen 4
0.2-0.4 against the tiles before their compiler hint (``llvm_hints``) and 0.6-0.7 after it
(``benchmarks/RESULTS.md``): one fixed threshold cannot serve every CPU and kernel.  ``ECE662_SPARSE_FROM=0.6``
forces it; with ``ECE662_TILE`` set or without the JIT it is :data:`DEFAULT_SPARSE_FROM`.

Before the first measurement on a new machine Numba compiles every candidate: on Zen 4, each in a fresh
process, the five tiles 8.4-9.5 s and the sparse kernel 2.3 s (15.9-17.6 s and 5.3-6.6 s before the tiles
skipped Numba's SSA passes and its ``prange`` drivers: ``numba_pipeline.py``, ``threads.py``).  Numba
compiles in one thread, so :func:`measure` shares the candidates with a second Python process
(:func:`compile_in_helper`), which compiles its share into Numba's cache while this one compiles the rest;
this process then loads the helper's share from the cache.  When the cache already held everything (this
process's share took under :data:`WARM_COMPILE` seconds) the helper is stopped; so is a helper still running
long after this process finished its share (:data:`HELPER_SLACK`).  A helper that fails or is stopped costs
nothing but its time: whatever is not in the cache is compiled here, as without it, and the message on
stderr says whether a helper helped.

The cache file is input like any other: it is read only up to :data:`MAX_CACHE_BYTES`, and an entry that
does not name known tiles is ignored (and measured again).  It is written atomically under a lock.
"""
import functools
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time

import numba
import numpy as np

from ece662.layers import functional as fn
from ece662.layers import kernels_sparse as sparse
from ece662.layers import kernels_tiles
from ece662.layers.tile_source import TILES, module_source

DEFAULT_TILE = ((4, 16), (8, 8))   # v6's shape: 16-wide blocks of one 2x2 block, the rest 8 positions x 8
TAIL = (8, 8)                      # the tile for the filters a wider block leaves over
LANES = "lanes"                    # output positions as the lanes: kernels_sparse.conv2d_forward_sparse_lanes
DEFAULT_SPARSE_FROM = 0.6         # the sparse kernel's threshold when nothing is measured (the AVX2 break-even + margin)
SPARSE_PROBE = 0.75                # the fraction of zero weights the sparse kernel is also timed at
PROBE = "lanes@75%"                # its name in the cache file's seconds
ROUNDS = 7                         # interleaved timing rounds per candidate (the fastest is kept)
WORK = 1e9                         # multiply-adds x 2 per timed call: about 10 ms at 100 GFLOP/s
MAX_BYTES = 5e7                    # bytes of input per timed call at most (a large image with few filters)
MAX_BATCH = 256                    # images per timed call at most (at 64 a call's fixed costs, larger for the
                                   # sparse kernel, put conv2's break-even 20 points above the kernels' crossing)
MAX_CACHE_BYTES = 1 << 20          # a cache file larger than this is not read
MAX_ENTRIES = 2000                 # shapes kept per CPU in the cache file (the oldest are dropped)
WARM_COMPILE = 1.0                 # seconds: a share compiled faster came from Numba's cache
HELPER_SLACK = 2.0                 # a compile helper may take this many times this process's share (+ 5 s)

_memory = {}                       # (cpu, shape key) -> {'tile', 'reason', 'sparse_from', 'sparse_reason'}
_told = set()                      # cache folders we could not write, said once


def parse_tile(text):
    """``'8x32'`` -> ``((8, 32),)``; ``'8x16+8x8'`` -> ``((8, 16), (8, 8))``; ``'lanes'`` -> :data:`LANES`;
    a ValueError saying which tiles exist for anything else."""
    known = ", ".join(format_tile((t,)) for t in TILES)
    text = str(text).strip().lower()
    if text == LANES:
        return LANES
    try:
        tile = tuple(tuple(int(v) for v in part.strip().split("x")) for part in text.split("+"))
    except ValueError:
        tile = ()
    if not tile or any(len(t) != 2 or t not in TILES for t in tile):
        raise ValueError(f"a v7 tile is one or more of {known} joined by '+' (e.g. '8x16+8x8'), or '{LANES}', "
                         f"got {text!r}")
    return tile


def format_tile(tile):
    """``((8, 16), (8, 8))`` -> ``'8x16+8x8'``."""
    if tile == LANES:
        return LANES
    return "+".join(f"{p}x{l}" for p, l in tile)


def describe(tile):
    """The tile's name, and for :data:`LANES` what it means."""
    return "lanes (output positions as the vector lanes)" if tile == LANES else format_tile(tile)


def computed_filters(tile, live):
    """How many filters ``tile`` computes for ``live`` live ones (its blocks are whole).

    Examples
    --------
    >>> computed_filters(((8, 32),), 24), computed_filters(((8, 16), (8, 8)), 24), computed_filters("lanes", 24)
    (32, 24, 24)
    """
    if tile == LANES:
        return live
    return sum(-(-count // lanes) * lanes for _, lanes, _, count in fn.tile_segments(tile, live))


def candidates(filters):
    """The tiles worth timing for ``filters`` live filters: every size alone (the last block padded), every
    wider size followed by the 8-wide tail when its blocks do not divide the filters, and :data:`LANES`."""
    out = [(t,) for t in TILES]
    out += [(t, TAIL) for t in TILES if t != TAIL and filters > t[1] and filters % t[1]]
    return out + [LANES]


def pack(w, b, tile):
    """What :func:`run` needs of the weights for ``tile``, packed once (None for :data:`LANES`)."""
    return None if tile == LANES else fn.pack_filters_tile(w, b, tile)


def run(x, w, b, pad, tile, packed=None):
    """Conv (stride 1) + bias + ReLU + 2x2 max pool of ``x`` with the layout ``tile`` names."""
    if tile == LANES:
        return sparse.conv2d_forward_sparse_lanes(x, w, b, 1, pad, relu=True, pool2=True)
    return fn.conv2d_relu_maxpool2_tuned(x, w, b, pad, tile=tile, packed=packed)


@functools.lru_cache(maxsize=1)
def cpu_key():
    """The CPU the choice belongs to: LLVM's name for it and a digest of its features
    (e.g. ``'znver4-3f2a9c1e'``): two machines with the same name but other vector units differ."""
    import llvmlite.binding as llvm
    # Numba's own rule for the code it compiles: NUMBA_CPU_NAME and NUMBA_CPU_FEATURES, each where it is set
    name = numba.config.CPU_NAME or llvm.get_host_cpu_name()
    features = numba.config.CPU_FEATURES
    if features is None:
        features = llvm.get_host_cpu_features().flatten()
    return f"{name}-{hashlib.sha256(features.encode()).hexdigest()[:8]}"


@functools.lru_cache(maxsize=1)
def candidates_key():
    """A digest of the candidates and their source: a choice measured among other tiles (an older
    ece662) is in another file, and is measured again rather than trusted."""
    return hashlib.sha256((module_source() + LANES + PROBE).encode()).hexdigest()[:8]


def cache_path():
    """The cache file of this CPU's choices among this version's candidates."""
    folder = os.environ.get("ECE662_TILE_CACHE")
    if not folder:
        numba_dir = os.environ.get("NUMBA_CACHE_DIR")
        base = numba_dir or os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        folder = os.path.join(base, "ece662")
    return os.path.join(folder, f"tiles-{cpu_key()}-{candidates_key()}.json")


def _shape_key(C, H, W, F, KH, KW, pad):
    return f"C{C} H{H} W{W} F{F} k{KH}x{KW} pad{pad} threads{fn.thread_count()}"


def _read_cache(path):
    """``{shape key: {'tile': str, 'seconds': {tile: s}}}`` from ``path``; ``{}`` when it is missing,
    too large or not what :func:`_write_choice` writes (the entries are checked again on use)."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_CACHE_BYTES + 1)
        if len(data) > MAX_CACHE_BYTES:
            return {}
        table = json.loads(data.decode("utf-8"))
    except (OSError, ValueError, RecursionError):      # RecursionError: arrays nested thousands deep
        return {}
    return table if isinstance(table, dict) else {}


def _recorded(entry):
    """``(tile, sparse_from)`` of a cache entry, or None when the entry is not valid."""
    try:
        tile, frac = parse_tile(entry["tile"]), entry["sparse_from"]
    except (TypeError, KeyError, ValueError):
        return None
    if isinstance(frac, bool) or not isinstance(frac, (int, float)) or not 0.0 <= frac <= 1.0:
        return None
    if tile == LANES and frac != 0.0:        # the sparse kernel is the lanes layout: it wins at once (break_even)
        return None
    return tile, float(frac)


def break_even(seconds, probe_seconds, probe=SPARSE_PROBE):
    """The fraction of zero weights from which the sparse kernel is faster than the fastest tile.

    ``seconds``: ``[(tile, s), ...]`` fastest first, :data:`LANES` among them (the sparse kernel's layout on
    the dense weights); ``probe_seconds``: the same kernel with ``probe`` of the weights zero.  Its time is
    taken as a straight line through the two; where the line meets the fastest tile's time is the answer,
    0 when the lanes layout is the fastest already, 1 when zeros do not make it faster.

    Examples
    --------
    >>> break_even([(((8, 32),), 1.0), ("lanes", 1.5)], 0.75), break_even([("lanes", 1.0)], 0.5)
    (0.5, 0.0)
    """
    best = seconds[0][1]
    lanes = dict(seconds)[LANES]
    if lanes <= best:
        return 0.0
    if probe_seconds >= lanes:
        return 1.0
    return float(min(1.0, round(probe * (lanes - best) / (lanes - probe_seconds), 3)))


def _write_choice(path, key, tile, seconds, sparse_from):
    """Add one choice to the cache file: under a lock, read, merge, write a temporary file, rename.
    True when it was written; otherwise it says why on stderr (once per folder) and returns False."""
    from filelock import FileLock, Timeout
    folder = os.path.dirname(path)
    if os.path.exists(folder) and not os.path.isdir(folder):
        if folder not in _told:
            _told.add(folder)
            print(f"ece662: the tile cache folder {folder} is a file, not a folder: the measured tiles are kept for "
                  f"this run only. Set ECE662_TILE_CACHE to a writable folder to keep them.", file=sys.stderr)
        return False
    try:
        os.makedirs(folder, exist_ok=True)
        with FileLock(path + ".lock", timeout=10):
            table = _read_cache(path)
            table.pop(key, None)
            table[key] = {"tile": format_tile(tile), "sparse_from": sparse_from,
                          "seconds": {(t if t == PROBE else format_tile(t)): round(s, 7) for t, s in seconds}}
            for old in list(table)[:max(0, len(table) - MAX_ENTRIES)]:
                del table[old]
            fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tiles-", suffix=".tmp")
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as f:
                    json.dump(table, f, indent=0)
                os.replace(tmp, path)
            except BaseException:
                os.unlink(tmp)
                raise
        return True
    except (OSError, Timeout) as e:
        if folder not in _told:
            _told.add(folder)
            print(f"ece662: could not record the measured tile in {path} ({e}); it is kept for this run only. "
                  f"Set ECE662_TILE_CACHE to a writable folder to keep it.", file=sys.stderr)
        return False


def kernels_of(tiles):
    """The compiled kernels ``tiles`` (layouts as :func:`candidates` gives them) run: tile sizes and
    :data:`LANES`, each once, largest first.

    Examples
    --------
    >>> kernels_of([((8, 16),), ((8, 16), (8, 8)), "lanes", "lanes@75%"])
    ['lanes', (8, 16), (8, 8)]
    """
    found = []
    for t in tiles:
        for k in ([LANES] if isinstance(t, str) else list(t)):     # LANES, or PROBE: the lanes kernel too
            if k not in found:
                found.append(k)
    return sorted(found, key=lambda k: -_compile_cost(k))


def _compile_cost(kernel):
    """A kernel's relative compile time: about its number of sums, the lanes kernel as the largest tile
    (Zen 4, each in a fresh process, ``benchmarks/bench_compile.py``: 8x32 2.8-3.0 s, the lanes kernel 2.3 s,
    8x16 and 4x32 1.5-2.0 s, 4x16 and 8x8 1.0-1.2 s)."""
    return 256 if kernel == LANES else kernel[0] * kernel[1]


def split_for_helper(kernels):
    """``(mine, theirs)``: ``kernels`` (largest first) dealt to this process and a helper so both finish
    together, each next kernel to the one with less work so far.

    Examples
    --------
    >>> split_for_helper(["lanes", (8, 32), (8, 16), (4, 32), (4, 16), (8, 8)])
    (['lanes', (8, 16), (4, 16)], [(8, 32), (4, 32), (8, 8)])
    """
    mine, theirs, load = [], [], [0, 0]
    for k in kernels:
        side = 0 if load[0] <= load[1] else 1
        (mine, theirs)[side].append(k)
        load[side] += _compile_cost(k)
    return mine, theirs


def compile_kernels(kernels):
    """Compile ``kernels`` (tile sizes and/or :data:`LANES`) with the argument types a measurement uses,
    on a tiny batch: afterwards Numba's cache holds them.  What a compile helper process runs."""
    x = np.ones((2, 2, 8, 8), np.float32)
    w = np.ones((32, 2, 3, 3), np.float32)
    b = np.zeros(32, np.float32)
    for k in kernels:
        run(x, w, b, 1, k if k == LANES else (k,))


def usable_cores():
    """The cores this process may run on (its CPU affinity where the OS says, e.g. under ``taskset``)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def compile_in_helper(kernels):
    """Start a second Python process that compiles ``kernels`` into Numba's cache (:func:`compile_kernels`);
    the :class:`subprocess.Popen`, or None where there is no second core or no Python to start.

    The helper imports what this process imported: it is started isolated (``-I``: no current folder, no
    ``PYTHON*`` variables on its path) and given the folder this ece662 came from, then this process's
    ``sys.path`` without the current folder, so neither a file in the current folder nor another copy of
    ece662 can stand in for the modules it compiles."""
    if not kernels or usable_cores() < 2 or not sys.executable or getattr(sys, "frozen", False):
        return None
    package_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    path = [package_root] + [p for p in sys.path if p and p != package_root]    # '' (the current folder) left out
    code = f"import sys; sys.path[:] = {path!r}; from ece662.layers import tuning; tuning.compile_kernels({kernels!r})"
    try:
        return subprocess.Popen([sys.executable, "-I", "-c", code], stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    except OSError:
        return None


def dispatcher(kernel):
    """The Numba function that holds ``kernel`` (a tile size or :data:`LANES`) once compiled: the serial
    function each thread runs (the threads themselves are Python's, ``threads.py``)."""
    return sparse.sparse_images if kernel == LANES else kernels_tiles.TILE_BODIES[kernel]


def _never_compiled(kernels):
    """Whether this process has compiled (or loaded) none of ``kernels`` yet: only then can a helper help."""
    return not any(dispatcher(k).signatures for k in kernels)


def _warm_up(tiles, call):
    """Run every layout once (compiling what Numba's cache lacks), with a compile helper on a fresh process;
    ``(seconds, helped)``."""
    kernels = kernels_of(tiles)
    mine, theirs = split_for_helper(kernels)
    helper = compile_in_helper(theirs) if _never_compiled(kernels) else None
    t0 = time.perf_counter()
    if helper is not None:
        try:
            compile_kernels(mine)
            own = time.perf_counter() - t0
            if own < WARM_COMPILE:     # Numba's cache had them: load the rest here too
                helper.kill()
            # the two shares are about equal: a helper much slower than this process is stuck or starved,
            # and whatever it has not finished is compiled here below
            helper.wait(timeout=HELPER_SLACK * own + 5.0)
        except subprocess.TimeoutExpired:
            pass
        finally:                       # never leave it running: on a timeout, an error, Ctrl-C
            if helper.poll() is None:
                helper.kill()
                helper.wait()
    for t in tiles:                    # compiles here whatever the cache still lacks
        call(t)
    return time.perf_counter() - t0, helper is not None and helper.returncode == 0


def measure(C, H, W, F, KH, KW, pad, tiles=None, rounds=ROUNDS, seed=0, probe=True):
    """``(ranked, warm_up, probe_seconds, helped)``: ``ranked`` is ``[(tile, seconds of its fastest round), ...]`` for
    each of ``tiles`` (default :func:`candidates`) on a synthetic batch of shape ``(B, C, H, W)`` and ``F``
    filters of ``KH x KW``, fastest first; ``warm_up`` the seconds of the one untimed call per candidate before
    the rounds (compiling a tile not yet in Numba's cache); ``probe_seconds`` (None with ``probe=False``) the
    fastest round of :data:`LANES` on the same weights with :data:`SPARSE_PROBE` of them zeroed at random;
    ``helped`` whether a second process compiled part of the candidates (:func:`compile_in_helper`).
    The rounds interleave the candidates, so a busy moment of the machine falls on all of them."""
    tiles = list(tiles or candidates(F))
    Ho, Wo = H + 2 * pad - KH + 1, W + 2 * pad - KW + 1
    flops = 2.0 * Ho * Wo * F * C * KH * KW
    images = min(WORK / max(flops, 1.0), MAX_BYTES / max(4.0 * C * H * W, 1.0))
    B = int(np.clip(images, 2 * fn.thread_count(), MAX_BATCH))
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((B, C, H, W)).astype(np.float32)
    w = rng.standard_normal((F, C, KH, KW)).astype(np.float32)
    b = rng.standard_normal(F).astype(np.float32)
    w_probe = w.copy()                 # exactly SPARSE_PROBE of the weights zero, at random places
    w_probe.ravel()[rng.permutation(w.size)[:int(round(SPARSE_PROBE * w.size))]] = 0.0
    packed = {t: pack(w, b, t) for t in tiles}
    weights = {t: w for t in tiles}
    if probe:
        tiles = tiles + [PROBE]
        packed[PROBE], weights[PROBE] = None, w_probe
    times = {t: [] for t in tiles}

    def call(t):
        run(x, weights[t], b, pad, LANES if t == PROBE else t, packed[t])
    warm_up, helped = _warm_up(tiles, call)  # the first call compiles a tile not yet in Numba's cache
    for r in range(rounds):
        for t in tiles[r % len(tiles):] + tiles[:r % len(tiles)]:
            t0 = time.perf_counter()
            call(t)
            times[t].append(time.perf_counter() - t0)
    probe_seconds = float(np.min(times.pop(PROBE))) if probe else None
    ranked = sorted(((t, float(np.min(s))) for t, s in times.items()), key=lambda ts: ts[1])
    return ranked, warm_up, probe_seconds, helped


def _forced_sparse_from():
    text = os.environ.get("ECE662_SPARSE_FROM")
    if not text:
        return None
    try:
        frac = float(text)
    except ValueError:
        frac = -1.0
    if not 0.0 <= frac <= 1.0:
        raise ValueError(f"ECE662_SPARSE_FROM: a fraction of zero weights in [0, 1] (e.g. 0.6), got {text!r}; "
                         f"unset it to let ece662 measure")
    return frac, f"ECE662_SPARSE_FROM={text}"


def unmeasured_sparse_from():
    """``(fraction, reason)`` for a conv nothing is measured for (no fused pool): ``ECE662_SPARSE_FROM`` or
    :data:`DEFAULT_SPARSE_FROM`."""
    return _forced_sparse_from() or (DEFAULT_SPARSE_FROM, "the default break-even")


def _choice(C, H, W, F, KH, KW, pad):
    """What :func:`choose_tile` and :func:`sparse_from` answer, measured (or read, or forced) together."""
    forced_sparse = _forced_sparse_from()
    default_sparse = (DEFAULT_SPARSE_FROM, "the default break-even")
    forced = os.environ.get("ECE662_TILE")
    if forced:
        try:
            tile = parse_tile(forced)
        except ValueError as e:
            raise ValueError(f"ECE662_TILE: {e}; unset it to let ece662 measure") from None
        frac, why = forced_sparse or (default_sparse[0], "the default break-even: ECE662_TILE is set, so nothing "
                                                         "is timed")
        return {"tile": tile, "reason": f"ECE662_TILE={forced}", "sparse_from": frac, "sparse_reason": why}
    if numba.config.DISABLE_JIT:
        frac, why = forced_sparse or default_sparse
        return {"tile": DEFAULT_TILE, "reason": "the default tile: NUMBA_DISABLE_JIT is set, so nothing is timed",
                "sparse_from": frac, "sparse_reason": why}
    cpu = cpu_key()
    name = cpu.split("-")[0]
    key = _shape_key(C, H, W, F, KH, KW, pad)
    if (cpu, key) not in _memory:
        path = cache_path()
        entry = _read_cache(path).get(key)
        recorded = _recorded(entry) if entry is not None else None
        if recorded is not None:
            _memory[cpu, key] = {"tile": recorded[0], "reason": f"measured fastest on {name} (recorded in {path})",
                                 "sparse_from": recorded[1],
                                 "sparse_reason": f"the break-even measured on {name} for this shape"}
        else:
            _memory[cpu, key] = _measure_and_record(C, H, W, F, KH, KW, pad, cpu, key, path)
    choice = _memory[cpu, key]
    if forced_sparse:
        choice = dict(choice, sparse_from=forced_sparse[0], sparse_reason=forced_sparse[1])
    return choice


def _measure_and_record(C, H, W, F, KH, KW, pad, cpu, key, path):
    name = cpu.split("-")[0]
    t0 = time.perf_counter()
    seconds, warm, probe_seconds, helped = measure(C, H, W, F, KH, KW, pad)
    total = time.perf_counter() - t0
    tile = seconds[0][0]
    frac = break_even(seconds, probe_seconds)
    runner_up = f", next {format_tile(seconds[1][0])} {seconds[1][1] / seconds[0][1]:.2f}x slower" \
        if len(seconds) > 1 else ""
    compiled = f" (of which {warm:.0f} s compiling the tiles, once per machine" \
               f"{', half of them in a second process' if helped else ''})" if warm > 2 else ""
    kept = f"recorded in {path}" if _write_choice(path, key, tile, seconds + [(PROBE, probe_seconds)], frac) \
        else "kept for this run only"
    print(f"ece662: timed {len(seconds)} layouts of kernel v7 for a conv of {C}x{H}x{W} -> {F} filters of "
          f"{KH}x{KW} on {name} in {total:.1f} s{compiled}: {describe(tile)}{runner_up}; the sparse kernel "
          f"wins from {frac:.0%} zero weights (once per CPU; {kept})", file=sys.stderr)
    return {"tile": tile, "reason": f"measured fastest on {name}{runner_up}", "sparse_from": frac,
            "sparse_reason": f"the break-even measured on {name} for this shape"}


def choose_tile(C, H, W, F, KH, KW, pad):
    """``(tile, reason)``: the v7 tile for a conv of ``F`` live filters of ``C x KH x KW`` over ``H x W``
    inputs (padded by ``pad``), and why (the order of the module's docstring)."""
    choice = _choice(C, H, W, F, KH, KW, pad)
    return choice["tile"], choice["reason"]


def sparse_from(C, H, W, F, KH, KW, pad):
    """``(fraction, reason)``: from this fraction of zero weights on, the sparse kernel (fused ReLU + 2x2 pool)
    beats the v7 tile for this conv on this CPU (:func:`break_even`; ``ECE662_SPARSE_FROM`` forces it)."""
    choice = _choice(C, H, W, F, KH, KW, pad)
    return choice["sparse_from"], choice["sparse_reason"]
