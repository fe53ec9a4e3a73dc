"""Dynamic sparse training (SET, RigL): the weight count stays exactly constant while weights move, grown weights
start at zero, and RigL grows where the dense gradient is largest."""
import warnings

import numpy as np
import pytest

import ece662.pruning as prune
from ece662.models import default_convnet
from ece662.training.dynamic import DynamicSparsity
from ece662.training.trainer import Trainer

RNG = np.random.default_rng(0)
X = RNG.integers(0, 256, (48, 32, 32, 3), dtype=np.uint8)
Y = RNG.integers(0, 10, 48)


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", prune.DeadClassWarning)
        yield


@pytest.mark.parametrize("grow", ["gradient", "random"])
def test_the_weight_count_stays_exactly_constant_while_weights_move(grow):
    net = default_convnet(seed=0)
    dst = DynamicSparsity(net, 0.9, grow=grow, update_every=2, fraction=0.3, end_step=10, seed=1)
    counts = [int(m.weight_mask.sum()) for _, m in prune.prunable(net)]
    start = [m.weight_mask.copy() for _, m in prune.prunable(net)]
    Trainer(net, X, Y, epochs=2, batch_size=8, max_lr=0.01, augment=False, pruning=dst, progress=False).fit()
    assert [int(m.weight_mask.sum()) for _, m in prune.prunable(net)] == counts
    assert any(not np.array_equal(a, m.weight_mask) for a, (_, m) in zip(start, prune.prunable(net)))
    assert [s for s, _ in dst.history] == [2, 4, 6, 8, 10]          # no update after end_step
    assert all(moved > 0 for s, moved in dst.history if s < dst.end_step)   # alpha(end_step) = 0
    total = sum(m.weight.size for _, m in prune.prunable(net))
    assert abs(1 - sum(counts) / total - 0.9) < 1e-3


def test_rigl_grows_the_largest_dense_gradients_at_zero_and_drops_the_smallest_weights():
    """One update by hand: with the dense gradient set, the k grown entries are the inactive ones with the
    largest |gradient|, they start at 0, and the k dropped ones are the smallest active |weights|."""
    net = default_convnet(seed=0)
    dst = DynamicSparsity(net, 0.5, grow="gradient", update_every=1, fraction=0.5, end_step=2, seed=0)
    fc = net.fc
    before = fc.weight_mask.copy()
    w = fc.weight_orig.copy()
    g = np.random.default_rng(2).standard_normal(fc.weight.shape).astype(np.float32)
    fc.dense_grads = {"weight": g}
    for _, m in prune.prunable(net):
        if m is not fc:
            m.dense_grads = {"weight": np.zeros(m.weight.shape, np.float32)}
    dst.update(net, 1)
    k = min(int(dst.alpha(1) * before.sum()), int((~before).sum()))
    active, inactive = np.flatnonzero(before), np.flatnonzero(~before)
    dropped = set(active[np.argsort(np.abs(w.reshape(-1)[active]), kind="stable")[:k]])
    grown = set(inactive[np.argsort(-np.abs(g.reshape(-1)[inactive]), kind="stable")[:k]])
    after = fc.weight_mask.reshape(-1)
    assert not after[list(dropped)].any() and after[list(grown)].all()
    assert not fc.weight_orig.reshape(-1)[list(grown)].any()
    np.testing.assert_array_equal(fc.weight, fc.weight_orig * fc.weight_mask)


def test_dynamic_sparsity_refuses_a_pruned_model_and_bad_arguments():
    net = default_convnet(seed=0)
    prune.l1_unstructured(net.fc, "weight", amount=0.5)
    with pytest.raises(ValueError, match="already pruned"):
        DynamicSparsity(net, 0.5)
    with pytest.raises(ValueError, match="grow must be one of"):
        DynamicSparsity(default_convnet(), 0.5, grow="magnitude")
    with pytest.raises(ValueError, match="sparsity must be a fraction"):
        DynamicSparsity(default_convnet(), 1.0)
