"""The Python threads that run kernel v7's tiles and the sparse kernel (``ece662/layers/threads.py``)."""
import multiprocessing
import threading
import time

import numba
import numpy as np
import pytest

from ece662.layers import functional as fn
from ece662.layers import kernels_sparse as sparse
from ece662.layers import threads
from ece662.layers.kernels_tiles import TILE_KERNELS


def _conv(N=7, C=3, H=10, W=10, F=24, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((N, C, H, W)).astype(np.float32)
    w = rng.standard_normal((F, C, 3, 3)).astype(np.float32)
    b = rng.standard_normal(F).astype(np.float32)
    w[rng.random(w.shape) < 0.6] = 0.0
    return x, w, b


def test_every_image_in_exactly_one_share():
    for N in range(0, 40):
        for T in range(1, 6):
            shares = threads.image_shares(N, T)
            covered = [n for n0, n1 in shares for n in range(n0, n1)]
            assert covered == list(range(N)), (N, T, shares)
            assert len(shares) <= T and all(n1 > n0 for n0, n1 in shares)


@pytest.mark.parametrize("tile", sorted(TILE_KERNELS))
def test_results_do_not_depend_on_the_thread_count(tile):
    """One thread or several: every image is computed whole by one thread, the same bits either way."""
    x, w, b = _conv()
    before = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        one = fn.conv2d_relu_maxpool2_tuned(x, w, b, 1, tile=(tile,))
        one_sparse = sparse.conv2d_forward_sparse_lanes(x, w, b, 1, 1, relu=True, pool2=True)
    finally:
        numba.set_num_threads(before)
    many = fn.conv2d_relu_maxpool2_tuned(x, w, b, 1, tile=(tile,))
    many_sparse = sparse.conv2d_forward_sparse_lanes(x, w, b, 1, 1, relu=True, pool2=True)
    assert np.array_equal(one, many)
    assert np.array_equal(one_sparse, many_sparse)


def test_an_error_in_one_share_is_raised_after_every_share_stopped():
    finished = []

    def slow():
        time.sleep(0.2)
        finished.append("slow")

    def fails():
        raise ValueError("share 1 failed")

    with pytest.raises(ValueError, match="share 1 failed"):
        threads.run_shares([slow, fails, slow])
    assert finished == ["slow", "slow"]          # the caller never returns while a share still writes


def test_shares_run_at_the_same_time():
    """The shares really run on separate threads (two shares that wait for each other finish)."""
    both = threading.Barrier(2, timeout=10)
    threads.run_shares([both.wait, both.wait])    # one thread would wait for ever (here: BrokenBarrierError)


def _child_runs_a_tile(queue):
    x, w, b = _conv(N=4)
    queue.put(float(fn.conv2d_relu_maxpool2_tuned(x, w, b, 1, tile=((4, 16),)).sum()))


@pytest.mark.skipif("fork" not in multiprocessing.get_all_start_methods(), reason="no fork on this OS")
def test_a_forked_child_gets_its_own_pool():
    """The parent's pool has no threads in a child made by fork: the child must not wait on them."""
    x, w, b = _conv(N=4)
    expected = float(fn.conv2d_relu_maxpool2_tuned(x, w, b, 1, tile=((4, 16),)).sum())   # the parent's pool exists
    threads.run_shares([lambda: None, lambda: None])
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_child_runs_a_tile, args=(queue,))
    child.start()
    try:
        assert queue.get(timeout=60) == expected
    finally:
        child.join(timeout=10)
        if child.is_alive():
            child.kill()
