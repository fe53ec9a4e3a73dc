"""Training and fine-tuning over uint8 images, with pruning masks held.

``Trainer(model, X_train, y_train, ...).fit()`` runs mini-batch SGD (or Adam):
seeded shuffling, random 2-pixel reflect-padded crops and horizontal flips on the
uint8 images, CINIC-10 normalisation per batch, a one-cycle (or constant) learning
rate, validation accuracy per epoch, the best weights kept, early stopping, and a
``history`` of plain lists to plot.  A pruned model stays pruned: the layers mask
the gradients of ``weight_orig`` and the optimisers mask their updates.

Two hooks make the pruning schedules of :mod:`ece662.training.schedules` one call:

* ``pruning=`` an object with ``update(model, step)``, called *between* steps (before
  step ``step``'s forward) -- e.g. :class:`~ece662.training.schedules.GradualPruning`,
  which shrinks the masks on Zhu & Gupta's cubic schedule; between its updates the
  masks are held exactly, as for any pruned model;
* ``teacher=`` a trained model whose softened outputs the student also learns from
  (Hinton et al., 2015), see :func:`ece662.training.optim.distillation_loss`.  The teacher only
  runs forward, in eval mode: it is never updated.
"""
import warnings

import numpy as np

from ece662.data.images import NormalizedImages, normalize_images
from ece662.layers.checks import check_positive_int
from ece662.training.evaluate import predict_logits
from ece662.training.optim import (SGD, check_learning_rate, distillation_loss, one_cycle_lr,
                                   softmax_cross_entropy)


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the model holds the last good weights."""


# Cutout fills its square with the data set's mean colour, which normalises to about 0.
_MEAN_PIXEL = np.array([122, 120, 110], dtype=np.uint8)     # round(255 * CINIC-10 mean)


def augment_batch(images, rng, pad=2, flip=True, cutout=0):
    """Random crops of the ``pad``-reflect-padded images, random horizontal flips, and cutout.

    Parameters
    ----------
    images : ndarray, (B, H, W, C) uint8
    rng : numpy.random.Generator
    cutout : int
        Side of a square, centred at a random pixel and clipped at the border, painted
        with the mean colour in every image (DeVries & Taylor, 2017).  0: none; then the
        random numbers drawn are exactly those of the crop and flip alone.

    Returns
    -------
    ndarray, (B, H, W, C) uint8
    """
    B, H, W, _ = images.shape
    padded = np.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode="reflect")
    dy = rng.integers(0, 2 * pad + 1, B)
    dx = rng.integers(0, 2 * pad + 1, B)
    flips = rng.random(B) < 0.5 if flip else np.zeros(B, bool)
    out = np.empty_like(images)
    for i in range(B):           # each image gets its own offset and flip
        crop = padded[i, dy[i]:dy[i] + H, dx[i]:dx[i] + W]
        out[i] = crop[:, ::-1] if flips[i] else crop
    if cutout:
        cy, cx = rng.integers(0, H, B), rng.integers(0, W, B)
        for i in range(B):       # each image gets its own square
            y0, x0 = max(0, cy[i] - cutout // 2), max(0, cx[i] - cutout // 2)
            out[i, y0:cy[i] - cutout // 2 + cutout, x0:cx[i] - cutout // 2 + cutout] = _MEAN_PIXEL
    return out


def _check_labels(y, where):
    """``y`` as int64 (N,) labels, refusing what would silently become other labels when cast:
    NaN or inf (int64's minimum), fractions (truncated), strings, booleans, more than one axis."""
    y = np.asarray(y)
    if y.ndim != 1:
        raise ValueError(f"{where}: expected labels of shape (N,), got shape {y.shape}; pass class "
                         f"indices 0..9, not one-hot rows (use y.argmax(1))")
    if y.dtype.kind == "f":
        bad = np.flatnonzero(~np.isfinite(y) | (y != np.round(y)))
        if len(bad):
            raise ValueError(f"{where}: labels must be whole numbers 0..9, got {float(y[bad[0]])} at index "
                             f"{bad[0]} ({len(bad)} such label(s))")
    elif y.dtype.kind not in "iu":
        raise ValueError(f"{where}: labels must be integers 0..9, got dtype {y.dtype}")
    return y


def _check_data(X, y, where):
    X = np.asarray(X) if not hasattr(X, "shape") else X
    y = _check_labels(y, where)
    if len(X) != len(y):
        raise ValueError(f"{where}: X holds {len(X)} images but y holds {len(y)} labels")
    if getattr(X, "dtype", None) != np.uint8 or X.ndim != 4 or X.shape[-1] != 3:
        raise ValueError(f"{where}: expected uint8 images of shape (N, H, W, 3), got "
                         f"{getattr(X, 'dtype', '?')} {X.shape}; load them with "
                         f"get_CINIC10_data(normalize=False, channels_first=False)")
    if where.endswith("(train)") and len(y) == 0:
        raise ValueError(f"{where}: the training set is empty (0 images); pass at least one image")
    if len(y) and (y.min() < 0 or y.max() > 9):
        raise ValueError(f"{where}: labels must lie in 0..9, got {y.min()}..{y.max()}")
    return X, y.astype(np.int64)


def _first_nonfinite(model):
    """The dotted name of the first parameter holding NaN or inf, or None."""
    for name, p in model.named_parameters():
        if not np.isfinite(p).all():
            return name
    return None


class Trainer:
    """Mini-batch training of an ece662 model on uint8 NHWC images.

    Parameters
    ----------
    model : Sequential
    X_train, y_train : uint8 (N, H, W, 3), int (N,)
    X_val, y_val : optional, same kinds
    epochs, batch_size : int
    max_lr : float
        Peak learning rate of the one-cycle schedule (``schedule='onecycle'``) or the
        constant rate (``schedule='constant'``).
    optimizer : object with ``step(model)`` and a ``lr`` attribute, optional
        Default: SGD, Nesterov momentum 0.9, weight decay 5e-4.
    augment : bool
    cutout : int
        Side of the cutout square (0: none); see :func:`augment_batch`.
    label_smoothing : float in [0, 1)
        See :func:`ece662.training.optim.softmax_cross_entropy`.
    seed : int
    patience : int, optional
        Stop when validation accuracy has not improved for this many epochs.
    pruning : object with ``update(model, step)``, optional
        Called before every step with the global step number (0-based); it may shrink
        the model's masks.  Only epochs that end after its last update
        (``pruning.done(step)``) compete for the best validation weights, so the model
        returned has the schedule's final sparsity.
    teacher : Sequential, optional
        Add Hinton et al.'s distillation term from this model's logits (it is not trained).
    temperature, distill_weight : float
        The softening temperature ``T`` and the weight of the distillation term
        (see :func:`ece662.training.optim.distillation_loss`).
    on_nonfinite : {'raise', 'warn'}
        When a step makes a weight NaN or infinite, the model goes back to the weights
        from before that step, and then ``'raise'`` raises :class:`TrainingDiverged`
        naming the layer, ``'warn'`` warns (naming it) and stops training.
    progress : bool

    Raises
    ------
    ValueError
        Empty training set, ``batch_size`` or ``epochs`` not a positive whole number, a
        learning rate that is not a positive number, bad images, labels that are not whole
        numbers 0..9 (NaN, fractions, one-hot rows), ``X_val`` without ``y_val`` or the reverse.
    """

    def __init__(self, model, X_train, y_train, X_val=None, y_val=None, epochs=10, batch_size=128,
                 max_lr=0.05, schedule="onecycle", optimizer=None, augment=True, cutout=0,
                 label_smoothing=0.0, seed=0, patience=None, pruning=None, teacher=None,
                 temperature=4.0, distill_weight=0.9, on_nonfinite="raise", progress=True):
        self.X, self.y = _check_data(X_train, y_train, "Trainer (train)")
        self.X_val = self.y_val = None
        if (X_val is None) != (y_val is None):
            raise ValueError(f"Trainer: got {'X_val' if y_val is None else 'y_val'} without "
                             f"{'y_val' if y_val is None else 'X_val'}; pass both (validation images and "
                             f"their labels) or neither")
        if X_val is not None:
            self.X_val, self.y_val = _check_data(X_val, y_val, "Trainer (val)")
        if schedule not in ("onecycle", "constant"):
            raise ValueError(f"schedule must be 'onecycle' or 'constant', got {schedule!r}")
        if on_nonfinite not in ("raise", "warn"):
            raise ValueError(f"on_nonfinite must be 'raise' or 'warn', got {on_nonfinite!r}")
        if isinstance(label_smoothing, bool) or not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"Trainer: label_smoothing must be a number in [0, 1), got {label_smoothing!r}")
        if pruning is not None and not callable(getattr(pruning, "update", None)):
            raise TypeError(f"Trainer: pruning must have an update(model, step) method, got "
                            f"{type(pruning).__name__}")
        if teacher is model:
            raise ValueError("Trainer: the teacher must be a separate model (e.g. copy.deepcopy(model) "
                             "before pruning), not the model being trained")
        max_lr = check_learning_rate(max_lr, "Trainer (max_lr)")
        self.optimizer = optimizer or SGD(max_lr, momentum=0.9, nesterov=True, weight_decay=5e-4)
        self.model = model
        self.epochs = check_positive_int(epochs, "epochs", "Trainer")
        self.batch_size = check_positive_int(batch_size, "batch_size", "Trainer")
        if isinstance(cutout, bool) or not isinstance(cutout, (int, np.integer)) or cutout < 0:
            raise ValueError(f"Trainer: cutout must be a whole number of pixels >= 0 (0: none), got {cutout!r}")
        self.cutout = int(cutout)
        self.max_lr, self.schedule, self.augment = float(max_lr), schedule, augment
        self.label_smoothing = float(label_smoothing)
        self.pruning, self.teacher = pruning, teacher
        self.temperature, self.distill_weight = float(temperature), float(distill_weight)
        self.on_nonfinite = on_nonfinite
        self.rng = np.random.default_rng(seed)
        self.patience, self.progress = patience, progress
        self.history = {"epoch": [], "train_loss": [], "train_acc": [], "val_acc": [], "lr": []}
        self.best_val_acc, self.best_state = -1.0, None

    def _loss(self, logits, x, y):
        """The loss of one batch and its gradient with respect to the logits."""
        if self.teacher is None:
            return softmax_cross_entropy(logits, y, self.label_smoothing)
        was_training = self.teacher.training
        teacher_logits = self.teacher.eval()(x)          # forward only: the teacher never learns
        self.teacher.train(was_training)
        return distillation_loss(logits, teacher_logits, y, self.temperature, self.distill_weight,
                                 self.label_smoothing)

    def _diverged(self, message, good):
        """Put back the weights from before the failing step, then raise or warn."""
        self.model.load_state_dict(good)
        if self.on_nonfinite == "raise":
            raise TrainingDiverged(message)
        warnings.warn(message + "; training stopped", RuntimeWarning, stacklevel=3)

    def fit(self):
        """Train; returns ``history``. The model ends with the best validation weights."""
        from tqdm.auto import tqdm
        N = len(self.y)
        steps_per_epoch = -(-N // self.batch_size)
        total = steps_per_epoch * self.epochs
        step, stale, stopped = 0, 0, False
        for epoch in range(1, self.epochs + 1):
            self.model.train()
            order = self.rng.permutation(N)
            losses, correct, seen = [], 0, 0
            bar = tqdm(range(steps_per_epoch), desc=f"epoch {epoch}/{self.epochs}",
                       disable=not self.progress, leave=False)
            for b in bar:
                if self.pruning is not None:
                    self.pruning.update(self.model, step)     # masks change only here, between steps
                idx = np.sort(order[b * self.batch_size:(b + 1) * self.batch_size])
                images = np.asarray(self.X[idx])
                if self.augment:
                    images = augment_batch(images, self.rng, cutout=self.cutout)
                x, y = normalize_images(images), self.y[idx]
                lr = (one_cycle_lr(step, total, self.max_lr) if self.schedule == "onecycle"
                      else self.max_lr)
                self.optimizer.lr = lr
                good = self.model.state_dict()      # copies: the weights before this step
                logits = self.model(x)
                loss, dlogits = self._loss(logits, x, y)
                if not np.isfinite(loss):
                    self._diverged(f"the loss became {loss} at epoch {epoch}, step {b + 1}; the model keeps "
                                   f"the weights from before that step. Lower the learning rate (now {lr:.4g})",
                                   good)
                    stopped = True
                    break
                self.model.zero_grad()
                self.model.backward(dlogits, need_input_grad=False)
                self.optimizer.step(self.model)
                bad = _first_nonfinite(self.model)
                if bad is not None:
                    self._diverged(f"the weights of {bad} became NaN or infinite at epoch {epoch}, step "
                                   f"{b + 1}; the model keeps the weights from before that step. Lower the "
                                   f"learning rate (now {lr:.4g})", good)
                    stopped = True
                    break
                losses.append(loss)
                correct += int((logits.argmax(1) == y).sum())
                seen += len(y)
                step += 1
                if b % 20 == 0:
                    bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}", lr=f"{lr:.3g}")
            if stopped and not losses:
                break
            val_acc = float("nan")
            if self.X_val is not None:
                pred = predict_logits(self.model, NormalizedImages(self.X_val)).argmax(1)
                val_acc = float(np.mean(pred == self.y_val))
            h = self.history
            h["epoch"].append(epoch)
            h["train_loss"].append(float(np.mean(losses)))
            h["train_acc"].append(correct / seen)
            h["val_acc"].append(val_acc)
            h["lr"].append(float(lr))
            if self.progress:
                print(f"epoch {epoch:3d}  loss {h['train_loss'][-1]:.4f}  train acc {h['train_acc'][-1]:.4f}"
                      f"  val acc {val_acc:.4f}")
            final_masks = self.pruning is None or not hasattr(self.pruning, "done") or self.pruning.done(step)
            if self.X_val is not None and final_masks:
                if val_acc > self.best_val_acc:
                    self.best_val_acc, stale = val_acc, 0
                    self.best_state = self.model.state_dict()
                else:
                    stale += 1
                    if self.patience is not None and stale >= self.patience:
                        break
            if stopped:
                break
        if self.best_state is not None:
            self.model.load_state_dict(self.best_state)
        return self.history
