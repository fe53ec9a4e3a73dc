"""Training and fine-tuning over uint8 images, with pruning masks held.

``Trainer(model, X_train, y_train, ...).fit()`` runs mini-batch SGD (or Adam):
seeded shuffling, random 2-pixel reflect-padded crops and horizontal flips on the
uint8 images, CINIC-10 normalisation per batch, a one-cycle (or constant) learning
rate, validation accuracy per epoch, the best weights kept, early stopping, and a
``history`` of plain lists to plot.  A pruned model stays pruned: the layers mask
the gradients of ``weight_orig`` and the optimisers mask their updates.
"""
import numpy as np

from ece662.data_utils import NormalizedImages, normalize_images
from ece662.optim import SGD, check_learning_rate, one_cycle_lr, softmax_cross_entropy
from ece662.pruning_helper import predict_logits


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the model holds the last good weights."""


def augment_batch(images, rng, pad=2, flip=True):
    """Random crops of the ``pad``-reflect-padded images and random horizontal flips.

    Parameters
    ----------
    images : ndarray, (B, H, W, C) uint8
    rng : numpy.random.Generator

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
    return out


def _check_data(X, y, where):
    X = np.asarray(X) if not hasattr(X, "shape") else X
    y = np.asarray(y)
    if len(X) != len(y):
        raise ValueError(f"{where}: X holds {len(X)} images but y holds {len(y)} labels")
    if getattr(X, "dtype", None) != np.uint8 or X.ndim != 4 or X.shape[-1] != 3:
        raise ValueError(f"{where}: expected uint8 images of shape (N, H, W, 3), got "
                         f"{getattr(X, 'dtype', '?')} {X.shape}; load them with "
                         f"get_CINIC10_data(normalize=False, channels_first=False)")
    if len(y) and (y.min() < 0 or y.max() > 9):
        raise ValueError(f"{where}: labels must lie in 0..9, got {y.min()}..{y.max()}")
    return X, y.astype(np.int64)


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
    seed : int
    patience : int, optional
        Stop when validation accuracy has not improved for this many epochs.
    progress : bool
    """

    def __init__(self, model, X_train, y_train, X_val=None, y_val=None, epochs=10, batch_size=128,
                 max_lr=0.05, schedule="onecycle", optimizer=None, augment=True, seed=0,
                 patience=None, progress=True):
        self.X, self.y = _check_data(X_train, y_train, "Trainer (train)")
        self.X_val = self.y_val = None
        if X_val is not None:
            self.X_val, self.y_val = _check_data(X_val, y_val, "Trainer (val)")
        if schedule not in ("onecycle", "constant"):
            raise ValueError(f"schedule must be 'onecycle' or 'constant', got {schedule!r}")
        max_lr = check_learning_rate(max_lr, "Trainer (max_lr)")
        self.optimizer = optimizer or SGD(max_lr, momentum=0.9, nesterov=True, weight_decay=5e-4)
        self.model, self.epochs, self.batch_size = model, int(epochs), int(batch_size)
        self.max_lr, self.schedule, self.augment = float(max_lr), schedule, augment
        self.rng = np.random.default_rng(seed)
        self.patience, self.progress = patience, progress
        self.history = {"epoch": [], "train_loss": [], "train_acc": [], "val_acc": [], "lr": []}
        self.best_val_acc, self.best_state = -1.0, None

    def fit(self):
        """Train; returns ``history``. The model ends with the best validation weights."""
        from tqdm.auto import tqdm
        N = len(self.y)
        steps_per_epoch = -(-N // self.batch_size)
        total = steps_per_epoch * self.epochs
        step, stale = 0, 0
        for epoch in range(1, self.epochs + 1):
            self.model.train()
            order = self.rng.permutation(N)
            losses, correct = [], 0
            bar = tqdm(range(steps_per_epoch), desc=f"epoch {epoch}/{self.epochs}",
                       disable=not self.progress, leave=False)
            for b in bar:
                idx = np.sort(order[b * self.batch_size:(b + 1) * self.batch_size])
                images = np.asarray(self.X[idx])
                if self.augment:
                    images = augment_batch(images, self.rng)
                x, y = normalize_images(images), self.y[idx]
                lr = (one_cycle_lr(step, total, self.max_lr) if self.schedule == "onecycle"
                      else self.max_lr)
                self.optimizer.lr = lr
                good = self.model.state_dict()      # copies: the weights before this step
                logits = self.model(x)
                loss, dlogits = softmax_cross_entropy(logits, y)
                if not np.isfinite(loss):
                    self.model.load_state_dict(good)
                    raise TrainingDiverged(
                        f"the loss became {loss} at epoch {epoch}, step {b + 1}; the model keeps the "
                        f"weights from before that step. Lower the learning rate (now {lr:.4g})")
                self.model.zero_grad()
                self.model.backward(dlogits, need_input_grad=False)
                self.optimizer.step(self.model)
                if not all(np.isfinite(p).all() for p in self.model.parameters()):
                    self.model.load_state_dict(good)
                    raise TrainingDiverged(
                        f"the weights became NaN or infinite at epoch {epoch}, step {b + 1}; the model "
                        f"keeps the weights from before that step. Lower the learning rate (now {lr:.4g})")
                losses.append(loss)
                correct += int((logits.argmax(1) == y).sum())
                step += 1
                if b % 20 == 0:
                    bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}", lr=f"{lr:.3g}")
            val_acc = float("nan")
            if self.X_val is not None:
                pred = predict_logits(self.model, NormalizedImages(self.X_val)).argmax(1)
                val_acc = float(np.mean(pred == self.y_val))
            h = self.history
            h["epoch"].append(epoch)
            h["train_loss"].append(float(np.mean(losses)))
            h["train_acc"].append(correct / N)
            h["val_acc"].append(val_acc)
            h["lr"].append(float(lr))
            if self.progress:
                print(f"epoch {epoch:3d}  loss {h['train_loss'][-1]:.4f}  train acc {h['train_acc'][-1]:.4f}"
                      f"  val acc {val_acc:.4f}")
            if self.X_val is not None:
                if val_acc > self.best_val_acc:
                    self.best_val_acc, stale = val_acc, 0
                    self.best_state = self.model.state_dict()
                else:
                    stale += 1
                    if self.patience is not None and stale >= self.patience:
                        break
        if self.best_state is not None:
            self.model.load_state_dict(self.best_state)
        return self.history

