"""The equal-budget comparison of pruning schedules, and its plot."""
import numpy as np
import pytest

from ece662.models import default_convnet
from ece662.experiments import SCHEDULES, compare_schedules
from ece662.plots import compare_schedules as plot_compare_schedules

# Global magnitude pruning of an *untrained* default_convnet empties rows of fc (its initial weights are about
# 4x smaller than conv1's), which prune.DeadClassWarning rightly reports; these tests are about the schedules.
pytestmark = pytest.mark.filterwarnings("ignore::ece662.pruning.methods.DeadClassWarning")


def _data(seed=0):
    rng = np.random.default_rng(seed)
    X = rng.integers(0, 256, (48, 32, 32, 3), dtype=np.uint8)
    Xt = rng.standard_normal((20, 3, 32, 32)).astype(np.float32)
    return X, rng.integers(0, 10, 48), Xt, rng.integers(0, 10, 20)


def test_compare_schedules_gives_every_schedule_the_same_budget_and_sparsity(tmp_path):
    """One record per (schedule, sparsity), each at its sparsity with the same epochs; the model is untouched."""
    net = default_convnet(seed=0)
    before = net.state_dict()
    X, y, Xt, yt = _data()
    seen = []
    recs = compare_schedules(net, X, y, Xt, yt, sparsities=(0.5, 0.75), epochs=2, batch_size=16,
                             progress=seen.append)
    assert seen == recs
    assert [r["schedule"] for r in recs] == ["dense"] + [s for s in SCHEDULES for _ in (0.5, 0.75)]
    for r in recs[1:]:
        assert r["epochs"] == 2 and r["measured_sparsity"] == r["sparsity"]
        assert 0.0 <= r["accuracy"] <= 1.0 and r["dense_accuracy"] == recs[0]["accuracy"]
    assert before.keys() == net.state_dict().keys()
    for k, v in net.state_dict().items():
        np.testing.assert_array_equal(v, before[k])
    fig = plot_compare_schedules(recs)
    assert [line.get_label() for line in fig.axes[0].get_lines()] == list(SCHEDULES) + ["unpruned"]
    plot_compare_schedules(recs, path=tmp_path / "c.png")
    assert (tmp_path / "c.png").stat().st_size > 1000


def test_compare_schedules_filters_and_bad_arguments():
    """Filter pruning is compared by the fraction of conv filters; unknown schedules are refused."""
    X, y, Xt, yt = _data(1)
    recs = compare_schedules(default_convnet(), X, y, Xt, yt, sparsities=(0.5,), epochs=1, batch_size=16,
                             schedules=("one-shot", "gradual"), structure="filters", scope="layer", distill=True)
    assert [(r["schedule"], r["measured_sparsity"], r["distill"]) for r in recs[1:]] == \
        [("one-shot", 0.5, True), ("gradual", 0.5, True)]
    with pytest.raises(ValueError, match="unknown schedule 'lottery'"):
        compare_schedules(default_convnet(), X, y, Xt, yt, schedules=("lottery",))
    with pytest.raises(ValueError, match="fraction"):
        compare_schedules(default_convnet(), X, y, Xt, yt, sparsities=(1.5,))


def test_sensitivity_scan_prunes_one_layer_at_a_time_and_draws_it(tmp_path):
    """Each record prunes exactly one layer (the others untouched: conv2's accuracy at 0 is the unpruned
    model's), and the figure is written."""
    import matplotlib
    matplotlib.use("Agg")
    from ece662 import experiments, plots
    from ece662.models import default_convnet
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((16, 3, 32, 32)).astype(np.float32), rng.integers(0, 10, 16)
    net = default_convnet(seed=0)
    recs = experiments.sensitivity(net, X, y, amounts=(0.5, 0.99))
    dense = experiments.evaluate(net, X, y)["accuracy"]
    assert {r["layer"] for r in recs} == {"conv1", "conv2", "fc"}
    assert all(r["accuracy"] == dense for r in recs if r["amount"] == 0.0)
    assert not any(hasattr(m, "weight_mask") for _, m in net.named_modules())     # the model is untouched
    filt = experiments.sensitivity(net, X, y, amounts=(0.5,), method="filters")
    assert {r["layer"] for r in filt} == {"conv1", "conv2"}
    plots.sensitivity(recs, path=tmp_path / "s.png")
    assert (tmp_path / "s.png").stat().st_size > 1000
