"""Loss and update rules.  Gradients come from the layers' ``backward``; updates live here.

Pruned parameters: a layer's gradient for ``weight_orig`` is already multiplied by
``weight_mask``; the optimisers also multiply the *whole* update (weight decay and
momentum included) by the mask, so neither the effective weight nor ``weight_orig``
moves at a pruned position and stale momentum can never revive it.
"""
import numpy as np


def softmax_cross_entropy(logits, y):
    """Mean cross-entropy of ``logits (N, K)`` against labels ``y (N,)`` and its gradient.

    Numerically stable: the row maximum is subtracted before exponentiating.

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
    if not np.isfinite(logits).all():        # a diverged model: report NaN, let the caller stop
        return float("nan"), np.full(logits.shape, np.nan, dtype=np.float32)
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    loss = -log_probs[np.arange(N), y].mean()
    d = np.exp(log_probs)
    d[np.arange(N), y] -= 1
    return float(loss), (d / N).astype(np.float32)


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
