"""The suite's fixtures; shared helpers are in ``helpers.py`` beside this file."""
import os

import numpy as np
import pytest

from helpers import REPO


@pytest.fixture
def rng():
    return np.random.default_rng(12345)


@pytest.fixture(scope="session")
def real_data():
    """The real data folder (../shared/datasets); in CI its absence is a failure, not a skip."""
    candidates = [os.environ.get("ECE662_DATA"),
                  os.path.join(REPO, "..",
                               "shared", "datasets")]
    for c in candidates:
        if c and os.path.isfile(os.path.join(c, "cifar10_real_small.npz")):
            return os.path.abspath(c)
    msg = f"real data not found (looked at {candidates}); set ECE662_DATA to ../shared/datasets"
    if os.environ.get("CI"):
        pytest.fail(msg)
    pytest.skip(msg)
