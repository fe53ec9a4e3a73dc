"""Speed as a paired, repeated experiment: is the pruned model faster than its dense twin?

On a shared machine one timing means little: the same dense model has run at 4,000 and at
12,000 images/s within one sweep, because other work came and went.  Dividing every pruned
model by one dense baseline measured once turns that noise into "results" (a 6x speedup
against a 5.8x FLOP ideal).  So ece662 never compares two timings taken at different times.
It times the models *back to back, interleaved* -- dense, pruned, dense, pruned, ... --
``repeats`` times, and reports, for each pruned model, the **median of the per-round
ratios** with their **interquartile range** (IQR: the middle half of the rounds).  Whatever
slows one round slows both models of that round, and the median ignores the odd bad round.
Images per second are reported too, but only as a secondary, unpaired number.

Two checks keep the numbers honest:

- a speedup whose median is above its FLOP ideal (dense FLOPs / FLOPs left) is impossible
  for the kernels here, and one for "masks only" (the dense kernels on masked weights: the
  same work, so 1x) that sits outside its noise band is noise, not an effect -- both come
  back as a ``flag`` string, and the plots draw flagged points hollow, never as fact;
- when repeated timings of the *same* dense model disagree by more than ~20%, the machine is
  busy and the absolute speed columns are unreliable: :class:`PairedTimer` warns once.

One helper serves the sweep (``ece662.experiments``), ``benchmarks/bench_pruning.py`` and the
notebook.  Its logic is tested with a fake clock (``tests/test_timing.py``): no test ever
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
>>> r = result["again"]; r.q1 <= r.median <= r.q3
True
"""
import time
import warnings

import numpy as np

BUSY_SPREAD = 0.20          # repeated dense timings further apart than this: warn once
MASKS_ONLY_TOLERANCE = 0.10  # "masks only" is the same work: 1x, give or take the IQR and this much
BUSY_MESSAGE = ("the machine is busy; speed columns are unreliable (the same dense model's timings varied "
                "by {spread:.0%} between rounds; ratios are paired round by round, absolute images/s are not)")


class Ratio:
    """The speedup of one model over the reference, from paired rounds.

    Attributes
    ----------
    median, q1, q3 : float
        Median and quartiles of ``reference time / model time`` over the rounds (> 1: faster).
    images_per_s : float
        This model's median throughput (secondary: not paired).
    times : ndarray
        Its seconds per round.
    flag : str
        Why this ratio must not be read as fact ("" when nothing is wrong); see :meth:`check`.
    """

    def __init__(self, ratios, times, n_images):
        ratios = np.asarray(ratios, float)
        self.ratios = ratios
        self.times = np.asarray(times, float)
        self.q1, self.median, self.q3 = (float(v) for v in np.percentile(ratios, [25, 50, 75]))
        self.images_per_s = n_images / float(np.median(self.times))
        self.flag = ""

    def check(self, ideal=None, same_work=False):
        """Set (and return) ``flag``: a median above the FLOP ``ideal``, or, with ``same_work``
        (masks only: the same kernels on the same amount of work), a band that misses 1x.

        The noise band of a same-work ratio is its IQR widened by ``MASKS_ONLY_TOLERANCE``.
        """
        flags = []
        if ideal is not None and self.median > ideal:
            flags.append(f"above the FLOP ideal ({self.median:.2f}x > {ideal:.2f}x)")
        if same_work and not (self.q1 * (1 - MASKS_ONLY_TOLERANCE) <= 1.0 <= self.q3 * (1 + MASKS_ONLY_TOLERANCE)):
            flags.append(f"the same work should run at 1x; measured {self.median:.2f}x "
                         f"(IQR {self.q1:.2f}-{self.q3:.2f}): noise")
        self.flag = "; ".join(flags)
        return self.flag

    def __repr__(self):
        return (f"Ratio({self.median:.2f}x, IQR {self.q1:.2f}-{self.q3:.2f}, {self.images_per_s:.0f} img/s"
                + (f", flag: {self.flag}" if self.flag else "") + ")")


def batched(model, X, batch_size=500):
    """A callable running ``model`` (eval mode) over ``X`` in batches: one timed round."""
    if hasattr(model, "eval"):
        model.eval()
    X = np.asarray(X)

    def run():
        for s in range(0, len(X), batch_size):
            model(X[s:s + batch_size])
    return run


def interleaved_times(runs, repeats, clock=time.perf_counter, warmup=True):
    """Seconds per round of each callable in ``runs`` ({name: fn}), timed in turn, ``repeats`` rounds.

    Round ``i`` times every callable once, in the dict's order on even rounds and reversed on
    odd rounds (dense, pruned | pruned, dense | ...), so a slow drift of the machine hits both
    sides alike.  ``warmup`` runs each callable once, untimed, first (compilation, caches).
    Returns ``{name: ndarray of repeats seconds}``.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    names = list(runs)
    if warmup:
        for name in names:
            runs[name]()
    times = {name: [] for name in names}
    for i in range(repeats):
        for name in (names if i % 2 == 0 else names[::-1]):
            t0 = clock()
            runs[name]()
            times[name].append(clock() - t0)
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
        Rounds per comparison (7: the IQR is then the 2nd to 6th values; a few seconds for
        three models over 1,000 images).
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

    def _note_reference(self, times):
        self.reference_times.extend(float(t) for t in times)
        s = spread(self.reference_times)
        if s > BUSY_SPREAD:
            self.busy = True
            if self.warn and not self._warned:
                self._warned = True
                warnings.warn(BUSY_MESSAGE.format(spread=s), RuntimeWarning, stacklevel=3)


def speedup_columns(ratio, prefix):
    """A record's columns for one ratio: ``<prefix>``, ``<prefix>_iqr_low``, ``<prefix>_iqr_high``, ``<prefix>_flag``."""
    return {prefix: ratio.median, f"{prefix}_iqr_low": ratio.q1, f"{prefix}_iqr_high": ratio.q3,
            f"{prefix}_flag": ratio.flag}
