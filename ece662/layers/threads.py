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
the number of threads.  An exception of any share is raised once all of them have stopped (:func:`run_shares`).

With ``NUMBA_DISABLE_JIT=1`` the shares are plain Python and Python's lock makes them take turns: correct,
and no slower than one thread.
"""
import os
import threading
from concurrent.futures import ThreadPoolExecutor, wait

_lock = threading.Lock()
_pool = None                  # (ThreadPoolExecutor, its size)


def _forget_pool_in_child():
    """After ``fork`` the child has none of the parent's threads (and maybe a lock another thread held): it
    starts without a pool and makes its own."""
    global _lock, _pool
    _lock = threading.Lock()
    _pool = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool_in_child)


def image_shares(N, T):
    """The ``(n0, n1)`` ranges of images for at most T threads: chunks of ceil(N / T) images, the last one
    shorter or equal, none empty.

    Examples
    --------
    >>> image_shares(10, 4)
    [(0, 3), (3, 6), (6, 9), (9, 10)]
    >>> image_shares(5, 4)
    [(0, 2), (2, 4), (4, 5)]
    >>> image_shares(0, 2)
    []
    """
    chunk = -(-N // max(1, T))
    return [(n0, min(N, n0 + chunk)) for n0 in range(0, N, max(1, chunk))]


def _executor(workers):
    """The pool, with at least ``workers`` threads.  A pool that is too small is replaced, not shut down
    (another thread may be submitting to it); its threads end once nothing refers to it."""
    global _pool
    with _lock:
        if _pool is None or _pool[1] < workers:
            _pool = (ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ece662-tile"), workers)
        return _pool[0]


def run_shares(shares):
    """Call every function in ``shares`` (no arguments), the first on this thread and the rest on the pool,
    and return when all have returned.  Then, if any raised, raise: a ``KeyboardInterrupt`` (or another
    exception that is not an ``Exception``) first, else the error of the lowest-numbered share that failed.

    It never returns while a share still runs, because the shares write into the caller's arrays: a Ctrl-C
    that arrives while it waits is kept and raised once the shares it waits for are done (a share is one
    call's worth of images).  Where no thread can be started (the interpreter is shutting down, e.g. a forward
    in an ``atexit`` handler or in a thread the main program left running), the shares run here, one by one.
    """
    running, here = [], [0]                      # futures of shares 1, 2, ...; indices of shares run here
    if len(shares) > 1:
        try:
            pool = _executor(len(shares) - 1)
            for share in shares[1:]:
                running.append(pool.submit(share))
        except RuntimeError:                     # "cannot schedule new futures after (interpreter) shutdown"
            here += range(1 + len(running), len(shares))
    errors = []                                  # (share, exception); a Ctrl-C while waiting counts as share -1
    for i in here[:len(shares)]:
        try:
            shares[i]()
        except BaseException as e:
            errors.append((i, e))
    for i, future in enumerate(running, start=1):
        while True:
            try:
                wait([future])
                break
            except BaseException as e:           # Ctrl-C while waiting: keep it, wait on
                errors.append((-1, e))
        if future.exception() is not None:
            errors.append((i, future.exception()))
    if errors:
        errors.sort(key=lambda error: (isinstance(error[1], Exception), error[0]))
        raise errors[0][1]
