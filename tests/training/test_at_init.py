"""Pruning at initialization: SNIP and SynFlow checked against their papers' definitions on networks small
enough to differentiate by hand."""
import warnings
from collections import OrderedDict

import numpy as np
import pytest

import ece662.pruning as prune
from ece662.layers import BatchNorm2d, Conv2d, Flatten, Linear, ReLU, Sequential
from ece662.models import default_convnet
from ece662.training.at_init import snip, snip_scores, synflow, synflow_scores


@pytest.fixture(autouse=True)
def _no_dead_class_noise():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", prune.DeadClassWarning)
        yield


def test_snip_scores_are_gradient_times_weight_by_hand():
    """One linear layer: L = mean cross-entropy, dL/dW = (softmax(XW^T + b) - onehot(y))^T X / N, and the score
    is |dL/dW * W| (Lee et al. 2019, eq. 6 before normalisation)."""
    rng = np.random.default_rng(0)
    fc = Linear(3, 4, seed=1)
    net = Sequential(OrderedDict([("fc", fc)]))
    X, y = rng.standard_normal((5, 3)).astype(np.float32), np.array([0, 1, 2, 3, 1])
    z = X @ fc.weight.T + fc.bias
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    p[np.arange(5), y] -= 1
    expected = np.abs((p.T @ X) / 5 * fc.weight)
    np.testing.assert_allclose(snip_scores(net, X, y)[(fc, "weight")], expected, rtol=1e-4, atol=1e-7)
    assert net.training                                   # the mode it was in


def test_snip_prunes_the_exact_count_and_leaves_the_model_in_its_mode():
    net = default_convnet(seed=0).eval()
    X = np.random.default_rng(1).standard_normal((8, 3, 32, 32)).astype(np.float32)
    snip(net, X, np.arange(8) % 10, 0.8)
    total = sum(m.weight.size for _, m in prune.prunable(net))
    zeros = sum(int((~m.weight_mask).sum()) for _, m in prune.prunable(net))
    assert zeros == round(0.8 * total) and not net.training


def test_synflow_scores_by_hand_and_their_conservation():
    """Two linear layers, no bias effect on the flow's gradient: R = 1^T |W2| |W1| 1, so the score of
    W1[i, j] is colsum(|W2|)_i * |W1[i, j]| and of W2[0, i] is rowsum(|W1|)_i * |W2[0, i]|; each layer's scores
    add up to the same total (Tanaka et al. 2020, Theorem 1, with zero biases)."""
    l1, l2 = Linear(3, 2, bias=False, seed=0), Linear(2, 1, bias=False, seed=1)
    net = Sequential(OrderedDict([("l1", l1), ("l2", l2)]))
    W1, W2 = l1.weight.copy(), l2.weight.copy()
    s = synflow_scores(net, input_shape=(3,))
    np.testing.assert_allclose(s[(l1, "weight")], np.abs(W2).sum(0)[:, None] * np.abs(W1), rtol=1e-5)
    np.testing.assert_allclose(s[(l2, "weight")], np.abs(W1).sum(1)[None, :] * np.abs(W2), rtol=1e-5)
    np.testing.assert_allclose(s[(l1, "weight")].sum(), s[(l2, "weight")].sum(), rtol=1e-5)
    np.testing.assert_array_equal(l1.weight, W1)          # the signs came back
    np.testing.assert_array_equal(l2.weight, W2)


def test_synflow_reaches_its_sparsity_keeps_every_layer_and_restores_the_weights():
    net = default_convnet(seed=0)
    before = {n: m.weight.copy() for n, m in prune.prunable(net)}
    synflow(net, 0.95, rounds=20)
    total = sum(m.weight.size for _, m in prune.prunable(net))
    zeros = sum(int((~m.weight_mask).sum()) for _, m in prune.prunable(net))
    assert zeros == round(0.95 * total)
    for n, m in prune.prunable(net):
        assert m.weight_mask.any(), f"{n} was emptied"             # what conservation is for
        np.testing.assert_array_equal(m.weight, before[n] * m.weight_mask)


def test_synflow_refuses_batchnorm_and_bad_arguments():
    net = Sequential(Conv2d(3, 4, 3), BatchNorm2d(4), ReLU(), Flatten(), Linear(4 * 30 * 30, 10))
    with pytest.raises(ValueError, match="layer '1' is a BatchNorm2d"):
        synflow(net, 0.5)
    with pytest.raises(ValueError, match="overall sparsity"):
        synflow(default_convnet(), 1.0)
    with pytest.raises(ValueError, match="rounds"):
        synflow(default_convnet(), 0.5, rounds=0)
