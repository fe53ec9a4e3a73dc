"""Lottery tickets (Frankle & Carbin 2019; rewinding, Frankle et al. 2020): the ticket's survivors are exactly
the weights rewound to, and the two controls differ from the ticket in exactly one way each."""
import warnings

import numpy as np
import pytest

import ece662.pruning as prune
from ece662.models import default_convnet
from ece662.training.lottery import lottery_ticket
from ece662.training.trainer import Trainer

RNG = np.random.default_rng(0)
X = RNG.integers(0, 256, (24, 32, 32, 3), dtype=np.uint8)
Y = RNG.integers(0, 10, 24)
KW = dict(batch_size=8, max_lr=0.01, augment=False)


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", prune.DeadClassWarning)
        yield


def _layers(model):
    return dict(prune.prunable(model))


def test_the_ticket_is_its_initialization_under_the_final_mask():
    """Rewinding to step 0: every surviving weight (and every bias) equals its value at initialization, and the
    mask prunes the asked fraction of the conv and linear weights."""
    init = default_convnet(seed=3)
    out = lottery_ticket(default_convnet(seed=3), X, Y, 0.75, rounds=2, epochs=1, **KW)
    ticket = out["ticket"]
    for n, m in _layers(ticket).items():
        m0 = _layers(init)[n]
        np.testing.assert_array_equal(m.weight_orig * m.weight_mask, m0.weight * m.weight_mask)
        np.testing.assert_array_equal(m.weight, m0.weight * m.weight_mask)
        np.testing.assert_array_equal(m.bias, m0.bias)
    total = sum(m.weight.size for m in _layers(ticket).values())
    assert sum(int((~m.weight_mask).sum()) for m in _layers(ticket).values()) == round(0.75 * total)


def test_rewinding_to_step_k_takes_the_weights_the_trainer_had_then():
    """With rewind_step=k the survivors go back to the weights before training step k of the first round, the
    same as an identical, seeded training run stopped there."""
    out = lottery_ticket(default_convnet(seed=4), X, Y, 0.5, rounds=1, epochs=1, rewind_step=2, **KW)

    class Stop(Exception):
        pass

    class StopAt:
        def update(self, model, step):
            if step == 2:
                raise Stop

    ref = default_convnet(seed=4)
    with pytest.raises(Stop):
        Trainer(ref, X, Y, epochs=1, seed=0, pruning=StopAt(), progress=False, **KW).fit()
    for n, m in _layers(out["ticket"]).items():
        np.testing.assert_array_equal(m.weight, _layers(ref)[n].weight * m.weight_mask)


def test_the_controls_change_one_thing_each():
    """reinit: the ticket's masks, other weights; random_mask: the ticket's rewound weights, another mask with the
    same number of pruned weights in every layer."""
    out = lottery_ticket(default_convnet(seed=5), X, Y, 0.6, rounds=2, epochs=1, **KW)
    t, re, rm = (_layers(out[k]) for k in ("ticket", "reinit", "random_mask"))
    for n in t:
        np.testing.assert_array_equal(re[n].weight_mask, t[n].weight_mask)
        assert not np.array_equal(re[n].weight_orig, t[n].weight_orig)
        np.testing.assert_array_equal(rm[n].weight_orig, t[n].weight_orig)
        pruned = int((~t[n].weight_mask).sum())
        assert int((~rm[n].weight_mask).sum()) == pruned
        if 0 < pruned < t[n].weight_mask.size:         # a layer pruned whole (or not at all) has one mask only
            assert not np.array_equal(rm[n].weight_mask, t[n].weight_mask)


def test_lottery_refuses_a_rewind_step_it_never_reaches():
    with pytest.raises(ValueError, match="rewind_step=99 is beyond"):
        lottery_ticket(default_convnet(seed=0), X, Y, 0.5, rounds=1, epochs=1, rewind_step=99, **KW)
