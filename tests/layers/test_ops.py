"""Every implementation of every op against the plain-loop reference (and torch, if present).

One suite, every implementation: a new kernel is added to IMPLS and gets every test.
"""
import json
import os

import numpy as np
import pytest

from asm_count import TARGETS, check_width, fma_lanes, requires_x86, target_env
from helpers import assert_close, requires_torch, torch
from ece662.layers import functional as fn
from ece662.layers import reference as ref
from ece662.layers.shapes import conv_output_size

CONV_FORWARD_IMPLS = {
    "numba_v1_direct": fn.conv2d_forward_direct,
    "numba_v2_rows": fn.conv2d_forward_rows,
    "numba_v3_patches": fn.conv2d_forward_numba,
}

# (N, C, H, W, F, HH, WW, stride, pad): odd sizes, stride 2, pad 0/1/2, N=1, F=1, 1x1 kernels,
# a kernel as large as the padded input, and the two layers of the default network
CONV_CASES = [
    (2, 3, 7, 9, 4, 3, 3, 1, 0),
    (1, 1, 5, 5, 1, 3, 3, 1, 1),
    (3, 2, 8, 7, 5, 3, 3, 2, 1),
    (2, 4, 9, 9, 3, 5, 5, 2, 2),
    (1, 3, 6, 6, 7, 1, 1, 1, 0),
    (2, 2, 5, 4, 3, 3, 2, 1, 2),
    (1, 3, 4, 4, 2, 6, 6, 1, 1),
    (2, 5, 11, 10, 6, 3, 3, 3, 0),
    (2, 3, 32, 32, 32, 5, 5, 1, 0),
    (3, 32, 14, 14, 32, 3, 3, 1, 0),
]


def _conv_inputs(rng, case):
    N, C, H, W, F, HH, WW, stride, pad = case
    x = rng.standard_normal((N, C, H, W)).astype(np.float32)
    w = rng.standard_normal((F, C, HH, WW)).astype(np.float32)
    b = rng.standard_normal(F).astype(np.float32)
    return x, w, b, stride, pad


@pytest.mark.parametrize("impl", list(CONV_FORWARD_IMPLS))
@pytest.mark.parametrize("case", CONV_CASES, ids=str)
def test_conv_forward_matches_reference(impl, case, rng):
    """Each conv kernel computes what the six-loop reference computes."""
    x, w, b, stride, pad = _conv_inputs(rng, case)
    expected = ref.conv2d_forward_reference(x, w, b, stride, pad)
    got = CONV_FORWARD_IMPLS[impl](x, w, b, stride, pad)
    assert_close(got, expected, {"impl": impl, "case": case})


@pytest.mark.parametrize("case", CONV_CASES, ids=str)
def test_conv_backward_matches_reference(case, rng):
    """dx, dw and db of the Numba backward equal the reference's."""
    x, w, b, stride, pad = _conv_inputs(rng, case)
    out = ref.conv2d_forward_reference(x, w, b, stride, pad)
    dout = rng.standard_normal(out.shape).astype(np.float32)
    for name, e, g in zip(("dx", "dw", "db"), ref.conv2d_backward_reference(dout, x, w, stride, pad),
                          fn.conv2d_backward_numba(dout, x, w, stride, pad)):
        assert_close(g, e, {"case": case}, rtol=1e-3, atol=1e-3, what=name)


@pytest.mark.parametrize("impl", list(CONV_FORWARD_IMPLS))
@pytest.mark.parametrize("dead", ["none", "some", "all"])
def test_conv_skipping_dead_filters_gives_dense_result(impl, dead, rng):
    """A dead filter's plane is its bias, as the dense op gives with zero weights."""
    x, w, b, stride, pad = _conv_inputs(rng, (2, 3, 9, 8, 6, 3, 3, 1, 1))
    alive = {"none": np.ones(6, bool), "some": np.array([1, 0, 1, 1, 0, 0], bool),
             "all": np.zeros(6, bool)}[dead]
    w_masked = w * alive[:, None, None, None]
    expected = ref.conv2d_forward_reference(x, w_masked, b, stride, pad)
    version = {"numba_v1_direct": 1, "numba_v2_rows": 2, "numba_v3_patches": 3}[impl]
    got = fn.conv2d_forward_numba(x, w, b, stride, pad, alive_f=alive, version=version)
    assert_close(got, expected, {"impl": impl, "dead": dead})


POOL_CASES = [(2, 3, 8, 8, 2, 2), (1, 1, 7, 9, 2, 2), (2, 2, 9, 9, 3, 2), (1, 4, 6, 5, 3, 3),
              (3, 32, 28, 28, 2, 2)]


@pytest.mark.parametrize("case", POOL_CASES, ids=str)
def test_maxpool_forward_and_backward_match_reference(case, rng):
    """Max pooling picks the same maxima and routes gradients to the same places."""
    N, C, H, W, k, s = case
    x = rng.standard_normal((N, C, H, W)).astype(np.float32)
    out = fn.maxpool2d_forward_numba(x, k, s)
    assert_close(out, ref.maxpool2d_forward_reference(x, k, s), case)
    dout = rng.standard_normal(out.shape).astype(np.float32)
    assert_close(fn.maxpool2d_backward_numba(dout, x, k, s),
                 ref.maxpool2d_backward_reference(dout, x, k, s), case, what="dx")


def test_maxpool_ties_go_to_the_first_maximum():
    """With equal values in a window the whole gradient goes to the first (row-major) one."""
    x = np.zeros((1, 1, 2, 2), np.float32)
    dx = fn.maxpool2d_backward_numba(np.ones((1, 1, 1, 1), np.float32), x, 2, 2)
    assert dx[0, 0].tolist() == [[1.0, 0.0], [0.0, 0.0]]


@pytest.mark.parametrize("shape", [(1, 1, 1), (5, 7, 3), (4, 1152, 10), (3, 17, 1)])
def test_linear_matches_reference(shape, rng):
    """Linear forward and backward equal the triple-loop reference."""
    N, D, M = shape
    x = rng.standard_normal((N, D)).astype(np.float32)
    w = rng.standard_normal((M, D)).astype(np.float32)
    b = rng.standard_normal(M).astype(np.float32)
    assert_close(fn.linear_forward_numba(x, w, b), ref.linear_forward_reference(x, w, b), shape)
    dout = rng.standard_normal((N, M)).astype(np.float32)
    for name, e, g in zip(("dx", "dw", "db"), ref.linear_backward_reference(dout, x, w),
                          fn.linear_backward_numba(dout, x, w)):
        assert_close(g, e, shape, what=name)


@pytest.mark.parametrize("shape", [(7,), (2, 3, 5, 5)])
def test_relu_matches_reference(shape, rng):
    """ReLU forward/backward equal the reference, including exact zeros."""
    x = rng.standard_normal(shape).astype(np.float32)
    x.reshape(-1)[0] = 0.0
    dout = rng.standard_normal(shape).astype(np.float32)
    assert_close(fn.relu_forward_numba(x), ref.relu_forward_reference(x), shape)
    assert_close(fn.relu_backward_numba(dout, x), ref.relu_backward_reference(dout, x), shape)


# ----------------------------------------------------------------------------- numerical gradients
def _numeric_grad(f, a, eps=1e-2):
    """Central differences of the scalar f() with respect to every entry of a (float64)."""
    g = np.zeros_like(a)
    it = np.nditer(a, flags=["multi_index"])
    for _ in it:
        i = it.multi_index
        old = a[i]
        a[i] = old + eps
        fp = f()
        a[i] = old - eps
        fm = f()
        a[i] = old
        g[i] = (fp - fm) / (2 * eps)
    return g


@pytest.mark.parametrize("case", [(2, 2, 5, 6, 3, 3, 3, 1, 1), (1, 2, 7, 7, 2, 3, 3, 2, 0)], ids=str)
def test_conv_backward_matches_numerical_gradient(case, rng):
    """The analytic conv gradients equal central differences of the loss."""
    x, w, b, stride, pad = _conv_inputs(rng, case)
    x, w, b = x.astype(np.float64), w.astype(np.float64), b.astype(np.float64)
    out = ref.conv2d_forward_reference(x, w, b, stride, pad)
    dout = rng.standard_normal(out.shape)
    loss = lambda: float(np.sum(ref.conv2d_forward_reference(x, w, b, stride, pad) * dout))  # noqa: E731
    dx, dw, db = fn.conv2d_backward_numba(dout.astype(np.float32), x.astype(np.float32),
                                          w.astype(np.float32), stride, pad)
    assert_close(dx, _numeric_grad(loss, x), case, rtol=1e-3, atol=1e-3, what="dx")
    assert_close(dw, _numeric_grad(loss, w), case, rtol=1e-3, atol=1e-3, what="dw")
    assert_close(db, _numeric_grad(loss, b), case, rtol=1e-3, atol=1e-3, what="db")


def test_maxpool_linear_relu_backward_match_numerical_gradient(rng):
    """Pool, linear and ReLU gradients equal central differences (no ties in the data)."""
    x = rng.permutation(np.arange(2 * 2 * 6 * 6)).reshape(2, 2, 6, 6).astype(np.float64) / 10
    dout = rng.standard_normal((2, 2, 3, 3))
    loss = lambda: float(np.sum(ref.maxpool2d_forward_reference(x, 2, 2) * dout))  # noqa: E731
    got = fn.maxpool2d_backward_numba(dout.astype(np.float32), x.astype(np.float32), 2, 2)
    assert_close(got, _numeric_grad(loss, x, eps=1e-3), "maxpool", rtol=1e-3, atol=1e-3)

    xl = rng.standard_normal((3, 5))
    wl = rng.standard_normal((4, 5))
    bl = rng.standard_normal(4)
    dl = rng.standard_normal((3, 4))
    loss = lambda: float(np.sum(ref.linear_forward_reference(xl, wl, bl) * dl))  # noqa: E731
    dx, dw, db = fn.linear_backward_numba(dl.astype(np.float32), xl.astype(np.float32), wl.astype(np.float32))
    assert_close(dx, _numeric_grad(loss, xl), "linear dx", rtol=1e-3, atol=1e-3)
    assert_close(dw, _numeric_grad(loss, wl), "linear dw", rtol=1e-3, atol=1e-3)
    assert_close(db, _numeric_grad(loss, bl), "linear db", rtol=1e-3, atol=1e-3)

    xr = rng.standard_normal(20) + 0.05   # keep away from the kink at 0
    dr = rng.standard_normal(20)
    loss = lambda: float(np.sum(ref.relu_forward_reference(xr) * dr))  # noqa: E731
    got = fn.relu_backward_numba(dr.astype(np.float32), xr.astype(np.float32))
    assert_close(got, _numeric_grad(loss, xr, eps=1e-4), "relu", rtol=1e-3, atol=1e-3)


def test_output_size_formula():
    """H' = 1 + (H + 2*pad - HH) // stride, and a kernel that does not fit is an error."""
    assert conv_output_size(32, 5) == 28
    assert conv_output_size(14, 3) == 12
    assert conv_output_size(9, 3, 2, 1) == 5
    with pytest.raises(ValueError, match="does not fit"):
        conv_output_size(3, 5, 1, 0)


# ----------------------------------------------------------------------------- torch oracle
@requires_torch
@pytest.mark.parametrize("case", CONV_CASES, ids=str)
def test_conv_matches_torch(case, rng):
    """Forward and backward agree with torch.nn.functional.conv2d."""
    x, w, b, stride, pad = _conv_inputs(rng, case)
    tx = torch.tensor(x, requires_grad=True)
    tw = torch.tensor(w, requires_grad=True)
    tb = torch.tensor(b, requires_grad=True)
    tout = torch.nn.functional.conv2d(tx, tw, tb, stride=stride, padding=pad)
    dout = rng.standard_normal(tuple(tout.shape)).astype(np.float32)
    tout.backward(torch.tensor(dout))
    assert_close(fn.conv2d_forward_numba(x, w, b, stride, pad), tout.detach().numpy(), case)
    dx, dw, db = fn.conv2d_backward_numba(dout, x, w, stride, pad)
    assert_close(dx, tx.grad.numpy(), case, rtol=1e-3, atol=1e-3, what="dx")
    assert_close(dw, tw.grad.numpy(), case, rtol=1e-3, atol=1e-3, what="dw")
    assert_close(db, tb.grad.numpy(), case, rtol=1e-3, atol=1e-3, what="db")


@requires_torch
@pytest.mark.parametrize("case", POOL_CASES, ids=str)
def test_maxpool_matches_torch(case, rng):
    """Max pooling forward and backward agree with torch.nn.functional.max_pool2d."""
    N, C, H, W, k, s = case
    x = rng.standard_normal((N, C, H, W)).astype(np.float32)
    tx = torch.tensor(x, requires_grad=True)
    tout = torch.nn.functional.max_pool2d(tx, k, s)
    dout = rng.standard_normal(tuple(tout.shape)).astype(np.float32)
    tout.backward(torch.tensor(dout))
    assert_close(fn.maxpool2d_forward_numba(x, k, s), tout.detach().numpy(), case)
    assert_close(fn.maxpool2d_backward_numba(dout, x, k, s), tx.grad.numpy(), case, what="dx")


@requires_torch
def test_linear_and_relu_match_torch(rng):
    """Linear and ReLU forward/backward agree with torch."""
    x = rng.standard_normal((6, 1152)).astype(np.float32)
    w = rng.standard_normal((10, 1152)).astype(np.float32)
    b = rng.standard_normal(10).astype(np.float32)
    tx, tw, tb = (torch.tensor(a, requires_grad=True) for a in (x, w, b))
    tout = torch.nn.functional.linear(torch.relu(tx), tw, tb)
    dout = rng.standard_normal((6, 10)).astype(np.float32)
    tout.backward(torch.tensor(dout))
    h = fn.relu_forward_numba(x)
    assert_close(fn.linear_forward_numba(h, w, b), tout.detach().numpy(), "linear", rtol=1e-3, atol=1e-3)
    dh, dw, db = fn.linear_backward_numba(dout, h, w)
    assert_close(fn.relu_backward_numba(dh, x), tx.grad.numpy(), "relu dx", rtol=1e-3, atol=1e-3)
    assert_close(dw, tw.grad.numpy(), "linear dw", rtol=1e-3, atol=1e-3)
    assert_close(db, tb.grad.numpy(), "linear db", rtol=1e-3, atol=1e-3)


def test_kernels_run_as_plain_python_with_jit_disabled():
    """NUMBA_DISABLE_JIT=1 runs every kernel as Python and still matches the reference."""
    import os
    import subprocess
    import sys
    code = """
import numpy as np
from ece662.layers import functional as fn, reference as ref
rng = np.random.default_rng(0)
x = rng.standard_normal((2, 3, 6, 5)).astype(np.float32)
w = rng.standard_normal((5, 3, 3, 3)).astype(np.float32)
b = rng.standard_normal(5).astype(np.float32)
for v in (1, 2, 3):
    np.testing.assert_allclose(fn.conv2d_forward_numba(x, w, b, 1, 1, version=v),
                               ref.conv2d_forward_reference(x, w, b, 1, 1), rtol=1e-4, atol=1e-4)
d = rng.standard_normal((2, 5, 6, 5)).astype(np.float32)
for got, exp in zip(fn.conv2d_backward_numba(d, x, w, 1, 1), ref.conv2d_backward_reference(d, x, w, 1, 1)):
    np.testing.assert_allclose(got, exp, rtol=1e-3, atol=1e-3)
p = fn.maxpool2d_forward_numba(x, 2, 2)
fn.maxpool2d_backward_numba(p, x, 2, 2)
fn.linear_backward_numba(np.ones((2, 4), np.float32), x.reshape(2, -1), np.ones((4, 90), np.float32))
fn.relu_backward_numba(x, fn.relu_forward_numba(x))
fn.leaky_relu_backward_numba(x, fn.leaky_relu_forward_numba(x, 0.1), 0.1)
fn.avgpool2d_backward_numba(fn.avgpool2d_forward_numba(x, 2, 2), x, 2, 2)
g = fn.global_avgpool_forward_numba(x)
np.testing.assert_allclose(fn.global_avgpool_backward_numba(g, x), ref.global_avgpool_backward_reference(g, x), rtol=1e-5)
np.testing.assert_allclose(fn.conv2d_relu_maxpool2_tiled(x, w, b, 1), fn.conv2d_relu_maxpool2_numba(x, w, b, 1),
                           rtol=1e-4, atol=1e-4)
np.testing.assert_allclose(fn.conv2d_relu_maxpool2_lanes(x, w, b, 1), fn.conv2d_relu_maxpool2_numba(x, w, b, 1),
                           rtol=1e-4, atol=1e-4)
from ece662.layers import kernels_tiles
for t in kernels_tiles.TILE_KERNELS:           # every v7 tile, and the plan's choice without timing anything
    np.testing.assert_allclose(fn.conv2d_relu_maxpool2_tuned(x, w, b, 1, tile=(t,)),
                               fn.conv2d_relu_maxpool2_numba(x, w, b, 1), rtol=1e-4, atol=1e-4)
from ece662.models import default_convnet
net = default_convnet(seed=0).eval()
assert "NUMBA_DISABLE_JIT is set" in net.plan((3, 32, 32)).steps[0].kernel.reason
net(np.zeros((1, 3, 32, 32), np.float32))
m, v = fn.batchnorm_batch_stats_numba(x)
gamma = np.ones(3, np.float32)
np.testing.assert_allclose(fn.batchnorm_forward_numba(x, gamma, gamma, m, v),
                           ref.batchnorm_forward_reference(x, gamma, gamma, m, v), rtol=1e-4, atol=1e-4)
for got, exp in zip(fn.batchnorm_backward_numba(x, x, gamma), ref.batchnorm_backward_reference(x, x, gamma)):
    np.testing.assert_allclose(got, exp, rtol=1e-3, atol=1e-3)
print("ok")
"""
    env = dict(os.environ, NUMBA_DISABLE_JIT="1")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr


STRIDE1_CASES = [c for c in CONV_CASES if c[7] == 1]


@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.9, 1.0])
@pytest.mark.parametrize("case", STRIDE1_CASES, ids=str)
def test_sparse_taps_kernel_matches_reference(case, sparsity, rng):
    """The sparse-taps conv equals the reference on weights with that fraction of zeros."""
    x, w, b, stride, pad = _conv_inputs(rng, case)
    w = w * (rng.random(w.shape) >= sparsity)
    assert_close(fn.conv2d_forward_sparse(x, w, b, stride, pad), ref.conv2d_forward_reference(x, w, b, stride, pad),
                 {"case": case, "sparsity": sparsity})


def test_sparse_taps_kernel_refuses_stride_2(rng):
    """The sparse kernel says it only does stride 1 instead of computing something else."""
    x, w, b, _, _ = _conv_inputs(rng, (1, 2, 6, 6, 2, 3, 3, 2, 0))
    with pytest.raises(ValueError, match="stride 1"):
        fn.conv2d_forward_sparse(x, w, b, 2, 0)


@pytest.mark.parametrize("version", [1, 2, 3])
@pytest.mark.parametrize("case", CONV_CASES, ids=str)
def test_skipping_dead_filters_and_channels_matches_dense(case, version, rng):
    """Skipping dead filters and zero input channels gives the dense result on the masked weights."""
    x, w, b, stride, pad = _conv_inputs(rng, case)
    F, C = w.shape[0], w.shape[1]
    alive_f = rng.random(F) < 0.6
    alive_c = rng.random(C) < 0.6
    alive_c[0] = True
    x = x * alive_c[None, :, None, None]          # a dead input channel is all zeros
    w_masked = w * alive_f[:, None, None, None]
    expected = ref.conv2d_forward_reference(x, w_masked, b, stride, pad)
    got = fn.conv2d_forward_numba(x, w, b, stride, pad, alive_f=alive_f, alive_c=alive_c, version=version)
    assert_close(got, expected, {"case": case, "version": version, "alive_f": alive_f, "alive_c": alive_c})


@pytest.mark.parametrize("case", [c for c in STRIDE1_CASES if conv_output_size(c[2], c[5], 1, c[8]) >= 2
                                  and conv_output_size(c[3], c[6], 1, c[8]) >= 2], ids=str)
def test_fused_conv_relu_pool_matches_the_three_references(case, rng):
    """Kernel v4 equals reference conv, then ReLU, then 2x2 max pooling (odd sizes drop the last row/column)."""
    x, w, b, _, pad = _conv_inputs(rng, case)
    expected = ref.maxpool2d_forward_reference(ref.relu_forward_reference(
        ref.conv2d_forward_reference(x, w, b, 1, pad)), 2, 2)
    assert_close(fn.conv2d_relu_maxpool2_numba(x, w, b, pad), expected, {"case": case})
    alive = np.arange(w.shape[0]) % 2 == 0
    expected = ref.maxpool2d_forward_reference(ref.relu_forward_reference(
        ref.conv2d_forward_reference(x, w * alive[:, None, None, None], b, 1, pad)), 2, 2)
    assert_close(fn.conv2d_relu_maxpool2_numba(x, w, b, pad, alive_f=alive), expected, {"case": case, "dead": "odd"})


FUSED_POOL_CASES = [c for c in STRIDE1_CASES if conv_output_size(c[2], c[5], 1, c[8]) >= 2
                    and conv_output_size(c[3], c[6], 1, c[8]) >= 2] + [
    (2, 3, 9, 11, 17, 3, 3, 1, 1),      # 17 filters: a second, mostly padded block of 16 lanes
    (1, 2, 6, 5, 40, 2, 2, 1, 0),       # 40 filters = 2 blocks of 16 + the 8-wide tail tile, odd width
    (2, 3, 8, 8, 24, 3, 3, 1, 0),       # 24 filters = 16 + the 8-wide tail
    (2, 2, 7, 11, 8, 3, 3, 1, 0),       # 8 filters only (the tail tile), an odd number of blocks per row
    (1, 3, 3, 5, 5, 2, 2, 1, 0),        # one block per row: v6's 8-position tile gets a spare block
    (2, 3, 4, 4, 9, 3, 3, 1, 1),        # 9 filters: the 8-wide tile with one filter, padding
    (1, 4, 32, 32, 12, 5, 5, 1, 0)]     # conv1's shape with 12 filters


@pytest.mark.parametrize("kernel", ["v5", "v6"])
@pytest.mark.parametrize("dead", ["none", "odd", "all"])
@pytest.mark.parametrize("case", FUSED_POOL_CASES, ids=str)
def test_lanes_conv_relu_pool_v5_v6_match_the_three_references(case, dead, kernel, rng):
    """Kernels v5 and v6 (filters as vector lanes) equal reference conv, ReLU, 2x2 max pooling, with
    dead filters left out of the packing (their planes are relu(bias))."""
    x, w, b, _, pad = _conv_inputs(rng, case)
    F = w.shape[0]
    alive = {"none": np.ones(F, bool), "odd": np.arange(F) % 2 == 0, "all": np.zeros(F, bool)}[dead]
    expected = ref.maxpool2d_forward_reference(ref.relu_forward_reference(
        ref.conv2d_forward_reference(x, w * alive[:, None, None, None], b, 1, pad)), 2, 2)
    run = {"v5": fn.conv2d_relu_maxpool2_tiled, "v6": fn.conv2d_relu_maxpool2_lanes}[kernel]
    assert_close(run(x, w, b, pad, alive_f=alive), expected, {"case": case, "dead": dead, "kernel": kernel})


def test_v6_uses_weights_packed_once_and_leaves_inputs_alone(rng):
    """v6 with the plan's packing equals v6 packing itself; x, w, b are not modified."""
    x, w, b, _, _ = _conv_inputs(rng, (3, 5, 9, 10, 24, 3, 3, 1, 0))
    before = [a.copy() for a in (x, w, b)]
    packed = fn.pack_filters_lanes(w, b)
    assert_close(fn.conv2d_relu_maxpool2_lanes(x, w, b, packed=packed), fn.conv2d_relu_maxpool2_lanes(x, w, b),
                 "packed once")
    for a, a0 in zip((x, w, b), before):
        np.testing.assert_array_equal(a, a0)


@requires_x86
@pytest.mark.parametrize("target", TARGETS)
def test_lanes_kernels_v5_v6_are_vectorised(tmp_path, target):
    """v5's and v6's tiles (16 and 8 filters wide) compile to packed vector FMAs only (no scalar FMA).
    Compiled afresh in a subprocess (numba cannot show the assembly of cached code)."""
    import subprocess
    import sys
    if os.environ.get("NUMBA_DISABLE_JIT") == "1":
        pytest.skip("no machine code without the JIT")
    code = """
import json
import numpy as np
from ece662.layers import functional as fn, kernels, kernels_lab
fn.conv2d_relu_maxpool2_tiled(np.ones((1, 2, 6, 6), np.float32), np.ones((24, 2, 3, 3), np.float32), None)
fn.conv2d_relu_maxpool2_lanes(np.ones((1, 2, 6, 6), np.float32), np.ones((24, 2, 3, 3), np.float32), None)
for k in (kernels_lab.conv2d_relu_pool2_tiled, kernels.conv2d_relu_pool2_lanes):
    asm = k.inspect_asm(k.signatures[0])
    print(json.dumps(asm))
"""
    env = target_env(target, tmp_path)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr
    for line in r.stdout.splitlines():
        check_width(target, json.loads(line))
    # multiply-adds per tap: v5 16 filters x 4 positions + 8 x 4; v6 16 x 4 + 8 filters x 8 positions.
    # AVX2 packs 8 of them per FMA (ymm); on an AVX-512 CPU LLVM uses 16-lane zmm registers too.
    for (name, lanes), line in zip((("v5", 16 * 4 + 8 * 4), ("v6", 16 * 4 + 8 * 8)), r.stdout.splitlines()):
        packed, scalar = fma_lanes(json.loads(line))
        assert packed >= lanes and scalar == 0, \
            f"{name}: {packed} lanes in packed FMAs and {scalar} scalar FMAs for {lanes} multiply-adds per tap"


def test_fma_lanes_reads_avx2_and_avx512():
    """The assembly reader the vectorisation tests rely on counts lanes of ymm and zmm FMAs alike."""
    asm = "\n".join(["\tvfmadd231ps\t%ymm1, %ymm2, %ymm3",
                     "\tvfmadd231ps\t(%rax,%rdx,4){1to16}, %zmm4, %zmm1",
                     "\tvfmadd213ps\t%zmm1, %zmm4, %zmm3 {%k1}",
                     "\tvfmadd231ss\t%xmm0, %xmm1, %xmm2",
                     "\tvmovaps\t%zmm0, %zmm1"])
    assert fma_lanes(asm) == (8 + 16 + 16, 1)


# ----------------------------------------------------------------------------- leaky relu, average pools
@pytest.mark.parametrize("shape", [(7,), (2, 3, 5, 5)])
@pytest.mark.parametrize("slope", [0.01, 0.2])
def test_leaky_relu_matches_reference(shape, slope, rng):
    """Leaky ReLU forward/backward equal the reference, including the slope at exactly 0."""
    x = rng.standard_normal(shape).astype(np.float32)
    x.reshape(-1)[0] = 0.0
    dout = rng.standard_normal(shape).astype(np.float32)
    assert_close(fn.leaky_relu_forward_numba(x, slope), ref.leaky_relu_forward_reference(x, slope), shape)
    assert_close(fn.leaky_relu_backward_numba(dout, x, slope), ref.leaky_relu_backward_reference(dout, x, slope),
                 shape, what="dx")


@pytest.mark.parametrize("case", POOL_CASES + [(2, 3, 7, 7, 7, 7), (1, 2, 5, 6, 1, 1)], ids=str)
def test_avgpool_forward_and_backward_match_reference(case, rng):
    """Average pooling (overlapping and global-sized windows too) equals the reference."""
    N, C, H, W, k, s = case
    x = rng.standard_normal((N, C, H, W)).astype(np.float32)
    out = ref.avgpool2d_forward_reference(x, k, s)
    assert_close(fn.avgpool2d_forward_numba(x, k, s), out, case)
    dout = rng.standard_normal(out.shape).astype(np.float32)
    assert_close(fn.avgpool2d_backward_numba(dout, x, k, s), ref.avgpool2d_backward_reference(dout, x, k, s),
                 case, what="dx")


@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (2, 3, 5, 7), (3, 32, 6, 6)])
def test_global_avgpool_matches_reference(shape, rng):
    """AdaptiveAvgPool2d(1)'s kernels equal the reference forward and backward."""
    x = rng.standard_normal(shape).astype(np.float32)
    assert_close(fn.global_avgpool_forward_numba(x), ref.global_avgpool_forward_reference(x), shape)
    dout = rng.standard_normal(shape[:2] + (1, 1)).astype(np.float32)
    assert_close(fn.global_avgpool_backward_numba(dout, x), ref.global_avgpool_backward_reference(dout, x),
                 shape, what="dx")


def test_avgpool_leaky_relu_backward_match_numerical_gradient(rng):
    """Average pooling, global pooling and leaky ReLU gradients equal central differences."""
    x = rng.standard_normal((2, 2, 6, 5))
    dout = rng.standard_normal((2, 2, 2, 2))
    loss = lambda: float(np.sum(ref.avgpool2d_forward_reference(x, 3, 2) * dout))  # noqa: E731
    got = fn.avgpool2d_backward_numba(dout.astype(np.float32), x.astype(np.float32), 3, 2)
    assert_close(got, _numeric_grad(loss, x), "avgpool", rtol=1e-3, atol=1e-3)
    dg = rng.standard_normal((2, 2, 1, 1))
    loss = lambda: float(np.sum(ref.global_avgpool_forward_reference(x) * dg))  # noqa: E731
    got = fn.global_avgpool_backward_numba(dg.astype(np.float32), x.astype(np.float32))
    assert_close(got, _numeric_grad(loss, x), "global avgpool", rtol=1e-3, atol=1e-3)
    xr = rng.standard_normal(20) + 0.05
    dr = rng.standard_normal(20)
    loss = lambda: float(np.sum(ref.leaky_relu_forward_reference(xr, 0.1) * dr))  # noqa: E731
    got = fn.leaky_relu_backward_numba(dr.astype(np.float32), xr.astype(np.float32), 0.1)
    assert_close(got, _numeric_grad(loss, xr, eps=1e-4), "leaky relu", rtol=1e-3, atol=1e-3)


@requires_torch
@pytest.mark.parametrize("case", POOL_CASES, ids=str)
def test_avgpool_and_leaky_relu_match_torch(case, rng):
    """Average pooling, global average pooling and leaky ReLU agree with torch, both directions."""
    N, C, H, W, k, s = case
    x = rng.standard_normal((N, C, H, W)).astype(np.float32)
    for name, t_op, fwd, bwd in [
            ("avgpool", lambda t: torch.nn.functional.avg_pool2d(t, k, s),
             lambda a: fn.avgpool2d_forward_numba(a, k, s), lambda d, a: fn.avgpool2d_backward_numba(d, a, k, s)),
            ("global", lambda t: torch.nn.functional.adaptive_avg_pool2d(t, 1),
             fn.global_avgpool_forward_numba, fn.global_avgpool_backward_numba),
            ("leaky", lambda t: torch.nn.functional.leaky_relu(t, 0.1),
             lambda a: fn.leaky_relu_forward_numba(a, 0.1), lambda d, a: fn.leaky_relu_backward_numba(d, a, 0.1))]:
        tx = torch.tensor(x, requires_grad=True)
        tout = t_op(tx)
        dout = rng.standard_normal(tuple(tout.shape)).astype(np.float32)
        tout.backward(torch.tensor(dout))
        assert_close(fwd(x), tout.detach().numpy(), {"op": name, "case": case})
        assert_close(bwd(dout, x), tx.grad.numpy(), {"op": name, "case": case}, what="dx")


# ----------------------------------------------------------------------------- batch norm
BN_SHAPES = [(4, 3, 5, 7), (2, 1, 1, 2), (5, 6), (3, 4, 5)]


def _bn_inputs(rng, shape):
    C = shape[1]
    x = (rng.standard_normal(shape) * 2 + 1).astype(np.float32)
    gamma = rng.uniform(0.5, 1.5, C).astype(np.float32)
    beta = rng.standard_normal(C).astype(np.float32)
    return x, gamma, beta


@pytest.mark.parametrize("shape", BN_SHAPES, ids=str)
def test_batchnorm_matches_reference(shape, rng):
    """Batch statistics, the normalisation and its training-mode backward equal the reference."""
    x, gamma, beta = _bn_inputs(rng, shape)
    mean, var = ref.batchnorm_batch_stats_reference(x)
    for name, g, e in zip(("mean", "var"), fn.batchnorm_batch_stats_numba(x), (mean, var)):
        assert_close(g, e, shape, what=name)
    assert_close(fn.batchnorm_forward_numba(x, gamma, beta, mean, var, 1e-5),
                 ref.batchnorm_forward_reference(x, gamma, beta, mean, var, 1e-5), shape)
    dout = rng.standard_normal(shape).astype(np.float32)
    for name, g, e in zip(("dx", "dgamma", "dbeta"), fn.batchnorm_backward_numba(dout, x, gamma),
                          ref.batchnorm_backward_reference(dout, x, gamma)):
        assert_close(g, e, shape, rtol=1e-3, atol=1e-4, what=name)


def test_batchnorm_backward_matches_numerical_gradient(rng):
    """The training-mode batch norm gradients equal central differences (batch stats depend on x)."""
    x = rng.standard_normal((3, 2, 3, 2))
    gamma = rng.uniform(0.5, 1.5, 2)
    beta = rng.standard_normal(2)
    dout = rng.standard_normal(x.shape)

    def loss():
        mean, var = ref.batchnorm_batch_stats_reference(x)
        return float(np.sum(ref.batchnorm_forward_reference(x, gamma, beta, mean, var) * dout))

    dx, dgamma, dbeta = fn.batchnorm_backward_numba(dout.astype(np.float32), x.astype(np.float32),
                                                    gamma.astype(np.float32))
    assert_close(dx, _numeric_grad(loss, x, eps=1e-3), "bn dx", rtol=1e-2, atol=1e-3)
    assert_close(dgamma, _numeric_grad(loss, gamma, eps=1e-3), "bn dgamma", rtol=1e-2, atol=1e-3)
    assert_close(dbeta, _numeric_grad(loss, beta, eps=1e-3), "bn dbeta", rtol=1e-2, atol=1e-3)


@requires_torch
@pytest.mark.parametrize("shape", BN_SHAPES, ids=str)
def test_batchnorm_matches_torch(shape, rng):
    """Training-mode forward and backward equal torch.nn.functional.batch_norm's."""
    x, gamma, beta = _bn_inputs(rng, shape)
    tx, tg, tb = (torch.tensor(a, requires_grad=True) for a in (x, gamma, beta))
    tout = torch.nn.functional.batch_norm(tx, None, None, tg, tb, training=True, eps=1e-5)
    dout = rng.standard_normal(shape).astype(np.float32)
    tout.backward(torch.tensor(dout))
    mean, var = fn.batchnorm_batch_stats_numba(x)
    assert_close(fn.batchnorm_forward_numba(x, gamma, beta, mean, var), tout.detach().numpy(), shape,
                 rtol=1e-4, atol=1e-4)
    for name, g, t in zip(("dx", "dgamma", "dbeta"), fn.batchnorm_backward_numba(dout, x, gamma),
                          (tx.grad, tg.grad, tb.grad)):
        assert_close(g, t.numpy(), shape, rtol=1e-3, atol=1e-4, what=name)
