"""Pruning that is meant to make inference faster: the three paths agree, and the kernel choice."""
import numpy as np
import pytest

import ece662.pruning as prune
from helpers import assert_close
from ece662.experiments import copy_model, dense_twin
from ece662.layers import Conv2d, Flatten, Linear, ReLU, Sequential
from ece662.layers import tuning
from ece662.layers.kernel_choice import KernelChoice
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
    assert not dense_twin(model).plan().steps[0].kernel.skipping
    skipping = model.eval()(X)
    k = model.conv2.last_kernel
    assert (k.version, k.fused, k.skipping) == ("v7", ("ReLU", "2x2 max pool"), True)
    assert k.live_inputs == int(model.conv1.alive_filters().sum()) < 32
    model.train()
    training_path = model(X)             # full tensors, dead filters skipped
    assert model.conv2.last_kernel.version == "lanes" and model.conv2.last_kernel.live_inputs == 32
    model.eval()
    small = prune.shrink(model)
    assert small.conv1.out_channels == int(model.conv1.alive_filters().sum())
    model.kernels = "reference"
    reference = model(X[:4])
    model.kernels = "auto"
    cfg = {"amount": amount, "how": how}
    assert_close(skipping, dense, cfg, rtol=1e-4, atol=1e-4, what="skip vs dense")
    assert_close(training_path, dense, cfg, rtol=1e-4, atol=1e-4, what="training path vs dense")
    assert_close(small(X), dense, cfg, rtol=1e-4, atol=1e-4, what="shrunk vs dense")
    assert_close(reference, dense[:4], cfg, rtol=1e-4, atol=1e-4, what="reference vs dense")
    assert (small(X).argmax(1) == dense.argmax(1)).mean() > 0.98


def test_shrink_leaves_the_original_alone_and_refuses_inexact_folds():
    """shrink() returns a new model; before a padded conv one dead channel carries the constants
    (exact, with or without the dead biases pruned); a conv that must see its full input is refused."""
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
    x = np.random.default_rng(1).standard_normal((2, 3, 8, 8)).astype(np.float32)
    small = prune.shrink(padded, input_shape=(3, 8, 8))
    assert small[0].out_channels == 3                    # 2 live filters + 1 carrier for the 2 dead ones
    assert_close(small(x), dense_twin(padded)(x), "padded, live bias", what="shrunk vs masked")
    hooked = copy_model(padded)
    hooked[2].register_forward_pre_hook(lambda m, inputs: None)
    with pytest.raises(ValueError, match="forward hook of its own.*remove that hook"):
        prune.shrink(hooked, input_shape=(3, 8, 8))
    prune.custom_from_mask(padded[0], "bias", padded[0].alive_filters())
    small = prune.shrink(padded, input_shape=(3, 8, 8))
    assert small[0].out_channels == 2                    # dead outputs are 0: nothing to carry
    assert_close(small(x), dense_twin(padded)(x), "padded, bias pruned")


def test_kernel_choice_is_reported_and_configurable():
    """Each conv records which kernel ran (a KernelChoice): dense, sparse above the threshold,
    skipping with dead filters; model.kernels switches every layer at once."""
    model = default_convnet(seed=0).eval()
    model(X[:2])
    k = model.conv1.last_kernel
    assert k == KernelChoice("v7", ("ReLU", "2x2 max pool"), 32, 32, 3, 3, k.reason, k.tile)
    assert k.tile in k.reason and str(k).startswith(f"v7 tile {k.tile}")     # the measured tile, and why
    prune.l1_unstructured(model.conv2, "weight", amount=0.3)
    model(X[:2])
    assert model.conv2.last_kernel.version == "v7"            # 30% < the 60% threshold
    prune.l1_unstructured(model.conv2, "weight", amount=0.8)
    model(X[:2])
    k = model.conv2.last_kernel
    assert k.version == "sparse" and k.reason.startswith("86% of live weights are zero")
    assert k.fused == ("ReLU", "2x2 max pool")
    model.kernels = "dense"
    assert {m.kernels for m in model.modules()} == {"dense"}
    model(X[:2])
    assert model.conv2.last_kernel.version == "v7" and "dense" in model.conv2.last_kernel.reason
    model.kernels = "auto"
    prune.ln_structured(model.conv1, "weight", amount=4, n=1, dim=0)
    model(X[:2])
    assert model.conv1.last_kernel[:6] == ("v7", ("ReLU", "2x2 max pool"), 28, 32, 3, 3)
    assert model.conv2.last_kernel[2:6] == (32, 32, 28, 32)
    assert str(model.conv1.last_kernel) == f"v7 tile {model.conv1.last_kernel.tile} skip, fused ReLU + 2x2 max pool"
    model.train()(X[:2])
    assert model.conv1.last_kernel[:6] == ("lanes", ("ReLU", "2x2 max pool"), 28, 32, 3, 3)
    with pytest.raises(ValueError, match="kernels must be one of"):
        model.kernels = "fast"


def test_plan_is_printable_and_names_every_layer():
    """model.plan() lists every layer once, with live filters and the kernel for each conv."""
    model = default_convnet(seed=0)
    prune.ln_structured(model.conv1, "weight", amount=16, n=2, dim=0)
    plan = model.plan((3, 32, 32))
    lines = str(plan).splitlines()
    tile = plan.steps[0].kernel.tile
    assert lines[0].startswith("conv1+relu1+pool1  (32, 14, 14)  16/32 filters live, 3/3 input "
                               f"channels -> v7 tile {tile} skip, fused ReLU + 2x2 max pool")
    from ece662.layers import tuning
    assert f"tile {tuning.describe(tuning.parse_tile(tile))}: measured fastest on " in lines[0] \
        or "ECE662_TILE" in lines[0]
    assert "16/32 input channels" in lines[1]
    assert [n for s in plan for n in s.names] == [n for n, _ in model.named_children()]
    model.kernels = "reference"
    assert all("reference" in line for line in str(model.plan()).splitlines())


@pytest.mark.parametrize("amount", [0.5, 0.8, 0.9, 0.95])
def test_sparse_path_matches_dense_on_unstructured_masks(amount):
    """With unstructured global pruning, the sparse kernels give the dense logits."""
    model = load_model()
    prune.global_unstructured([(model.conv1, "weight"), (model.conv2, "weight"), (model.fc, "weight")],
                              pruning_method=prune.L1Unstructured, amount=amount)
    got = model.eval()(X)
    sparse = 1 - np.count_nonzero(model.conv2.weight) / model.conv2.weight.size
    assert (model.conv2.last_kernel.version == "sparse") == (sparse >= tuning.unmeasured_sparse_from()[0])
    assert_close(got, dense_twin(model)(X), {"amount": amount}, rtol=1e-4, atol=1e-4)



def test_fused_relu_gives_the_unfused_result():
    """Eval-mode ReLU fusion (dense, live-only and sparse paths) gives the unfused references' logits."""
    model = load_model()
    fused = model.eval()(X[:4])
    model.kernels = "reference"                 # no fusion: every layer its plain-loop twin
    assert_close(model(X[:4]), fused, "fused vs reference", rtol=1e-5, atol=1e-5)   # only rounding differs
    prune.ln_structured(model.conv1, "weight", amount=8, n=2, dim=0)
    prune.l1_unstructured(model.conv2, "weight", amount=0.9)
    unfused = model(X[:4])
    model.kernels = "auto"
    assert_close(model(X[:4]), unfused, "fused vs reference, pruned", rtol=1e-5, atol=1e-5)
    assert model.conv2.last_kernel.version == "sparse" and model.conv2.last_kernel.fused


def test_all_filters_dead_gives_the_bias_everywhere():
    """A conv layer with every filter pruned outputs its bias planes (and the net still runs)."""
    model = default_convnet(seed=0).eval()
    prune.ln_structured(model.conv2, "weight", amount=1.0, n=2, dim=0)
    out = model(X[:4])
    assert np.allclose(out, out[0])          # every image gets the same logits
    assert_close(out, dense_twin(model)(X[:4]), "all dead", rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="every filter of conv2 is dead"):
        prune.shrink(model)


def _bn_cnn(seed=0):
    """A student CNN with BatchNorm, LeakyReLU, average and global pooling, trained-looking statistics."""
    from collections import OrderedDict
    from ece662.layers import AdaptiveAvgPool2d, AvgPool2d, BatchNorm1d, BatchNorm2d, LeakyReLU, MaxPool2d
    rng = np.random.default_rng(seed)
    m = Sequential(OrderedDict([
        ("conv1", Conv2d(3, 8, 3, seed=seed)), ("bn1", BatchNorm2d(8)), ("relu1", ReLU()), ("pool1", MaxPool2d(2)),
        ("conv2", Conv2d(8, 8, 3, seed=seed + 1)), ("bn2", BatchNorm2d(8)), ("act2", LeakyReLU(0.1)),
        ("pool2", AvgPool2d(2)), ("gap", AdaptiveAvgPool2d(1)), ("flatten", Flatten()),
        ("fc", Linear(8, 6, seed=seed + 2)), ("bn3", BatchNorm1d(6)), ("fc2", Linear(6, 3, seed=seed + 3))]))
    for bn in (m.bn1, m.bn2, m.bn3):
        C = bn.num_features
        bn.weight = rng.uniform(0.5, 1.5, C).astype(np.float32)
        bn.bias = rng.standard_normal(C).astype(np.float32)
        bn.running_mean = rng.standard_normal(C).astype(np.float32)
        bn.running_var = rng.uniform(0.5, 2, C).astype(np.float32)
    return m


@pytest.mark.parametrize("prune_bias", [False, True])
def test_batchnorm_network_pruned_gives_the_same_logits_on_every_path(prune_bias):
    """Dead filters before BatchNorm become constant channels after it (beta - gamma*mean/std ...):
    the plan folds BN into the conv, carries the constants through LeakyReLU / average / global
    pooling, and the live-only, dense, reference and shrunk networks agree."""
    model = _bn_cnn()
    prune.ln_structured(model.conv1, "weight", amount=3, n=2, dim=0, prune_bias=prune_bias)
    prune.ln_structured(model.conv2, "weight", amount=3, n=2, dim=0, prune_bias=prune_bias)
    x = np.random.default_rng(1).standard_normal((5, 3, 18, 18)).astype(np.float32)
    model.eval()
    plan = model.plan((3, 18, 18))
    first = plan.steps[0]
    assert first.names == ("conv1", "bn1", "relu1", "pool1")
    assert first.kernel.fused == ("BatchNorm2d folded", "ReLU", "2x2 max pool")
    assert first.kernel.live_filters == 5
    # a dead filter's channel after BN is the constant relu(beta - gamma * mean / sqrt(var + eps) + ...)
    dead = ~model.conv1.alive_filters()
    gamma, beta = model.bn1.gamma_beta()
    b = model.conv1.bias
    expected = np.maximum(gamma * (b - model.bn1.running_mean) / np.sqrt(model.bn1.running_var + 1e-5) + beta, 0)
    assert_close(first.const_out[dead], expected[dead], "constant after BN")
    assert [s.op for s in plan.steps[2:6]] == ["channels"] * 3 + ["flatten"]   # act2, pool2, gap carry them
    assert plan.steps[5].live_out.sum() == 5
    live = model(x)
    model.kernels = "dense"
    dense = model(x)
    model.kernels = "reference"
    reference = model(x)
    model.kernels = "auto"
    small = prune.shrink(model, input_shape=(3, 18, 18))
    assert small.conv2.weight.shape == (5, 5, 3, 3) and "bn1" not in dict(small.named_children())
    assert_close(live, reference, "live vs reference", rtol=1e-4, atol=1e-5)
    assert_close(dense, reference, "dense vs reference", rtol=1e-4, atol=1e-5)
    assert_close(small(x), reference, "shrunk vs reference", rtol=1e-4, atol=1e-5)
    rows = prune.report(model, input_shape=(3, 18, 18), verbose=False)
    assert rows[1]["flops_skip"] == rows[1]["flops_dense"] * 5 * 5 // 64


def test_batchnorm_not_after_a_conv_runs_on_live_channels_only():
    """A BatchNorm2d after ReLU (not foldable) normalises only the live channels; shrink keeps it, sliced."""
    from ece662.layers import BatchNorm2d
    model = Sequential(Conv2d(3, 6, 3, seed=0), ReLU(), BatchNorm2d(6), Conv2d(6, 4, 3, seed=1), Flatten(),
                       Linear(4 * 4 * 4, 3, seed=2))
    rng = np.random.default_rng(0)
    model[2].running_mean = rng.standard_normal(6).astype(np.float32)
    model[2].weight = rng.uniform(0.5, 1.5, 6).astype(np.float32)
    prune.ln_structured(model[0], "weight", amount=2, n=2, dim=0)
    x = rng.standard_normal((3, 3, 8, 8)).astype(np.float32)
    model.eval()
    plan = model.plan((3, 8, 8))
    assert plan.steps[1].names == ("2",) and plan.steps[1].op == "channels" and plan.steps[1].weight.shape == (4,)
    got = model(x)
    assert_close(got, dense_twin(model)(x), "BN on live channels", rtol=1e-4, atol=1e-5)
    small = prune.shrink(model, input_shape=(3, 8, 8))
    assert small[2].num_features == 4
    assert_close(small(x), got, "shrunk", rtol=1e-4, atol=1e-5)


def test_plan_and_report_say_when_the_tile_width_eats_the_skip(monkeypatch):
    """With v6's tile shape forced (16-wide blocks, the rest in 8-wide ones), 12 live filters of 16 are computed
    as 16: the plan says so and that skipping saves nothing, and report's flops_kernel (what the kernel computes)
    equals the dense count, while the arithmetic flops_skip is 12/16 of it.  With 8 live filters the 8-wide
    tile does save.  (Forced, because the measured choice may be another tile, or the positions-as-lanes
    layout, which computes the live filters only.)"""
    import ece662.pruning as prune
    monkeypatch.setenv("ECE662_TILE", "4x16+8x8")
    from ece662.layers import Conv2d, Flatten, Linear, MaxPool2d, ReLU, Sequential
    for dead, saves in ((4, False), (8, True)):
        net = Sequential(Conv2d(3, 16, 5, seed=0), ReLU(), MaxPool2d(2), Flatten(), Linear(16 * 14 * 14, 10, seed=1))
        prune.ln_structured(net[0], "weight", amount=dead, n=2, dim=0)
        text = str(net.eval().plan((3, 32, 32)))
        row = prune.report(net, verbose=False)[0]
        assert row["flops_skip"] * 16 == row["flops_dense"] * (16 - dead)
        if saves:
            assert "computed as" not in text and row["flops_kernel"] == row["flops_skip"]
        else:
            assert "12/16 filters live (computed as 16" in text and "saves nothing here" in text
            assert row["flops_kernel"] == row["flops_dense"]
