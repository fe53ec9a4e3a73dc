"""Threads for the tile kernels, from Python: each thread runs a compiled serial function on its share of the images.

Most kernels here are Numba ``parallel=True`` functions: a ``prange`` loop that Numba's threads share out.
The register tiles do it differently, to save compile time.  Numba compiles a ``prange`` loop into a
separate function with its own pass over the parallel machinery, and that costs 0.5 s for a loop of one
line and 0.7-1.1 s for a tile's driver (measured on Zen 4 with ``get_metadata(sig)['pipeline_times']``;
``benchmarks/RESULTS.md``, "First use"): about a third of what a first use waits for, once per tile and per
CPU.  A tile's images are independent, so the loop over threads needs nothing Numba offers.  Each tile is a
serial function compiled with ``nogil=True`` (it runs without Python's global lock), and plain Python threads
from a pool run one share each:

    run_shares([partial(images_8x32, ..., n0, n1, out) for n0, n1 in image_shares(N, T)])

Share 0 runs on the calling thread, the others on the pool, and the call returns when all have finished.
Each image is computed whole by one thread, in the same order of operations, so the result does not depend on
the number of threads.  The first exception of any share is raised once all of them have stopped.

With ``NUMBA_DISABLE_JIT=1`` the shares are plain Python and Python's lock makes them take turns: correct,
and no slower than one thread.
"""
import os
import threading
from concurrent.futures import ThreadPoolExecutor

_lock = threading.Lock()
_pool = None                  # (ThreadPoolExecutor, its size, the process that made it)


def image_shares(N, T):
    """The ``(n0, n1)`` ranges of images for T threads: equal chunks, the last one shorter, none empty.

    Examples
    --------
    >>> image_shares(10, 4)
    [(0, 3), (3, 6), (6, 9), (9, 10)]
    >>> image_shares(1, 2)
    [(0, 1)]
    >>> image_shares(0, 2)
    []
    """
    chunk = -(-N // max(1, T))
    return [(n0, min(N, n0 + chunk)) for n0 in range(0, N, max(1, chunk))]


def _executor(workers):
    """A pool of at least ``workers`` threads, made once per process (a pool inherited through ``fork`` has
    no threads left in the child, so the child makes its own)."""
    global _pool
    with _lock:
        if _pool is None or _pool[1] < workers or _pool[2] != os.getpid():
            # a smaller pool is left as it is (not shut down): another thread may be submitting to it now;
            # its threads stay idle, and the pools only grow up to the largest thread count asked for
            _pool = (ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ece662-tile"), workers, os.getpid())
        return _pool[0]


def run_shares(shares):
    """Call every function in ``shares`` (no arguments), the first on this thread and the rest on the pool;
    return when all have returned, raising the first exception any of them raised."""
    if len(shares) <= 1:
        for share in shares:
            share()
        return
    futures = [_executor(len(shares) - 1).submit(share) for share in shares[1:]]
    first_error = None
    try:
        shares[0]()
    except BaseException as e:                  # wait for the others before raising: they write into out
        first_error = e
    for future in futures:
        try:
            future.result()
        except BaseException as e:
            first_error = first_error or e
    if first_error is not None:
        raise first_error
