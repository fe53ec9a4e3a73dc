"""One-dimensional k-means: the codebook of weight sharing.

Han, Mao & Dally (ICLR 2016, "Deep Compression", section 3.1) replace a layer's surviving weights by ``k``
shared values (centroids): k-means clusters the weights so as to minimise the within-cluster sum of squares
``sum_i (w_i - c_{a(i)})^2``, and each weight then stores only the ``log2(k)``-bit index ``a(i)`` of its
centroid.  Section 3.2 compares three ways to place the first centroids and finds *linear* initialisation,
``k`` evenly spaced values over ``[min w, max w]``, best: it keeps centroids among the few large weights,
which matter most, where density-based starts put nearly all of them near zero.

Lloyd's algorithm alternates two steps until no weight changes cluster: assign each weight to its nearest
centroid; move each centroid to the mean of its weights.  A centroid that no weight is nearest to keeps its
value.

This file imports nothing of ece662: read it alone.
"""
import numpy as np


def kmeans_1d(values, k, max_iter=100):
    """Cluster ``values`` into ``k`` groups with Lloyd's algorithm from a linear initialisation.

    Parameters
    ----------
    values : array of float, (n,)
        The surviving weights of one layer (n >= 1).
    k : int >= 1
        Number of centroids, ``2**bits`` for ``bits``-bit indices.
    max_iter : int
        Stops earlier when no assignment changes.

    Returns
    -------
    centroids : ndarray of float32, (k,)
        Sorted: linear initialisation keeps their order, since each moves within its own interval.
    assignment : ndarray of int64, (n,)
        ``centroids[assignment]`` is the value each weight is replaced by: its nearest centroid (the
        lower one on a tie).

    Examples
    --------
    >>> c, a = kmeans_1d([0.0, 1.0, 2.0, 9.0, 10.0, 11.0], k=2)
    >>> c.tolist(), a.tolist()
    ([1.0, 10.0], [0, 0, 0, 1, 1, 1])
    """
    values = np.asarray(values, dtype=np.float64).ravel()
    if values.size == 0:
        raise ValueError("kmeans_1d: no values to cluster (a layer with every weight pruned has nothing to share)")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"kmeans_1d: expected k, the number of centroids, to be a whole number >= 1, got {k!r}")
    centroids = np.linspace(values.min(), values.max(), int(k))        # the paper's linear initialisation
    assignment = nearest(values, centroids)
    for _ in range(max_iter):
        for j in range(int(k)):                 # each centroid to the mean of its weights (if it has any)
            members = values[assignment == j]
            if members.size:
                centroids[j] = members.mean()
        new = nearest(values, centroids)
        if np.array_equal(new, assignment):
            break
        assignment = new
    centroids = centroids.astype(np.float32)
    return centroids, nearest(values, centroids.astype(np.float64))


def nearest(values, centroids):
    """Index of the centroid nearest to each value (the first one on a tie), shape ``(n,)``."""
    distance = np.abs(np.asarray(values, dtype=np.float64)[:, None] - np.asarray(centroids)[None, :])
    return distance.argmin(axis=1)
