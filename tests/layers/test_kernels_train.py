"""The training kernels (ece662.layers.kernels_train) against the plain-loop references and torch.

Forward (conv + ReLU + 2x2 max pool, with the winner codes), dw, db and dx, fused and plain, over
odd sizes, padding, batch 1, and channel counts that are not multiples of the 16 lanes; then the
whole training step of a model through the fused path against the layer-by-layer path.
"""
import json
import os
import subprocess
import sys
from collections import OrderedDict

import numpy as np
import pytest

from asm_count import TARGETS, check_width, fma_lanes, requires_x86, target_env
from helpers import assert_close, requires_torch, torch
from ece662.layers import Conv2d, Flatten, Linear, MaxPool2d, ReLU, Sequential
from ece662.layers import kernels_train as kt
from ece662.layers import reference as ref
from ece662.layers.shapes import conv_output_size

# (N, C, H, W, F, HH, WW, pad): odd sizes (the pool drops a row / column), batch 1, 1 and 17 input
# channels, 1, 5, 17 (one lane of a second block), 20 and 33 filters, 1x1 / 2x3 / 5x5 kernels,
# padding 0-2 (also more than HH-1), and the two layers of the course CNN (conv1 on smaller images)
CASES = [
    (2, 3, 9, 11, 5, 3, 3, 1),
    (1, 1, 6, 7, 1, 3, 3, 0),
    (3, 3, 12, 13, 20, 5, 5, 2),
    (2, 17, 8, 7, 33, 2, 3, 1),
    (1, 4, 5, 5, 17, 1, 1, 0),
    (2, 2, 4, 5, 6, 2, 2, 2),
    (1, 3, 20, 20, 32, 5, 5, 0),
    (2, 32, 14, 14, 32, 3, 3, 0),
]


def _inputs(rng, case):
    N, C, H, W, F, HH, WW, pad = case
    x = rng.standard_normal((N, C, H, W)).astype(np.float32)
    w = rng.standard_normal((F, C, HH, WW)).astype(np.float32)
    b = rng.standard_normal(F).astype(np.float32)
    return x, w, b, pad


def _fused_reference(x, w, b, pad, dpool):
    """Forward and gradients of conv -> ReLU -> 2x2 max pool, composed from the references."""
    z = ref.conv2d_forward_reference(x, w, b, 1, pad)
    r = ref.relu_forward_reference(z)
    p = ref.maxpool2d_forward_reference(r, 2, 2)
    dz = ref.relu_backward_reference(ref.maxpool2d_backward_reference(dpool, r, 2, 2), z)
    dx, dw, db = ref.conv2d_backward_reference(dz, x, w, 1, pad)
    return p, z, dx, dw, db


@pytest.mark.parametrize("case", CASES, ids=str)
def test_fused_train_forward_and_backward_match_the_references(case, rng):
    """conv + ReLU + pool forward, and its dx, dw, db from the winner codes alone, equal the
    reference conv, ReLU and max pool (forward and backward) composed."""
    x, w, b, pad = _inputs(rng, case)
    Hq = conv_output_size(x.shape[2], w.shape[2], 1, pad) // 2
    Wq = conv_output_size(x.shape[3], w.shape[3], 1, pad) // 2
    dpool = rng.standard_normal((x.shape[0], w.shape[0], Hq, Wq)).astype(np.float32)
    p, z, edx, edw, edb = _fused_reference(x, w, b, pad, dpool)
    out, code = kt.conv2d_relu_maxpool2_train(x, w, b, pad)
    assert_close(out, p, case, what="pooled output")
    # the code says which position won, and NO_WINNER exactly where the block's maximum is <= 0
    blocks = z[:, :, :2 * Hq, :2 * Wq].reshape(z.shape[0], z.shape[1], Hq, 2, Wq, 2)
    assert np.array_equal(code == kt.NO_WINNER, blocks.max(axis=(3, 5)) <= 0)
    dx, dw, db = kt.conv2d_relu_maxpool2_train_backward(dpool, code, x, w, pad)
    assert_close(dw, edw, case, rtol=1e-3, atol=1e-3, what="dw")
    assert_close(db, edb, case, rtol=1e-3, atol=1e-3, what="db")
    assert_close(dx, edx, case, rtol=1e-3, atol=1e-3, what="dx")
    none, dw2, _ = kt.conv2d_relu_maxpool2_train_backward(dpool, code, x, w, pad, need_dx=False)
    assert none is None
    np.testing.assert_array_equal(dw2, dw)


@pytest.mark.parametrize("case", CASES, ids=str)
def test_plain_lanes_conv_forward_and_backward_match_the_references(case, rng):
    """The unfused conv (output channels as lanes) and its dx, dw, db equal the references."""
    x, w, b, pad = _inputs(rng, case)
    z = ref.conv2d_forward_reference(x, w, b, 1, pad)
    assert_close(kt.conv2d_forward_lanes_numba(x, w, b, pad), z, case, what="forward")
    dout = rng.standard_normal(z.shape).astype(np.float32)
    for got, exp, what in zip(kt.conv2d_backward_lanes_numba(dout, x, w, pad),
                              ref.conv2d_backward_reference(dout, x, w, 1, pad), ("dx", "dw", "db")):
        assert_close(got, exp, case, rtol=1e-3, atol=1e-3, what=what)


def test_dead_filters_are_skipped_in_the_fused_forward(rng):
    """Filters marked dead give relu(bias) blocks, won by position 0 only when the bias is positive,
    exactly what the dense kernel gives on their all-zero weights; backward agrees too."""
    x, w, b, pad = _inputs(rng, (2, 3, 9, 8, 20, 3, 3, 1))
    alive = np.arange(20) % 3 != 0
    b[0], b[3] = 0.5, -0.5                                   # one dead filter of each sign
    w = w * alive[:, None, None, None]
    out, code = kt.conv2d_relu_maxpool2_train(x, w, b, pad, alive_f=alive)
    dense_out, dense_code = kt.conv2d_relu_maxpool2_train(x, w, b, pad)
    assert_close(out, dense_out, "dead filters", what="pooled output")
    np.testing.assert_array_equal(code, dense_code)
    assert (code[:, 0] == 0).all() and (code[:, 3] == kt.NO_WINNER).all()
    none_alive = kt.conv2d_relu_maxpool2_train(x, w * 0, b, pad, alive_f=np.zeros(20, bool))
    assert_close(none_alive[0], np.broadcast_to(np.maximum(b, 0)[None, :, None, None], out.shape), "all dead")


@requires_torch
@pytest.mark.parametrize("case", [CASES[0], CASES[3], CASES[7]], ids=str)
def test_fused_train_gradients_match_torch(case, rng):
    """dx, dw, db of conv -> ReLU -> MaxPool2d(2) equal torch's autograd."""
    x, w, b, pad = _inputs(rng, case)
    tx, tw, tb = (torch.tensor(a, requires_grad=True) for a in (x, w, b))
    tout = torch.nn.functional.max_pool2d(torch.relu(torch.nn.functional.conv2d(tx, tw, tb, padding=pad)), 2)
    dpool = rng.standard_normal(tuple(tout.shape)).astype(np.float32)
    tout.backward(torch.tensor(dpool))
    out, code = kt.conv2d_relu_maxpool2_train(x, w, b, pad)
    assert_close(out, tout.detach().numpy(), case, what="forward vs torch")
    dx, dw, db = kt.conv2d_relu_maxpool2_train_backward(dpool, code, x, w, pad)
    for got, t, what in ((dx, tx, "dx"), (dw, tw, "dw"), (db, tb, "db")):
        assert_close(got, t.grad.numpy(), case, rtol=1e-3, atol=1e-3, what=what + " vs torch")


def _small_net(seed):
    rng = np.random.default_rng(seed)
    return Sequential(OrderedDict([
        ("conv1", Conv2d(3, 20, 3, padding=1, rng=rng)), ("relu1", ReLU()), ("pool1", MaxPool2d(2)),
        ("conv2", Conv2d(20, 17, 3, rng=rng)), ("relu2", ReLU()), ("pool2", MaxPool2d(2)),
        ("flatten", Flatten()), ("fc", Linear(17 * 2 * 2, 10, rng=rng))]))


def _layer_by_layer_grads(net, x, dlogits):
    layers = list(net)
    h = x
    for m in layers:
        h = m(h)
    d = dlogits
    for m in reversed(layers):
        d = m.backward(d)
    return h, d, dict(net.named_grads())


def test_training_step_through_the_fused_path_equals_layer_by_layer(rng):
    """A training Sequential fuses conv + ReLU + pool (last_kernel says so); its output, input
    gradient and every parameter gradient equal running each layer on its own, pruned or not."""
    import ece662.pruning as prune
    x = rng.standard_normal((3, 3, 13, 13)).astype(np.float32)
    dlogits = rng.standard_normal((3, 10)).astype(np.float32)
    for pruned in (False, True):
        net = _small_net(0).train()
        if pruned:                                      # masks, and 5 dead filters skipped in the forward
            prune.ln_structured(net.conv1, "weight", amount=5, n=2, dim=0)
            prune.l1_unstructured(net.conv2, "weight", amount=0.3)
        expected_out, expected_dx, expected = _layer_by_layer_grads(net, x, dlogits)
        net.zero_grad()
        out = net(x)
        assert net.conv1.last_kernel.version == "lanes" and net.conv1.last_kernel.fused == ("ReLU", "2x2 max pool")
        dx = net.backward(dlogits)
        got = dict(net.named_grads())
        assert_close(out, expected_out, {"pruned": pruned}, what="logits")
        assert_close(dx, expected_dx, {"pruned": pruned}, rtol=1e-3, atol=1e-4, what="input gradient")
        assert got.keys() == expected.keys()
        for name in expected:
            assert_close(got[name], expected[name], {"pruned": pruned}, rtol=1e-3, atol=1e-4, what=name)
        if pruned:
            assert (got["conv2.weight_orig"][net.conv2.weight_mask == 0] == 0).all()
        assert net.backward(dlogits, need_input_grad=False) is None


def test_layers_that_do_not_fit_run_on_their_own(rng):
    """A stride-2 conv, a 3x3 pool, a hooked ReLU or kernels='reference' keep the layer-by-layer path."""
    # image sizes that reach fc with its 2x2 maps, so the whole network runs (Sequential checks every
    # layer's shape before conv1 runs): 24x24 with a stride-2 conv1, 18x18 with a 3x3 pool1
    sizes = {"stride": 24, "pool3": 18, "hook": 12, "reference": 12}
    for change, size in sizes.items():
        x = rng.standard_normal((2, 3, size, size)).astype(np.float32)
        net = _small_net(1).train()
        if change == "stride":
            net.conv1.stride = 2
        elif change == "pool3":
            net.pool1.kernel_size = net.pool1.stride = 3
        elif change == "hook":
            net.relu1.register_forward_pre_hook(lambda m, inputs: None)
        else:
            net.kernels = "reference"
        assert net(x).shape == (2, 10), change
        assert net.conv1.last_kernel.version != "lanes", change


def test_bad_backward_arguments_are_refused(rng):
    """A code from elsewhere or a gradient of the wrong shape is an error that says what to pass."""
    x, w, b, pad = _inputs(rng, CASES[0])
    out, code = kt.conv2d_relu_maxpool2_train(x, w, b, pad)
    with pytest.raises(ValueError, match="expected code as int8"):
        kt.conv2d_relu_maxpool2_train_backward(out, code.astype(np.int64), x, w, pad)
    with pytest.raises(ValueError, match="expected dout of shape"):
        kt.conv2d_relu_maxpool2_train_backward(out[:, :, :1], code, x, w, pad)
    with pytest.raises(ValueError, match="too small for 2x2 pooling"):
        kt.conv2d_relu_maxpool2_train(x[:, :, :3, :3], w, b, 0)


def test_training_kernels_run_as_plain_python_with_jit_disabled():
    """NUMBA_DISABLE_JIT=1 runs the training kernels as Python and still matches the references."""
    code = """
import numpy as np
from ece662.layers import kernels_train as kt, reference as ref
rng = np.random.default_rng(0)
x = rng.standard_normal((2, 3, 7, 6)).astype(np.float32)
w = rng.standard_normal((5, 3, 3, 3)).astype(np.float32)
b = rng.standard_normal(5).astype(np.float32)
z = ref.conv2d_forward_reference(x, w, b, 1, 1)
r = ref.relu_forward_reference(z)
p = ref.maxpool2d_forward_reference(r, 2, 2)
out, code = kt.conv2d_relu_maxpool2_train(x, w, b, 1)
np.testing.assert_allclose(out, p, rtol=1e-4, atol=1e-4)
dz = ref.relu_backward_reference(ref.maxpool2d_backward_reference(p, r, 2, 2), z)
for got, exp in zip(kt.conv2d_relu_maxpool2_train_backward(p, code, x, w, 1), ref.conv2d_backward_reference(dz, x, w, 1, 1)):
    np.testing.assert_allclose(got, exp, rtol=1e-3, atol=1e-3)
np.testing.assert_allclose(kt.conv2d_forward_lanes_numba(x, w, b, 1), z, rtol=1e-4, atol=1e-4)
for got, exp in zip(kt.conv2d_backward_lanes_numba(z, x, w, 1), ref.conv2d_backward_reference(z, x, w, 1, 1)):
    np.testing.assert_allclose(got, exp, rtol=1e-3, atol=1e-3)
print("ok")
"""
    env = dict(os.environ, NUMBA_DISABLE_JIT="1")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr


@requires_x86
@pytest.mark.parametrize("target", TARGETS)
def test_training_tile_is_vectorised(tmp_path, target):
    """The dw kernel (and with it the generated 4x16 tile, ``kernels_tiles.outer_4x16``) compiles to packed
    vector FMAs only, and loads no input with a gather.
    Compiled afresh in a subprocess (numba cannot show the assembly of cached code)."""
    if os.environ.get("NUMBA_DISABLE_JIT") == "1":
        pytest.skip("no machine code without the JIT")
    code = """
import json
import numpy as np
from ece662.layers import kernels_train as kt
x, w = np.ones((1, 2, 5, 5), np.float32), np.ones((3, 2, 3, 3), np.float32)
kt.conv2d_backward_lanes_numba(np.ones((1, 3, 3, 3), np.float32), x, w, need_dx=False)
k = kt.conv2d_weight_grad_lanes
asm = k.inspect_asm(k.signatures[0])
print(json.dumps(asm))
"""
    env = target_env(target, tmp_path)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr
    asm = json.loads(r.stdout)
    check_width(target, asm)
    lanes, scalar = fma_lanes(asm)
    assert lanes >= 4 * 16 and scalar == 0, f"{lanes} multiply-add lanes in packed FMAs and {scalar} scalar FMAs"
    assert "vgather" not in asm, "the training tile loads its inputs with a gather"
