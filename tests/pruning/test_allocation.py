"""How much each layer loses: LAMP scores, ERK densities, per-layer amounts, and N:M masks, checked against
their papers' definitions on small cases computed by hand, and as properties for all inputs."""
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

import ece662.pruning as prune
from ece662.layers import Conv2d, Linear
from ece662.models import default_convnet
from ece662.pruning import masks as M

SETTINGS = settings(max_examples=60, deadline=None)
finite = st.floats(-10, 10, allow_nan=False, width=32)


@pytest.fixture(autouse=True)
def _no_dead_class_noise():
    # untrained networks lose fc rows at high sparsity; DeadClassWarning is tested in test_pruning.py
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", prune.DeadClassWarning)
        yield


# ---------------------------------------------------------------------------- LAMP (Lee et al., 2021)
def test_lamp_scores_by_hand():
    """score(u) = w_u^2 / sum of w_v^2 over |w_v| >= |w_u|: for (0.5, -2, 1, 3) the denominators are
    0.25+4+1+9, 4+9, 1+4+9 and 9."""
    w = np.array([0.5, -2.0, 1.0, 3.0])
    expected = np.array([0.25 / 14.25, 4 / 13, 1 / 14, 1.0])
    np.testing.assert_allclose(M.lamp_scores(w), expected)


def test_lamp_ties_share_a_score_and_zeros_score_zero():
    """Weights of equal magnitude have the same denominator (all of them are "at least as large"); a zero
    weight (already pruned) scores 0; an all-zero layer scores 0 everywhere."""
    np.testing.assert_allclose(M.lamp_scores(np.array([2.0, -2.0, 0.0])), [0.5, 0.5, 0.0])
    assert not M.lamp_scores(np.zeros((2, 3))).any()


@SETTINGS
@given(arrays(np.float32, st.integers(1, 40), elements=finite))
def test_lamp_scores_rank_like_magnitudes_and_top_out_at_one(w):
    """Within a layer LAMP orders weights as their magnitudes do, every score lies in [0, 1], and the largest
    weight scores 1 divided by how many share its magnitude."""
    s = M.lamp_scores(w)
    mag = np.abs(w.astype(np.float64))
    assert ((s >= 0) & (s <= 1 + 1e-12)).all()
    order = np.argsort(mag, kind="stable")
    assert (np.diff(s[order]) >= -1e-12).all()
    if mag.max() > 0:
        ties = int((mag == mag.max()).sum())
        np.testing.assert_allclose(s[mag == mag.max()], 1.0 / ties)


@SETTINGS
@given(st.lists(arrays(np.float32, st.integers(2, 30), elements=st.floats(0.015625, 10, width=32)),
                min_size=1, max_size=4),
       st.floats(0.0, 0.95))
def test_global_lamp_prunes_the_exact_count_and_keeps_every_layers_largest_weight(layers, amount):
    """LAMP prunes exactly round(amount * total) weights, and while the amount leaves at least one weight per
    layer it never prunes a layer's largest weight (its score, 1, is the highest there is)."""
    mods = [Linear(len(w), 1, seed=0) for w in layers]
    for mod, w in zip(mods, layers):
        mod.weight[...] = w.reshape(1, -1)
    params = [(m, "weight") for m in mods]
    total = sum(w.size for w in layers)
    prune.global_lamp_unstructured(params, amount=amount)
    assert sum(int((~m.weight_mask).sum()) for m in mods) == M.amount_to_count(amount, total)
    if M.amount_to_count(amount, total) > total - len(layers):
        return                                        # the amount itself empties some layer
    for mod, w in zip(mods, layers):
        top = np.flatnonzero(np.abs(w) == np.abs(w).max())
        if len(top) == 1:
            assert mod.weight_mask.reshape(-1)[top[0]]


def test_lamp_spares_a_layer_that_a_global_threshold_would_empty():
    """A layer whose weights are all 100x smaller than another's is emptied by a global magnitude threshold
    at 50%, but keeps its largest weights under LAMP (the paper's motivation)."""
    def layers():
        small, big = Linear(4, 1, seed=0), Linear(4, 1, seed=0)
        small.weight[...] = [[0.01, 0.02, 0.03, 0.04]]
        big.weight[...] = [[1.0, 2.0, 3.0, 4.0]]
        return small, big
    small, big = layers()
    prune.global_unstructured([(small, "weight"), (big, "weight")], pruning_method=prune.L1Unstructured, amount=0.5)
    assert not small.weight_mask.any()
    small, big = layers()
    prune.global_lamp_unstructured([(small, "weight"), (big, "weight")], amount=0.5)
    assert small.weight_mask.tolist() == [[False, False, True, True]] == big.weight_mask.tolist()


# ---------------------------------------------------------------------------- ERK (Evci et al., 2020)
def test_erk_densities_by_hand():
    """Two layers, (4, 4) and (2, 8): raw ratios (4+4)/16 = 0.5 and (2+8)/16 = 0.625; density 0.5 of the 32
    weights gives eps * (0.5 * 16 + 0.625 * 16) = 16, eps = 8/9, densities 4/9 and 5/9."""
    np.testing.assert_allclose(M.erk_densities([(4, 4), (2, 8)], 0.5), [4 / 9, 5 / 9])


def test_erk_redistributes_a_layer_that_would_exceed_density_one():
    """A tiny layer whose share would be above 1 is kept dense; the others share the rest, and the total is
    still the density asked for."""
    shapes = [(2, 2), (64, 64), (64, 128)]
    d = M.erk_densities(shapes, 0.2)
    sizes = [np.prod(s) for s in shapes]
    assert d[0] == 1.0 and all(x < 1 for x in d[1:])
    np.testing.assert_allclose(sum(a * b for a, b in zip(d, sizes)), 0.2 * sum(sizes))


@SETTINGS
@given(st.lists(st.tuples(st.integers(1, 40), st.integers(1, 40), st.integers(1, 5), st.integers(1, 5)),
                min_size=1, max_size=5), st.floats(0.01, 1.0))
def test_erk_densities_add_up_and_stay_in_range(shapes, density):
    """For any layer shapes the densities lie in (0, 1] and keep density x all weights; power 0 is uniform."""
    d = M.erk_densities(shapes, density)
    sizes = [np.prod(s) for s in shapes]
    assert all(0 < x <= 1 + 1e-12 for x in d)
    np.testing.assert_allclose(sum(a * b for a, b in zip(d, sizes)), density * sum(sizes), rtol=1e-9)
    np.testing.assert_allclose(M.erk_densities(shapes, density, power=0.0), density)


def test_erk_unstructured_reaches_the_overall_sparsity_on_the_course_network():
    net = default_convnet(seed=0)
    params = [(m, "weight") for _, m in prune.prunable(net)]
    prune.erk_unstructured(params, 0.9)
    total = sum(m.weight.size for m, _ in params)
    zeros = sum(int((~m.weight_mask).sum()) for m, _ in params)
    assert abs(zeros / total - 0.9) < 1e-3
    with pytest.raises(ValueError, match="overall sparsity"):
        prune.erk_unstructured(params, 1.5)


def test_layerwise_amounts_by_dict_list_and_number():
    net = default_convnet(seed=0)
    prune.layerwise_unstructured([(net.conv1, "weight"), (net.conv2, "weight")], [0.25, 0.75])
    assert [float((~m.weight_mask).mean()) for m in (net.conv1, net.conv2)] == [0.25, 0.75]
    with pytest.raises(ValueError, match="no entry for 1 of the layers"):
        prune.layerwise_unstructured([(net.conv1, "weight"), (net.fc, "weight")], {net.conv1: 0.5})
    with pytest.raises(ValueError, match="2 amounts for 1 parameters"):
        prune.layerwise_unstructured([(net.fc, "weight")], [0.1, 0.2])


# ---------------------------------------------------------------------------- N:M
def test_nm_by_hand():
    """2:4 keeps the two largest |w| of every four consecutive weights of a row."""
    w = np.array([[0.1, -3.0, 2.0, 0.5, 4.0, 0.0, -1.0, 0.2],
                  [1.0, 1.0, 1.0, 1.0, -5.0, 5.0, 0.1, 0.2]])
    assert M.nm_unstructured(w, 2, 4).astype(int).tolist() == [[0, 1, 1, 0, 1, 0, 1, 0],
                                                               [1, 1, 0, 0, 1, 1, 0, 0]]   # ties: first come


@SETTINGS
@given(st.integers(1, 4), st.integers(1, 6), st.integers(1, 4), st.data())
def test_nm_groups_keep_at_most_n_and_those_are_the_largest(n, groups, rows, data):
    m = data.draw(st.integers(n, 8))
    w = data.draw(arrays(np.float32, (rows, groups * m), elements=finite))
    prev = data.draw(arrays(np.bool_, (rows, groups * m)))
    mask = M.nm_unstructured(w, n, m, prev)
    assert not (mask & ~prev).any()                                   # masks only shrink
    g_mask, g_prev = mask.reshape(rows, groups, m), prev.reshape(rows, groups, m)
    assert (g_mask.sum(axis=2) == np.minimum(n, g_prev.sum(axis=2))).all()
    g_w = np.abs(w).reshape(rows, groups, m)
    kept_min = np.where(g_mask, g_w, np.inf).min(axis=2)
    dropped_max = np.where(g_prev & ~g_mask, g_w, -np.inf).max(axis=2)
    assert (kept_min >= dropped_max).all()


def test_nm_on_a_conv_groups_each_filters_inputs_and_refuses_what_does_not_divide():
    conv = Conv2d(4, 3, 2, seed=0)                                    # 16 weights per filter
    prune.nm_unstructured(conv, "weight", n=1, m=4)
    assert (conv.weight_mask.reshape(3, 4, 4).sum(axis=2) == 1).all()
    with pytest.raises(ValueError, match="each row holds 12 weights, not a multiple of m=8"):
        prune.nm_unstructured(Conv2d(3, 2, 2, seed=0), "weight", n=2, m=8)
    with pytest.raises(ValueError, match="n must be at most m"):
        prune.nm_unstructured(Linear(8, 2), "weight", n=5, m=4)


# ---------------------------------------------------------------------------- block masks
def test_block_masks_by_hand_and_on_a_conv():
    w = np.array([[3.0, 4.0, 0.0, 0.1], [0.0, 0.0, 1.0, 1.0]])
    # 1x2 blocks: norms 5, 0.1, 0, 1.41 -> the two smallest go
    assert M.block_unstructured(w, (1, 2), 2).astype(int).tolist() == [[1, 1, 0, 0], [0, 0, 1, 1]]
    conv = Conv2d(4, 4, 2, seed=0)                          # (4, 16) as rows x inputs
    prune.block_unstructured(conv, "weight", block=(2, 4), amount=3)
    tiles = conv.weight_mask.reshape(2, 2, 4, 4)
    assert int((~tiles).all(axis=(1, 3)).sum()) == 3 and int(tiles.all(axis=(1, 3)).sum()) == 5
    with pytest.raises(ValueError, match="do not tile the 4x16"):
        prune.block_unstructured(Conv2d(4, 4, 2, seed=0), "weight", block=(3, 4), amount=1)


@SETTINGS
@given(st.integers(1, 3), st.integers(1, 3), st.integers(1, 3), st.integers(1, 4), st.floats(0, 1), st.data())
def test_block_masks_prune_whole_blocks_and_only_shrink(bh, bw, rb, cb, amount, data):
    w = data.draw(arrays(np.float32, (bh * rb, bw * cb), elements=finite))
    prev = data.draw(arrays(np.bool_, w.shape))
    mask = M.block_unstructured(w, (bh, bw), amount, prev)
    assert not (mask & ~prev).any()
    tiles = mask.reshape(rb, bh, cb, bw)
    live_before = prev.reshape(rb, bh, cb, bw).any(axis=(1, 3))
    gone = ~tiles.any(axis=(1, 3)) & live_before
    assert int(gone.sum()) == M.amount_to_count(amount, int(live_before.sum()))
