"""Test-suite settings that reach the doctests in ece662/ as well as tests/ (a conftest applies below its folder).

The ONNX examples in the library's docstrings need the optional ``onnx`` package (``pip install -e ".[onnx]"``),
which the README's ``pip install -e ".[test]"`` does not bring: without it they skip and say why, and they carry
the ``oracle`` mark, so that CI's second step (``python -m pytest -m oracle`` after installing ``[test,oracle]``)
runs them.

Kernel v7 measures its register tile once per CPU and layer shape and records the choice in a cache file
(``ece662.layers.tuning``); the suite records its choices in a folder of its own, so that a run never
reads or changes the user's cache (the tests of the cache set their own).

The same measurement sets, per layer shape, from how many zero weights on the sparse kernel runs
(``tuning.sparse_from``); that differs between CPUs, so the suite pins it at the default 0.6
(``ECE662_SPARSE_FROM``) and the tests whose subject is the measured break-even unset it: what a test
expects of a 50%-sparse layer does not depend on the machine."""
import importlib.util
import os
import tempfile

import pytest

os.environ.setdefault("ECE662_TILE_CACHE", tempfile.mkdtemp(prefix="ece662-test-tiles-"))
from ece662.layers.tuning import DEFAULT_SPARSE_FROM  # noqa: E402

os.environ["ECE662_SPARSE_FROM"] = str(DEFAULT_SPARSE_FROM)     # the tests of the measurement unset it

NEEDS_ONNX = ("onnx_format",)   # modules whose doctests call the onnx package


def pytest_collection_modifyitems(config, items):
    have_onnx = importlib.util.find_spec("onnx") is not None
    for item in items:
        if isinstance(item, pytest.DoctestItem) and any(m in item.nodeid for m in NEEDS_ONNX):
            item.add_marker(pytest.mark.oracle)
            if not have_onnx:
                item.add_marker(pytest.mark.skip(
                    reason="needs the optional onnx package: pip install -e \".[onnx]\" (or \".[test,oracle]\")"))
