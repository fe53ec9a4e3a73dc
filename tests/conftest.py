import os

import numpy as np
import pytest

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

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")


@pytest.fixture
def rng():
    return np.random.default_rng(12345)


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


@pytest.fixture(scope="session")
def real_data():
    """The real data folder (../shared/datasets); in CI its absence is a failure, not a skip."""
    candidates = [os.environ.get("ECE662_DATA"),
                  os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..",
                               "shared", "datasets")]
    for c in candidates:
        if c and os.path.isfile(os.path.join(c, "cifar10_real_small.npz")):
            return os.path.abspath(c)
    msg = f"real data not found (looked at {candidates}); set ECE662_DATA to ../shared/datasets"
    if os.environ.get("CI"):
        pytest.fail(msg)
    pytest.skip(msg)
