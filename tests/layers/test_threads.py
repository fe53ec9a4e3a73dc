"""The Python threads that run kernel v7's tiles and the sparse kernel (``ece662/layers/threads.py``)."""
import multiprocessing
import os
import subprocess
import sys
import threading
import time

import numba
import numpy as np
import pytest

from helpers import REPO
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


def test_a_keyboard_interrupt_wins_over_an_ordinary_error():
    def fails():
        raise ValueError("an ordinary error")

    def interrupted():
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        threads.run_shares([fails, interrupted])
    with pytest.raises(ValueError, match="share 0"):       # else the lowest-numbered share's error
        threads.run_shares([lambda: (_ for _ in ()).throw(ValueError("share 0")), fails])


def _run(code, timeout=300):
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout,
                          env=dict(os.environ, PYTHONPATH=REPO))


def test_ctrl_c_while_waiting_is_raised_only_after_every_share_stopped():
    """A Ctrl-C while the caller waits for the pool's shares is kept, not raised at once: the shares write into
    the caller's arrays, so the call returns only when they have stopped."""
    r = _run("""
import os, signal, threading, time
from ece662.layers import threads
done = []
def slow():
    time.sleep(1.5)
    done.append(time.perf_counter())
threading.Timer(0.3, lambda: os.kill(os.getpid(), signal.SIGINT)).start()
t0 = time.perf_counter()
try:
    threads.run_shares([lambda: None, slow])
except KeyboardInterrupt:
    print("interrupted after", round(time.perf_counter() - t0, 2), "slow share done:", bool(done))
""")
    assert r.returncode == 0, r.stderr
    said = r.stdout.split()
    assert said[:2] == ["interrupted", "after"] and float(said[2]) >= 1.4 and said[-1] == "True", r.stdout


def test_forwards_run_while_the_interpreter_shuts_down():
    """No new thread can start once Python is shutting down (a forward in an atexit handler, or in a thread the
    main program left running): the shares then run on the calling thread, and the results are the same."""
    r = _run("""
import atexit, threading, time
import numpy as np
from ece662.layers import functional as fn, kernels_sparse as sparse
rng = np.random.default_rng(0)
x = rng.standard_normal((4, 3, 10, 10)).astype(np.float32)
w = rng.standard_normal((16, 3, 3, 3)).astype(np.float32); b = np.zeros(16, np.float32)
expected = (fn.conv2d_relu_maxpool2_tuned(x, w, b, 1, tile=((4, 16),)),
            sparse.conv2d_forward_sparse_lanes(x, w, b, 1, 1, relu=True, pool2=True))
def forward(where):
    got = (fn.conv2d_relu_maxpool2_tuned(x, w, b, 1, tile=((4, 16),)),
           sparse.conv2d_forward_sparse_lanes(x, w, b, 1, 1, relu=True, pool2=True))
    print(where, all(np.array_equal(g, e) for g, e in zip(got, expected)), flush=True)
def late():
    time.sleep(1.0)            # the main program has ended by now
    forward("thread")
atexit.register(forward, "atexit")
threading.Thread(target=late).start()
""")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["thread", "True", "atexit", "True"], (r.stdout, r.stderr)


def test_models_called_from_several_threads_at_once_give_their_results():
    """Numba's workqueue layer ends the process when two threads run its parallel kernels together; forward
    calls take turns instead (``module._RUNNING``), and every thread gets the same logits as a lone call."""
    r = _run("""
import threading
import numpy as np
from ece662.pruning_helper import load_model
model = load_model()
other = load_model()
rng = np.random.default_rng(1)
xs = [rng.standard_normal((n, 3, 32, 32)).astype(np.float32) for n in (1, 3, 8, 17)]
expected = [model(x).copy() for x in xs]
wrong = []
def work(k):
    net = model if k % 2 else other
    for it in range(4):
        i = (k + it) % len(xs)
        if not np.array_equal(net(xs[i]), expected[i]):
            wrong.append((k, it))
workers = [threading.Thread(target=work, args=(k,)) for k in range(4)]
for t in workers:
    t.start()
for t in workers:
    t.join(120)
print("alive", sum(t.is_alive() for t in workers), "wrong", len(wrong))
""")
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.split()[-4:] == ["alive", "0", "wrong", "0"], r.stdout + r.stderr
