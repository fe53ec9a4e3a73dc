"""The paired timing helper's logic, with a fake clock and fake models: deterministic, nothing timed for real."""
import warnings

import numpy as np
import pytest

from ece662 import timing


class FakeClock:
    """A clock that only moves when a fake model runs."""

    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


class FakeModel:
    """Costs ``costs[i]`` seconds of fake time on its i-th call (cycling); records the call order."""

    def __init__(self, name, clock, costs, log):
        self.name, self.clock, self.costs, self.log, self.calls = name, clock, list(costs), log, 0

    def __call__(self):
        self.clock.now += self.costs[self.calls % len(self.costs)]
        self.calls += 1
        self.log.append(self.name)


def fake(clock, log, **costs):
    return {name: FakeModel(name, clock, c, log) for name, c in costs.items()}


def test_rounds_are_interleaved_and_alternate_order_after_a_warmup():
    """dense, pruned | pruned, dense | ...: both sides see the same drift; one untimed warm-up each."""
    clock, log = FakeClock(), []
    runs = fake(clock, log, dense=[1.0], pruned=[0.5])
    times = timing.interleaved_times(runs, repeats=4, clock=clock)
    assert log == ["dense", "pruned"] + ["dense", "pruned", "pruned", "dense"] * 2
    assert times["dense"].tolist() == [1.0] * 4 and times["pruned"].tolist() == [0.5] * 4


def test_a_busy_round_slows_both_sides_and_the_paired_ratio_does_not_move():
    """The machine gets 3x slower for two rounds: unpaired img/s would swing 3x, the paired median stays 2x."""
    clock, log = FakeClock(), []
    slow = [1, 1, 3, 3, 1, 1, 1, 1]       # one entry per call, warm-up first
    runs = fake(clock, log, dense=[2.0 * s for s in [1] + slow], pruned=[1.0 * s for s in [1] + slow])
    timer = timing.PairedTimer(repeats=8, clock=clock, warn=False)
    r = timer.compare(runs)
    assert r["pruned"].median == pytest.approx(2.0)
    assert r["pruned"].q1 == pytest.approx(2.0) and r["pruned"].q3 == pytest.approx(2.0)
    assert r["dense"].median == pytest.approx(1.0)
    assert timer.busy      # the dense times themselves spread 3x: absolute speeds are unreliable


def test_median_and_iqr_of_the_per_round_ratios():
    """Ratios 1, 2, 3, 4, 5 (one odd round at 50x): median 3, IQR 2-4, the outlier does not move them."""
    clock, log = FakeClock(), []
    pruned = [1.0, 1.0, 1 / 2, 1 / 3, 1 / 4, 1 / 5, 1 / 50]   # warm-up, then rounds
    runs = fake(clock, log, dense=[1.0], pruned=pruned)
    r = timing.PairedTimer(repeats=6, clock=clock, warn=False).compare(runs)["pruned"]
    assert sorted(r.ratios.tolist()) == pytest.approx([1, 2, 3, 4, 5, 50])
    assert (r.q1, r.median, r.q3) == pytest.approx((np.percentile([1, 2, 3, 4, 5, 50], [25, 50, 75])))
    assert r.median == pytest.approx(3.5)
    assert r.images_per_s == pytest.approx(1 / np.median([1, 1 / 2, 1 / 3, 1 / 4, 1 / 5, 1 / 50]))


def test_a_ratio_above_the_flop_ideal_is_flagged():
    clock, log = FakeClock(), []
    r = timing.PairedTimer(repeats=3, clock=clock, warn=False).compare(
        fake(clock, log, dense=[6.0], pruned=[1.0]))["pruned"]
    assert "above the FLOP ideal" in r.check(ideal=5.79)
    assert r.check(ideal=6.5) == "" and r.flag == ""


def test_masks_only_is_flagged_outside_its_noise_band_and_not_inside():
    clock, log = FakeClock(), []
    runs = fake(clock, log, dense=[1.0], masks=[0.5])         # "2x" from masks alone: impossible
    r = timing.PairedTimer(repeats=3, clock=clock, warn=False).compare(runs)["masks"]
    assert "should run at 1x" in r.check(same_work=True)
    clock, log = FakeClock(), []
    runs = fake(clock, log, dense=[1.0], masks=[1.0, 1.0, 0.95, 1.05, 1.0])   # noise around 1x
    r = timing.PairedTimer(repeats=4, clock=clock, warn=False).compare(runs)["masks"]
    assert r.check(same_work=True) == ""


def _ratio_around(center, spread, rounds=35, seed=0):
    """A Ratio built from ``rounds`` per-round ratios spread evenly (shuffled) around ``center``."""
    ratios = np.random.default_rng(seed).permutation(center + spread * np.linspace(-1, 1, rounds))
    return timing.Ratio(ratios, 1 / ratios, 1)


def test_a_median_above_the_ideal_whose_interval_holds_it_is_not_flagged():
    """The sweep's '1.49x > 1.49x' case: the interval (1.41-1.58) contains the ideal, so no flag."""
    r = _ratio_around(1.50, 0.15)
    ideal = r.median - 0.01
    assert r.low <= ideal < r.median <= r.high, r            # the case as the issue saw it
    assert r.check(ideal=ideal) == "" and r.flag == ""
    assert timing.flag_reason(1.49, 1.41, 1.58, ideal=1.488) == ""


def test_a_speedup_whose_whole_interval_is_above_the_ideal_is_flagged():
    r = _ratio_around(1.50, 0.15)
    ideal = r.low - 0.01
    assert ideal < r.low
    assert "above the FLOP ideal" in r.check(ideal=ideal)
    assert r.check(ideal=r.low) == ""                     # the ideal on the interval's edge: still possible
    assert "above the FLOP ideal" in timing.flag_reason(1.70, 1.60, 1.80, ideal=1.49)


def test_a_same_work_ratio_off_1x_whose_interval_holds_1_is_not_flagged():
    """'masks only' at a median of 1.10x with an interval reaching below 1: noise, not a flag."""
    r = _ratio_around(1.10, 0.40)
    assert r.median > 1 + timing.MASKS_ONLY_TOLERANCE and r.low <= 1.0 <= r.high, r
    assert r.check(same_work=True) == ""
    assert timing.flag_reason(1.56, 0.99, 1.87, same_work=True) == ""


def test_a_same_work_ratio_whose_interval_excludes_1_is_flagged():
    r = _ratio_around(1.50, 0.15)
    assert r.low * (1 - timing.MASKS_ONLY_TOLERANCE) > 1.0, r
    assert "should run at 1x" in r.check(same_work=True)
    below = _ratio_around(0.70, 0.10)
    assert "should run at 1x" in below.check(same_work=True)


def test_sweep_records_and_table_flag_only_what_the_interval_excludes():
    """A sweep row built from Ratios: its *_flag columns and the table's "!" follow the same rule."""
    from ece662.cli import _table
    from ece662.experiments import _speed_columns
    rows = []
    for target, pruned in ((0.25, _ratio_around(1.50, 0.15)), (0.5, _ratio_around(3.0, 0.1))):
        ratios = {"dense": _ratio_around(1.0, 0.0), "masks_only": _ratio_around(1.02, 0.3), "pruned": pruned}
        rows.append({"method": "l2_structured_filters", "target": target,
                     **_speed_columns(ratios, False, ideal=pruned.median - 0.01 if target == 0.25 else 2.0)})
    assert rows[0]["speedup_flag"] == "" and rows[0]["masks_only_flag"] == ""
    assert "above the FLOP ideal" in rows[1]["speedup_flag"]
    text = _table(rows, ["method", "speedup", "flag"])
    assert "! l2_structured_filters 0.25" not in text and "! l2_structured_filters 0.5: above" in text


def test_warns_once_when_repeated_dense_timings_disagree():
    """Dense rounds 1 s and 2 s: one warning for the whole timer, however many comparisons follow."""
    clock, log = FakeClock(), []
    timer = timing.PairedTimer(repeats=4, clock=clock)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(3):
            timer.compare(fake(clock, log, dense=[1.0, 2.0], pruned=[0.5]))
    busy = [w for w in caught if "machine is busy" in str(w.message)]
    assert len(busy) == 1 and timer.busy


def test_steady_dense_timings_do_not_warn():
    clock, log = FakeClock(), []
    timer = timing.PairedTimer(repeats=5, clock=clock)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        timer.compare(fake(clock, log, dense=[1.0, 1.05, 0.97], pruned=[0.5]))
    assert not timer.busy


def test_models_are_run_over_the_images_in_batches():
    """With images, each round runs the model over all of them, batch by batch, in eval mode."""
    seen = []

    class Model:
        training = True

        def eval(self):
            self.training = False
            return self

        def __call__(self, x):
            assert not self.training
            seen.append(len(x))

    X = np.zeros((1200, 3, 4, 4), np.float32)
    timing.PairedTimer(repeats=2, batch_size=500, warn=False).compare({"a": Model(), "b": Model()}, X)
    assert seen == [500, 500, 200] * 2 * 3       # (warm-up + 2 rounds) x 2 models


@pytest.mark.parametrize("bad", [0, -3, 2.5])
def test_bad_repeats_are_refused(bad):
    with pytest.raises(ValueError, match="repeats"):
        timing.PairedTimer(repeats=bad)


def test_record_columns():
    clock, log = FakeClock(), []
    r = timing.PairedTimer(repeats=3, clock=clock, warn=False).compare(
        fake(clock, log, dense=[2.0], pruned=[1.0]))["pruned"]
    cols = timing.speedup_columns(r, "speedup")
    assert cols == {"speedup": 2.0, "speedup_low": 2.0, "speedup_high": 2.0, "speedup_iqr_low": 2.0,
                    "speedup_iqr_high": 2.0, "speedup_flag": ""}


def test_gc_is_off_while_timing_and_back_after():
    """A collection in one model's round would be charged to that model alone."""
    import gc
    clock, seen = FakeClock(), []

    def run():
        clock.now += 1.0
        seen.append(gc.isenabled())
    timing.PairedTimer(repeats=3, clock=clock, warn=False).compare({"a": run, "b": run})
    timing.PairedTimer(repeats=2, clock=clock, warn=False).compare_many({0: {"a": run, "b": run}})
    assert seen[:2] == [True, True] and not any(seen[2:8])        # warm-ups with it, timed rounds without
    assert gc.isenabled()


def test_compare_many_spreads_every_comparison_over_the_whole_measurement():
    """Round i times every comparison once (order flipped every round), not one comparison's rounds back to back."""
    clock, log = FakeClock(), []
    a = fake(clock, log, dA=[1.0], pA=[0.5])
    b = fake(clock, log, dB=[1.0], pB=[0.25])
    r = timing.PairedTimer(repeats=3, clock=clock, warn=False).compare_many({"A": a, "B": b})
    assert log == (["dA", "pA", "dB", "pB"]                       # warm-ups
                   + ["dA", "pA", "dB", "pB"] + ["pB", "dB", "pA", "dA"] + ["dA", "pA", "dB", "pB"])
    assert r["A"]["pA"].median == pytest.approx(2.0) and r["B"]["pB"].median == pytest.approx(4.0)
    assert r["A"]["dA"].median == pytest.approx(1.0)


class LoadedModel:
    """A fake model whose cost depends on the machine's load at the fake time it runs: ``quiet`` seconds
    before ``switch``, ``busy`` seconds after (a ratio that itself depends on the load)."""

    def __init__(self, clock, quiet, busy, switch):
        self.clock, self.quiet, self.busy, self.switch = clock, quiet, busy, switch

    def __call__(self):
        self.clock.now += self.quiet if self.clock.now < self.switch else self.busy


def test_a_load_change_lands_in_every_interval_when_rounds_are_spread():
    """The machine gets busy half-way, and busy, the pruned model gains less (1.5x instead of 2x).

    Timed one after the other, two identical pruned models come out 2.0x and 1.5x, each with a
    zero-width interval: each 'agrees' only with itself.  Spread over the whole measurement,
    both see both halves: each interval holds the other's median."""
    def models(clock):
        return {key: {"dense": LoadedModel(clock, 2.0, 3.0, 27.0), "pruned": LoadedModel(clock, 1.0, 2.0, 27.0)}
                for key in ("first", "second")}
    clock = FakeClock()
    timer = timing.PairedTimer(repeats=8, clock=clock, warn=False)
    one_by_one = {k: timer.compare(m)["pruned"] for k, m in models(clock).items()}
    assert one_by_one["first"].median == pytest.approx(2.0) and one_by_one["second"].median == pytest.approx(1.5)
    assert not one_by_one["first"].low <= one_by_one["second"].median <= one_by_one["first"].high
    clock = FakeClock()
    spread = {k: r["pruned"] for k, r in
              timing.PairedTimer(repeats=8, clock=clock, warn=False).compare_many(models(clock)).items()}
    for a, b in (("first", "second"), ("second", "first")):
        assert spread[a].low <= spread[b].median <= spread[a].high
        assert spread[a].low <= 1.5 < 2.0 <= spread[a].high          # both load levels inside
        assert sorted(set(spread[a].ratios)) == [1.5, 2.0]           # each saw the quiet and the busy half


def test_a_rerun_median_lands_inside_the_interval_about_19_times_in_20():
    """What the interval means, checked by simulation: 400 pairs of runs of 35 noisy rounds (log-normal,
    skewed, with 5% outliers); the second run's median is inside the first run's interval 90-99% of the time."""
    rng = np.random.default_rng(1)
    inside = 0
    for _ in range(400):
        runs = []
        for _ in range(2):
            r = 1.3 * np.exp(rng.normal(0, 0.08, 35))
            r[rng.random(35) < 0.05] *= 0.5                       # the odd round when only one side was hit
            runs.append(r)
        low, high = timing.rerun_interval(runs[0], samples=500)
        inside += low <= np.median(runs[1]) <= high
    assert 0.90 <= inside / 400 <= 0.99


def test_the_interquartile_range_alone_is_not_an_interval_for_the_median():
    """The control for the test above: with few rounds, the IQR of single rounds misses a rerun's median
    far more often than 1 in 20 -- which is why the sweep reports the rerun interval."""
    rng = np.random.default_rng(2)
    miss_iqr = miss_interval = 0
    for _ in range(400):
        a, b = (np.exp(rng.normal(0, 0.1, 7)) for _ in range(2))
        q1, q3 = np.percentile(a, [25, 75])
        low, high = timing.rerun_interval(a, samples=500)
        miss_iqr += not q1 <= np.median(b) <= q3
        miss_interval += not low <= np.median(b) <= high
    assert miss_iqr / 400 > 0.15 and miss_interval / 400 < 0.10


def test_the_interval_is_deterministic_and_holds_the_median():
    r = [1.1, 0.9, 1.3, 1.0, 1.2, 0.8, 1.05]
    assert timing.rerun_interval(r) == timing.rerun_interval(r)
    low, high = timing.rerun_interval(r)
    assert low <= np.median(r) <= high
    with pytest.raises(ValueError, match="per-round ratios"):
        timing.rerun_interval([])


def test_compare_many_refuses_a_comparison_without_a_model_to_time():
    with pytest.raises(ValueError, match="comparison 'x' needs a reference"):
        timing.PairedTimer(warn=False).compare_many({"x": {"dense": lambda: None}})
    with pytest.raises(ValueError, match="at least one comparison"):
        timing.PairedTimer(warn=False).compare_many({})


def test_a_sweep_times_its_rows_together_at_the_end_with_the_same_columns():
    """Setup(spread_timing=True): rows come out without speed, time_all() fills every one with the columns
    a row timed on its own has; the models are kept only until then."""
    from ece662 import experiments as E
    from ece662.models import default_convnet
    model = default_convnet(seed=0).eval()
    X = np.random.default_rng(0).standard_normal((8, 3, 32, 32)).astype(np.float32)
    y = np.zeros(8, int)
    spread = E.Setup(X, y, timing_images=8, timing_repeats=3, spread_timing=True)
    alone = E.Setup(X, y, timing_images=8, timing_repeats=3)
    rows = E.unstructured_sweep(model, amounts=(0.5,), setup=spread) + E.structured_sweep(model, amounts=(0.5,),
                                                                                          setup=spread)
    assert all("speedup" not in r for r in rows) and len(spread.pending) == 2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)             # a busy machine may warn; not the point here
        assert spread.time_all() == rows
        reference = E.unstructured_sweep(model, amounts=(0.5,), setup=alone)[0]
    assert spread.pending == [] and spread.time_all() == []
    for r in rows:
        assert set(r) == set(reference)
        assert r["speedup_low"] <= r["speedup"] <= r["speedup_high"] and r["timing_rounds"] == 3
    assert rows[1]["dead_filters"] > 0 and "skip" in rows[1]["kernels"]
