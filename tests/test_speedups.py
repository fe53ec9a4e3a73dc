"""Pruning that is meant to make inference faster: the three paths agree, and the kernel choice."""
import numpy as np
import pytest

import ece662.pruning as prune
from conftest import assert_close
from ece662.experiments import dense_twin
from ece662.layers import Conv2d, Flatten, Linear, ReLU, Sequential
from ece662.models import default_convnet
from ece662.pruning_helper import load_model


X = np.random.default_rng(0).standard_normal((64, 3, 32, 32)).astype(np.float32)


@pytest.mark.parametrize("amount", [0.25, 0.5, 0.75])
@pytest.mark.parametrize("how", ["per_layer", "global", "per_layer_prune_bias"])
def test_masked_skipping_and_shrunk_models_give_the_same_logits(amount, how):
    """On the shipped model: dense-on-masks, the filter-skipping path and shrink() agree."""
    model = load_model()
    convs = [(model.conv1, "weight"), (model.conv2, "weight")]
    if how == "global":
        prune.global_structured(convs, amount=amount, n=2, dim=0, normalize=True)
    else:
        for m, name in convs:
            prune.ln_structured(m, name, amount=amount, n=2, dim=0, prune_bias=how.endswith("bias"))
    dense = dense_twin(model)(X)
    skipping = model.eval()(X)
    assert model.conv2.last_kernel.startswith("live-only v4")
    assert model.conv2.last_kernel.endswith("+ fused ReLU + 2x2 max pool")
    assert model.fc.last_kernel.startswith("live-only")
    model.train()
    training_path = model(X)             # full tensors, constant input channels skipped
    assert model.conv2.last_kernel.startswith("skip v3")
    model.eval()
    small = prune.shrink(model)
    assert small.conv1.out_channels == int(model.conv1.alive_filters().sum())
    cfg = {"amount": amount, "how": how}
    assert_close(skipping, dense, cfg, rtol=1e-4, atol=1e-4, what="skip vs dense")
    assert_close(training_path, dense, cfg, rtol=1e-4, atol=1e-4, what="training path vs dense")
    assert_close(small(X), dense, cfg, rtol=1e-4, atol=1e-4, what="shrunk vs dense")
    assert (small(X).argmax(1) == dense.argmax(1)).mean() > 0.98


def test_shrink_leaves_the_original_alone_and_refuses_inexact_folds():
    """shrink() returns a new model; with padding after a live-bias dead filter it refuses."""
    model = default_convnet(seed=0)
    prune.ln_structured(model.conv1, "weight", amount=8, n=2, dim=0)
    before = {k: v.copy() for k, v in model.state_dict().items()}
    prune.shrink(model)
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(v, before[k])
    padded = Sequential(Conv2d(3, 4, 3, seed=0), ReLU(), Conv2d(4, 2, 3, padding=1, seed=1), Flatten(),
                        Linear(2 * 6 * 6, 3, seed=2))
    padded[0].bias[:] = 1.0
    prune.ln_structured(padded[0], "weight", amount=2, n=2, dim=0)
    with pytest.raises(ValueError, match="padding 1.*prune_bias=True"):
        prune.shrink(padded, input_shape=(3, 8, 8))
    prune.custom_from_mask(padded[0], "bias", padded[0].alive_filters())
    x = np.random.default_rng(1).standard_normal((2, 3, 8, 8)).astype(np.float32)
    assert_close(prune.shrink(padded, input_shape=(3, 8, 8))(x), dense_twin(padded)(x), "padded, bias pruned")


def test_kernel_choice_is_reported_and_configurable():
    """Conv2d says which kernel ran: dense, sparse above the threshold, live-only for dead filters."""
    model = default_convnet(seed=0).eval()
    model(X[:2])
    assert model.conv1.last_kernel == "v4 (32/32 filters, 3/3 input channels) + fused ReLU + 2x2 max pool"
    prune.l1_unstructured(model.conv2, "weight", amount=0.5)
    model(X[:2])
    assert model.conv2.last_kernel.startswith("v4 ")     # 50% < the 85% break-even
    prune.l1_unstructured(model.conv2, "weight", amount=0.8)
    model(X[:2])
    assert model.conv2.last_kernel.startswith("sparse taps (90%")
    assert model.conv2.last_kernel.endswith("+ fused ReLU + 2x2 max pool")
    model.conv2.sparse_threshold = 0.95
    model(X[:2])
    assert model.conv2.last_kernel.startswith("v4 ")
    model.fuse_relu = False
    model(X[:2])
    assert model.conv2.last_kernel == "dense v3"
    model.fuse_relu = True
    prune.ln_structured(model.conv1, "weight", amount=4, n=1, dim=0)
    model(X[:2])
    assert model.conv1.last_kernel == "live-only v4 (28/32 filters, 3/3 input channels) + fused ReLU + 2x2 max pool"
    assert model.conv2.last_kernel == "live-only v4 (32/32 filters, 28/32 input channels) + fused ReLU + 2x2 max pool"
    model.train()(X[:2])
    assert model.conv1.last_kernel == "skip v3 (28/32 filters, 3/3 input channels)"


@pytest.mark.parametrize("amount", [0.5, 0.8, 0.9, 0.95])
def test_sparse_path_matches_dense_on_unstructured_masks(amount):
    """With unstructured global pruning, the sparse kernels give the dense logits."""
    model = load_model()
    prune.global_unstructured([(model.conv1, "weight"), (model.conv2, "weight"), (model.fc, "weight")],
                              pruning_method=prune.L1Unstructured, amount=amount)
    got = model.eval()(X)
    sparse = 1 - np.count_nonzero(model.conv2.weight) / model.conv2.weight.size
    assert ("sparse taps" in model.conv2.last_kernel) == (sparse >= model.conv2.sparse_threshold)
    assert_close(got, dense_twin(model)(X), {"amount": amount}, rtol=1e-4, atol=1e-4)


def test_fused_relu_gives_the_unfused_result():
    """Eval-mode ReLU fusion (dense, live-only and sparse paths) changes no logit beyond rounding."""
    model = load_model()
    fused = model.eval()(X)
    model.fuse_relu = False
    assert_close(model(X), fused, "fused vs unfused", rtol=1e-5, atol=1e-5)   # only rounding differs
    prune.ln_structured(model.conv1, "weight", amount=8, n=2, dim=0)
    prune.l1_unstructured(model.conv2, "weight", amount=0.9)
    unfused = model(X)
    model.fuse_relu = True
    assert_close(model(X), unfused, "fused vs unfused, pruned", rtol=1e-5, atol=1e-5)
    assert "sparse taps" in model.conv2.last_kernel and "fused ReLU" in model.conv2.last_kernel


def test_all_filters_dead_gives_the_bias_everywhere():
    """A conv layer with every filter pruned outputs its bias planes (and the net still runs)."""
    model = default_convnet(seed=0).eval()
    prune.ln_structured(model.conv2, "weight", amount=1.0, n=2, dim=0)
    out = model(X[:4])
    assert np.allclose(out, out[0])          # every image gets the same logits
    assert_close(out, dense_twin(model)(X[:4]), "all dead", rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="every filter of conv2 is dead"):
        prune.shrink(model)
