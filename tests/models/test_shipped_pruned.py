"""The shipped pruned models: loadable by name, as sparse as their cards say, as accurate as recorded."""
import json
import os

import numpy as np
import pytest

from ece662.data_utils import get_CINIC10_data
from ece662.layers import Conv2d, Linear
from ece662.models import SHIPPED, load_named, named_model_path
from ece662.pruning import is_pruned
from ece662.pruning_helper import test_model

PRUNED = {"pruned-80": 0.8, "pruned-90": 0.9}


def _card(name):
    with open(os.path.splitext(named_model_path(name))[0] + "_training.json") as f:
        return json.load(f)


@pytest.mark.parametrize("name, target", sorted(PRUNED.items()))
def test_unstructured_models_have_their_sparsity_and_keep_their_masks(name, target):
    """pruned-80/90: that fraction of the conv + linear weights is exactly 0, and the masks ship with them."""
    net = load_named(name)
    layers = [m for _, m in net.named_modules() if isinstance(m, (Conv2d, Linear))]
    zeros = sum(int((m.weight == 0).sum()) for m in layers)
    total = sum(m.weight.size for m in layers)
    assert zeros / total == pytest.approx(target, abs=1e-4)
    assert zeros / total == pytest.approx(_card(name)["sparsity"], abs=1e-6)
    assert is_pruned(net)
    assert all((m.weight[~m.weight_mask] == 0).all() for m in layers)


def test_filter_model_is_physically_half_as_wide():
    """filters-50: conv1 and conv2 have 16 of their 32 filters, fc reads 16 * 6 * 6 features."""
    net = load_named("filters-50")
    assert net.conv1.weight.shape == (16, 3, 5, 5)
    assert net.conv2.weight.shape == (16, 16, 3, 3)
    assert net.fc.weight.shape == (10, 16 * 6 * 6)
    assert not is_pruned(net)
    assert _card("filters-50")["conv_filters"] == [16, 16]


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_shipped_models_give_their_recorded_accuracy(name, real_data):
    """Every named model gives exactly its card's accuracy on the 10,000-image test split."""
    card = _card(name)
    data = get_CINIC10_data(os.path.join(real_data, "cifar10_real.npz"), splits=("test",))
    acc = test_model(load_named(name), [data["X_test"], data["y_test"]], verbose=False)
    assert acc == card["test_accuracy"]
    assert acc >= 0.6


def test_unknown_name_lists_the_shipped_models():
    with pytest.raises(ValueError, match=r"unknown shipped model 'pruned-99'.*'pruned-80'"):
        load_named("pruned-99")
    with pytest.raises(ValueError, match="unknown shipped model"):
        load_named(None)
    assert np.isfinite(load_named("dense").conv1.weight).all()


def test_default_convnet_can_be_made_wider_for_a_teacher(tmp_path):
    """``default_convnet(filters=...)``: the course CNN with other conv widths (the wider teacher of
    train_pruned_models.py --teacher); it saves and loads like the course's one."""
    from ece662.io import load_model, save_model
    from ece662.models import default_convnet
    net = default_convnet(seed=1, filters=(64, 48))
    assert net.conv1.weight.shape == (64, 3, 5, 5)
    assert net.conv2.weight.shape == (48, 64, 3, 3)
    assert net.fc.weight.shape == (10, 48 * 6 * 6)
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    save_model(net, str(tmp_path / "wide.npz"))
    again = load_model(str(tmp_path / "wide.npz"))
    np.testing.assert_array_equal(again.eval()(x), net.eval()(x))
    assert default_convnet(seed=1).conv1.weight.shape == (32, 3, 5, 5)     # the course's widths by default
    with pytest.raises(ValueError, match="filters must be two counts >= 1"):
        default_convnet(filters=(0, 32))


def test_the_cards_held_out_allocation_runs_are_their_record():
    """PRUNED_MODELS.md's held-out section of 2026-12-04 quotes only the recorded runs
    (pruned_90_heldout.json): every val accuracy, each allocation's two-seed mean and points lost; and the
    shipped pruned-90 is LAMP's, made from a LAMP pruned-80 whose record it carries."""
    import re
    folder = os.path.dirname(named_model_path("pruned-90"))
    with open(os.path.join(folder, "pruned_90_heldout.json")) as f:
        run = json.load(f)
    with open(os.path.join(folder, "PRUNED_MODELS.md"), encoding="utf-8") as f:
        card = f.read()
    section = card.split("### Held-out runs of 2026-12-04", 1)[1].split("\n## ", 1)[0]
    dense = run["dense"]["val_accuracy"]
    recorded = {f"{dense:.4f}"} | {f"{r['pruned_80_val_accuracy']:.4f}" for r in run["runs"]} \
        | {f"{r['pruned_90_val_accuracy']:.4f}" for r in run["runs"]} | {f"{v['val_accuracy']:.4f}" for v in run["variants"]}
    both = {}
    for r in run["runs"]:
        if r["allocation_80"] == r["allocation_90"]:
            both.setdefault(r["allocation_90"], []).append(r["pruned_90_val_accuracy"])
    means = {a: sum(v) / len(v) for a, v in both.items()}
    assert {a: len(v) for a, v in both.items()} == {"global": 2, "lamp": 2, "layer": 2}
    for a, m in means.items():
        assert f"{m:.4f}" in section and f"{100 * (dense - m):.2f}" in section, a
    recorded |= {f"{m:.4f}" for m in means.values()}
    quoted = set(re.findall(r"\b0\.\d{4}\b", section))
    card90 = _card("pruned-90")
    recorded |= {f"{card90['test_accuracy']:.4f}", "0.6952", "0.7213", "0.7119", "0.7220",   # the test-split lines
                 "0.7472", "0.7490"}                               # the earlier held-out dense models
    values = [float(v) for v in recorded]
    diffs = {f"{abs(x - y):.4f}" for x in values for y in values}     # the differences the prose quotes
    assert quoted <= recorded | diffs, sorted(quoted - recorded - diffs)
    assert "lamp" in card90["recipe"] and "lamp" in card90["pruned_80_record"]["recipe"]
