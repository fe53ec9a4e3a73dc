"""The unstructured-sparse conv kernel (output positions as vector lanes) against the reference.

``kernels_sparse.conv2d_forward_sparse_lanes`` must equal reference conv (then ReLU, then 2x2 max
pooling when fused) whatever the fraction of zeros, shape and padding, and the inference plan's
sparse path must give the dense path's logits on the shipped model.
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import ece662.pruning as prune
from asm_count import TARGETS, check_width, fma_lanes, requires_x86, target_env
from helpers import assert_close
from ece662.experiments import dense_twin
from ece662.layers import kernel_choice, tuning
from ece662.layers import reference as ref
from ece662.layers.kernels_sparse import conv2d_forward_sparse_lanes
from ece662.layers.shapes import conv_output_size
from ece662.pruning_helper import load_model

# (N, C, H, W, F, HH, WW, pad): odd sizes, pad 0/1/2, N=1, F=1, 1x1 kernels, a kernel as large as
# the padded input, and the two conv layers of the course network (every tile width: 64, 32, 8)
CASES = [
    (2, 3, 7, 9, 4, 3, 3, 0),
    (1, 1, 5, 5, 1, 3, 3, 1),
    (2, 4, 9, 9, 3, 5, 5, 2),
    (1, 3, 6, 6, 7, 1, 1, 0),
    (2, 2, 5, 4, 3, 3, 2, 2),
    (1, 3, 4, 4, 2, 6, 6, 1),
    (3, 2, 11, 13, 5, 2, 3, 1),
    (2, 3, 32, 32, 32, 5, 5, 0),
    (3, 32, 14, 14, 32, 3, 3, 0),
]


def _inputs(rng, case, zeros):
    N, C, H, W, F, HH, WW, pad = case
    x = rng.standard_normal((N, C, H, W)).astype(np.float32)
    w = rng.standard_normal((F, C, HH, WW)).astype(np.float32)
    w[rng.random(w.shape) < zeros] = 0.0
    b = rng.standard_normal(F).astype(np.float32)
    return x, w, b, pad


def _expected(x, w, b, pad, relu, pool2, conv=None):
    out = ref.conv2d_forward_reference(x, w, b, 1, pad) if conv is None else conv
    if relu:
        out = ref.relu_forward_reference(out)
    return ref.maxpool2d_forward_reference(out, 2, 2) if pool2 else out


@pytest.mark.parametrize("zeros", [0.0, 0.5, 0.9, 1.0])
@pytest.mark.parametrize("case", CASES, ids=str)
def test_sparse_lanes_matches_reference(case, zeros, rng):
    """Conv alone, with ReLU, and with ReLU + 2x2 max pool equal the references at 0-100% zeros."""
    x, w, b, pad = _inputs(rng, case, zeros)
    H_out = conv_output_size(case[2], case[5], 1, pad)
    W_out = conv_output_size(case[3], case[6], 1, pad)
    conv = ref.conv2d_forward_reference(x, w, b, 1, pad)
    for relu, pool2 in ((False, False), (True, False), (True, True), (False, True)):
        if pool2 and min(H_out, W_out) < 2:
            continue
        assert_close(conv2d_forward_sparse_lanes(x, w, b, 1, pad, relu=relu, pool2=pool2),
                     _expected(x, w, b, pad, relu, pool2, conv),
                     {"case": case, "zeros": zeros, "relu": relu, "pool2": pool2})


@pytest.mark.parametrize("width", range(1, 24))
def test_every_plane_length_is_covered_by_the_tiles(width, rng):
    """Plane lengths from 1 to ~100 flattened positions (every mix of 64-, 32- and 8-wide tiles,
    and the overrun past the last image) give the reference result."""
    case = (2, 2, 5, width + 2, 3, 3, 3, 0)
    x, w, b, pad = _inputs(rng, case, 0.3)
    assert_close(conv2d_forward_sparse_lanes(x, w, b, 1, pad), _expected(x, w, b, pad, False, False),
                 {"width": width})


def test_all_zero_filters_output_their_bias(rng):
    """Filters with no non-zero weight output their bias (relu(bias) with the fused ReLU and pool),
    next to filters that do have weights."""
    x, w, b, pad = _inputs(rng, (2, 3, 8, 9, 6, 3, 3, 1), 0.6)
    w[[0, 2, 5]] = 0.0
    b[0], b[2] = -1.5, 2.0
    got = conv2d_forward_sparse_lanes(x, w, b, 1, pad)
    assert_close(got, _expected(x, w, b, pad, False, False), "dead filters, plain")
    assert np.all(got[:, 0] == np.float32(-1.5)) and np.all(got[:, 2] == np.float32(2.0))
    pooled = conv2d_forward_sparse_lanes(x, w, b, 1, pad, relu=True, pool2=True)
    assert_close(pooled, _expected(x, w, b, pad, True, True), "dead filters, relu + pool")
    assert np.all(pooled[:, 0] == 0.0) and np.all(pooled[:, 2] == np.float32(2.0))


def test_batch_of_one_and_empty_batch(rng):
    """One image, and no image at all (an empty output of the right shape)."""
    x, w, b, pad = _inputs(rng, (1, 32, 14, 14, 32, 3, 3, 0), 0.7)
    assert_close(conv2d_forward_sparse_lanes(x, w, b, relu=True, pool2=True), _expected(x, w, b, 0, True, True),
                 "batch 1")
    assert conv2d_forward_sparse_lanes(x[:0], w, b, relu=True, pool2=True).shape == (0, 32, 6, 6)


def test_input_is_not_modified(rng):
    """The kernel reads x and w; it never writes them."""
    x, w, b, pad = _inputs(rng, (2, 3, 7, 7, 4, 3, 3, 1), 0.5)
    x0, w0, b0 = x.copy(), w.copy(), b.copy()
    conv2d_forward_sparse_lanes(x, w, b, 1, pad, relu=True, pool2=True)
    assert np.array_equal(x, x0) and np.array_equal(w, w0) and np.array_equal(b, b0)


def test_bad_arguments_are_refused_with_a_reason(rng):
    """Stride 2, an output too small to pool, and mismatched channels get clear errors."""
    x, w, b, _ = _inputs(rng, (1, 2, 6, 6, 2, 3, 3, 0), 0.5)
    with pytest.raises(ValueError, match="stride 1"):
        conv2d_forward_sparse_lanes(x, w, b, 2, 0)
    with pytest.raises(ValueError, match="too small for 2x2 pooling"):
        conv2d_forward_sparse_lanes(x[:, :, :3, :3], w, b, pool2=True)
    with pytest.raises(ValueError, match="channels"):
        conv2d_forward_sparse_lanes(x[:, :1], w, b)


@pytest.mark.parametrize("amount", [0.7, 0.8, 0.9])
@pytest.mark.parametrize("scheme", ["per-layer", "global"])
def test_sparse_path_gives_the_dense_logits_on_the_shipped_model(scheme, amount, monkeypatch):
    """On the shipped model with L1 unstructured masks, the plan's sparse kernel (forced on both
    convs) gives the logits of the dense kernels on the same weights, to float32 tolerance."""
    monkeypatch.setenv("ECE662_SPARSE_FROM", "0.5")
    model = load_model()
    if scheme == "per-layer":
        for layer in (model.conv1, model.conv2):
            prune.l1_unstructured(layer, "weight", amount=amount)
    else:
        prune.global_unstructured([(model.conv1, "weight"), (model.conv2, "weight"), (model.fc, "weight")],
                                  pruning_method=prune.L1Unstructured, amount=amount)
    x = np.random.default_rng(3).standard_normal((9, 3, 32, 32)).astype(np.float32)
    got = model.eval()(x)
    assert model.conv2.last_kernel.version == "sparse"
    assert model.conv2.last_kernel.fused == ("ReLU", "2x2 max pool")
    assert_close(got, dense_twin(model)(x), {"scheme": scheme, "amount": amount}, rtol=1e-4, atol=1e-4)


def test_all_zero_model_gives_the_dense_logits(monkeypatch):
    """Every conv weight pruned: the sparse path outputs what the dense kernels output (bias planes)."""
    monkeypatch.setenv("ECE662_SPARSE_FROM", "0.5")
    model = load_model()
    for layer in (model.conv1, model.conv2):
        prune.l1_unstructured(layer, "weight", amount=1.0)
    x = np.random.default_rng(4).standard_normal((3, 3, 32, 32)).astype(np.float32)
    assert_close(model.eval()(x), dense_twin(model)(x), "all zero", rtol=1e-5, atol=1e-5)


def test_the_plan_picks_the_sparse_kernel_from_the_threshold():
    """At the threshold's fraction of zeros or more conv2 runs the sparse kernel, below it the dense fused kernel
    (the suite pins the threshold, ECE662_SPARSE_FROM; tests/layers/test_tiles.py tests the measured one)."""
    model = load_model()
    threshold = tuning.unmeasured_sparse_from()[0]
    below = max(0.0, threshold - 0.1)
    prune.l1_unstructured(model.conv2, "weight", amount=below)
    assert model.plan((3, 32, 32)).steps[1].kernel.version == kernel_choice.FUSED_POOL_KERNEL == "v7"
    prune.l1_unstructured(model.conv2, "weight", amount=min(1.0, threshold + 0.05))
    assert model.plan((3, 32, 32)).steps[1].kernel.version == "sparse"


def test_sparse_lanes_runs_as_plain_python_with_jit_disabled():
    """NUMBA_DISABLE_JIT=1 runs the kernel as Python (slices stay inside the buffer) and matches the reference."""
    code = """
import numpy as np
from ece662.layers import reference as ref
from ece662.layers.kernels_sparse import conv2d_forward_sparse_lanes
rng = np.random.default_rng(0)
x = rng.standard_normal((2, 3, 6, 7)).astype(np.float32)
w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32) * (rng.random((4, 3, 3, 3)) > 0.5)
b = rng.standard_normal(4).astype(np.float32)
e = ref.conv2d_forward_reference(x, w.astype(np.float32), b, 1, 1)
np.testing.assert_allclose(conv2d_forward_sparse_lanes(x, w.astype(np.float32), b, 1, 1), e, rtol=1e-4, atol=1e-4)
p = ref.maxpool2d_forward_reference(np.maximum(e, 0), 2, 2)
np.testing.assert_allclose(conv2d_forward_sparse_lanes(x, w.astype(np.float32), b, 1, 1, relu=True, pool2=True),
                           p, rtol=1e-4, atol=1e-4)
print("ok")
"""
    env = dict(os.environ, NUMBA_DISABLE_JIT="1")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr


@requires_x86
@pytest.mark.parametrize("target", TARGETS)
def test_sparse_lanes_tiles_are_vectorised(tmp_path, target):
    """The 64- and 32-position tiles compile to packed FMAs only: one broadcast weight times 64 (32)
    positions, as eight (four) 8-lane FMAs on AVX2 or four (two) 16-lane FMAs on AVX-512.  Compiled afresh (the tiles alone, as the kernel's
    wrapper compiles them: SLP vectoriser on) in a subprocess."""
    if os.environ.get("NUMBA_DISABLE_JIT") == "1":
        pytest.skip("no machine code without the JIT")
    code = """
import json
import numpy as np
from ece662.layers import functional as fn, kernels_sparse as ks
x, plane = np.ones(200, np.float32), np.empty(128, np.float32)
offs, wts = np.arange(3, dtype=np.uint32), np.ones(3, np.float32)
with fn.slp_vectorizer():
    ks._tile64(x, offs, wts, 0, 3, plane, 0)
    ks._tile32(x, offs, wts, 0, 3, plane, 0)
assert np.all(plane[:64] == 3.0)
for k in (ks._tile64, ks._tile32):
    asm = k.inspect_asm(k.signatures[0])
    print(json.dumps(asm))
"""
    env = target_env(target, tmp_path)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr
    for line in r.stdout.splitlines()[:2]:
        check_width(target, json.loads(line))
    (p64, s64), (p32, s32) = (fma_lanes(json.loads(line)) for line in r.stdout.splitlines()[:2])
    assert p64 >= 64 and p32 >= 32 and s64 == 0 and s32 == 0, \
        f"64-position tile: {p64} packed lanes, {s64} scalar FMAs; 32-position: {p32} lanes, {s32} scalar"
