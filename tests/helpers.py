"""What the tests share, imported by name (``from helpers import assert_close, requires_torch, torch``):
the optional torch oracle, the paths of the repository and of the fixtures, and a closeness check that
says where two arrays differ.  The fixtures themselves (``rng``, ``real_data``) are in ``conftest.py``."""
import os

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(REPO, "tests", "fixtures")

try:  # the optional outside reference
    import torch
    import torch.nn.utils.prune  # noqa: F401  (a submodule torch does not import by itself)
    torch.set_num_threads(2)
except ImportError:  # pragma: no cover - depends on the machine
    torch = None



def requires_torch(test):
    """A test against the optional torch oracle: skipped without torch, and marked ``oracle`` so that CI's
    second step (``pytest -m oracle``, after ``pip install -e ".[test,oracle]"``) runs exactly these."""
    skip = pytest.mark.skipif(torch is None, reason="torch is not installed (optional oracle: "
                                                     'pip install -e ".[test,oracle]")')
    return pytest.mark.oracle(skip(test))


def assert_close(actual, expected, config, rtol=1e-4, atol=1e-4, what="result"):
    """allclose with a message that shows the configuration and where the arrays differ."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape} for {config}"
    bad = ~np.isclose(actual, expected, rtol=rtol, atol=atol)
    if bad.any():
        idx = tuple(int(i) for i in np.argwhere(bad)[0])
        raise AssertionError(
            f"{what} differs for {config}: {int(bad.sum())} of {bad.size} entries, first at {idx}: "
            f"{actual[idx]} vs {expected[idx]} (max abs diff {np.abs(actual - expected).max():.3g})")
