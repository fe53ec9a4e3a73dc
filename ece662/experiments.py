"""The course notebook's experiments as library calls that return plain records.

Nothing here prints or plots (``ece662.plots`` and ``ece662.cli`` do).  Every sweep
point starts from a fresh copy of the unpruned model, so the model you pass in is never
modified.  A record is a flat dict (one row of the sweep's CSV):

``method, target, sparsity, accuracy`` -- what was pruned and what it cost;
``accuracy_<origin>`` -- per image origin (``cifar10`` / ``imagenet``) when the data says;
``sparsity_<layer>, params_nonzero, dead_filters`` -- where the zeros are;
``flops_dense, flops_skip, flops_kernel, flops_nonzero`` -- per image, from ``ece662.pruning.report``
(``flops_kernel``: what the chosen kernels really compute, their tiles' padding included);
``flop_ideal`` -- dense FLOPs over the FLOPs left (the most any kernel could gain);
``speedup, speedup_low, speedup_high, speedup_iqr_low, speedup_iqr_high, speedup_flag`` -- the
pruned model (the kernels ece662 picks) against the unpruned model on the dense kernels, timed
interleaved and repeated (``ece662.timing``): median ratio, the interval a rerun's median lands
in 19 times in 20, the single rounds' interquartile range, and why not to trust it ("" if fine;
the rule is ``ece662.timing.flag_reason``);
``masks_only`` (same six columns) -- the dense kernels on the masked weights, against the same;
``images_per_s_dense, images_per_s_pruned`` -- median throughputs of the unpruned and pruned
model in those rounds (secondary: unpaired, they move with the machine's load); ``kernels``;
``accuracy_finetuned`` (and per origin), ``finetune_epochs`` -- after fine-tuning with the masks held, if asked;
``test_images, timing_images, timing_rounds`` -- how much each number rests on.
"""
import time

import numpy as np

from ece662 import pruning as prune
from ece662 import timing
from ece662.data.images import normalize_images
from ece662.pruning import masks, prunable
from ece662.pruning.masks import check_sparsity
from ece662.formats.common import load_with_masks
from ece662.layers import Conv2d, Linear, from_spec
from ece662.models import default_convnet
from ece662.training import schedules as S
from ece662.training.at_init import snip, synflow
from ece662.training.dynamic import DynamicSparsity
from ece662.training.evaluate import predict_logits
from ece662.training.lottery import lottery_ticket, reinitialized
from ece662.training.trainer import Trainer

UNSTRUCTURED_AMOUNTS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8)
STRUCTURED_AMOUNTS = (0.25, 0.5, 0.75)


def copy_model(model):
    """An independent copy of ``model`` (architecture, weights and masks)."""
    clone = from_spec(model.spec())
    load_with_masks(clone, model.state_dict(), source="copy_model")
    for (_, a), (_, b) in zip(model.named_modules(), clone.named_modules()):
        b.kernels = a.kernels                  # parents first, so a layer keeps its own setting
    return clone.train(model.training)


def dense_twin(model):
    """A copy of ``model`` that runs the dense kernels on its masked weights ("masks alone")."""
    m = copy_model(model).eval()
    m.kernels = "dense"
    return m


def sparsity(model, types=(Conv2d, Linear)):
    """Overall and per-layer fraction of zero weights among ``types`` layers.

    Returns
    -------
    overall : float
    per_layer : dict {name: float}
    """
    per, zeros, total = {}, 0, 0
    for name, m in prunable(model, types):
        w = m.weight
        z = int(w.size - np.count_nonzero(w))
        per[name] = z / w.size
        zeros, total = zeros + z, total + w.size
    return zeros / max(total, 1), per


def evaluate(model, X, y, batch_size=1000, origin=None, prefix="accuracy"):
    """Accuracy overall (and per origin, when ``origin`` is given)."""
    pred = predict_logits(model, X, batch_size).argmax(1)
    y = np.asarray(y)
    rec = {prefix: float(np.mean(pred == y))}
    if origin is not None:
        for o in np.unique(origin):
            sel = np.asarray(origin) == o
            rec[f"{prefix}_{o}"] = float(np.mean(pred[sel] == y[sel]))
    return rec


def images_per_second(model, X, batch_size=500, repeats=3):
    """Inference throughput of ``model`` on ``X``: the median of ``repeats`` timed rounds after a warm-up.

    One model alone, so it moves with the machine's load; to compare models use
    :func:`speedups` (paired and interleaved).
    """
    runs = timing.interleaved_times({"m": timing.batched(model, X, batch_size)}, repeats)
    return len(X) / float(np.median(runs["m"]))


def _comparison(model, reference):
    """The three models a speed row times: the reference's dense twin, ``model``'s dense twin
    ("masks only") and an eval-mode copy of ``model`` itself (the caller's model keeps its mode)."""
    return {"dense": dense_twin(reference), "masks_only": dense_twin(model), "pruned": copy_model(model).eval()}


def _speed_columns(r, null, ideal):
    """A row's speed columns from ``compare``'s ``{name: Ratio}``; ``null``: the model is the reference."""
    if null:                    # the unpruned model against itself: a null experiment, 1x within its noise
        r["pruned"].check(same_work=True)
    else:
        r["pruned"].check(ideal=ideal)
    r["masks_only"].check(same_work=True)
    cols = timing.speedup_columns(r["pruned"], "speedup")
    cols.update(timing.speedup_columns(r["masks_only"], "masks_only"))
    cols["images_per_s_dense"] = r["dense"].images_per_s
    cols["images_per_s_pruned"] = r["pruned"].images_per_s
    return cols


def speedups(model, reference, X, timer=None, ideal=None):
    """How much faster ``model`` runs than the unpruned ``reference`` on the dense kernels.

    Times three models interleaved (``ece662.timing.PairedTimer``): the reference's dense
    twin, ``model``'s dense twin ("masks only": the same work on masked weights) and
    ``model`` itself (the kernels ece662 picks).  Returns the record columns ``speedup*``,
    ``masks_only*``, ``images_per_s_dense`` and ``images_per_s_pruned``; a speedup whose whole
    interval lies above ``ideal``, or a masks-only interval that misses 1x, is flagged
    (``ece662.timing.flag_reason``).
    """
    timer = timer or timing.PairedTimer()
    return _speed_columns(timer.compare(_comparison(model, reference), X), model is reference, ideal)


# A sweep evaluates a dozen models on the same test images.  Lazily normalised images (``get_CINIC10_data``'s
# uint8 store) up to this size as float32 are converted once for all of them (the 10,000-image test split:
# 123 MB); a larger set is converted batch by batch for every model, as before.
CONVERT_ONCE_BYTES = 1 << 28


class Setup:
    """What every sweep point shares: the test data, how to time, and how to fine-tune.

    Parameters
    ----------
    X, y : test images (float32 NCHW or an array-like of them) and labels
    origin : optional per-image origin strings
    timing_images : int
        How many test images the speed columns are measured on (0 turns timing off).
    timing_repeats : int
        Interleaved rounds per pruned model (``ece662.timing.PairedTimer``).
    spread_timing : bool
        Time later: :meth:`record` leaves the speed columns out and keeps the model, and
        :meth:`time_all` measures every kept model at once, its rounds spread over the whole
        measurement (``PairedTimer.compare_many``), so a load change during the run lands in
        every row's interval instead of biasing the rows measured while it lasted (the sweep
        does this).  Off: each row is timed as it is made (rounds within a few seconds).
    finetune_data : (X_uint8_NHWC, y), optional
        Training images for fine-tuning (``Trainer`` input).
    finetune_epochs : int
    finetune_lr : float
    seed : int
    """

    def __init__(self, X, y, origin=None, batch_size=1000, timing_images=500, finetune_data=None,
                 finetune_epochs=0, finetune_lr=0.01, seed=0, progress=False, timing_repeats=7,
                 spread_timing=False):
        if not isinstance(X, np.ndarray) and 4 * int(np.prod(np.shape(X), dtype=np.int64)) <= CONVERT_ONCE_BYTES:
            X = np.asarray(X, dtype=np.float32)      # every row evaluates the same images: convert them once
        self.X, self.y, self.origin, self.batch_size = X, np.asarray(y), origin, batch_size
        self.timing_X = np.asarray(X[:timing_images]) if timing_images else None
        self.timer = timing.PairedTimer(repeats=timing_repeats) if timing_images else None
        self.spread_timing, self.pending = spread_timing, []
        self.finetune_data, self.finetune_epochs = finetune_data, finetune_epochs
        self.finetune_lr, self.seed, self.progress = finetune_lr, seed, progress

    def finetune(self, model, epochs=None):
        """Fine-tune ``model`` in place with its masks held; returns it."""
        X, y = self.finetune_data
        Trainer(model, X, y, epochs=epochs or self.finetune_epochs, batch_size=128,
                max_lr=self.finetune_lr, seed=self.seed, progress=self.progress).fit()
        return model.eval()

    def record(self, method, target, model, finetune=True, reference=None):
        """One row: sparsity, FLOPs, accuracy, speed against ``reference`` (the unpruned model;
        default ``model`` itself), and (if set up) fine-tuned accuracy."""
        overall, per_layer = sparsity(model)
        rec = {"method": method, "target": target, "sparsity": overall}
        rec.update({f"sparsity_{k}": v for k, v in per_layer.items()})
        rec["params_nonzero"] = int(sum(np.count_nonzero(m.weight) for _, m in prunable(model)))
        rec["dead_filters"] = int(sum((~m.alive_filters()).sum() for _, m in prunable(model, (Conv2d,))))
        total = prune.report(model, verbose=False)[-1]
        for k in ("flops_dense", "flops_skip", "flops_kernel", "flops_nonzero"):
            rec[k] = total[k]
        left = min(total["flops_skip"], total["flops_nonzero"])
        rec["flop_ideal"] = total["flops_dense"] / left if left else float("inf")
        rec.update(evaluate(model, self.X, self.y, self.batch_size, self.origin))
        rec["test_images"] = len(self.y)
        if self.timing_X is not None:
            rec["timing_images"], rec["timing_rounds"] = len(self.timing_X), self.timer.repeats
            reference = reference if reference is not None else model
            if self.spread_timing:
                self.pending.append((rec, model, reference))
            else:
                rec.update(speedups(model, reference, self.timing_X, self.timer, ideal=rec["flop_ideal"]))
                rec["kernels"] = _kernels(model)
        if finetune and self.finetune_data is not None and self.finetune_epochs:
            tuned = self.finetune(copy_model(model))
            rec["finetune_epochs"] = self.finetune_epochs
            rec.update(evaluate(tuned, self.X, self.y, self.batch_size, self.origin, prefix="accuracy_finetuned"))
        return rec


    def time_all(self, progress=None):
        """Measure the speed columns of every row :meth:`record` kept (``spread_timing=True``),
        all together: round ``i`` times every row's three models once, so each row's rounds are
        spread over the whole measurement.  Fills the kept records in place; returns them.
        ``progress`` wraps the range of rounds (e.g. ``tqdm``)."""
        pending, self.pending = self.pending, []
        if not pending:
            return []
        comparisons = {i: _comparison(model, ref) for i, (_, model, ref) in enumerate(pending)}
        ratios = self.timer.compare_many(comparisons, self.timing_X, progress=progress)
        for i, (rec, model, ref) in enumerate(pending):
            rec.update(_speed_columns(ratios[i], model is ref, rec["flop_ideal"]))
            rec["kernels"] = _kernels(model)
        return [rec for rec, _, _ in pending]


def _kernels(model):
    return "; ".join(f"{n}: {m.last_kernel}" for n, m in prunable(model, (Conv2d,)))


def _setup(setup, X, y, origin, batch_size):
    return setup if setup is not None else Setup(X, y, origin, batch_size, timing_images=0)


def baseline(model, X=None, y=None, origin=None, batch_size=1000, setup=None):
    """The unpruned model's record."""
    return _setup(setup, X, y, origin, batch_size).record("none", 0.0, model, finetune=False)


def unstructured_sweep(model, X=None, y=None, amounts=UNSTRUCTURED_AMOUNTS, origin=None, batch_size=1000,
                       setup=None):
    """Global L1 unstructured pruning of every conv and linear weight, one record per amount.

    Examples
    --------
    >>> from ece662.models import default_convnet
    >>> X = np.zeros((4, 3, 32, 32), np.float32); y = np.zeros(4, int)
    >>> [round(r["sparsity"], 2) for r in unstructured_sweep(default_convnet(), X, y, amounts=(0.1, 0.5))]
    [0.1, 0.5]
    """
    setup = _setup(setup, X, y, origin, batch_size)
    records = []
    for a in amounts:
        m = copy_model(model)
        prune.global_unstructured([(layer, "weight") for _, layer in prunable(m)],
                                  pruning_method=prune.L1Unstructured, amount=a)
        records.append(setup.record("global_l1_unstructured", a, m, reference=model))
    return records


def structured_sweep(model, X=None, y=None, amounts=STRUCTURED_AMOUNTS, n=2, origin=None, batch_size=1000,
                     scope="layer", setup=None):
    """Ln filter pruning (dim 0) of the conv layers, one record per amount.

    ``scope='layer'`` prunes each conv layer by ``amount`` (the course notebook's way);
    ``scope='global'`` ranks the filters of all conv layers together, with norms
    normalised per layer (``ece662.pruning.global_structured``).
    """
    if scope not in ("layer", "global"):
        raise ValueError(f"scope must be 'layer' or 'global', got {scope!r}")
    setup = _setup(setup, X, y, origin, batch_size)
    records = []
    for a in amounts:
        m = copy_model(model)
        convs = prunable(m, (Conv2d,))
        if scope == "layer":
            for _, conv in convs:
                prune.ln_structured(conv, "weight", amount=a, n=n, dim=0)
        else:
            prune.global_structured([(conv, "weight") for _, conv in convs], amount=a, n=n, dim=0,
                                    normalize=True)
        method = f"l{n}_structured_filters" + ("_global" if scope == "global" else "")
        records.append(setup.record(method, a, m, reference=model))
    return records


def iterative_sweep(model, setup, amounts=UNSTRUCTURED_AMOUNTS, steps=3, epochs_per_step=1):
    """Prune a little, fine-tune, repeat ("pruning during training"), one record per amount.

    Each of ``steps`` rounds prunes the same fraction ``p`` of what is left, with
    ``(1 - p) ** steps = 1 - amount``, then fine-tunes ``epochs_per_step`` epochs with the
    masks held.  Compare its ``accuracy`` with the one-shot sweep's ``accuracy_finetuned``.
    """
    if setup.finetune_data is None:
        raise ValueError("iterative pruning fine-tunes between steps: give Setup(finetune_data=...)")
    records = []
    for a in amounts:
        m = copy_model(model)
        p = 1.0 - (1.0 - a) ** (1.0 / steps)
        for _ in range(steps):
            prune.global_unstructured([(layer, "weight") for _, layer in prunable(m)],
                                      pruning_method=prune.L1Unstructured, amount=p)
            setup.finetune(m, epochs=epochs_per_step)
        records.append(setup.record(f"global_l1_iterative_{steps}x{epochs_per_step}ep", a, m, finetune=False,
                                    reference=model))
    return records


# ============================================================================ schedules at an equal budget
# The course's question as an experiment: prune after training, or while training?  compare_schedules starts
# every run from a copy of the same trained model, gives every schedule the *same number of training epochs* on
# the same images with the same seed, and measures test accuracy at each sparsity (ece662.training.schedules):
#   one-shot   prune once after training, fine-tune at a small constant rate;
#   iterative  rounds x (prune a geometric step, fine-tune), the epochs shared out;
#   gradual    prune during training, on Zhu & Gupta's cubic schedule, one-cycle rate;
#   rewind     prune once, retrain with the original (one-cycle) rate, Renda et al.
# A record is a flat dict: schedule, structure, scope, sparsity (asked), measured_sparsity, epochs, accuracy,
# dense_accuracy, seconds (training time of that run), distill.  plots.compare_schedules draws them; the
# command line is `python -m ece662 compare`.
SCHEDULES = ("one-shot", "iterative", "gradual", "rewind")


def _run(name, model, X, y, sparsity, epochs, structure, scope, teacher, seed, rounds, finetune_lr, max_lr,
         batch_size):
    common = dict(scope=scope, structure=structure, teacher=teacher, seed=seed, batch_size=batch_size)
    if name == "one-shot":
        return S.one_shot(model, X, y, sparsity, epochs, lr=finetune_lr, **common)
    if name == "iterative":
        return S.iterative(model, X, y, sparsity, epochs, rounds=min(rounds, epochs), lr=finetune_lr, **common)
    if name == "gradual":
        return S.gradual(model, X, y, sparsity, epochs, max_lr=max_lr, **common)
    return S.rewind(model, X, y, sparsity, epochs, max_lr=max_lr, **common)


def compare_schedules(model, X_train, y_train, X_test, y_test, sparsities=(0.5, 0.8, 0.9), epochs=3,
                      schedules=SCHEDULES, structure="unstructured", scope="global", rounds=3, distill=False,
                      finetune_lr=0.002, max_lr=0.02, batch_size=128, seed=0, progress=None):
    """Accuracy against sparsity for each pruning schedule, at one equal epoch budget.

    Parameters
    ----------
    model : Sequential
        The trained, unpruned model (not modified: each run prunes a copy).
    X_train : uint8 (N, 32, 32, 3), y_train : (N,)
        The images every schedule trains on (``get_CINIC10_data(normalize=False,
        channels_first=False)``).
    X_test : (M, 3, 32, 32) float32 normalised (or lazy), y_test : (M,)
        Where accuracy is measured (``get_CINIC10_data()['X_test']``).
    sparsities : sequence of float in [0, 1)
        Fractions of the weights (or, for ``structure='filters'``, of the conv filters) pruned.
    epochs : int
        The budget: training epochs per run, the same for every schedule.
    schedules : subset of ``SCHEDULES``
    structure, scope : see :func:`ece662.training.schedules.prune_to`
    rounds : int
        Prune/fine-tune rounds of ``iterative`` (at most ``epochs``).
    distill : bool
        Every schedule also learns from the unpruned model (Hinton et al., 2015).
    finetune_lr : float
        The constant rate of ``one-shot`` and ``iterative`` fine-tuning.
    max_lr : float
        The one-cycle peak of ``gradual`` and ``rewind``.
    progress : callable, optional
        Called with each record as it is made (e.g. ``print``).

    Returns
    -------
    list of dict
        One record per (schedule, sparsity), plus one ``schedule='dense'`` record.

    Examples
    --------
    >>> from ece662.models import default_convnet
    >>> rng = np.random.default_rng(0)
    >>> X = rng.integers(0, 256, (32, 32, 32, 3), dtype=np.uint8); y = rng.integers(0, 10, 32)
    >>> Xt = rng.standard_normal((16, 3, 32, 32)).astype(np.float32); yt = rng.integers(0, 10, 16)
    >>> recs = compare_schedules(default_convnet(), X, y, Xt, yt, sparsities=(0.5,), epochs=1, batch_size=16)
    >>> [(r["schedule"], r["measured_sparsity"]) for r in recs]
    [('dense', 0.0), ('one-shot', 0.5), ('iterative', 0.5), ('gradual', 0.5), ('rewind', 0.5)]
    """
    for name in schedules:
        if name not in SCHEDULES:
            raise ValueError(f"compare_schedules: unknown schedule {name!r}; choose from {SCHEDULES}")
    epochs = S.check_epochs(epochs)
    for s in sparsities:
        check_sparsity(s)
    dense_acc = evaluate(model, X_test, y_test)["accuracy"]
    base = dict(structure=structure, scope=scope, epochs=epochs, distill=bool(distill),
                dense_accuracy=dense_acc)
    records = [dict(base, schedule="dense", sparsity=0.0, measured_sparsity=0.0, accuracy=dense_acc,
                    seconds=0.0)]
    if progress:
        progress(records[0])
    teacher = copy_model(model).eval() if distill else None
    for name in schedules:
        for s in sparsities:    # each point: a fresh copy of the trained model, the same seed and budget
            m = copy_model(model)
            t0 = time.perf_counter()
            _run(name, m, X_train, y_train, s, epochs, structure, scope, teacher, seed, rounds, finetune_lr,
                 max_lr, batch_size)
            seconds = time.perf_counter() - t0
            rec = dict(base, schedule=name, sparsity=float(s),
                       measured_sparsity=round(S.sparsity_of(m, structure), 6),
                       accuracy=evaluate(m, X_test, y_test)["accuracy"], seconds=round(seconds, 1))
            records.append(rec)
            if progress:
                progress(rec)
    return records


# ============================================================================ allocation: how much per layer
ALLOCATIONS = ("global", "lamp", "erk", "uniform")


def allocate(model, method, sparsity):
    """Prune ``model``'s conv and linear weights (in place) to an overall ``sparsity`` by magnitude, shared
    out among the layers by ``method``: ``'global'`` one threshold for all (the course's global L1),
    ``'lamp'`` LAMP scores, ``'erk'`` Erdős-Rényi-Kernel densities, ``'uniform'`` the same fraction of
    every layer."""
    params = [(m, "weight") for _, m in prunable(model)]
    if method == "global":
        prune.global_unstructured(params, pruning_method=prune.L1Unstructured, amount=sparsity)
    elif method == "lamp":
        prune.global_lamp_unstructured(params, amount=sparsity)
    elif method == "erk":
        prune.erk_unstructured(params, sparsity)
    elif method == "uniform":
        prune.layerwise_unstructured(params, sparsity)
    else:
        raise ValueError(f"allocate: unknown method {method!r}; choose from {ALLOCATIONS}")
    return model


def allocation_sweep(model, X, y, sparsities=(0.5, 0.7, 0.8, 0.9, 0.95), methods=ALLOCATIONS, batch_size=1000,
                     finetune=None):
    """One-shot magnitude pruning at each overall sparsity, with each allocation method: one record per
    (method, sparsity) with its accuracy and per-layer sparsity, and, given ``finetune`` (a function that
    fine-tunes a pruned model with its masks held, e.g. ``Setup(...).finetune``), ``accuracy_finetuned``.
    Every point starts from a fresh copy of ``model``.

    Examples
    --------
    >>> import warnings
    >>> from ece662.models import default_convnet
    >>> X = np.random.default_rng(0).standard_normal((8, 3, 32, 32)).astype(np.float32)
    >>> with warnings.catch_warnings():
    ...     warnings.simplefilter("ignore")     # an untrained net loses fc rows: DeadClassWarning
    ...     recs = allocation_sweep(default_convnet(), X, np.zeros(8, int), sparsities=(0.5,))
    >>> [(r["method"], r["sparsity"]) for r in recs]
    [('global', 0.5), ('lamp', 0.5), ('erk', 0.5), ('uniform', 0.5)]
    """
    records = []
    for method in methods:
        for s in sparsities:
            m = allocate(copy_model(model), method, s)
            overall, per = sparsity(m)
            rec = {"method": method, "target": float(s), "sparsity": round(overall, 4),
                   **{f"sparsity_{k}": round(v, 4) for k, v in per.items()}}
            rec.update(evaluate(m, X, y, batch_size))
            if finetune is not None:
                rec["accuracy_finetuned"] = evaluate(finetune(m), X, y, batch_size)["accuracy"]
            records.append(rec)
    return records


def sensitivity(model, X, y, amounts=(0.25, 0.5, 0.75, 0.9), method="l1", batch_size=1000):
    """Per-layer sensitivity scan (as Distiller's and NNI's): each conv and linear layer pruned *alone*, by
    magnitude (``method='l1'``) or by whole filters (``'filters'``, L2 norm, conv layers only), at each amount;
    one record per (layer, amount) with the accuracy, and the unpruned accuracy as ``amount=0``.  The flat
    layers are the ones a global allocation can prune harder.

    Examples
    --------
    >>> import warnings
    >>> from ece662.models import default_convnet
    >>> X = np.random.default_rng(0).standard_normal((4, 3, 32, 32)).astype(np.float32)
    >>> with warnings.catch_warnings():
    ...     warnings.simplefilter("ignore")
    ...     recs = sensitivity(default_convnet(), X, np.zeros(4, int), amounts=(0.5,))
    >>> [(r["layer"], r["amount"]) for r in recs]
    [('conv1', 0.0), ('conv1', 0.5), ('conv2', 0.0), ('conv2', 0.5), ('fc', 0.0), ('fc', 0.5)]
    """
    if method not in ("l1", "filters"):
        raise ValueError(f"sensitivity: method must be 'l1' or 'filters', got {method!r}")
    dense = evaluate(model, X, y, batch_size)["accuracy"]
    records = []
    types = (Conv2d,) if method == "filters" else (Conv2d, Linear)
    for name, _ in prunable(model, types):
        records.append({"layer": name, "method": method, "amount": 0.0, "accuracy": dense})
        for a in amounts:
            m = copy_model(model)
            layer = dict(prunable(m, types))[name]
            if method == "l1":
                prune.l1_unstructured(layer, "weight", amount=a)
            else:
                prune.ln_structured(layer, "weight", amount=a, n=2, dim=0)
            records.append({"layer": name, "method": method, "amount": float(a),
                            "accuracy": evaluate(m, X, y, batch_size)["accuracy"]})
    return records


# ============================================================================ before, during or after training
# The course's question with every arm: compare_methods gives each method the same number of training epochs on
# the same images and measures test accuracy at each sparsity, over several seeds.  How each arm spends them:
#   before   snip, synflow, random: a fresh initialisation (seed), pruned at once, trained `epochs` epochs;
#   during   gradual (Zhu & Gupta's cubic schedule, the masks shrinking over the first 60% of the steps), rigl,
#            set (dynamic sparse training, sparse from the first step): `epochs` epochs from a fresh initialisation;
#   after    one-shot, iterative, rewind (learning-rate rewinding): start from the trained `model` and spend
#            `epochs` epochs recovering (the trained model's own training comes on top, as it does in practice);
#            lottery: iterative magnitude pruning from a fresh initialisation, `rounds` rounds sharing `epochs`
#            (the search), the survivors rewound to their weights early in the first round, then the ticket
#            trains `epochs` epochs, and so do its two controls (the same mask freshly initialised, and a random
#            mask of the ticket's per-layer sparsity on the rewound weights);
#   control  small-dense: the course CNN narrowed (default_convnet(filters=(f, f))) to about as many weights as
#            the pruned network keeps, trained dense from a fresh initialisation for `epochs` epochs;
#            dense-scratch: the whole course CNN, unpruned, trained from a fresh initialisation for `epochs`
#            epochs (the lottery ticket's yardstick: Frankle & Carbin's tickets match it); it has no sparsity,
#            so it runs once per seed and is recorded at sparsity 0.
# A record: method, phase, allocation, sparsity (asked), measured_sparsity (from the masks; small-dense: 1 - its
# weights / the full network's), seed, accuracy, seconds (the arm's pruning and training; the lottery's three
# records share its search and three trainings), epochs, start ('init' or 'trained').
METHODS = {          # name: (phase, the allocations it can use, its default first)
    "snip": ("before", ("global",)),
    "synflow": ("before", ("global",)),
    "random": ("before", ("erk", "uniform")),
    "gradual": ("during", ("uniform", "global")),
    "rigl": ("during", ("erk", "uniform")),
    "set": ("during", ("erk", "uniform")),
    "one-shot": ("after", ("global", "lamp")),
    "iterative": ("after", ("global",)),
    "lottery": ("after", ("global",)),
    "rewind": ("after", ("global", "lamp")),
    "small-dense": ("control", ("dense",)),
    "dense-scratch": ("control", ("dense",)),
}
REFERENCES = ("dense", "dense-scratch")     # the unpruned rows (sparsity 0) beside the pruned arms
LOTTERY_CONTROLS = ("lottery-reinit", "lottery-random-mask")    # recorded with every lottery run, phase 'control'


def check_methods(methods):
    """``methods`` as a list of names of :data:`METHODS`; an unknown name raises ValueError listing the valid ones."""
    methods = list(methods)
    controls = [m for m in methods if m in ("lottery-reinit", "lottery-random-mask")]
    if controls:
        raise ValueError(f"compare_methods: {', '.join(map(repr, controls))} is one of the lottery ticket's two "
                         f"controls, which run with it: ask for 'lottery'")
    bad = [m for m in methods if m not in METHODS]
    if bad or not methods:
        raise ValueError(f"compare_methods: unknown method{'s' * (len(bad) > 1)} {', '.join(map(repr, bad))}; "
                         f"choose from {', '.join(METHODS)}" if bad else
                         f"compare_methods: no method given; choose from {', '.join(METHODS)}")
    return methods


def allocations_of(method, allocation="default"):
    """The allocations ``method`` runs with: ``'default'`` its own (the first of :data:`METHODS`), ``'all'``
    every one it can use, or a list of names: those of them it can use, its default if none."""
    own = METHODS[method][1]
    if allocation == "default":
        return own[:1]
    if allocation == "all":
        return own
    return tuple(a for a in allocation if a in own) or own[:1]


def weight_count(model):
    """The number of conv and linear weights (biases not counted), pruned or not."""
    return int(sum(m.weight.size for _, m in prunable(model)))


def small_dense_filters(model, sparsity):
    """The filter count ``f`` for which ``default_convnet(filters=(f, f))`` has the number of weights nearest to
    what ``model`` keeps at ``sparsity``.

    Examples
    --------
    >>> from ece662.models import default_convnet
    >>> [small_dense_filters(default_convnet(), s) for s in (0.0, 0.9, 0.95, 0.98)]
    [32, 5, 3, 1]
    """
    keep = (1.0 - check_sparsity(sparsity)) * weight_count(model)
    return min(range(1, 257), key=lambda f: abs(weight_count(default_convnet(filters=(f, f))) - keep))


def _random_masks(model, sparsity, allocation, rng):
    """Random masks of overall ``sparsity``: the same in every layer (``'uniform'``) or by ERK densities."""
    layers = [m for _, m in prunable(model)]
    densities = (masks.erk_densities([m.weight.shape for m in layers], 1.0 - sparsity) if allocation == "erk"
                 else [1.0 - sparsity] * len(layers))
    for m, d in zip(layers, densities):
        prune.random_unstructured(m, "weight", amount=int(round((1.0 - d) * m.weight.size)), rng=rng)


def _arm(method, allocation, model, X, y, s, epochs, seed, rounds, max_lr, finetune_lr, batch_size):
    """Train one arm; returns ``{name: (trained network, start)}`` (lottery: the ticket and its two controls)."""
    fit = dict(seed=seed, batch_size=batch_size, progress=False)
    steps = -(-len(y) // batch_size) * epochs                  # training steps in the budget

    def train(m, pruning=None):
        Trainer(m, X, y, epochs=epochs, max_lr=max_lr, pruning=pruning, **fit).fit()
        return m

    if method == "small-dense":
        f = small_dense_filters(model, s)
        return {method: (train(default_convnet(seed=seed, filters=(f, f))), "init")}
    if method == "dense-scratch":
        return {method: (train(reinitialized(model, seed)), "init")}
    if method in ("one-shot", "rewind", "iterative"):          # after training: from the trained model
        m = copy_model(model)
        if allocation != "global":
            allocate(m, allocation, s)                         # the schedule's own pruning step then finds it done
        if method == "one-shot":
            S.one_shot(m, X, y, s, epochs, lr=finetune_lr, **fit)
        elif method == "rewind":
            S.rewind(m, X, y, s, epochs, max_lr=max_lr, **fit)
        else:
            S.iterative(m, X, y, s, epochs, rounds=min(rounds, epochs), lr=finetune_lr, **fit)
        return {method: (m, "trained")}
    m = reinitialized(model, seed)                             # every other arm: a fresh initialisation
    if method == "snip":                                       # one batch of training images scores the weights
        idx = np.random.default_rng(seed).choice(len(y), min(len(y), batch_size), replace=False)
        snip(m, normalize_images(np.asarray(X[np.sort(idx)])), y[np.sort(idx)], s)
        return {method: (train(m), "init")}
    if method == "synflow":
        return {method: (train(synflow(m, s)), "init")}
    if method == "random":
        _random_masks(m, s, allocation, np.random.default_rng(seed))
        return {method: (train(m), "init")}
    if method == "gradual":      # 'uniform': every layer to the same sparsity, as Zhu & Gupta's own code prunes
        S.gradual(m, X, y, s, epochs, max_lr=max_lr, scope="layer" if allocation == "uniform" else "global", **fit)
        return {method: (m, "init")}
    if method in ("rigl", "set"):                              # 10 mask updates in the first 75% of the steps
        end = max(1, int(0.75 * steps))
        dst = DynamicSparsity(m, s, grow="gradient" if method == "rigl" else "random",
                              update_every=max(1, end // 10), end_step=end, allocation=allocation, seed=seed)
        return {method: (train(m, pruning=dst), "init")}
    # lottery: the search shares the budget among its rounds; the ticket and its controls then train in full
    search = max(1, epochs // rounds)
    k = max(1, int(0.1 * -(-len(y) // batch_size) * search))  # rewind to 10% into the first round
    found = lottery_ticket(m, X, y, s, rounds=rounds, epochs=search, rewind_step=k, max_lr=max_lr, **fit)
    return {"lottery": (train(found["ticket"]), "init"), "lottery-reinit": (train(found["reinit"]), "init"),
            "lottery-random-mask": (train(found["random_mask"]), "init")}


def compare_methods(model, X_train, y_train, X_test, y_test, methods=tuple(METHODS), sparsities=(0.9, 0.95),
                    epochs=2, seeds=(0, 1, 2), allocation="default", rounds=3, max_lr=0.05, finetune_lr=0.002,
                    batch_size=128, progress=None):
    """Prune before, during or after training: every method at each sparsity and seed, at one epoch budget.

    The comment above :data:`METHODS` says how each arm spends its ``epochs``; :func:`summarize_methods` gives
    the mean and spread over seeds, :func:`beyond_noise` whether two of them differ.

    Parameters
    ----------
    model : Sequential
        The trained, unpruned network (not modified).  The after-training arms start from it; the others from
        a fresh initialisation of the same architecture (``seed``); small-dense narrows the course CNN.
    X_train : uint8 (N, 32, 32, 3), y_train : (N,)
        The training images every arm trains on.
    X_test : (M, 3, 32, 32) float32 normalised (or lazy), y_test : (M,)
    methods : names of :data:`METHODS`
    sparsities : fractions of the conv + linear weights pruned
    epochs : int
        The budget: training epochs of every arm.
    seeds : sequence of int
        One run per seed (initialisation, data order, masks drawn at random).
    allocation : 'default', 'all' or a list of names
        Which allocations each method runs with (:func:`allocations_of`).
    rounds : int
        Rounds of ``iterative`` and of the lottery-ticket search.
    max_lr, finetune_lr : float
        The one-cycle peak of every arm that trains (or retrains) in full; the constant rate of one-shot and
        iterative fine-tuning.
    progress : callable, optional
        Called with each record as it is made (e.g. ``print``).

    Returns
    -------
    list of dict
        One record per (method, allocation, sparsity, seed), lottery's controls included, and one
        ``method='dense'`` record: the trained model unpruned.

    Examples
    --------
    >>> import warnings
    >>> from ece662.models import default_convnet
    >>> rng = np.random.default_rng(0)
    >>> X = rng.integers(0, 256, (32, 32, 32, 3), dtype=np.uint8); y = rng.integers(0, 10, 32)
    >>> Xt = rng.standard_normal((8, 3, 32, 32)).astype(np.float32); yt = rng.integers(0, 10, 8)
    >>> with warnings.catch_warnings():
    ...     warnings.simplefilter("ignore")         # an untrained net loses fc rows: DeadClassWarning
    ...     recs = compare_methods(default_convnet(), X, y, Xt, yt, methods=("snip", "lottery"),
    ...                            sparsities=(0.9,), epochs=1, seeds=(0,), batch_size=16)
    >>> [(r["method"], r["phase"], r["measured_sparsity"]) for r in recs]
    [('dense', 'reference', 0.0), ('snip', 'before', 0.9), ('lottery', 'after', 0.9), \
('lottery-reinit', 'control', 0.9), ('lottery-random-mask', 'control', 0.9)]
    """
    methods = check_methods(methods)
    epochs = S.check_epochs(epochs)
    sparsities = [check_sparsity(s) for s in sparsities]
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise ValueError("compare_methods: give at least one seed, e.g. seeds=(0, 1, 2)")
    full = weight_count(model)
    dense = evaluate(dense_twin(model), X_test, y_test)["accuracy"]
    records = [dict(method="dense", phase="reference", allocation="-", sparsity=0.0, measured_sparsity=0.0,
                    seed=None, accuracy=dense, seconds=0.0, epochs=0, start="trained")]
    if progress:
        progress(records[0])
    for seed in seeds:
        for s in sparsities:
            for method in methods:
                if method == "dense-scratch" and s != sparsities[0]:
                    continue                                   # unpruned: once per seed, not per sparsity
                for alloc in allocations_of(method, allocation):
                    t0 = time.perf_counter()
                    trained = _arm(method, alloc, model, X_train, y_train, s, epochs, seed, rounds, max_lr,
                                   finetune_lr, batch_size)
                    seconds = round(time.perf_counter() - t0, 1)
                    for name, (m, start) in trained.items():
                        measured = 1.0 - weight_count(m) / full if name == "small-dense" else S.sparsity_of(m)
                        rec = dict(method=name, phase="control" if name in LOTTERY_CONTROLS else METHODS[method][0],
                                   allocation=alloc, sparsity=0.0 if name == "dense-scratch" else s,
                                   measured_sparsity=round(measured, 4),
                                   seed=seed, accuracy=evaluate(dense_twin(m), X_test, y_test)["accuracy"],
                                   seconds=seconds, epochs=epochs, start=start)
                        records.append(rec)
                        if progress:
                            progress(rec)
    return records


def summarize_methods(records):
    """Mean, spread (lowest, highest) and number of seeds of each (method, allocation, sparsity).

    Returns
    -------
    list of dict
        ``method, phase, allocation, sparsity, measured_sparsity, mean, low, high, spread, n, seconds``
        (``seconds``: the mean per run), in the records' order.
    """
    groups = {}
    for r in records:
        groups.setdefault((r["method"], r["allocation"], r["sparsity"]), []).append(r)
    out = []
    for (method, alloc, s), rs in groups.items():
        acc = [r["accuracy"] for r in rs]
        out.append(dict(method=method, phase=rs[0]["phase"], allocation=alloc, sparsity=s,
                        measured_sparsity=float(np.mean([r["measured_sparsity"] for r in rs])),
                        mean=float(np.mean(acc)), low=min(acc), high=max(acc), spread=max(acc) - min(acc),
                        n=len(acc), seconds=float(np.mean([r["seconds"] for r in rs]))))
    return out


def beyond_noise(a, b, test_images):
    """Whether two summaries (of :func:`summarize_methods`) differ by more than the noise: the larger of either's
    seed-to-seed spread and two standard errors of one accuracy measured on ``test_images`` images
    (``sqrt(p (1 - p) / test_images)`` at their mean ``p``), the rule the course notebook's Question 2 uses.

    Returns
    -------
    (difference, noise, beyond) : (float, float, bool)
        ``a['mean'] - b['mean']``, the noise, and ``abs(difference) > noise``.

    Examples
    --------
    >>> beyond_noise({"mean": 0.60, "spread": 0.01}, {"mean": 0.55, "spread": 0.02}, 10_000)
    (0.04999999999999993, 0.02, True)
    """
    p = (a["mean"] + b["mean"]) / 2
    noise = max(a["spread"], b["spread"], 2 * float(np.sqrt(p * (1 - p) / test_images)))
    d = a["mean"] - b["mean"]
    return d, noise, abs(d) > noise
