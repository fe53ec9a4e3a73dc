"""Pruning schedules: the cubic schedule, masks held between updates, recipes, distillation."""
import copy

import numpy as np
import pytest

import ece662.pruning as prune
from ece662.models import default_convnet
from ece662.training.optim import distillation_loss, softmax_cross_entropy
from ece662.training.schedules import (GradualPruning, cubic_sparsity, gradual, iterative, one_shot,
                                      prunable_layers, prune_to, rewind, sparsity_of)
from ece662.training.trainer import Trainer

# Global magnitude pruning of an *untrained* default_convnet empties rows of fc (its initial weights are about
# 4x smaller than conv1's), which prune.DeadClassWarning rightly reports; these tests are about the schedules.
pytestmark = pytest.mark.filterwarnings("ignore::ece662.pruning.methods.DeadClassWarning")


def _tiny_data(n=64, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, n)


def _formula(t, s_f, t0, end, dt, s_i=0.0):
    """Zhu & Gupta's equation, written out independently: the last update step k, then the cube."""
    if t < t0:
        return 0.0
    k = min(t, end) if t >= end else t0 + ((t - t0) // dt) * dt
    return s_f + (s_i - s_f) * (1 - (k - t0) / (end - t0)) ** 3


@pytest.mark.parametrize("t0, end, dt, s_i", [(0, 100, 10, 0.0), (7, 50, 6, 0.2), (3, 4, 1, 0.0)])
def test_cubic_sparsity_is_zhu_and_gupta_formula(t0, end, dt, s_i):
    """At every step the target is s_f + (s_i - s_f)(1 - (t - t0)/(n dt))^3 at the last update step."""
    for t in range(0, end + 20):
        assert cubic_sparsity(t, 0.9, t0, end, dt, s_i) == pytest.approx(_formula(t, 0.9, t0, end, dt, s_i))
    assert cubic_sparsity(end, 0.9, t0, end, dt, s_i) == 0.9


@pytest.mark.parametrize("scope, structure", [("global", "unstructured"), ("layer", "unstructured"),
                                              ("lamp", "unstructured"), ("layer", "filters"),
                                              ("global", "filters")])
def test_schedule_sparsity_at_each_step_is_the_formula(scope, structure):
    """After each update the model's pruned fraction is the formula's target (rounded to whole units)."""
    net = default_convnet(seed=0)
    g = GradualPruning(0.75, start_step=2, end_step=30, frequency=4, scope=scope, structure=structure)
    layers = [m for _, m in prunable_layers(net, structure)]
    units = [m.weight.size if structure == "unstructured" else m.weight.shape[0] for m in layers]
    for t in range(40):
        g.update(net, t)
        target = _formula(t, 0.75, 2, 30, 4)
        if t < 2:
            assert sparsity_of(net, structure) == 0
        elif scope in ("global", "lamp"):
            assert sparsity_of(net, structure) == round(target * sum(units)) / sum(units)
        else:
            for m, n in zip(layers, units):
                pruned = (~m.weight_mask).sum() if structure == "unstructured" else \
                    (~m.weight_mask.reshape(n, -1).any(axis=1)).sum()
                assert pruned == round(target * n)
    assert [s for s, _ in g.updates] == [2, 6, 10, 14, 18, 22, 26, 30]


class _Spy:
    """Wraps a schedule; records the masks and pruned weight values the Trainer leaves between steps."""

    def __init__(self, inner, layers):
        self.inner, self.layers, self.seen = inner, layers, []

    def update(self, model, step):
        if all(hasattr(m, "weight_mask") for m in self.layers):
            self.seen.append((step, [m.weight_mask.copy() for m in self.layers],
                              [m.weight_orig.copy() for m in self.layers]))
        self.inner.update(model, step)

    def done(self, step):
        return self.inner.done(step)


def test_masks_only_shrink_and_are_held_exactly_between_updates():
    """Through real training: masks change only at update steps, only by losing entries, and a
    pruned weight neither moves nor counts (its effective value is exactly 0) in between."""
    net = default_convnet(seed=0)
    layers = [m for _, m in prunable_layers(net)]
    X, y = _tiny_data(64)
    g = GradualPruning(0.8, start_step=0, end_step=12, frequency=5)
    spy = _Spy(g, layers)
    Trainer(net, X, y, epochs=4, batch_size=16, max_lr=0.05, pruning=spy, progress=False).fit()
    assert g.updates == [(0, 0.0), (5, pytest.approx(0.8 * (1 - (7 / 12) ** 3), abs=1e-6)),
                         (10, pytest.approx(0.8 * (1 - (2 / 12) ** 3), abs=1e-6)), (12, 0.8)]
    update_steps = {s for s, _ in g.updates}
    for (s0, masks0, w0), (s1, masks1, w1) in zip(spy.seen, spy.seen[1:]):
        for a, b, wa, wb in zip(masks0, masks1, w0, w1):
            assert not (b & ~a).any()                       # nothing revived
            if s0 not in update_steps:                      # no update before step s0's training step
                np.testing.assert_array_equal(a, b)
            np.testing.assert_array_equal(wa[~b], wb[~b])   # a pruned weight does not move
    net.eval()(np.zeros((1, 3, 32, 32), np.float32))
    for m in layers:
        assert (m.weight[~m.weight_mask] == 0).all()
    assert sparsity_of(net) == pytest.approx(0.8, abs=1e-4)


def test_teacher_is_never_updated():
    """Distilling leaves every teacher array bitwise unchanged and its mode as it was."""
    teacher = default_convnet(seed=1)
    before = teacher.state_dict()
    student = default_convnet(seed=0)
    X, y = _tiny_data(48)
    teacher.train()
    h = Trainer(student, X, y, epochs=2, batch_size=16, max_lr=0.05, teacher=teacher, temperature=3.0,
                distill_weight=0.7, progress=False).fit()
    assert np.isfinite(h["train_loss"]).all()
    assert teacher.training
    after = teacher.state_dict()
    assert before.keys() == after.keys()
    for k in before:
        assert before[k].tobytes() == after[k].tobytes(), k
    fresh = default_convnet(0).state_dict()
    assert any((v != fresh[k]).any() for k, v in student.state_dict().items())     # the student did learn


def test_teacher_must_not_be_the_student():
    X, y = _tiny_data(8)
    net = default_convnet()
    with pytest.raises(ValueError, match="separate model"):
        Trainer(net, X, y, teacher=net)


@pytest.mark.parametrize("T, w, eps", [(1.0, 0.5, 0.0), (4.0, 0.9, 0.1), (2.5, 1.0, 0.0), (3.0, 0.0, 0.2)])
def test_distillation_gradient_matches_finite_differences(T, w, eps):
    """The gradient of (1-w) CE + w T^2 KL(q || p) is the numerical derivative of the loss."""
    rng = np.random.default_rng(0)
    z, zt = 2 * rng.standard_normal((4, 5)), 2 * rng.standard_normal((4, 5))
    y = np.array([0, 4, 2, 1])
    _, g = distillation_loss(z, zt, y, T, w, eps)
    h = 1e-5
    for i in range(4):
        for j in range(5):
            zp, zm = z.copy(), z.copy()
            zp[i, j] += h
            zm[i, j] -= h
            up, down = distillation_loss(zp, zt, y, T, w, eps)[0], distillation_loss(zm, zt, y, T, w, eps)[0]
            num = (up - down) / (2 * h)
            assert abs(num - g[i, j]) < 1e-5, (i, j, num, g[i, j])


def test_distillation_weight_zero_is_cross_entropy_and_soft_term_is_kl():
    """w=0 is the hard loss; w=1 is T^2 KL, which is 0 only when the student matches the teacher."""
    rng = np.random.default_rng(1)
    z, zt, y = rng.standard_normal((3, 4)), rng.standard_normal((3, 4)), np.array([0, 1, 3])
    assert distillation_loss(z, zt, y, 2.0, 0.0)[0] == pytest.approx(softmax_cross_entropy(z, y)[0])
    p = np.exp(z / 2) / np.exp(z / 2).sum(1, keepdims=True)
    q = np.exp(zt / 2) / np.exp(zt / 2).sum(1, keepdims=True)
    kl = (q * np.log(q / p)).sum(1).mean()
    assert distillation_loss(z, zt, y, 2.0, 1.0)[0] == pytest.approx(4 * kl)
    with pytest.raises(ValueError, match="temperature"):
        distillation_loss(z, zt, y, 0.0, 0.5)
    with pytest.raises(ValueError, match="do not match"):
        distillation_loss(z, zt[:, :3], y)


def test_label_smoothing_gradient_and_value():
    """Label smoothing trains against (1-eps) onehot + eps/K; its gradient is the numerical one."""
    rng = np.random.default_rng(2)
    z, y = rng.standard_normal((3, 4)), np.array([1, 0, 3])
    loss, g = softmax_cross_entropy(z, y, 0.1)
    logp = z - np.log(np.exp(z).sum(1, keepdims=True))
    target = np.full((3, 4), 0.025)
    target[np.arange(3), y] += 0.9
    assert loss == pytest.approx(-(target * logp).sum(1).mean())
    h = 1e-6
    zp = z.copy()
    zp[1, 2] += h
    assert (softmax_cross_entropy(zp, y, 0.1)[0] - loss) / h == pytest.approx(g[1, 2], abs=1e-5)
    with pytest.raises(ValueError, match="label_smoothing"):
        softmax_cross_entropy(z, y, 1.0)


@pytest.mark.parametrize("recipe, kwargs", [(one_shot, {}), (iterative, {"rounds": 2}), (rewind, {}),
                                            (gradual, {"updates": 3})])
@pytest.mark.parametrize("structure", ["unstructured", "filters"])
def test_recipes_reach_their_sparsity_and_keep_it(recipe, kwargs, structure):
    """Each recipe ends at exactly the sparsity asked for, with pruned weights at 0 (and a teacher works)."""
    net = default_convnet(seed=0)
    teacher = copy.deepcopy(net)
    X, y = _tiny_data(48)
    scope = "layer" if structure == "filters" else "global"
    h = recipe(net, X, y, 0.5, 2, scope=scope, structure=structure, teacher=teacher, batch_size=16, **kwargs)
    assert len(h["epoch"]) == 2
    assert sparsity_of(net, structure) == 0.5
    net.eval()(np.zeros((1, 3, 32, 32), np.float32))
    for _, m in prunable_layers(net, structure):
        assert (m.weight[~m.weight_mask] == 0).all()
    if structure == "filters":
        small = prune.shrink(net)
        assert small.conv1.weight.shape[0] == 16 and small.conv2.weight.shape[0] == 16


def test_prune_to_never_unprunes_and_checks_its_arguments():
    net = default_convnet(seed=0)
    prune_to(net, 0.6)
    masks = [m.weight_mask.copy() for _, m in prunable_layers(net)]
    prune_to(net, 0.3)                      # already beyond: nothing changes
    for (_, m), old in zip(prunable_layers(net), masks):
        np.testing.assert_array_equal(m.weight_mask, old)
    with pytest.raises(ValueError, match="fraction in"):
        prune_to(net, 1.0)
    with pytest.raises(ValueError, match="structure"):
        prune_to(net, 0.5, structure="channels")
    with pytest.raises(ValueError, match="start_step < end_step"):
        GradualPruning(0.5, 10, 10)


def test_lamp_scope_in_steps_is_lamp_in_one_go_and_keeps_the_largest_weight_of_each_layer():
    """scope='lamp' prunes by Lee et al.'s scores: reaching 90% in three steps (masks only shrink, each step
    re-scored on what is left) keeps each layer's largest weight, and one step lands where
    global_lamp_unstructured lands from scratch. LAMP's allocation differs from one global threshold."""
    one, steps, flat = default_convnet(seed=3), default_convnet(seed=3), default_convnet(seed=3)
    prune_to(one, 0.9, scope="lamp")
    for s in (0.5, 0.8, 0.9):
        prune_to(steps, s, scope="lamp")
    prune_to(flat, 0.9, scope="global")
    ref = default_convnet(seed=3)
    prune.global_lamp_unstructured([(m, "weight") for _, m in prunable_layers(ref)], amount=0.9)
    for (_, a), (_, b) in zip(prunable_layers(one), prunable_layers(ref)):
        np.testing.assert_array_equal(a.weight_mask, b.weight_mask)
    assert sparsity_of(steps) == sparsity_of(one) == pytest.approx(0.9, abs=1e-4)
    for _, m in prunable_layers(steps):
        assert m.weight_mask.ravel()[np.argmax(np.abs(m.weight_orig))]
    per = lambda net: [float((~m.weight_mask).mean()) for _, m in prunable_layers(net)]
    assert per(one) != per(flat)


def test_lamp_scope_refuses_filters():
    with pytest.raises(ValueError, match="lamp.*single weights"):
        prune_to(default_convnet(seed=0), 0.5, scope="lamp", structure="filters")
    with pytest.raises(ValueError, match="lamp"):
        GradualPruning(0.5, 0, 10, scope="lamp", structure="filters")
