"""Layers and Sequential: shapes, traversal, state dicts, whole-model gradients, bad input."""
import io as _stdio
from collections import OrderedDict

import numpy as np
import pytest

from helpers import assert_close, requires_torch, torch
from ece662.layers import (AdaptiveAvgPool2d, AvgPool2d, BatchNorm1d, BatchNorm2d, Conv2d, Dropout, Dropout2d, Flatten, LeakyReLU,
                           Linear, MaxPool2d, ReLU, Sequential, from_spec)
from ece662.models import default_convnet


def test_default_convnet_shapes_and_names():
    """The course network has the course's layer names, parameter shapes and output shape."""
    net = default_convnet(seed=0).eval()
    shapes = {k: v.shape for k, v in net.state_dict().items()}
    assert shapes == {"conv1.weight": (32, 3, 5, 5), "conv1.bias": (32,),
                      "conv2.weight": (32, 32, 3, 3), "conv2.bias": (32,),
                      "fc.weight": (10, 1152), "fc.bias": (10,)}
    assert net(np.zeros((3, 3, 32, 32), np.float32)).shape == (3, 10)
    assert [n for n, _ in net.named_modules()][:3] == ["", "conv1", "relu1"]
    assert isinstance(dict(net.named_modules())["conv2"], Conv2d)


def test_initialisation_is_deterministic_per_seed():
    """The same seed gives the same weights; another seed does not."""
    a, b, c = default_convnet(seed=3), default_convnet(seed=3), default_convnet(seed=4)
    for k in a.state_dict():
        np.testing.assert_array_equal(a.state_dict()[k], b.state_dict()[k])
    assert not np.array_equal(a.state_dict()["fc.weight"], c.state_dict()["fc.weight"])


def test_summary_counts_params_and_flops():
    """summary() reports per-layer output shapes, parameter counts and FLOPs (2 per multiply-add)."""
    rows = default_convnet().summary((3, 32, 32), file=_stdio.StringIO())
    by = {r["name"]: r for r in rows}
    assert by["conv1"]["output_shape"] == (32, 28, 28)
    assert by["conv1"]["params"] == 32 * 75 + 32
    assert by["conv1"]["flops"] == 2 * 32 * 75 * 28 * 28
    assert by["conv2"]["flops"] == 2 * 32 * 288 * 12 * 12
    assert by["fc"]["params"] == 1152 * 10 + 10
    assert by["total"]["params"] == 23210


def test_state_dict_round_trip_and_failed_load_changes_nothing():
    """load_state_dict copies arrays in; a mismatching dict leaves the model untouched."""
    a, b = default_convnet(seed=1), default_convnet(seed=2)
    b.load_state_dict(a.state_dict())
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    np.testing.assert_array_equal(a.eval()(x), b.eval()(x))
    before = b.state_dict()
    bad = a.state_dict()
    bad["fc.weight"] = np.zeros((10, 1000), np.float32)
    with pytest.raises(ValueError, match="fc.weight"):
        b.load_state_dict(bad)
    missing = a.state_dict()
    del missing["fc.bias"]
    with pytest.raises(KeyError, match="fc.bias"):
        b.load_state_dict(missing)
    for k, v in b.state_dict().items():
        np.testing.assert_array_equal(v, before[k])


def test_spec_rebuilds_the_same_architecture():
    """from_spec(model.spec()) gives the same layers in the same order."""
    net = Sequential(Conv2d(3, 4, 3, stride=2, padding=1, bias=False), ReLU(), MaxPool2d(2),
                     Flatten(), Dropout(0.25), Linear(64, 5))
    again = from_spec(net.spec())
    assert repr(again) == repr(net)
    assert {k: v.shape for k, v in again.state_dict().items()} == {k: v.shape for k, v in net.state_dict().items()}


def _model_loss_grads(net, x, dout):
    net.train()
    net.zero_grad()
    out = net(x)
    dx = net.backward(dout)
    return out, dx, dict(net.named_grads())


def test_whole_model_gradients_match_numerical(rng):
    """Backward through conv-relu-pool-conv-relu-pool-flatten-linear equals finite differences."""
    net = Sequential(OrderedDict([("conv1", Conv2d(2, 3, 3, padding=1, seed=0)), ("relu1", ReLU()),
                                  ("pool1", MaxPool2d(2)), ("conv2", Conv2d(3, 4, 3, seed=1)),
                                  ("relu2", ReLU()), ("flatten", Flatten()), ("fc", Linear(16, 3, seed=2))]))
    x = rng.standard_normal((2, 2, 8, 8)).astype(np.float32)
    dout = rng.standard_normal((2, 3)).astype(np.float32)
    _, dx, grads = _model_loss_grads(net, x, dout)
    net.eval()

    def loss():
        return float(np.sum(net(x).astype(np.float64) * dout))

    eps = 1e-3   # small enough that no ReLU or max switches sides, large for float32 noise
    for name, p in net.named_parameters():
        flat = p.reshape(-1)
        for i in rng.choice(flat.size, size=min(6, flat.size), replace=False):
            old = flat[i]
            flat[i] = old + eps
            lp = loss()
            flat[i] = old - eps
            lm = loss()
            flat[i] = old
            num = (lp - lm) / (2 * eps)
            got = grads[name].reshape(-1)[i]
            assert abs(num - got) < 5e-3 * max(1.0, abs(num)), (name, i, num, got)


@requires_torch
def test_default_convnet_forward_backward_match_torch(rng):
    """The whole course network agrees with the same network in torch, forward and backward."""
    net = default_convnet(seed=0)
    sd = net.state_dict()
    tn = torch.nn
    tnet = tn.Sequential(tn.Conv2d(3, 32, 5), tn.ReLU(), tn.MaxPool2d(2), tn.Conv2d(32, 32, 3),
                         tn.ReLU(), tn.MaxPool2d(2), tn.Flatten(), tn.Linear(1152, 10))
    tnet.load_state_dict({"0.weight": torch.tensor(sd["conv1.weight"]), "0.bias": torch.tensor(sd["conv1.bias"]),
                          "3.weight": torch.tensor(sd["conv2.weight"]), "3.bias": torch.tensor(sd["conv2.bias"]),
                          "7.weight": torch.tensor(sd["fc.weight"]), "7.bias": torch.tensor(sd["fc.bias"])})
    x = rng.standard_normal((4, 3, 32, 32)).astype(np.float32)
    dout = rng.standard_normal((4, 10)).astype(np.float32)
    tx = torch.tensor(x, requires_grad=True)
    tout = tnet(tx)
    tout.backward(torch.tensor(dout))
    out, dx, grads = _model_loss_grads(net, x, dout)
    assert_close(out, tout.detach().numpy(), "logits", rtol=1e-3, atol=1e-4)
    assert_close(dx, tx.grad.numpy(), "dx", rtol=1e-3, atol=1e-4)
    assert_close(grads["conv1.weight"], tnet[0].weight.grad.numpy(), "conv1.weight", rtol=1e-3, atol=1e-3)
    assert_close(grads["fc.weight"], tnet[7].weight.grad.numpy(), "fc.weight", rtol=1e-3, atol=1e-3)


def test_dropout_is_identity_in_eval_and_seeded_in_train():
    """Dropout does nothing in eval mode and drops the same entries for the same seed."""
    x = np.ones((4, 100), np.float32)
    d = Dropout(0.5, seed=0).eval()
    np.testing.assert_array_equal(d(x), x)
    a = Dropout(0.5, seed=0).train()(x)
    b = Dropout(0.5, seed=0).train()(x)
    np.testing.assert_array_equal(a, b)
    assert set(np.unique(a)) == {0.0, 2.0}


# ----------------------------------------------------------------------------- empty batches
def _course_net(variant):
    """The course CNN as a new user meets it: the shipped weights, fresh ones, pruned two ways, shrunk."""
    import ece662.pruning as prune
    from ece662.pruning_helper import load_model
    if variant == "default_convnet":
        return default_convnet(seed=0)
    net = load_model()
    if variant == "global_unstructured_0.8":      # sparse enough for the sparse kernel (conv2)
        params = [(m, "weight") for m in (net.conv1, net.conv2, net.fc)]
        prune.global_unstructured(params, pruning_method=prune.L1Unstructured, amount=0.8)
    elif variant in ("ln_structured_0.5", "shrunk"):  # half the filters dead: skipped, or removed
        for conv in (net.conv1, net.conv2):
            prune.ln_structured(conv, "weight", amount=0.5, n=2, dim=0)
        if variant == "shrunk":
            net = prune.shrink(net)
    return net


@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("kernels", ["auto", "dense", "reference"])
@pytest.mark.parametrize("variant", ["load_model", "default_convnet", "global_unstructured_0.8",
                                     "ln_structured_0.5", "shrunk"])
def test_empty_batch_gives_empty_logits(variant, kernels, training):
    """An empty batch (N = 0) gives logits of shape (0, 10) on every kernel path, and in training a
    backward of an empty gradient gives an empty dx and all-zero parameter gradients."""
    net = _course_net(variant).train(training)
    net.kernels = kernels
    x = np.zeros((0, 3, 32, 32), np.float32)
    out = net(x)
    assert out.shape == (0, 10) and out.dtype == np.float32
    if kernels == "auto" and not training:         # the paths named in the variant really ran
        if variant == "global_unstructured_0.8":
            assert net.conv2.last_kernel.version == "sparse"
        if variant == "ln_structured_0.5":
            assert net.conv1.last_kernel.live_filters == 16 < net.conv1.last_kernel.filters
    if not training:
        return
    net.zero_grad()
    dx = net.backward(np.zeros((0, 10), np.float32))
    assert dx.shape == x.shape
    grads = dict(net.named_grads())
    assert sorted(grads) == sorted(name for name, _ in net.named_parameters())
    for name, p in net.named_parameters():
        assert grads[name].shape == p.shape and not grads[name].any(), name
    assert net.backward(np.zeros((0, 10), np.float32), need_input_grad=False) is None


def test_flatten_keeps_the_feature_count_of_an_empty_batch():
    """Flatten of (0, C, H, W) is (0, C*H*W), and its backward gives the input's shape back."""
    f = Flatten()
    assert f(np.zeros((0, 32, 6, 6), np.float32)).shape == (0, 1152)
    assert f.backward(np.zeros((0, 1152), np.float32)).shape == (0, 32, 6, 6)


# ----------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("x, exc, match", [
    (np.zeros((2, 32, 32, 3), np.float32), ValueError, "NHWC.*transpose"),
    (np.zeros((3, 32, 32), np.float32), ValueError, "batch axis"),
    (np.zeros((2, 1, 32, 32), np.float32), ValueError, "3 channels"),
    (np.zeros((2, 3, 32, 32), np.float64), TypeError, "float32"),
    (np.zeros((2, 3, 32, 32), np.uint8), TypeError, "normalis"),
    (np.full((2, 3, 32, 32), np.nan, np.float32), ValueError, "NaN"),
    (np.zeros((2, 3, 3, 3), np.float32), ValueError, "larger than the padded input"),
    ([[1.0]], TypeError, "numpy.ndarray"),
])
def test_bad_input_gets_a_clear_error(x, exc, match):
    """Wrong rank, layout, channels, dtype, NaN or a too-small image: an error naming conv1."""
    net = default_convnet().eval()
    with pytest.raises(exc, match=match) as info:
        net(x)
    assert "conv1" in str(info.value)


@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("kernels", ["auto", "reference"])
def test_wrong_image_size_names_the_size_the_network_expects(kernels, training):
    """A 16x16 image given to the 32x32 course CNN is refused before anything runs, with the size the
    network expects (not deep inside fc); a wrong channel count is named at the first layer."""
    net = default_convnet().train(training)
    net.kernels = kernels
    with pytest.raises(ValueError, match=r"expects 32x32 images with 3 channels.*got 16x16 images") as info:
        net(np.zeros((2, 3, 16, 16), np.float32))
    assert "fc (Linear) expects 1152 input features but gets 128" in str(info.value)
    with pytest.raises(ValueError, match=r"expects 32x32 images.*got 8x8 images.*conv2 \(Conv2d\)"):
        net(np.zeros((2, 3, 8, 8), np.float32))     # too small for conv2's kernel: named there
    with pytest.raises(ValueError, match=r"^conv1 \(Conv2d 3->32\): expected x with 3 channels.*"
                                         r"\(1 channels\).*x.repeat\(3, axis=1\)"):
        net(np.zeros((2, 1, 32, 32), np.float32))


def test_plan_of_a_wrong_input_shape_names_the_expected_size():
    """model.plan() (and so report and shrink) refuses an input shape the layers cannot take, saying why."""
    with pytest.raises(ValueError, match=r"expects 32x32 images with 3 channels"):
        default_convnet().plan((3, 16, 16))
    from ece662.layers.plan import expected_image_size
    assert expected_image_size(default_convnet(), 3) == 32


def test_a_global_pool_network_names_its_smallest_input():
    """A network with a global average pool takes any size from a minimum up, and its error says so."""
    net = Sequential(OrderedDict([("conv1", Conv2d(3, 4, 3)), ("pool1", MaxPool2d(2)), ("conv2", Conv2d(4, 4, 3)),
                                  ("gap", AdaptiveAvgPool2d(1)), ("flatten", Flatten()), ("fc", Linear(4, 2))]))
    assert net.eval()(np.zeros((1, 3, 40, 40), np.float32)).shape == (1, 2)
    with pytest.raises(ValueError, match=r"expects at least 8x8 images with 3 channels.*got 5x5 images"):
        net(np.zeros((1, 3, 5, 5), np.float32))


def test_layers_that_do_not_fit_each_other_are_named():
    """When no input fits (conv2 reads 4 channels, conv1 makes 8), the error names conv2 and what it gets."""
    net = Sequential(OrderedDict([("conv1", Conv2d(3, 8, 3)), ("conv2", Conv2d(4, 8, 3))])).eval()
    with pytest.raises(ValueError, match=r"does not fit this network: conv2 \(Conv2d\) expects \(N, 4, H, W\) "
                                         r"but gets \(8, 6, 6\).*in_channels"):
        net(np.zeros((1, 3, 8, 8), np.float32))


def test_linear_without_flatten_says_so():
    """Feeding feature maps to a Linear layer suggests adding Flatten."""
    with pytest.raises(ValueError, match="Flatten"):
        Linear(12, 2)(np.zeros((1, 3, 2, 2), np.float32))


def test_backward_without_training_forward_is_an_error():
    """backward after an eval-mode forward explains what to do."""
    net = default_convnet().eval()
    net(np.zeros((1, 3, 32, 32), np.float32))
    with pytest.raises(RuntimeError, match="model.train()"):
        net.backward(np.zeros((1, 10), np.float32))


@pytest.mark.parametrize("kwargs", [dict(in_channels=0), dict(kernel_size=-1), dict(stride=1.5),
                                    dict(padding=-1)])
def test_bad_constructor_arguments(kwargs):
    """Conv2d refuses non-positive channels, kernels, fractional strides, negative padding."""
    args = dict(in_channels=3, out_channels=4, kernel_size=3)
    args.update(kwargs)
    with pytest.raises(ValueError, match="Conv2d"):
        Conv2d(**args)


# ----------------------------------------------------------------------------- small-CNN layers
def _small_cnn(seed=0):
    """A student-style CNN with every new layer: LeakyReLU, AvgPool2d, Dropout2d, global pooling."""
    return Sequential(OrderedDict([
        ("conv1", Conv2d(3, 6, 3, padding=1, seed=seed)), ("act1", LeakyReLU(0.1)), ("pool1", AvgPool2d(2)),
        ("drop", Dropout2d(0.25, seed=seed)), ("conv2", Conv2d(6, 8, 3, seed=seed + 1)), ("act2", ReLU()),
        ("gap", AdaptiveAvgPool2d(1)), ("flatten", Flatten()), ("fc", Linear(8, 4, seed=seed + 2))]))


def test_new_layers_spec_round_trip():
    """LeakyReLU, AvgPool2d, AdaptiveAvgPool2d and Dropout2d rebuild from their spec with their arguments."""
    net = _small_cnn()
    again = from_spec(net.spec())
    assert repr(again) == repr(net)
    assert "negative_slope=0.1" in repr(again) and "p=0.25" in repr(again)
    assert net.output_shape((2, 3, 10, 10)) == (2, 4)


def test_dropout2d_zeroes_whole_channels_in_training_only():
    """Dropout2d keeps or zeroes each (image, channel) plane as a whole, scales by 1/(1-p), and is
    the identity in eval mode; its backward uses the same draw."""
    x = np.ones((8, 16, 3, 3), np.float32)
    d = Dropout2d(0.25, seed=0).train()
    out = d(x)
    planes = out.reshape(8, 16, -1)
    assert np.all(planes.min(axis=2) == planes.max(axis=2))          # constant per plane
    assert set(np.unique(out).tolist()) == {0.0, np.float32(1 / 0.75)}
    assert 0.1 < (planes[:, :, 0] == 0).mean() < 0.45
    np.testing.assert_array_equal(d.backward(np.ones_like(x)), out)
    np.testing.assert_array_equal(d.eval()(x), x)
    with pytest.raises(ValueError, match=r"p in \[0, 1\)"):
        Dropout2d(1.0)


def test_adaptive_avg_pool_refuses_other_output_sizes():
    """Only global average pooling is supported; other sizes get an error naming AvgPool2d."""
    with pytest.raises(ValueError, match="AvgPool2d"):
        AdaptiveAvgPool2d(2)


@requires_torch
def test_small_cnn_with_the_new_layers_matches_torch(rng):
    """Forward (train and eval) and backward of a CNN with LeakyReLU, AvgPool2d, global pooling
    (Dropout2d at p=0 in training, identity in eval) agree with the same torch network."""
    net = _small_cnn()
    net.drop.p = 0.0
    tnet = torch.nn.Sequential(torch.nn.Conv2d(3, 6, 3, padding=1), torch.nn.LeakyReLU(0.1),
                               torch.nn.AvgPool2d(2), torch.nn.Dropout2d(0.25), torch.nn.Conv2d(6, 8, 3),
                               torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                               torch.nn.Linear(8, 4))
    sd = net.state_dict()
    with torch.no_grad():
        for i, name in ((0, "conv1"), (4, "conv2"), (8, "fc")):
            tnet[i].weight.copy_(torch.tensor(sd[name + ".weight"]))
            tnet[i].bias.copy_(torch.tensor(sd[name + ".bias"]))
    x = rng.standard_normal((3, 3, 10, 10)).astype(np.float32)
    dout = rng.standard_normal((3, 4)).astype(np.float32)
    tx = torch.tensor(x, requires_grad=True)
    tnet.eval()
    tout = tnet(tx)
    tout.backward(torch.tensor(dout))
    out, dx, grads = _model_loss_grads(net, x, dout)
    assert_close(out, tout.detach().numpy(), "logits", rtol=1e-4, atol=1e-5)
    assert_close(dx, tx.grad.numpy(), "dx", rtol=1e-3, atol=1e-5)
    assert_close(grads["conv1.weight"], tnet[0].weight.grad.numpy(), "conv1.weight", rtol=1e-3, atol=1e-4)
    assert_close(net.eval()(x), tout.detach().numpy(), "eval logits", rtol=1e-4, atol=1e-5)


# ----------------------------------------------------------------------------- batch norm
def test_batchnorm_state_dict_keys_are_torchs():
    """BatchNorm2d has torch's keys: weight/bias parameters, running stats and a counter as buffers."""
    bn = BatchNorm2d(4)
    assert list(bn.state_dict()) == ["weight", "bias", "running_mean", "running_var", "num_batches_tracked"]
    assert [n for n, _ in bn.named_parameters()] == ["weight", "bias"]
    assert bn.state_dict()["num_batches_tracked"].shape == () and bn.num_batches_tracked.dtype == np.int64
    assert from_spec(Sequential(BatchNorm2d(4, eps=1e-3, momentum=0.2), BatchNorm1d(3)).spec())[0].eps == 1e-3
    with pytest.raises(ValueError, match="track_running_stats"):
        BatchNorm2d(4, track_running_stats=False)
    with pytest.raises(ValueError, match="4 channels"):
        BatchNorm2d(4)(np.zeros((2, 3, 2, 2), np.float32))


@requires_torch
@pytest.mark.parametrize("cls, tcls, shape", [(BatchNorm2d, "BatchNorm2d", (6, 3, 4, 5)),
                                              (BatchNorm1d, "BatchNorm1d", (8, 5)),
                                              (BatchNorm1d, "BatchNorm1d", (4, 5, 3))], ids=str)
def test_batchnorm_running_statistics_and_eval_match_torch(cls, tcls, shape, rng):
    """Three training steps update running_mean / running_var (unbiased) / num_batches_tracked as torch
    does, the outputs and gradients match, and eval mode then uses the running statistics."""
    C = shape[1]
    bn = cls(C, momentum=0.1)
    tbn = getattr(torch.nn, tcls)(C, momentum=0.1)
    gamma = rng.uniform(0.5, 1.5, C).astype(np.float32)
    bn.weight = gamma.copy()
    with torch.no_grad():
        tbn.weight.copy_(torch.tensor(gamma))
    bn.train()
    tbn.train()
    for _ in range(3):
        x = (rng.standard_normal(shape) * 3 + 2).astype(np.float32)
        dout = rng.standard_normal(shape).astype(np.float32)
        tx = torch.tensor(x, requires_grad=True)
        tout = tbn(tx)
        tout.backward(torch.tensor(dout))
        bn.zero_grad()
        assert_close(bn(x), tout.detach().numpy(), "train out", rtol=1e-4, atol=1e-4)
        assert_close(bn.backward(dout), tx.grad.numpy(), "dx", rtol=1e-3, atol=1e-4)
        assert_close(bn.grads["weight"], tbn.weight.grad.numpy(), "dgamma", rtol=1e-3, atol=1e-3)
        tbn.weight.grad = None
        tbn.bias.grad = None
    tsd = tbn.state_dict()
    for key in ("running_mean", "running_var"):
        assert_close(bn.state_dict()[key], tsd[key].numpy(), key, rtol=1e-5, atol=1e-6)
    assert int(bn.num_batches_tracked) == int(tsd["num_batches_tracked"]) == 3
    x = rng.standard_normal(shape).astype(np.float32)
    assert_close(bn.eval()(x), tbn.eval()(torch.tensor(x)).detach().numpy(), "eval", rtol=1e-4, atol=1e-5)
    fresh = cls(C)
    fresh.load_state_dict({k: v.numpy() for k, v in tsd.items()})
    assert_close(fresh.eval()(x), bn(x), "loaded from torch's state_dict", rtol=1e-6, atol=1e-6)
