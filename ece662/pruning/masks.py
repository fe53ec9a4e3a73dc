"""Pure mask functions: scores + amount (+ the previous mask) -> a boolean mask.

Nothing here knows about layers.  ``True`` means *kept*, ``False`` means *pruned*.
Every function returns a new mask of the scores' shape that is a subset of the
previous mask (masks only ever shrink), and prunes an *exact* number of entries
or channels, however many scores tie.

How many: :func:`amount_to_count`.  An ``int`` amount is a count; a ``float`` in
[0, 1] is a fraction of what is still unpruned, rounded half-to-even
(``0.4 * 17 = 6.8 -> 7``; ``0.5 * 5 = 2.5 -> 2``).  So ``1`` prunes one unit and
``1.0`` prunes all of them, as in ``torch.nn.utils.prune``.
"""
import numbers

import numpy as np


def amount_to_count(amount, n):
    """How many of ``n`` units an ``amount`` prunes.

    Raises
    ------
    TypeError
        ``amount`` is not an int or a float (bools are refused too).
    ValueError
        A negative int, a float outside [0, 1], or a count above ``n``.

    Examples
    --------
    >>> amount_to_count(0.4, 17), amount_to_count(0.5, 5), amount_to_count(1, 10), amount_to_count(1.0, 10)
    (7, 2, 1, 10)
    """
    validate_amount(amount)
    if isinstance(amount, numbers.Integral):
        if amount > n:
            raise ValueError(f"amount={amount} is more than the {n} units that can be pruned; "
                             f"use a float such as {min(1.0, amount / max(n, 1)):.2f} for a fraction")
        return int(amount)
    return int(round(amount * n))      # Python's round is round-half-to-even


def check_sparsity(sparsity, name="sparsity", where=None):
    """An overall sparsity: the fraction of the weights to be zero, in [0, 1) (1 would leave nothing).

    Unlike an ``amount`` (a count, or a fraction of what is still kept), a sparsity is the target for the
    whole: the schedules, ERK, SynFlow and dynamic sparse training all take one.  Returns it as a float.
    """
    if isinstance(sparsity, (bool, np.bool_)) or not isinstance(sparsity, numbers.Real) \
            or not 0.0 <= sparsity < 1.0:
        raise ValueError(f"{where + ': ' if where else ''}{name} must be a fraction in [0, 1), got {sparsity!r}: "
                         f"the overall sparsity, e.g. 0.8 prunes 80% of the weights")
    return float(sparsity)


def validate_amount(amount):
    """Check an amount's type and range, before anything is pruned; returns it.

    What it can be measured against (a count above the number of units) is checked later,
    by :func:`amount_to_count`.
    """
    if isinstance(amount, (bool, np.bool_)) or not isinstance(amount, numbers.Real):
        raise TypeError(f"amount must be an int (a count) or a float in [0, 1] (a fraction), "
                        f"got {type(amount).__name__} {amount!r}")
    if isinstance(amount, numbers.Integral):
        if amount < 0:
            raise ValueError(f"amount={amount} must be a non-negative count")
    elif not 0.0 <= amount <= 1.0:
        raise ValueError(f"amount={amount} is a float, so it must be a fraction in [0, 1]")
    return amount


def _prev(mask, shape):
    if mask is None:
        return np.ones(shape, dtype=bool)
    mask = np.asarray(mask)
    if mask.shape != tuple(shape):
        raise ValueError(f"the previous mask has shape {mask.shape}, expected {tuple(shape)}")
    return mask.astype(bool, copy=True)


def _prune_lowest(mask_flat, scores_flat, k):
    """Prune the k lowest-scoring kept entries (ties: lower index first). In place."""
    kept = np.flatnonzero(mask_flat)
    order = np.argsort(scores_flat[kept], kind="stable")
    mask_flat[kept[order[:k]]] = False


def l1_unstructured(scores, amount, mask=None):
    """Prune the ``amount`` entries with the smallest ``|scores|`` among those still kept.

    Parameters
    ----------
    scores : ndarray, any shape
        Usually the (masked) weights.
    amount : int or float
        Counted over the entries that ``mask`` still keeps.
    mask : ndarray of bool, same shape, optional
        The previous mask (all True when absent).

    Returns
    -------
    ndarray of bool, the shape of ``scores``

    Examples
    --------
    >>> l1_unstructured(np.array([0.5, -0.1, 2.0, 0.3]), 2)
    array([ True, False,  True, False])
    """
    scores = np.asarray(scores)
    new = _prev(mask, scores.shape)
    k = amount_to_count(amount, int(new.sum()))
    _prune_lowest(new.reshape(-1), np.abs(scores).reshape(-1).astype(np.float64), k)
    return new


def random_unstructured(shape, amount, rng, mask=None):
    """Prune ``amount`` entries chosen uniformly at random among those still kept.

    Examples
    --------
    >>> m = random_unstructured((4, 5), 0.5, np.random.default_rng(0))
    >>> int((~m).sum())
    10
    """
    new = _prev(mask, shape)
    k = amount_to_count(amount, int(new.sum()))
    kept = np.flatnonzero(new)
    new.reshape(-1)[rng.choice(kept, size=k, replace=False)] = False
    return new


def _check_dim(ndim, dim):
    if ndim < 2:
        raise ValueError(f"structured pruning needs a tensor with at least 2 dimensions, got {ndim}-D; "
                         f"use unstructured pruning for biases and other vectors")
    if not isinstance(dim, (int, np.integer)) or isinstance(dim, bool) or not -ndim <= dim < ndim:
        raise IndexError(f"dim={dim!r} is out of range for a {ndim}-D tensor (expected {-ndim}..{ndim - 1})")
    return dim % ndim


def _channel_view(a, dim):
    """``a`` as (channels along dim, everything else)."""
    return np.moveaxis(a, dim, 0).reshape(a.shape[dim], -1)


def channel_norms(scores, n, dim):
    """The Ln norm of every slice along ``dim`` (n = 1, 2, ..., inf, -inf or 'fro').

    Examples
    --------
    >>> channel_norms(np.array([[3., 4.], [1., 0.]]), 2, 0)
    array([5., 1.])
    """
    flat = _channel_view(np.asarray(scores, dtype=np.float64), dim)
    if n == "fro":
        n = 2
    if isinstance(n, bool) or not (isinstance(n, numbers.Real)):
        raise ValueError(f"n must be a number, inf, -inf or 'fro', got {n!r}")
    return np.linalg.norm(flat, ord=n, axis=1)


def _expand(channel_keep, shape, dim):
    """A full-shape mask that keeps whole channels along ``dim``."""
    view = [1] * len(shape)
    view[dim] = shape[dim]
    return np.broadcast_to(channel_keep.reshape(view), shape)


def ln_structured(scores, amount, n, dim, mask=None):
    """Prune whole channels along ``dim`` with the smallest Ln norm.

    Only channels not already fully pruned are candidates, and ``amount`` counts
    over them (as torch's repeated pruning does).  The new mask is the old mask with
    the chosen channels set to False.

    Raises
    ------
    ValueError
        ``scores`` has fewer than 2 dimensions.
    IndexError
        ``dim`` is out of range.

    Examples
    --------
    >>> w = np.array([[1., 1.], [5., 5.], [0.1, 0.]])
    >>> ln_structured(w, 1, n=2, dim=0)
    array([[ True,  True],
           [ True,  True],
           [False, False]])
    """
    scores = np.asarray(scores)
    dim = _check_dim(scores.ndim, dim)
    new = _prev(mask, scores.shape)
    alive = _channel_view(new, dim).any(axis=1)
    k = amount_to_count(amount, int(alive.sum()))
    norms = channel_norms(scores, n, dim)
    keep = alive.copy()
    _prune_lowest(keep, norms, k)
    return new & _expand(keep, scores.shape, dim)


def random_structured(shape, amount, dim, rng, mask=None):
    """Prune ``amount`` whole channels along ``dim``, chosen at random among live ones."""
    dim = _check_dim(len(shape), dim)
    new = _prev(mask, shape)
    alive = np.flatnonzero(_channel_view(new, dim).any(axis=1))
    k = amount_to_count(amount, alive.size)
    keep = np.ones(shape[dim], dtype=bool)
    keep[rng.choice(alive, size=k, replace=False)] = False
    return new & _expand(keep, tuple(shape), dim)


def global_l1_unstructured(scores_list, amount, masks=None):
    """One magnitude ranking over several tensors at once (torch's ``global_unstructured``).

    The tensors are flattened and joined into one vector, which is pruned like a single
    tensor by :func:`l1_unstructured`: ``amount`` counts over the entries still kept
    anywhere, and the ``k`` smallest ``|score|`` among them are pruned, wherever they are.

    Returns
    -------
    list of ndarray of bool, one per tensor

    Examples
    --------
    >>> a, b = np.array([1., 9.]), np.array([[3., 0.5], [7., 2.]])
    >>> [m.tolist() for m in global_l1_unstructured([a, b], 3)]
    [[False, True], [[True, False], [True, False]]]
    """
    scores_list = [np.asarray(s) for s in scores_list]
    if not scores_list:
        raise ValueError("global pruning needs at least one tensor")
    masks = masks or [None] * len(scores_list)
    prev = np.concatenate([_prev(m, s.shape).reshape(-1) for m, s in zip(masks, scores_list)])
    flat_scores = np.concatenate([s.reshape(-1) for s in scores_list])
    flat_new = l1_unstructured(flat_scores, amount, prev)
    out, start = [], 0
    for s in scores_list:
        out.append(flat_new[start:start + s.size].reshape(s.shape))
        start += s.size
    return out


def global_ln_structured(scores_list, amount, n, dim, masks=None, normalize=False,
                         keep_one_per_tensor=True):
    """Rank the live channels along ``dim`` of several tensors together by Ln norm.

    Parameters
    ----------
    scores_list : list of ndarray
        Each with at least 2 dimensions; they may differ in shape.
    amount : int or float
        Counted over the live channels of all tensors together.
    normalize : bool
        Divide each tensor's channel norms by the root mean square of its live channels'
        norms, so tensors of different scale compete fairly.
    keep_one_per_tensor : bool
        Never prune a tensor's last live channel (its strongest is left out of the ranking).

    Returns
    -------
    list of ndarray of bool

    Examples
    --------
    >>> a = np.array([[1., 1.], [0.1, 0.1]]); b = np.array([[5., 5.], [2., 2.], [3., 3.]])
    >>> [m[:, 0].tolist() for m in global_ln_structured([a, b], 2, 2, 0)]
    [[True, False], [True, False, True]]
    """
    if not scores_list:
        raise ValueError("global pruning needs at least one tensor")
    masks = masks or [None] * len(scores_list)
    norms, alive, owner, index, prevs = [], [], [], [], []
    for i, (s, m) in enumerate(zip(scores_list, masks)):
        s = np.asarray(s)
        d = _check_dim(s.ndim, dim)
        prev = _prev(m, s.shape)
        live = _channel_view(prev, d).any(axis=1)
        nrm = channel_norms(s, n, d)
        if normalize and live.any():
            rms = np.sqrt(np.mean(nrm[live] ** 2))
            nrm = nrm / rms if rms > 0 else nrm
        candidate = live.copy()
        if keep_one_per_tensor and live.any():
            best = np.flatnonzero(live)[np.argmax(nrm[live])]
            candidate[best] = False
        norms.append(nrm)
        alive.append(candidate)
        owner.append(np.full(len(nrm), i))
        index.append(np.arange(len(nrm)))
        prevs.append((prev, d, live))
    total_live = int(sum(p[2].sum() for p in prevs))
    k = amount_to_count(amount, total_live)
    cand = np.concatenate(alive)
    if k > cand.sum():
        raise ValueError(f"cannot prune {k} of {total_live} channels while keeping one per tensor; "
                         f"lower the amount or pass allow_empty_layers=True")
    flat_norms, flat_owner, flat_index = np.concatenate(norms), np.concatenate(owner), np.concatenate(index)
    keep = cand.copy()
    _prune_lowest(keep, flat_norms, k)
    pruned = cand & ~keep
    out = []
    for i, (prev, d, _) in enumerate(prevs):
        channel_keep = np.ones(prev.shape[d], dtype=bool)
        channel_keep[flat_index[pruned & (flat_owner == i)]] = False
        out.append(prev & _expand(channel_keep, prev.shape, d))
    return out


# ============================================================================ allocation: how much per layer
def lamp_scores(weights):
    """LAMP scores of one layer's weights (Lee, Park, Mo, Ahn and Shin, "Layer-adaptive sparsity for the
    magnitude-based pruning", ICLR 2021).

    A weight's score is its square over the sum of the squares of every weight of the same layer that is
    at least as large::

        score(u) = w_u^2 / sum_{v : |w_v| >= |w_u|} w_v^2

    so the largest weight of every layer scores 1, and scores of different layers can be ranked together:
    pruning the globally lowest scores lets each layer keep more or fewer weights than a global magnitude
    threshold would (a layer of small weights is not emptied just because its weights are small).  Weights
    of equal magnitude share their score.  A layer whose weights are all zero scores 0 everywhere.

    Parameters
    ----------
    weights : ndarray, any shape

    Returns
    -------
    ndarray of float64, the shape of ``weights``

    Examples
    --------
    >>> lamp_scores(np.array([1.0, -2.0, 3.0]))        # 1/(1+4+9), 4/(4+9), 9/9
    array([0.07142857, 0.30769231, 1.        ])
    """
    w = np.asarray(weights, dtype=np.float64)
    sq = np.square(w).reshape(-1)
    order = np.argsort(sq, kind="stable")
    s = sq[order]                                         # ascending squares
    suffix = np.cumsum(s[::-1])[::-1]                     # suffix[i] = sum of s[i:]
    first = np.searchsorted(s, s, side="left")            # a tie group's denominator starts at its first
    denom = suffix[first]
    out = np.zeros_like(sq)
    out[order] = np.divide(s, denom, out=np.zeros_like(s), where=denom > 0)
    return out.reshape(w.shape)


def erk_densities(shapes, density, power=1.0):
    """Erdős-Rényi-Kernel densities per layer (Evci, Gale, Menick, Castro and Elsen, "Rigging the lottery:
    making all tickets winners", ICML 2020), for an overall ``density`` (1 - sparsity).

    A layer of shape ``(n_out, n_in, kh, kw)`` (or ``(n_out, n_in)``) gets a density proportional to
    ``(n_out + n_in + kh + kw) / (n_out * n_in * kh * kw)``: small layers keep more of their weights.  The
    common factor is chosen so that the kept weights add up to ``density`` of all weights.  A layer whose
    share would exceed 1 is kept dense and the factor is found again for the others, until none does
    (the paper's redistribution).

    Parameters
    ----------
    shapes : list of tuple
        Each layer's weight shape.
    density : float in (0, 1]
        The fraction of all weights to keep.
    power : float
        The paper's exponent on the ratio (1.0; 0.0 gives the uniform allocation).

    Returns
    -------
    list of float
        Each layer's density, in ``shapes``' order; ``sum(d * size) == density * sum(size)``.

    Examples
    --------
    >>> [round(d, 3) for d in erk_densities([(32, 3, 5, 5), (32, 32, 3, 3), (10, 1152)], 0.1)]
    [0.034, 0.014, 0.183]

    (The course CNN's classifier, 10 x 1152, has the largest ratio: ERK keeps more of it, unlike a
    global magnitude threshold, which leaves fc at 94% sparsity when the network is at 90%.)
    """
    if not (isinstance(density, numbers.Real) and 0 < density <= 1):
        raise ValueError(f"erk_densities: density must be a fraction in (0, 1], got {density!r}")
    sizes = [float(np.prod(s)) for s in shapes]
    raw = [(sum(s) / n) ** power for s, n in zip(shapes, sizes)]
    dense = set()
    while True:
        # kept weights: the dense layers' whole size plus eps * raw * size for the others
        budget = density * sum(sizes) - sum(sizes[i] for i in dense)
        divisor = sum(raw[i] * sizes[i] for i in range(len(shapes)) if i not in dense)
        eps = budget / divisor if divisor > 0 else 0.0
        over = [i for i in range(len(shapes)) if i not in dense and eps * raw[i] > 1]
        if not over:
            break
        dense |= {max(over, key=lambda i: raw[i])}     # the largest share goes dense first, then retry
    return [1.0 if i in dense else eps * raw[i] for i in range(len(shapes))]


# ============================================================================ N:M sparsity
def nm_unstructured(scores, n, m, mask=None):
    """Keep at most ``n`` of every ``m`` consecutive weights along each output row ("N:M" sparsity, e.g. the
    2:4 pattern that sparse tensor cores run; Mishra et al., "Accelerating sparse deep neural networks",
    2021): the ``n`` largest ``|scores|`` of each group survive.

    ``scores`` is read as rows (``shape[0]``, the output units or filters) of ``K = size / shape[0]``
    consecutive entries (a conv filter's ``C * HH * WW`` in NCHW order); ``K`` must be a multiple of ``m``.
    Entries the previous ``mask`` pruned stay pruned and count as the group's smallest.

    Examples
    --------
    >>> nm_unstructured(np.array([[0.1, -3.0, 2.0, 0.5, 4.0, 0.0, -1.0, 0.2]]), 2, 4).astype(int)
    array([[0, 1, 1, 0, 1, 0, 1, 0]])
    """
    scores = np.asarray(scores)
    for value, what in ((n, "n"), (m, "m")):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
            raise ValueError(f"nm_unstructured: {what} must be a positive whole number, got {value!r}")
    if n > m:
        raise ValueError(f"nm_unstructured: n={n} of every m={m} cannot survive; n must be at most m")
    if scores.ndim < 2 or scores.size == 0:
        raise ValueError(f"nm_unstructured: expected a weight of shape (out, ...), got {scores.shape}")
    rows, K = scores.shape[0], scores.size // scores.shape[0]
    if K % m:
        raise ValueError(f"nm_unstructured: each row holds {K} weights, not a multiple of m={m}; "
                         f"choose m dividing {K}")
    new = _prev(mask, scores.shape)
    groups = np.abs(scores).astype(np.float64).reshape(rows, K // m, m)
    groups = np.where(new.reshape(rows, K // m, m), groups, -np.inf)      # pruned entries rank last
    order = np.argsort(-groups, axis=2, kind="stable")                     # largest first, ties by position
    keep = np.zeros(groups.shape, dtype=bool)
    np.put_along_axis(keep, order[:, :, :n], True, axis=2)
    return new & keep.reshape(scores.shape)


# ============================================================================ block sparsity
def block_unstructured(scores, block, amount, mask=None):
    """Prune whole blocks of ``block = (rows, cols)`` weights, those with the smallest L2 norm, ``amount`` of the
    blocks still kept (e.g. ``(1, 4)``: four consecutive inputs of one output unit; ``(4, 4)``).

    ``scores`` is read as rows (``shape[0]``, the output units or filters) of ``K = size / shape[0]`` entries;
    ``block`` must tile that ``(rows, K)`` matrix.  A block with any entry still kept counts as kept, and a
    pruned block is pruned whole (so masks only shrink).

    Examples
    --------
    >>> w = np.array([[1.0, 1.0, 0.1, 0.1], [2.0, 2.0, 0.2, -0.1]])
    >>> block_unstructured(w, (2, 2), 1).astype(int)          # the right 2x2 block has the smaller norm
    array([[1, 1, 0, 0],
           [1, 1, 0, 0]])
    """
    scores = np.asarray(scores)
    if scores.ndim < 2 or scores.size == 0:
        raise ValueError(f"block_unstructured: expected a weight of shape (out, ...), got {scores.shape}")
    bh, bw = block
    rows, K = scores.shape[0], scores.size // scores.shape[0]
    if bh < 1 or bw < 1 or rows % bh or K % bw:
        raise ValueError(f"block_unstructured: blocks of {bh}x{bw} do not tile the {rows}x{K} weight matrix "
                         f"(rows x inputs); choose a block whose sides divide {rows} and {K}")
    new = _prev(mask, scores.shape)
    grid = (rows // bh, bh, K // bw, bw)
    m4 = new.reshape(grid)
    live = m4.any(axis=(1, 3))                                       # (rows/bh, K/bw) blocks still kept
    norms = np.sqrt((np.square(scores.astype(np.float64)) * new).reshape(grid).sum(axis=(1, 3)))
    keep = live.reshape(-1).copy()
    _prune_lowest(keep, norms.reshape(-1), amount_to_count(amount, int(live.sum())))
    block_keep = keep.reshape(live.shape)[:, None, :, None]
    return new & np.broadcast_to(block_keep, grid).reshape(scores.shape)
