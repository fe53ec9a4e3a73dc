"""One-dimensional k-means with linear initialisation (Han, Mao & Dally, ICLR 2016, 3.1-3.2), by hand."""
import numpy as np
import pytest

from ece662.compress.kmeans import kmeans_1d


def test_hand_worked_case_over_two_iterations():
    """Values 0, 1, 2, 6, 10 and k = 3.

    Linear initialisation over [0, 10]: centroids 0, 5, 10.  Nearest: 0, 1, 2 -> 0; 6 -> 5; 10 -> 10.
    Means: 1, 6, 10.  Nearest again: 0, 1, 2 -> 1 (2 is 1 from 1, 4 from 6); 6 -> 6; 10 -> 10: unchanged, stop.
    """
    c, a = kmeans_1d([0, 1, 2, 6, 10], 3)
    assert c.tolist() == [1.0, 6.0, 10.0]
    assert a.tolist() == [0, 0, 0, 1, 2]


def test_a_weight_changes_cluster_on_the_way():
    """Values 0, 4, 5, 10, k = 2.  Start 0, 10: 0, 4 -> 0 (4 is nearer 0), 5 -> 0 (a tie goes to the lower), 10 -> 1.
    Means 3, 10: 5 is 2 from 3, stays.  Start check with 0, 4, 6, 10: 0, 4 -> 0; 6, 10 -> 1; means 2, 8: stable."""
    c, a = kmeans_1d([0, 4, 5, 10], 2)
    assert c.tolist() == [3.0, 10.0] and a.tolist() == [0, 0, 0, 1]
    c, a = kmeans_1d([0, 6, 4, 10], 2)
    assert c.tolist() == [2.0, 8.0] and a.tolist() == [0, 1, 0, 1]


def test_an_empty_cluster_keeps_its_value_and_the_order():
    """Values 0, 0.1, 9.9, 10 with k = 3: the middle centroid (5) gets no weight and stays at 5."""
    c, a = kmeans_1d([0, 0.1, 9.9, 10], 3)
    assert np.allclose(c, [0.05, 5.0, 9.95]) and a.tolist() == [0, 0, 2, 2]


def test_the_within_cluster_error_never_exceeds_the_initial_one(rng):
    w = rng.normal(size=500)
    c, a = kmeans_1d(w, 8)
    start = np.linspace(w.min(), w.max(), 8)
    first = ((w[:, None] - start[None]) ** 2).min(1).sum()
    assert ((w - c[a]) ** 2).sum() <= first
    assert (np.diff(c) >= 0).all()


def test_bad_inputs():
    with pytest.raises(ValueError, match="no values"):
        kmeans_1d([], 4)
    with pytest.raises(ValueError, match="whole number >= 1"):
        kmeans_1d([1.0], 0)
