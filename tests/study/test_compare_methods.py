"""Pruning before, during or after training (issue 22): every arm at one epoch budget, over seeds."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from ece662 import experiments as E
from ece662.models import default_convnet
from helpers import REPO

# An untrained default_convnet (and a few training steps on noise) loses fc rows to global magnitude pruning, which
# prune.DeadClassWarning rightly reports; these tests are about the arms and their bookkeeping.
pytestmark = pytest.mark.filterwarnings("ignore::ece662.pruning.methods.DeadClassWarning")


def _data(seed=0, n=48):
    rng = np.random.default_rng(seed)
    X = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    Xt = rng.standard_normal((20, 3, 32, 32)).astype(np.float32)
    return X, rng.integers(0, 10, n), Xt, rng.integers(0, 10, 20)


@pytest.fixture(scope="module")
def every_arm():
    """Every method, every allocation it can use, two sparsities, two seeds, one epoch on 48 images."""
    net = default_convnet(seed=0)
    before = net.state_dict()
    seen = []
    recs = E.compare_methods(net, *_data(), sparsities=(0.9, 0.95), epochs=1, seeds=(0, 1), allocation="all",
                             batch_size=16, progress=seen.append)
    return net, before, recs, seen


def test_every_arm_reaches_its_sparsity_measured_from_its_masks(every_arm):
    """Each (method, allocation, sparsity, seed) has one record whose sparsity, counted from the masks, is the one
    asked for; lottery brings its two controls; small-dense has about as many weights as the pruned network."""
    _, _, recs, seen = every_arm
    assert seen == recs and recs[0]["method"] == "dense"
    runs = recs[1:]
    expected = {(m, a, s, seed) for m in E.METHODS if m != "dense-scratch" for a in E.allocations_of(m, "all")
                for s in (0.9, 0.95) for seed in (0, 1)}
    expected |= {("dense-scratch", "dense", 0.0, seed) for seed in (0, 1)}     # unpruned: once per seed
    expected |= {(c, "global", s, seed) for c in E.LOTTERY_CONTROLS for s in (0.9, 0.95) for seed in (0, 1)}
    assert sorted((r["method"], r["allocation"], r["sparsity"], r["seed"]) for r in runs) == sorted(expected)
    for r in runs:
        tolerance = 0.02 if r["method"] == "small-dense" else 0.0005     # small-dense: the nearest whole width
        assert abs(r["measured_sparsity"] - r["sparsity"]) <= tolerance, r   # dense-scratch: 0 asked, 0 measured
        assert r["epochs"] == 1 and 0.0 <= r["accuracy"] <= 1.0 and r["seconds"] >= 0
        phase = "control" if r["method"] in E.LOTTERY_CONTROLS else E.METHODS[r["method"]][0]
        assert r["phase"] == phase
        assert r["start"] == ("trained" if r["method"] in ("one-shot", "iterative", "rewind") else "init")


def test_the_trained_model_is_left_as_it_was(every_arm):
    net, before, _, _ = every_arm
    assert before.keys() == net.state_dict().keys()
    for k, v in net.state_dict().items():
        np.testing.assert_array_equal(v, before[k])


def test_seeds_give_the_spread_and_the_noise_rule(every_arm):
    """The summary has one row per (method, allocation, sparsity) with n = the seeds, its low and high the seeds'
    extremes; a difference counts only beyond the larger of the spreads and two standard errors."""
    _, _, recs, _ = every_arm
    summary = E.summarize_methods(recs)
    row = next(r for r in summary if (r["method"], r["allocation"], r["sparsity"]) == ("snip", "global", 0.9))
    accs = [r["accuracy"] for r in recs if (r["method"], r["sparsity"]) == ("snip", 0.9)]
    assert row["n"] == 2 and row["low"] == min(accs) and row["high"] == max(accs)
    assert row["spread"] == pytest.approx(max(accs) - min(accs)) and row["mean"] == pytest.approx(np.mean(accs))
    a, b = dict(mean=0.50, spread=0.03), dict(mean=0.46, spread=0.01)
    assert E.beyond_noise(a, b, 10_000)[1:] == (0.03, True)        # spread 0.03 > 2 SE (0.01)
    assert E.beyond_noise(a, b, 400)[1:] == (pytest.approx(0.0500, abs=1e-4), False)   # 2 SE on 400 images


def test_seeds_differ_where_randomness_enters(every_arm):
    """A fresh initialisation per seed: two seeds give two networks, and some arm two accuracies."""
    assert not np.array_equal(E.reinitialized(default_convnet(), 0).conv1.weight,
                              E.reinitialized(default_convnet(), 1).conv1.weight)
    assert any(row["spread"] > 0 for row in E.summarize_methods(every_arm[2]))


def test_small_dense_has_about_the_pruned_networks_weights():
    net = default_convnet()
    full = E.weight_count(net)
    for s in (0.5, 0.9, 0.95, 0.98):
        f = E.small_dense_filters(net, s)
        kept = E.weight_count(default_convnet(filters=(f, f)))
        others = [abs(E.weight_count(default_convnet(filters=(g, g))) - (1 - s) * full) for g in (f - 1, f + 1) if g]
        assert abs(kept - (1 - s) * full) <= min(others)


def test_unknown_names_are_refused_with_the_valid_ones():
    X, y, Xt, yt = _data()
    with pytest.raises(ValueError, match=r"unknown method 'magic'; choose from snip, synflow, random, .*small-dense"):
        E.compare_methods(default_convnet(), X, y, Xt, yt, methods=("snip", "magic"))
    with pytest.raises(ValueError, match="no method given"):
        E.check_methods([])
    with pytest.raises(ValueError, match="at least one seed"):
        E.compare_methods(default_convnet(), X, y, Xt, yt, methods=("snip",), seeds=())
    assert E.allocations_of("one-shot", ["lamp", "erk"]) == ("lamp",)
    assert E.allocations_of("snip", ["erk"]) == ("global",)          # none applies: the method's own


def test_the_figure_draws_a_line_per_method(tmp_path, every_arm):
    import matplotlib
    matplotlib.use("Agg")
    from ece662 import plots
    summary = E.summarize_methods(every_arm[2])
    fig = plots.compare_methods(summary)
    labels = fig.axes[0].get_legend_handles_labels()[1]
    assert "snip (global) [before]" in labels and "small-dense [control]" in labels
    assert "lottery-reinit (global) [control]" in labels and "trained model, unpruned" in labels
    plots.compare_methods(summary, path=tmp_path / "m.png")
    assert (tmp_path / "m.png").stat().st_size > 1000


def _cli(*args):
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", "ece662", "compare", *args], capture_output=True, text=True,
                          env=env, cwd=REPO)


def test_the_command_runs_every_arm_and_writes_table_and_figure(real_data, tmp_path):
    """`compare --methods ...` on 200 real images, one epoch: the JSON holds the command, the time, the CPU and a
    record per arm and seed at its sparsity; the PNG is written."""
    out = tmp_path / "m"
    r = _cli("--methods", "snip,rigl,one-shot,lottery,small-dense", "--seeds", "2",
             "--data", os.path.join(real_data, "cifar10_real_small.npz"), "--train-images", "200", "--epochs", "1",
             "--sparsities", "0.9", "--out", str(out))
    assert r.returncode == 0, r.stderr
    run = json.loads((tmp_path / "m.json").read_text())
    assert run["command"].startswith("python -m ece662 compare --methods") and run["cpu"] and run["seconds"] > 0
    assert run["train_images"] == 200 and run["seeds"] == 2
    arms = {(rec["method"], rec["seed"]) for rec in run["records"][1:]}
    assert arms == {(m, s) for m in ("snip", "rigl", "one-shot", "lottery", "lottery-reinit", "lottery-random-mask",
                                     "small-dense") for s in (0, 1)}
    assert all(abs(rec["measured_sparsity"] - 0.9) < 0.02 for rec in run["records"][1:])
    assert {row["n"] for row in run["summary"][1:]} == {2}
    assert (tmp_path / "m.png").stat().st_size > 1000


@pytest.mark.parametrize("args, match", [(["--methods", "snip,magic"], r"unknown method 'magic'; choose from snip, "),
                                         (["--methods", "snip", "--allocation", "best"], "--allocation: unknown 'best'"),
                                         (["--methods", "snip", "--distill"], "belong to the schedule comparison"),
                                         (["--methods", "snip", "--seeds", "0"], "whole number >= 1"),
                                         (["--methods", "lottery-reinit"], "controls, which run with it: ask for "
                                                                           "'lottery'"),
                                         (["--seeds", "3"], "--seeds and --allocation belong to the method "
                                                            "comparison: add --methods")])
def test_bad_names_are_one_clear_line(args, match):
    import re
    r = _cli(*args)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert re.search(match, r.stderr.strip().splitlines()[-1]), r.stderr


def test_the_figure_takes_equal_seeds_whose_mean_rounds_above_them():
    """Three equal accuracies can average to a hair above each (0.1 + 0.1 + 0.1 = 0.30000000000000004): the error
    bar is 0, not an error (the recorded run's command once stopped there, after writing its JSON)."""
    import matplotlib
    matplotlib.use("Agg")
    from ece662 import plots
    rows = E.summarize_methods([dict(method="snip", phase="before", allocation="global", sparsity=0.9,
                                     measured_sparsity=0.9, accuracy=0.1, seconds=1.0, seed=s) for s in range(3)])
    assert rows[0]["mean"] > rows[0]["low"]
    plots.compare_methods(rows)


def test_dense_scratch_is_the_whole_network_trained_from_a_fresh_start(every_arm):
    """The lottery ticket's yardstick: the unpruned course CNN, freshly initialised per seed (not the trained
    model), trained the same epochs; different seeds give different networks."""
    _, _, recs, _ = every_arm
    scratch = [r for r in recs if r["method"] == "dense-scratch"]
    assert [r["seed"] for r in scratch] == [0, 1]
    assert all(r["start"] == "init" and r["measured_sparsity"] == 0.0 and r["phase"] == "control" for r in scratch)
    X, y, Xt, yt = _data()
    trained = E._arm("dense-scratch", "dense", default_convnet(seed=0), X, y, 0.9, 1, 0, 3, 0.05, 0.002, 16)
    net, start = trained["dense-scratch"]
    assert start == "init" and E.weight_count(net) == E.weight_count(default_convnet())
    assert not any(hasattr(m, "weight_mask") for _, m in E.prunable(net))


def _methods_script():
    import importlib.util
    spec = importlib.util.spec_from_file_location("compare_methods_script",
                                                  os.path.join(REPO, "scripts", "compare_methods.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_later_run_is_added_only_with_the_same_settings_and_new_arms(every_arm):
    """scripts/compare_methods.py --add: a run with another budget, or one repeating an arm, is refused; a new arm
    joins the records and the summary, and the page names the command that added it."""
    _, _, recs, _ = every_arm
    module = _methods_script()
    base = dict(command="python -m ece662 compare --methods snip", data="d", train_images=48, test_images=20,
                epochs=1, seeds=2, seconds=10.0, cpu="cpu", threads="1", date="2026-12-04")
    first = [r for r in recs if r["method"] in ("dense", "snip")]
    run = dict(base, records=first, summary=E.summarize_methods(first))
    later = [r for r in recs if r["method"] in ("dense", "dense-scratch")]
    extra = dict(base, command="python -m ece662 compare --methods dense-scratch", records=later)
    with pytest.raises(ValueError, match="epochs: 1 here, 3 there"):
        module.add(run, dict(extra, epochs=3))
    with pytest.raises(ValueError, match=r"repeats arms already here: snip \(global\) at 90%"):
        module.add(run, dict(base, records=first))
    with pytest.raises(ValueError, match="lacks seconds"):
        module.add(run, {k: v for k, v in extra.items() if k != "seconds"})
    with pytest.raises(ValueError, match="lacks command"):
        module.add(run, [])
    with pytest.raises(ValueError, match="the trained model's accuracy"):
        module.add(run, dict(extra, records=[dict(r, accuracy=0.1) if r["method"] == "dense" else r
                                             for r in later]))
    with pytest.raises(ValueError, match="the command's options"):
        module.add(run, dict(extra, command=extra["command"] + " --max-lr 0.1"))
    odd = dict(later[-1], method="bogus", sparsity=0.9, accuracy=float("nan"))
    with pytest.raises(ValueError, match="cannot hold.*'bogus' at 0.9: accuracy nan"):
        module.add(run, dict(extra, records=later + [odd]))
    with pytest.raises(ValueError, match="cannot hold.*'snip' at 0.5"):
        module.add(run, dict(extra, records=later + [dict(first[-1], sparsity=0.5)]))
    joined = module.add(run, extra)
    assert len(joined["records"]) == len(first) + 2
    assert {r["method"] for r in joined["summary"]} == {"dense", "snip", "dense-scratch"}
    assert joined["added"][0]["command"] == extra["command"]
    assert "Added to it: `python -m ece662 compare --methods dense-scratch`" in module.render(joined)
