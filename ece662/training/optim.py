"""Loss and update rules.  Gradients come from the layers' ``backward``; updates live here.

Pruned parameters: a layer's gradient for ``weight_orig`` is already multiplied by
``weight_mask``; the optimisers also multiply the *whole* update (weight decay and
momentum included) by the mask, so neither the effective weight nor ``weight_orig``
moves at a pruned position and stale momentum can never revive it.
"""
import numpy as np


def softmax_cross_entropy(logits, y, label_smoothing=0.0):
    """Mean cross-entropy of ``logits (N, K)`` against labels ``y (N,)`` and its gradient.

    Numerically stable: the row maximum is subtracted before exponentiating.
    ``label_smoothing = eps`` (Szegedy et al., 2016) trains against the target
    ``(1 - eps) * onehot(y) + eps / K`` instead of ``onehot(y)``, as torch's
    ``CrossEntropyLoss(label_smoothing=eps)`` does; the gradient is then
    ``(softmax(z) - target) / N``.

    Returns
    -------
    loss : float
    dlogits : ndarray, (N, K) float32

    Examples
    --------
    >>> loss, d = softmax_cross_entropy(np.zeros((2, 4), np.float32), np.array([0, 3]))
    >>> round(loss, 4)   # log(4)
    1.3863
    """
    logits = np.asarray(logits, dtype=np.float64)
    y = np.asarray(y)
    N, K = logits.shape
    if y.shape != (N,):
        raise ValueError(f"softmax_cross_entropy: expected y of shape ({N},), got {y.shape}")
    if N and (y.min() < 0 or y.max() >= K):
        raise ValueError(f"softmax_cross_entropy: labels must lie in 0..{K - 1}, got {y.min()}..{y.max()}")
    if isinstance(label_smoothing, bool) or not 0.0 <= float(label_smoothing) < 1.0:
        raise ValueError(f"softmax_cross_entropy: label_smoothing must be a number in [0, 1), "
                         f"got {label_smoothing!r}")
    if N == 0:
        raise ValueError("softmax_cross_entropy: the batch is empty (0 rows); the mean loss of "
                         "no examples is undefined")
    if not np.isfinite(logits).all():        # a diverged model: report NaN, let the caller stop
        return float("nan"), np.full(logits.shape, np.nan, dtype=np.float32)
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    target = np.full((N, K), label_smoothing / K)
    target[np.arange(N), y] += 1.0 - label_smoothing
    loss = -(target * log_probs).sum(axis=1).mean()
    d = np.exp(log_probs) - target
    return float(loss), (d / N).astype(np.float32)


def _softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def distillation_loss(logits, teacher_logits, y, temperature=4.0, weight=0.9, label_smoothing=0.0):
    """Knowledge distillation (Hinton, Vinyals & Dean, 2015): learn the labels and the teacher.

    With ``T = temperature``, ``w = weight``, ``p = softmax(logits / T)`` (the student's
    softened guess) and ``q = softmax(teacher_logits / T)`` (the teacher's)::

        loss = (1 - w) * CE(logits, y)  +  w * T**2 * KL(q || p)

    where ``KL(q || p) = mean over the batch of sum_k q_k (log q_k - log p_k)``.  A high
    ``T`` spreads the teacher's probability over the wrong classes too ("a truck looks more
    like a car than a frog"), which is what the student learns from.  The ``T**2`` keeps
    the soft term's gradient, ``w * T * (p - q) / N``, on the scale of the hard term's as
    ``T`` changes.  The teacher's logits are data here: no gradient flows to the teacher.

    Parameters
    ----------
    logits, teacher_logits : ndarray, (N, K)
    y : ndarray, (N,) int
    temperature : float > 0
    weight : float in [0, 1]
        0 is plain cross-entropy, 1 learns from the teacher alone.
    label_smoothing : float
        Applied to the hard term.

    Returns
    -------
    loss : float
    dlogits : ndarray, (N, K) float32

    Examples
    --------
    >>> z = np.array([[2.0, 0.0, -1.0]])
    >>> loss, d = distillation_loss(z, z, np.array([0]), temperature=3.0, weight=1.0)
    >>> round(loss, 12), float(abs(d).max())      # a student that matches its teacher
    (0.0, 0.0)
    """
    logits = np.asarray(logits, dtype=np.float64)
    teacher_logits = np.asarray(teacher_logits, dtype=np.float64)
    if teacher_logits.shape != logits.shape:
        raise ValueError(f"distillation_loss: teacher logits of shape {teacher_logits.shape} do not match "
                         f"the student's {logits.shape}; the teacher must have as many classes")
    if isinstance(temperature, bool) or not np.isfinite(temperature) or temperature <= 0:
        raise ValueError(f"distillation_loss: temperature must be a positive number, got {temperature!r}")
    if isinstance(weight, bool) or not 0.0 <= weight <= 1.0:
        raise ValueError(f"distillation_loss: weight must be a number in [0, 1], got {weight!r}")
    hard, dhard = softmax_cross_entropy(logits, y, label_smoothing)
    if not (np.isfinite(hard) and np.isfinite(teacher_logits).all()):
        return float("nan"), np.full(logits.shape, np.nan, dtype=np.float32)
    N, T = len(logits), float(temperature)
    p, q = _softmax(logits / T), _softmax(teacher_logits / T)
    log_p = np.log(np.maximum(p, 1e-300))
    log_q = np.log(np.maximum(q, 1e-300))
    soft = (q * (log_q - log_p)).sum(axis=1).mean()
    dsoft = T * (p - q) / N              # d(T**2 * KL) / d logits
    loss = (1 - weight) * hard + weight * T * T * soft
    return float(loss), ((1 - weight) * dhard + weight * dsoft).astype(np.float32)


def check_learning_rate(lr, where):
    if isinstance(lr, bool) or not isinstance(lr, (int, float, np.floating)) or not np.isfinite(lr) or lr <= 0:
        raise ValueError(f"{where}: the learning rate must be a positive number, got {lr!r}")
    return float(lr)


def _trainable(model):
    """``(key, module, name, mask or None)`` for every parameter with a gradient."""
    for mod_name, m in model.named_modules():
        for name, p in m._parameters.items():
            if p is None or name not in m.grads:
                continue
            mask = m._buffers.get(name[:-len("_orig")] + "_mask") if name.endswith("_orig") else None
            yield f"{mod_name}.{name}", m, name, mask


class SGD:
    """SGD with (Nesterov) momentum and L2 weight decay, torch's formulation:
    ``g = grad + wd * p;  v = mu * v + g;  p -= lr * (g + mu * v if nesterov else v)``."""

    def __init__(self, lr=0.01, momentum=0.0, nesterov=False, weight_decay=0.0):
        self.lr = check_learning_rate(lr, "SGD")
        self.momentum, self.nesterov, self.weight_decay = float(momentum), bool(nesterov), float(weight_decay)
        self.state = {}

    def step(self, model):
        for key, m, name, mask in _trainable(model):
            p = m._parameters[name]
            g = m.grads[name]
            if self.weight_decay:
                g = g + self.weight_decay * p
            if self.momentum:
                v = self.state.get(key)
                v = g.copy() if v is None else self.momentum * v + g
                self.state[key] = v
                g = g + self.momentum * v if self.nesterov else v
            update = self.lr * g
            if mask is not None:
                update = update * mask
            p -= update.astype(np.float32)


class Adam:
    """Adam (Kingma & Ba, 2015) with optional L2 weight decay added to the gradient."""

    def __init__(self, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
        self.lr = check_learning_rate(lr, "Adam")
        self.b1, self.b2 = betas
        self.eps, self.weight_decay = eps, weight_decay
        self.state, self.t = {}, 0

    def step(self, model):
        self.t += 1
        for key, m, name, mask in _trainable(model):
            p = m._parameters[name]
            g = m.grads[name]
            if self.weight_decay:
                g = g + self.weight_decay * p
            mom, vel = self.state.get(key, (np.zeros_like(p), np.zeros_like(p)))
            mom = self.b1 * mom + (1 - self.b1) * g
            vel = self.b2 * vel + (1 - self.b2) * g * g
            self.state[key] = (mom, vel)
            mhat = mom / (1 - self.b1 ** self.t)
            vhat = vel / (1 - self.b2 ** self.t)
            update = self.lr * mhat / (np.sqrt(vhat) + self.eps)
            if mask is not None:
                update = update * mask
            p -= update.astype(np.float32)


def one_cycle_lr(step, total_steps, max_lr, pct_start=0.25, div_factor=25.0, final_div=1e4):
    """One-cycle schedule (Smith, 2018): cosine warm-up to ``max_lr``, then cosine decay."""
    warm = max(1, int(total_steps * pct_start))
    start, end = max_lr / div_factor, max_lr / final_div
    if step < warm:
        t = step / warm
        return start + (max_lr - start) * (1 - np.cos(np.pi * t)) / 2
    t = min(1.0, (step - warm) / max(1, total_steps - warm))
    return end + (max_lr - end) * (1 + np.cos(np.pi * t)) / 2
