"""Speed as a paired, repeated experiment: is the pruned model faster than its dense twin?

On a shared machine one timing means little: the same dense model has run at 4,000 and at
12,000 images/s within one sweep, because other work came and went.  Dividing every pruned
model by one dense baseline measured once turns that noise into "results" (a 6x speedup
against a 5.8x FLOP ideal).  So ece662 never compares two timings taken at different times.
It times the models *back to back, interleaved* -- dense, pruned | pruned, dense | ... (the
order flips every round, so whatever drifts hits both sides alike) -- ``repeats`` times, and
reports, for each pruned model, the **median of the per-round ratios** (reference time /
model time: > 1 is faster).  Whatever slows one round slows both models of that round, and
the median ignores the odd bad round.  The garbage collector is off while a round is timed.

**The interval**, ``low`` to ``high``, answers the question a reader asks of a speedup: *if I
ran this again, on a machine as busy as this one was, what would I get?*  In plain words: run
it again and its median lands inside the interval about 19 times in 20.  It is a bootstrap
over the rounds: draw the rounds again with replacement, twice, take the difference of the
two medians, and add the middle 95% of 2,000 such differences to the median (the difference
of two medians, because a second run's median is as noisy as this one's).  It holds when the
rounds sample the load a rerun would meet, which is why a sweep spreads each model's rounds
over the whole timing phase (:meth:`PairedTimer.compare_many`): a load change during the
run then lands in every model's rounds, and so in its interval, instead of in one model's
few seconds.  More rounds give a narrower interval.  The interquartile range (``q1``-``q3``,
the middle half of the single rounds) is kept as well: it says how noisy one round is, not
how sure the median is.

Identical work comes out at 1x: the sweep's own procedure for the unpruned model against
its dense twin, repeated 12 times on the busy course machine, gave medians averaging 0.998x
(0.90x-1.09x, 7 rounds each), and no position in a round was measurably faster (within
1-2%).  A single 7-round median of 1.04x, with an interquartile range that missed 1x (4 of
those 12 times), was noise read as bias: the IQR of a few rounds measured within three
seconds is not an interval for the median (``benchmarks/RESULTS.md``, "Speed ratios across
runs").

Two checks keep the numbers honest:

- a speedup above its FLOP ideal (dense FLOPs / FLOPs left) is impossible for the kernels
  here, and one for "masks only" (the dense kernels on masked weights: the same work, so 1x)
  off 1x is noise, not an effect.  A ratio is flagged only when its *interval* says so: the
  whole interval above the ideal (``low > ideal``), or a same-work interval that misses 1x
  (give or take ``MASKS_ONLY_TOLERANCE``).  A median just above the ideal whose interval still
  holds the ideal is what a rerun could give; flagging it would contradict the interval printed
  beside it.  :func:`flag_reason` is that rule, once; :meth:`Ratio.check` and everything that
  reads a record's ``*_flag`` column use it, and the plots draw flagged points hollow, never as fact;
- when repeated timings of the *same* dense model disagree by more than ~20%, the machine is
  busy and the absolute speed columns are unreliable: :class:`PairedTimer` warns once.

One helper serves the sweep (``ece662.experiments``), ``benchmarks/bench_pruning.py`` and the
notebook.  Its logic is tested with a fake clock (``tests/study/test_timing.py``): no test ever
asserts a real duration.

Examples
--------
>>> import numpy as np
>>> from ece662.models import default_convnet
>>> X = np.zeros((8, 3, 32, 32), np.float32)
>>> timer = PairedTimer(repeats=3, warn=False)
>>> result = timer.compare({"dense": default_convnet(), "again": default_convnet()}, X)
>>> sorted(result)
['again', 'dense']
>>> r = result["again"]; r.q1 <= r.median <= r.q3 and r.low <= r.median <= r.high
True
"""
import contextlib
import gc
import time
import warnings

import numpy as np

BUSY_SPREAD = 0.20          # repeated dense timings further apart than this: warn once
MASKS_ONLY_TOLERANCE = 0.05  # "masks only" is the same work: 1x, give or take its interval and this much
INTERVAL_LEVEL = 0.95       # a rerun's median lands inside the reported interval this often
BOOTSTRAP_SAMPLES = 2000
BUSY_MESSAGE = ("the machine is busy; speed columns are unreliable (the same dense model's timings varied "
                "by {spread:.0%} between rounds; ratios are paired round by round, absolute images/s are not)")


def rerun_interval(ratios, level=INTERVAL_LEVEL, samples=BOOTSTRAP_SAMPLES, seed=0):
    """``(low, high)``: where the median of a rerun with as many rounds would land, ``level`` of the time.

    Bootstrap over the rounds: two independent resamples (with replacement) give two medians;
    the middle ``level`` of their differences, added to the observed median, is the interval
    (a rerun's median is as noisy as this one's, hence a difference of two).  A fixed ``seed``:
    the same rounds always give the same interval.

    Examples
    --------
    >>> rerun_interval([2.0, 2.0, 2.0])             # no noise, no width
    (2.0, 2.0)
    >>> low, high = rerun_interval([0.9, 1.0, 1.1, 1.0, 0.95, 1.05, 1.0]); low < 1.0 < high
    True
    """
    r = np.asarray(ratios, float)
    if r.ndim != 1 or r.size == 0:
        raise ValueError(f"rerun_interval needs a 1-d array of per-round ratios, got shape {r.shape}")
    med = float(np.median(r))
    idx = np.random.default_rng(seed).integers(0, r.size, size=(2, samples, r.size))
    diff = np.median(r[idx[0]], axis=1) - np.median(r[idx[1]], axis=1)
    lo, hi = np.percentile(diff, [50 * (1 - level), 50 * (1 + level)])
    return med + float(lo), med + float(hi)


def flag_reason(median, low, high, ideal=None, same_work=False):
    """Why a speed ratio must not be read as fact, or ``""``: the one flagging rule.

    A ratio is flagged only when its rerun interval ``low``-``high`` excludes what is possible:

    * ``ideal`` given (the FLOP ideal of a pruned model): the whole interval lies above it,
      ``low > ideal``.  A median above the ideal with ``low <= ideal`` is not flagged: a rerun
      could land at or below the ideal.
    * ``same_work`` (masks only, or a model against its own dense twin: 1x by construction): the
      interval, widened by ``MASKS_ONLY_TOLERANCE`` (the masked model also recomputes
      ``weight = weight_orig * mask`` on every call), misses 1.

    Parameters
    ----------
    median, low, high : float
        The ratio's median and its interval (:func:`rerun_interval`).
    ideal : float, optional
    same_work : bool

    Returns
    -------
    str
        The reasons, joined by "; " (``""``: nothing is wrong).

    Examples
    --------
    >>> flag_reason(1.49, 1.41, 1.58, ideal=1.488)       # median above, interval holds the ideal
    ''
    >>> flag_reason(1.70, 1.60, 1.80, ideal=1.49)
    'above the FLOP ideal: the whole interval 1.60-1.80 is above 1.49x (median 1.70x)'
    >>> flag_reason(1.08, 0.97, 1.20, same_work=True)
    ''
    """
    flags = []
    if ideal is not None and low > ideal:
        flags.append(f"above the FLOP ideal: the whole interval {low:.2f}-{high:.2f} is above {ideal:.2f}x "
                     f"(median {median:.2f}x)")
    if same_work and not (low * (1 - MASKS_ONLY_TOLERANCE) <= 1.0 <= high * (1 + MASKS_ONLY_TOLERANCE)):
        flags.append(f"the same work should run at 1x; measured {median:.2f}x "
                     f"(rerun interval {low:.2f}-{high:.2f}): noise")
    return "; ".join(flags)


class Ratio:
    """The speedup of one model over the reference, from paired rounds.

    Attributes
    ----------
    median : float
        Median of ``reference time / model time`` over the rounds (> 1: faster).
    low, high : float
        The interval a rerun's median lands in about 19 times in 20 (:func:`rerun_interval`).
    q1, q3 : float
        Quartiles of the single rounds' ratios (how noisy one round is).
    images_per_s : float
        This model's median throughput (secondary: not paired).
    ratios, times : ndarray
        Its ratio and its seconds, round by round.
    flag : str
        Why this ratio must not be read as fact ("" when nothing is wrong); see :meth:`check`
        and :func:`flag_reason`.
    """

    def __init__(self, ratios, times, n_images):
        ratios = np.asarray(ratios, float)
        self.ratios = ratios
        self.times = np.asarray(times, float)
        self.q1, self.median, self.q3 = (float(v) for v in np.percentile(ratios, [25, 50, 75]))
        self.low, self.high = rerun_interval(ratios)
        self.images_per_s = n_images / float(np.median(self.times))
        self.flag = ""

    def check(self, ideal=None, same_work=False):
        """Set (and return) ``flag``: :func:`flag_reason` of this ratio's median and interval."""
        self.flag = flag_reason(self.median, self.low, self.high, ideal=ideal, same_work=same_work)
        return self.flag

    def __repr__(self):
        return (f"Ratio({self.median:.2f}x, rerun interval {self.low:.2f}-{self.high:.2f}, IQR {self.q1:.2f}-"
                f"{self.q3:.2f}, {self.images_per_s:.0f} img/s" + (f", flag: {self.flag}" if self.flag else "") + ")")


def batched(model, X, batch_size=500):
    """A callable running ``model`` (eval mode) over ``X`` in batches: one timed round."""
    if hasattr(model, "eval"):
        model.eval()
    X = np.asarray(X)

    def run():
        for s in range(0, len(X), batch_size):
            model(X[s:s + batch_size])
    return run


@contextlib.contextmanager
def no_gc():
    """The garbage collector off inside the block (and back as it was after): a collection
    landing in one model's round would be charged to that model alone."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def _round(runs, reverse, clock, times):
    """Time every callable of ``runs`` once, in order (or reversed), appending to ``times``."""
    names = list(runs)
    for name in (names[::-1] if reverse else names):
        t0 = clock()
        runs[name]()
        times[name].append(clock() - t0)


def interleaved_times(runs, repeats, clock=time.perf_counter, warmup=True):
    """Seconds per round of each callable in ``runs`` ({name: fn}), timed in turn, ``repeats`` rounds.

    Round ``i`` times every callable once, in the dict's order on even rounds and reversed on
    odd rounds (dense, pruned | pruned, dense | ...), so a slow drift of the machine hits both
    sides alike.  ``warmup`` runs each callable once, untimed, first (compilation, caches).
    The garbage collector is off while timing.  Returns ``{name: ndarray of repeats seconds}``.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    if warmup:
        for fn in runs.values():
            fn()
    times = {name: [] for name in runs}
    with no_gc():
        for i in range(repeats):
            _round(runs, i % 2 == 1, clock, times)
    return {name: np.asarray(t, float) for name, t in times.items()}


def spread(times):
    """How far apart repeated timings of one thing are: interquartile range over the median."""
    q1, med, q3 = np.percentile(np.asarray(times, float), [25, 50, 75])
    return float((q3 - q1) / med) if med > 0 else 0.0


class PairedTimer:
    """Times models against a reference, interleaved and repeated; warns once when the machine is busy.

    Parameters
    ----------
    repeats : int
        Rounds per comparison (7 by default; the sweep uses 35 short rounds of 100 images, spread
        with :meth:`compare_many`: more rounds, a narrower interval).
    batch_size : int
    clock : callable
        Returns seconds (``time.perf_counter``; the tests pass a fake one).
    warn : bool
        Warn (once per timer) when the reference's timings spread by more than ``BUSY_SPREAD``.

    Attributes
    ----------
    reference_times : list of float
        Every round of the reference model measured by this timer (all comparisons).
    busy : bool
        Whether that spread has exceeded ``BUSY_SPREAD``.
    """

    def __init__(self, repeats=7, batch_size=500, clock=time.perf_counter, warn=True):
        if int(repeats) != repeats or repeats < 1:
            raise ValueError(f"repeats must be a positive integer, got {repeats!r}")
        self.repeats, self.batch_size, self.clock, self.warn = int(repeats), batch_size, clock, warn
        self.reference_times = []
        self.busy = False
        self._warned = False

    def compare(self, models, X=None):
        """Time ``models`` ({name: model or callable}, the FIRST is the reference) interleaved.

        Models are run over ``X`` in batches; callables (no ``X`` needed) are timed as given.
        Returns ``{name: Ratio}`` -- the reference's own entry is 1x by construction, its
        ``images_per_s`` its median throughput.
        """
        if len(models) < 2:
            raise ValueError(f"compare needs a reference and at least one model to time, got {list(models)}")
        runs = {name: (m if X is None else batched(m, X, self.batch_size)) for name, m in models.items()}
        times = interleaved_times(runs, self.repeats, self.clock)
        ref = list(models)[0]
        n = len(X) if X is not None else 1
        out = {name: Ratio(times[ref] / t, t, n) for name, t in times.items()}
        self._note_reference(times[ref])
        return out

    def compare_many(self, comparisons, X=None, progress=None):
        """Several comparisons, their rounds spread over the whole measurement.

        ``comparisons`` is ``{key: {name: model or callable}}``, each one as for :meth:`compare`
        (its first model is its reference).  Round ``i`` times every comparison once, in turn
        (and each comparison's models interleaved, order flipped every round); so each
        comparison's ``repeats`` rounds sample the whole run, early and late, busy and quiet,
        and a load change lands in every interval rather than biasing the models measured
        while it lasted.  ``progress`` wraps the range of rounds (e.g. ``tqdm``).

        Returns ``{key: {name: Ratio}}``.
        """
        if not comparisons:
            raise ValueError("compare_many needs at least one comparison ({key: {reference: m, name: m, ...}})")
        for key, models in comparisons.items():
            if len(models) < 2:
                raise ValueError(f"comparison {key!r} needs a reference and at least one model to time, "
                                 f"got {list(models)}")
        runs = {key: {name: (m if X is None else batched(m, X, self.batch_size)) for name, m in models.items()}
                for key, models in comparisons.items()}
        for r in runs.values():                       # warm-up: compilation, caches
            for fn in r.values():
                fn()
        times = {key: {name: [] for name in r} for key, r in runs.items()}
        keys = list(runs)
        rounds = range(self.repeats)
        with no_gc():
            for i in (progress(rounds) if progress else rounds):
                for key in (keys if i % 2 == 0 else keys[::-1]):
                    _round(runs[key], i % 2 == 1, self.clock, times[key])
        n = len(X) if X is not None else 1
        out = {}
        for key, ts in times.items():
            ts = {name: np.asarray(t, float) for name, t in ts.items()}
            ref = ts[next(iter(ts))]
            out[key] = {name: Ratio(ref / t, t, n) for name, t in ts.items()}
            self._note_reference(ref)
        return out

    def _note_reference(self, times, stacklevel=3):
        self.reference_times.extend(float(t) for t in times)
        s = spread(self.reference_times)
        if s > BUSY_SPREAD:
            self.busy = True
            if self.warn and not self._warned:
                self._warned = True
                warnings.warn(BUSY_MESSAGE.format(spread=s), RuntimeWarning, stacklevel=stacklevel)


def speedup_columns(ratio, prefix):
    """A record's columns for one ratio: ``<prefix>`` (the median), ``<prefix>_low`` / ``<prefix>_high``
    (the rerun interval), ``<prefix>_iqr_low`` / ``<prefix>_iqr_high`` (the single rounds' quartiles)
    and ``<prefix>_flag``."""
    return {prefix: ratio.median, f"{prefix}_low": ratio.low, f"{prefix}_high": ratio.high,
            f"{prefix}_iqr_low": ratio.q1, f"{prefix}_iqr_high": ratio.q3, f"{prefix}_flag": ratio.flag}


def cpu_description():
    """The CPU every speed figure must be named beside: its model name, LLVM's name for it (what Numba compiles
    for) and the vector width, e.g. ``'AMD EPYC (LLVM znver4, AVX-512)'``.  The same kernels run at very
    different ratios against torch on AVX2 and AVX-512 machines (``benchmarks/RESULTS.md``)."""
    model = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    try:
        import llvmlite.binding as llvm          # Numba's compiler: present wherever ece662 runs
        llvm.initialize_native_target()
        features = llvm.get_host_cpu_features()
        width = "AVX-512" if features.get("avx512f") else "AVX2" if features.get("avx2") else "no AVX2"
        return f"{model} (LLVM {llvm.get_host_cpu_name()}, {width})"
    except (ImportError, RuntimeError):
        return model
