"""Pruning: mask invariants (Hypothesis), torch.nn.utils.prune semantics, and torch itself."""
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

import ece662.pruning as prune
from helpers import assert_close, requires_torch, torch
from ece662.experiments import dense_twin
from ece662.io import load_model, save_model
from ece662.layers import BatchNorm2d, Conv2d, Flatten, Linear, MaxPool2d, ReLU, Sequential
from ece662.models import default_convnet
from ece662.pruning import masks as M

SETTINGS = settings(max_examples=60, deadline=None)

shapes = st.lists(st.integers(1, 6), min_size=1, max_size=4).map(tuple)
finite = st.floats(-10, 10, allow_nan=False, width=32)
fractions = st.floats(0, 1)


@st.composite
def tensor_and_amount(draw, min_dims=1):
    shape = draw(st.lists(st.integers(1, 6), min_size=min_dims, max_size=4).map(tuple))
    t = draw(arrays(np.float32, shape, elements=finite))
    amount = draw(st.one_of(fractions, st.integers(0, int(np.prod(shape)))))
    return t, amount


@SETTINGS
@given(tensor_and_amount())
def test_mask_shape_equals_parameter_shape(ta):
    """A mask is a boolean array of exactly the parameter's shape."""
    t, amount = ta
    m = M.l1_unstructured(t, amount)
    assert m.shape == t.shape and m.dtype == np.bool_


@SETTINGS
@given(tensor_and_amount())
def test_exact_pruned_count_even_with_ties(ta):
    """Exactly amount_to_count(amount, n) entries are pruned, however many scores tie."""
    t, amount = ta
    t = np.round(t)          # plenty of ties
    m = M.l1_unstructured(t, amount)
    assert int((~m).sum()) == M.amount_to_count(amount, t.size)


@SETTINGS
@given(tensor_and_amount())
def test_pruned_entries_are_the_smallest(ta):
    """No kept entry has a smaller magnitude than a pruned one."""
    t, amount = ta
    m = M.l1_unstructured(t, amount)
    if m.all() or not m.any():
        return
    assert np.abs(t[~m]).max() <= np.abs(t[m]).min()


@SETTINGS
@given(tensor_and_amount(), fractions)
def test_masks_only_shrink_under_repeated_pruning(ta, second):
    """Pruning again keeps a subset of what was kept, and takes `amount` of what is left."""
    t, amount = ta
    m1 = M.l1_unstructured(t, amount)
    m2 = M.l1_unstructured(t * m1, second, m1)
    assert not (m2 & ~m1).any()
    assert int((m1 & ~m2).sum()) == M.amount_to_count(second, int(m1.sum()))


def test_half_twice_is_three_quarters():
    """0.5 then 0.5 prunes 75% of the entries."""
    fc = Linear(10, 8, seed=0)
    prune.l1_unstructured(fc, "weight", 0.5)
    prune.l1_unstructured(fc, "weight", 0.5)
    assert (~fc.weight_mask).sum() == 60


@SETTINGS
@given(tensor_and_amount(min_dims=2), st.integers(0, 3), st.sampled_from([1, 2, np.inf, "fro"]))
def test_structured_masks_are_constant_along_all_but_dim(ta, dim, n):
    """Structured pruning keeps or drops whole slices along dim, and an exact number of them."""
    t, _ = ta
    dim = dim % t.ndim
    amount = t.shape[dim] // 2
    m = M.ln_structured(t, amount, n, dim)
    per_channel = np.moveaxis(m, dim, 0).reshape(t.shape[dim], -1)
    assert (per_channel.all(axis=1) | ~per_channel.any(axis=1)).all()
    assert int((~per_channel.any(axis=1)).sum()) == amount


@SETTINGS
@given(st.lists(arrays(np.float32, st.integers(1, 20), elements=finite), min_size=1, max_size=4), fractions)
def test_global_pruning_is_one_threshold_across_tensors(ts, amount):
    """Global pruning prunes the k smallest magnitudes over all tensors together."""
    ms = M.global_l1_unstructured(ts, amount)
    scores = np.concatenate([np.abs(t) for t in ts])
    kept = np.concatenate(ms)
    assert int((~kept).sum()) == M.amount_to_count(amount, scores.size)
    if kept.any() and not kept.all():
        assert scores[~kept].max() <= scores[kept].min()


@SETTINGS
@given(tensor_and_amount())
def test_amount_zero_and_identity_change_nothing(ta):
    """amount=0 and identity keep every entry and leave the effective weight equal to the original."""
    t, _ = ta
    assert M.l1_unstructured(t, 0).all() and M.l1_unstructured(t, 0.0).all()
    fc = Linear(5, 3, seed=1)
    w = fc.weight.copy()
    prune.identity(fc, "weight")
    assert fc.weight_mask.all() and np.array_equal(fc.weight, w)


def _pruned_net():
    net = default_convnet(seed=3)
    params = [(m, "weight") for _, m in net.named_modules() if isinstance(m, (Conv2d, Linear))]
    prune.global_unstructured(params, pruning_method=prune.L1Unstructured, amount=0.6)
    prune.ln_structured(net.conv1, "weight", amount=8, n=2, dim=0)
    return net, params


def test_masked_weight_is_exactly_zero_and_remove_keeps_the_output():
    """A masked weight is exactly zero in the effective weight; remove() changes no logit."""
    net, params = _pruned_net()
    for m, _ in params:
        assert (m.weight[~m.weight_mask] == 0).all()
        assert np.array_equal(m.weight, m.weight_orig * m.weight_mask)
    x = np.random.default_rng(0).standard_normal((4, 3, 32, 32)).astype(np.float32)
    before = net.eval()(x)
    for m, name in params:
        prune.remove(m, name)
    assert not prune.is_pruned(net)
    np.testing.assert_array_equal(net(x), before)
    assert set(net.state_dict()) == {"conv1.weight", "conv1.bias", "conv2.weight", "conv2.bias",
                                     "fc.weight", "fc.bias"}


def test_pruned_model_state_dict_uses_torch_names():
    """A pruned model's state dict has weight_orig and a boolean weight_mask, as torch's does."""
    net, _ = _pruned_net()
    sd = net.state_dict()
    assert "conv1.weight_orig" in sd and sd["conv1.weight_mask"].dtype == np.bool_
    assert "conv1.weight" not in sd
    assert prune.is_pruned(net)


def test_masks_round_trip_through_model_files(tmp_path):
    """Saved masks come back as masks: same mask, same weight_orig, same logits."""
    net, _ = _pruned_net()
    save_model(net, tmp_path / "p.npz")
    again = load_model(tmp_path / "p.npz")
    for k, v in net.state_dict().items():
        np.testing.assert_array_equal(again.state_dict()[k], v)
    x = np.random.default_rng(1).standard_normal((2, 3, 32, 32)).astype(np.float32)
    np.testing.assert_array_equal(again(x), net.eval()(x))


@pytest.mark.parametrize("call, exc", [
    (lambda m: prune.l1_unstructured(m, "weight", amount=1.5), ValueError),
    (lambda m: prune.l1_unstructured(m, "weight", amount=-1), ValueError),
    (lambda m: prune.l1_unstructured(m, "weight", amount=10 ** 6), ValueError),
    (lambda m: prune.l1_unstructured(m, "weight", amount="half"), TypeError),
    (lambda m: prune.l1_unstructured(m, "weight", amount=True), TypeError),
    (lambda m: prune.ln_structured(m, "weight", amount=2, n=2, dim=4), IndexError),
    (lambda m: prune.ln_structured(m, "bias", amount=2, n=2, dim=0), ValueError),
    (lambda m: prune.l1_unstructured(m, "kernel", amount=2), ValueError),
    (lambda m: prune.remove(m, "bias"), ValueError),
])
def test_failed_pruning_leaves_the_layer_unchanged(call, exc):
    """A bad amount, dim or name raises and leaves parameters, buffers and hooks as they were."""
    conv = Conv2d(3, 4, 3, seed=0)
    prune.l1_unstructured(conv, "weight", amount=0.25)
    before = {k: v.copy() for k, v in conv.state_dict().items()}
    hooks = dict(conv._forward_pre_hooks)
    with pytest.raises(exc):
        call(conv)
    after = conv.state_dict()
    assert before.keys() == after.keys()
    for k in before:
        np.testing.assert_array_equal(before[k], after[k])
    assert conv._forward_pre_hooks == hooks


def test_amount_rounding_is_half_to_even():
    """0.4 of 17 -> 7, 0.5 of 5 -> 2, 1 is one unit, 1.0 is all."""
    assert M.amount_to_count(0.4, 17) == 7
    assert M.amount_to_count(0.5, 5) == 2
    assert M.amount_to_count(0.5, 7) == 4
    assert M.amount_to_count(1, 9) == 1
    assert M.amount_to_count(1.0, 9) == 9


def test_structured_repeat_only_considers_live_channels():
    """A second structured pass counts its amount over filters that are still alive."""
    conv = Conv2d(3, 8, 3, seed=0)
    prune.ln_structured(conv, "weight", amount=0.5, n=2, dim=0)
    prune.ln_structured(conv, "weight", amount=0.5, n=2, dim=0)
    assert int(conv.alive_filters().sum()) == 2


@pytest.mark.filterwarnings("ignore::ece662.pruning.DeadClassWarning")   # a lone Linear loses rows on purpose
def test_random_pruning_is_seeded():
    """The same seed prunes the same entries."""
    a, b = Linear(6, 6, seed=0), Linear(6, 6, seed=0)
    prune.random_unstructured(a, "weight", 0.5, seed=3)
    prune.random_unstructured(b, "weight", 0.5, seed=3)
    np.testing.assert_array_equal(a.weight_mask, b.weight_mask)
    prune.random_structured(a, "weight", 2, dim=0, seed=1)
    assert (~a.weight_mask.any(axis=1)).sum() == 2


# ----------------------------------------------------------------------------- torch oracle
def _torch_pair(seed=0):
    net = default_convnet(seed=seed)
    tnet = torch.nn.ModuleDict({"conv1": torch.nn.Conv2d(3, 32, 5), "conv2": torch.nn.Conv2d(32, 32, 3),
                                "fc": torch.nn.Linear(1152, 10)})
    with torch.no_grad():
        for name in ("conv1", "conv2", "fc"):
            tnet[name].weight.copy_(torch.tensor(getattr(net, name).weight))
            tnet[name].bias.copy_(torch.tensor(getattr(net, name).bias))
    return net, tnet


@requires_torch
@pytest.mark.parametrize("amounts", [(0.3,), (0.5, 0.5), (7, 0.2), (0.8,)])
def test_l1_unstructured_matches_torch(amounts):
    """Repeated l1_unstructured gives torch's masks on the same weights (no ties)."""
    net, tnet = _torch_pair()
    for a in amounts:
        for name in ("conv1", "conv2", "fc"):
            prune.l1_unstructured(getattr(net, name), "weight", a)
            torch.nn.utils.prune.l1_unstructured(tnet[name], "weight", a)
    for name in ("conv1", "conv2", "fc"):
        np.testing.assert_array_equal(getattr(net, name).weight_mask, tnet[name].weight_mask.numpy().astype(bool))


@requires_torch
@pytest.mark.parametrize("amounts, n", [((8,), 2), ((0.25, 0.5), 1), ((0.5,), np.inf), ((3, 0.3), 3)])
def test_ln_structured_matches_torch(amounts, n):
    """Repeated ln_structured along dim 0 gives torch's filter masks."""
    net, tnet = _torch_pair(1)
    for a in amounts:
        for name in ("conv1", "conv2"):
            prune.ln_structured(getattr(net, name), "weight", a, n=n, dim=0)
            torch.nn.utils.prune.ln_structured(tnet[name], "weight", a, n=n, dim=0)
    for name in ("conv1", "conv2"):
        np.testing.assert_array_equal(getattr(net, name).weight_mask, tnet[name].weight_mask.numpy().astype(bool))


@requires_torch
@pytest.mark.parametrize("amounts", [(0.3,), (0.2, 0.4), (5000,)])
def test_global_unstructured_matches_torch(amounts):
    """global_unstructured (repeated too) gives torch's masks across all conv and linear weights."""
    net, tnet = _torch_pair(2)
    names = ("conv1", "conv2", "fc")
    for a in amounts:
        prune.global_unstructured([(getattr(net, n), "weight") for n in names],
                                  pruning_method=prune.L1Unstructured, amount=a)
        torch.nn.utils.prune.global_unstructured([(tnet[n], "weight") for n in names],
                                                 pruning_method=torch.nn.utils.prune.L1Unstructured, amount=a)
    for n in names:
        np.testing.assert_array_equal(getattr(net, n).weight_mask, tnet[n].weight_mask.numpy().astype(bool))


@requires_torch
def test_importance_scores_match_torch():
    """importance_scores rank the entries instead of the weights, as in torch."""
    net, tnet = _torch_pair(3)
    scores = np.random.default_rng(0).standard_normal(net.fc.weight.shape).astype(np.float32)
    prune.l1_unstructured(net.fc, "weight", 0.4, importance_scores=scores)
    torch.nn.utils.prune.l1_unstructured(tnet["fc"], "weight", 0.4, importance_scores=torch.tensor(scores))
    np.testing.assert_array_equal(net.fc.weight_mask, tnet["fc"].weight_mask.numpy().astype(bool))


def test_fro_is_the_l2_norm_of_each_slice():
    """n='fro' ranks channels by the L2 norm of all their entries (torch 2.13 rejects 'fro' on 4-D)."""
    w = np.random.default_rng(0).standard_normal((8, 3, 3, 3)).astype(np.float32)
    np.testing.assert_array_equal(M.ln_structured(w, 3, "fro", 0), M.ln_structured(w, 3, 2, 0))
    np.testing.assert_allclose(M.channel_norms(w, "fro", 0), np.sqrt((w.astype(np.float64) ** 2).sum(axis=(1, 2, 3))))


# ----------------------------------------------------------------------------- beyond torch
@SETTINGS
@given(st.lists(st.tuples(st.integers(1, 8), st.integers(1, 4)), min_size=1, max_size=3), fractions,
       st.booleans())
def test_global_structured_prunes_an_exact_count_and_keeps_one_per_layer(shapes_, amount, normalize):
    """Global filter pruning removes exactly k live filters overall and never empties a layer."""
    rng = np.random.default_rng(0)
    ts = [rng.standard_normal((f, c, 2, 2)).astype(np.float32) for f, c in shapes_]
    total = sum(f for f, _ in shapes_)
    k = M.amount_to_count(amount, total)
    if k > total - len(ts):
        with pytest.raises(ValueError, match="keeping one per tensor"):
            M.global_ln_structured(ts, amount, 2, 0, normalize=normalize)
        return
    ms = M.global_ln_structured(ts, amount, 2, 0, normalize=normalize)
    dead = [~m.reshape(m.shape[0], -1).any(axis=1) for m in ms]
    assert sum(int(d.sum()) for d in dead) == k
    assert all((~d).any() for d in dead)


def test_global_structured_without_normalisation_is_one_threshold():
    """Without normalisation, every pruned filter has a smaller norm than every kept one."""
    net = default_convnet(seed=0)
    convs = [(net.conv1, "weight"), (net.conv2, "weight")]
    prune.global_structured(convs, amount=0.5, n=2, dim=0)
    norms = [np.linalg.norm(m.weight_orig.reshape(m.out_channels, -1), axis=1) for m, _ in convs]
    alive = [m.alive_filters() for m, _ in convs]
    pruned_max = max(n[~a].max() for n, a in zip(norms, alive) if (~a).any())
    kept_min = min(n[a].min() for n, a in zip(norms, alive))
    assert pruned_max <= kept_min
    assert sum(int((~a).sum()) for a in alive) == 32


def test_prune_bias_zeroes_dead_filter_outputs():
    """With prune_bias, a dead filter's output plane is exactly zero; without, it is its bias."""
    x = np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(np.float32)
    a, b = Conv2d(3, 6, 3, seed=0).eval(), Conv2d(3, 6, 3, seed=0).eval()
    prune.ln_structured(a, "weight", amount=3, n=2, dim=0)
    prune.ln_structured(b, "weight", amount=3, n=2, dim=0, prune_bias=True)
    dead = ~a.alive_filters()
    np.testing.assert_array_equal(a(x)[:, dead], np.broadcast_to(a.bias[dead][None, :, None, None], (2, 3, 6, 6)))
    assert (b(x)[:, dead] == 0).all() and (b.bias_mask == ~dead).all()
    with pytest.raises(ValueError, match="dim=0"):
        prune.ln_structured(Conv2d(3, 6, 3), "weight", amount=1, n=2, dim=1, prune_bias=True)


def _conv_bn_net(seed=0, bias=True):
    """conv-BN-ReLU-pool, conv-BN-ReLU, conv-ReLU, fc on (3, 16, 16): every conv after a BN has padding 1.
    The batch norms have running statistics and shifts that make a dead filter's output a
    non-zero constant (beta - gamma * mean / sqrt(var + eps), through the ReLU)."""
    rng = np.random.default_rng(seed)
    net = Sequential(Conv2d(3, 8, 3, padding=1, bias=bias, seed=seed), BatchNorm2d(8), ReLU(), MaxPool2d(2),
                     Conv2d(8, 6, 3, padding=1, bias=bias, seed=seed + 1), BatchNorm2d(6), ReLU(),
                     Conv2d(6, 4, 3, padding=1, seed=seed + 2), ReLU(), Flatten(),
                     Linear(4 * 8 * 8, 5, seed=seed + 3))
    for bn in (net[1], net[5]):
        C = bn.num_features
        bn.weight[:] = rng.uniform(0.5, 1.5, C)
        bn.bias[:] = rng.uniform(0.2, 1.0, C)
        bn.running_mean[:] = rng.normal(0, 0.2, C)
        bn.running_var[:] = rng.uniform(0.5, 2.0, C)
    return net.eval()


def _n_parameters(model):
    """Weights, biases and batch norm scales/shifts: what a network stores to compute (masks aside)."""
    return sum(p.size for name, p in model.named_parameters())


@pytest.mark.parametrize("prune_bias", [False, True])
def test_shrink_is_exact_with_batchnorm_before_padded_convs(prune_bias):
    """Conv -> BatchNorm -> ReLU -> padded conv: a dead filter outputs BN's non-zero shift, even with
    prune_bias; shrink() still gives the masked model's logits, with fewer parameters, and leaves
    the model unchanged."""
    model = _conv_bn_net()
    dense_parameters = _n_parameters(model)
    prune.ln_structured(model[0], "weight", amount=4, n=2, dim=0, prune_bias=prune_bias)
    prune.ln_structured(model[4], "weight", amount=3, n=2, dim=0, prune_bias=prune_bias)
    x = np.random.default_rng(1).standard_normal((6, 3, 16, 16)).astype(np.float32)
    masked = dense_twin(model)(x)
    plan = model.plan((3, 16, 16))
    dead_const = [s.const_in[~s.live_in] for s in plan if s.op == "conv" and s.live_in is not None]
    assert len(dead_const) == 2 and all(np.any(c != 0) for c in dead_const), "the case needs non-zero constants"
    before = {k: v.copy() for k, v in model.state_dict().items()}
    small = prune.shrink(model, input_shape=(3, 16, 16))
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(v, before[k], err_msg=f"shrink changed {k}")
    assert not model.training
    cfg = {"prune_bias": prune_bias}
    assert_close(small(x), masked, cfg, rtol=1e-4, atol=1e-5, what="shrunk vs masked")
    small.kernels = "reference"
    assert_close(small(x), masked, cfg, rtol=1e-4, atol=1e-5, what="shrunk (reference kernels) vs masked")
    # one carrier channel stands for every dead one before a padded conv; no batch norm is left
    convs = [m for m in small.modules() if isinstance(m, Conv2d)]
    assert [(c.in_channels, c.out_channels) for c in convs] == [(3, 5), (5, 4), (4, 4)]
    assert not any(isinstance(m, BatchNorm2d) for m in small.modules())
    assert _n_parameters(small) < dense_parameters
    assert _n_parameters(small) < _n_parameters(model)


@requires_torch
def test_shrink_with_batchnorm_matches_torch_on_the_masked_network():
    """The shrunk conv-BN network gives the logits torch.nn.functional computes from the masked weights."""
    F = torch.nn.functional
    model = _conv_bn_net()
    prune.ln_structured(model[0], "weight", amount=4, n=2, dim=0, prune_bias=True)
    prune.ln_structured(model[4], "weight", amount=3, n=2, dim=0)
    x = np.random.default_rng(3).standard_normal((4, 3, 16, 16)).astype(np.float32)

    def conv(m, h):
        return F.conv2d(h, torch.from_numpy(m.weight), torch.from_numpy(m.bias), padding=m.padding)

    def bn(m, h):
        return F.batch_norm(h, *(torch.from_numpy(a) for a in (m.running_mean, m.running_var, m.weight, m.bias)),
                            training=False, eps=m.eps)
    with torch.no_grad():
        h = F.max_pool2d(F.relu(bn(model[1], conv(model[0], torch.from_numpy(x)))), 2)
        h = F.relu(conv(model[7], F.relu(bn(model[5], conv(model[4], h)))))
        logits = F.linear(h.flatten(1), torch.from_numpy(model[10].weight), torch.from_numpy(model[10].bias))
    assert_close(prune.shrink(model, input_shape=(3, 16, 16))(x), logits.numpy(), "torch", rtol=1e-4, atol=1e-5,
                 what="shrunk vs torch on the masked weights")


def test_shrink_keeps_the_batchnorm_shift_of_a_conv_without_bias():
    """A conv without bias followed by BatchNorm: the folded conv needs the shift as its bias."""
    model = _conv_bn_net(bias=False)
    x = np.random.default_rng(2).standard_normal((3, 3, 16, 16)).astype(np.float32)
    small = prune.shrink(model, input_shape=(3, 16, 16))
    assert small[0].bias is not None
    assert_close(small(x), dense_twin(model)(x), {"bias": False}, rtol=1e-4, atol=1e-5, what="shrunk vs dense")


def test_shrink_in_training_mode_says_to_call_eval():
    """A training-mode BatchNorm after a pruned conv cannot carry constants: the error says model.eval()."""
    model = _conv_bn_net()
    prune.ln_structured(model[0], "weight", amount=4, n=2, dim=0)
    model.train()
    with pytest.raises(ValueError, match=r"training mode.*model\.eval\(\)"):
        prune.shrink(model, input_shape=(3, 16, 16))
    assert model.training


def test_pruning_history_records_every_method():
    """The PruningContainer lists the methods applied to a tensor, in order."""
    conv = Conv2d(3, 4, 3, seed=0)
    prune.l1_unstructured(conv, "weight", 0.2)
    prune.ln_structured(conv, "weight", 1, n=1, dim=0)
    hist = prune.pruning_history(conv, "weight")
    assert [type(m).__name__ for m in hist] == ["L1Unstructured", "LnStructured"]
    assert hist in conv._forward_pre_hooks.values()
    prune.remove(conv, "weight")
    assert not conv._forward_pre_hooks


def test_report_counts_on_a_hand_made_case():
    """report() counts parameters, zeros, dead filters and FLOPs exactly."""
    import io
    net = default_convnet(seed=0)
    mask = np.ones((32, 3, 5, 5), bool)
    mask[:8] = False                      # 8 dead filters in conv1
    mask[8, 0, 0, 0] = False              # plus one single weight
    prune.custom_from_mask(net.conv1, "weight", mask)
    prune.ln_structured(net.conv2, "weight", amount=16, n=2, dim=0)
    rows = {r["name"]: r for r in prune.report(net, file=io.StringIO())}
    assert rows["conv1"]["zeros"] == 8 * 75 + 1 and rows["conv1"]["dead_filters"] == 8
    assert rows["conv1"]["params"] == 32 * 75 + 32
    assert rows["conv1"]["flops_dense"] == 2 * 32 * 75 * 28 * 28
    assert rows["conv1"]["flops_skip"] == 2 * 24 * 75 * 28 * 28
    assert rows["conv2"]["flops_skip"] == 2 * 16 * 24 * 9 * 12 * 12
    assert rows["fc"]["flops_skip"] == 2 * 10 * 16 * 36
    assert rows["total"]["zeros"] == 8 * 75 + 1 + 16 * 288
    assert rows["total"]["dead_filters"] == 24


def test_global_unstructured_without_amount_says_so():
    """Forgetting amount= is a TypeError that names it, not a KeyError, and nothing is pruned."""
    net = default_convnet(seed=0)
    params = [(net.conv1, "weight"), (net.fc, "weight")]
    with pytest.raises(TypeError, match=r"missing amount=.*amount=0\.3"):
        prune.global_unstructured(params, pruning_method=prune.L1Unstructured)
    assert not prune.is_pruned(net)


def test_global_unstructured_amount_in_the_importance_scores_place_says_so():
    """torch's third positional argument is importance_scores: a number there is named as the amount."""
    net = default_convnet(seed=0)
    with pytest.raises(TypeError, match=r"third argument is importance_scores.*amount=0\.2"):
        prune.global_unstructured([(net.fc, "weight")], prune.L1Unstructured, 0.2)
    assert not prune.is_pruned(net)



# ----------------------------------------------------------------------------- dead classes
PRUNE_ROWS = {   # ways to kill 3 of the 10 output rows of a Linear (the classes, in a classifier)
    "ln_structured": lambda fc: prune.ln_structured(fc, "weight", amount=3, n=2, dim=0),
    "ln_structured_dim-2": lambda fc: prune.ln_structured(fc, "weight", amount=3, n=2, dim=-2),
    "random_structured": lambda fc: prune.random_structured(fc, "weight", amount=3, dim=0, seed=0),
    "global_structured": lambda fc: prune.global_structured([(fc, "weight")], amount=3, n=2, dim=0),
    "custom_from_mask": lambda fc: prune.custom_from_mask(fc, "weight", np.broadcast_to(
        np.arange(10)[:, None] >= 3, fc.weight.shape)),          # rows 0, 1, 2 masked whole
}


@pytest.mark.parametrize("how", sorted(PRUNE_ROWS))
def test_pruning_a_classifiers_output_rows_warns_and_masks_as_before(how):
    """Killing output rows of the network's last Linear warns that those classes die, names them and says
    how to avoid it, pointing at the caller's line; the mask is the one the call makes anyway."""
    net = default_convnet(seed=0)
    with pytest.warns(prune.DeadClassWarning, match=r"fc \(Linear 1152->10\) is the network's output layer: "
                                                    r"this pruning kills 3 of its 10 outputs.*logit is its bias"
                                                    r".*prune the hidden layers.*dim=1") as record:
        PRUNE_ROWS[how](net.fc)
    assert record[0].filename == __file__
    assert int((~net.fc.alive_outputs()).sum()) == 3
    lone = Linear(1152, 10)                  # the same weights outside any network: the same mask
    lone.weight = default_convnet(seed=0).fc.weight
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", prune.DeadClassWarning)
        PRUNE_ROWS[how](lone)
    np.testing.assert_array_equal(net.fc.weight_mask, lone.weight_mask)


def test_pruning_that_kills_no_class_does_not_warn():
    """Hidden layers' filters or units, the classifier's inputs (dim=1), and unstructured pruning that
    leaves every class a weight: no warning."""
    net = default_convnet(seed=0)
    mlp = Sequential(Linear(8, 6, seed=0), ReLU(), Linear(6, 3, seed=1))
    with warnings.catch_warnings():
        warnings.simplefilter("error", prune.DeadClassWarning)
        prune.ln_structured(net.conv2, "weight", amount=0.5, n=2, dim=0)
        prune.ln_structured(net.fc, "weight", amount=0.5, n=2, dim=1)
        prune.global_unstructured([(net.conv1, "weight"), (net.fc, "weight")],
                                  pruning_method=prune.L1Unstructured, amount=0.5)
        prune.ln_structured(mlp[0], "weight", amount=3, n=2, dim=0)      # a hidden Linear's units
        prune.l1_unstructured(Linear(4, 3, seed=0), "weight", amount=0.5)
    assert net.fc.alive_outputs().all() and (~mlp[0].alive_outputs()).sum() == 3


def test_the_output_layer_is_known_through_nested_sequentials():
    """The last Linear of a nested Sequential is the output layer only when nothing weighted follows it;
    a Linear on its own warns only for structured pruning along dim 0 (the documented rule)."""
    inner = Sequential(Linear(4, 4, seed=0), ReLU(), Linear(4, 3, seed=1))
    Sequential(Flatten(), inner)
    followed = Sequential(Linear(4, 4, seed=2), Linear(4, 4, seed=3))
    Sequential(followed, Linear(4, 2, seed=4))
    assert (inner[0]._output_layer, inner[2]._output_layer) == (False, True)
    assert (followed[0]._output_layer, followed[1]._output_layer) == (False, False)
    with pytest.warns(prune.DeadClassWarning, match="output layer"):
        prune.ln_structured(inner[2], "weight", amount=1, n=2, dim=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", prune.DeadClassWarning)
        prune.ln_structured(followed[1], "weight", amount=1, n=2, dim=0)
        lone = Linear(4, 4, seed=5)
        prune.custom_from_mask(lone, "weight", np.repeat(np.arange(4)[:, None] > 0, 4, axis=1))  # row 0 dies
    with pytest.warns(prune.DeadClassWarning, match="a Linear layer on its own"):
        prune.ln_structured(Linear(4, 4, seed=6), "weight", amount=1, n=2, dim=0)


def test_plan_and_report_show_a_linears_dead_outputs():
    """print(model.plan()) and prune.report count the dead output units of a Linear, as they count dead
    filters of a Conv2d; in every kernels mode."""
    import io
    net = default_convnet(seed=0)
    with pytest.warns(prune.DeadClassWarning):
        prune.ln_structured(net.fc, "weight", amount=3, n=2, dim=0)
    dead = np.flatnonzero(~net.fc.alive_outputs())
    note = f"3/10 outputs dead ({', '.join(map(str, dead))}: always their bias)"
    for kernels in ("auto", "dense", "reference"):
        net.kernels = kernels
        fc_line = str(net.eval().plan()).splitlines()[-1]
        assert fc_line.startswith("fc") and note in fc_line, fc_line
    table = io.StringIO()
    rows = {r["name"]: r for r in prune.report(net, file=table)}
    assert rows["fc"]["dead_outputs"] == 3 and rows["fc"]["dead_filters"] == 0
    assert rows["total"]["dead_outputs"] == 3
    assert table.getvalue().splitlines()[3].split()[5] == "3"      # the fc row's "dead" column


@pytest.mark.parametrize("n", [float("nan"), np.nan, 0, -1, -2.5, "nuc", "2", True, None])
def test_ln_structured_refuses_an_n_that_is_not_a_norm(n):
    """n=NaN would make every norm NaN and prune the *first* filters whatever their weights: refused,
    as are 0, negative orders and other strings; the module is left as it was."""
    from ece662.layers import Conv2d
    conv = Conv2d(3, 4, 3, seed=0)
    before = conv.weight.copy()
    with pytest.raises(ValueError, match=r"ln_structured: n must be a positive number, inf, -inf or 'fro'"):
        prune.ln_structured(conv, "weight", amount=2, n=n, dim=0)
    assert not prune.is_pruned(conv) and np.array_equal(conv.weight, before)
    with pytest.raises(ValueError, match=r"global_structured: n must be"):
        prune.global_structured([(conv, "weight")], amount=0.5, n=n, dim=0)


@pytest.mark.parametrize("n", [1, 2, 2.5, np.inf, -np.inf, "fro"])
def test_ln_structured_takes_torchs_norm_orders(n):
    """Positive orders, +-inf and 'fro' rank filters as np.linalg.norm does."""
    from ece662.layers import Conv2d
    conv = Conv2d(3, 4, 3, seed=0)
    norms = np.linalg.norm(conv.weight.reshape(4, -1).astype(np.float64), ord=2 if n == "fro" else n, axis=1)
    prune.ln_structured(conv, "weight", amount=2, n=n, dim=0)
    assert set(np.flatnonzero(~conv.alive_filters())) == set(np.argsort(norms, kind="stable")[:2])
