"""The command line: the sweep on real data, and one clear line for each kind of bad input."""
import json
import os
import subprocess
import sys

import pytest


def run(*args, env_data=None):
    env = dict(os.environ)
    if env_data:
        env["ECE662_DATA"] = env_data
    return subprocess.run([sys.executable, "-m", "ece662", *args], capture_output=True, text=True, env=env,
                          timeout=600)


def test_sweep_writes_table_csv_json_and_plot(real_data, tmp_path):
    """`python -m ece662 sweep` prints the table and leaves CSV, JSON and a PNG behind."""
    out = tmp_path / "out"
    r = run("sweep", "--data", os.path.join(real_data, "cifar10_real_small.npz"), "--out", str(out),
            "--amounts", "0.2,0.8", "--filter-amounts", "0.5")
    assert r.returncode == 0, r.stderr
    assert "unpruned test accuracy:" in r.stdout and "global_l1_unstructured" in r.stdout
    rows = json.loads((out / "results.json").read_text())
    assert [row["method"] for row in rows] == ["none", "global_l1_unstructured", "global_l1_unstructured",
                                               "l2_structured_filters"]
    assert abs(rows[2]["sparsity"] - 0.8) < 1e-3 and rows[3]["dead_filters"] == 32
    assert rows[1]["accuracy"] >= rows[2]["accuracy"]
    assert (out / "results.csv").read_text().startswith("method,target,sparsity,accuracy")
    assert (out / "accuracy_vs_sparsity.png").stat().st_size > 10_000


def test_unpruned_accuracy_is_identical_on_every_run(real_data):
    """`evaluate` prints the same accuracy twice (the course notebook's wandered)."""
    outs = [run("evaluate", "--data", os.path.join(real_data, "cifar10_real_small.npz")).stdout for _ in range(2)]
    assert outs[0] == outs[1] and outs[0].startswith("Test Acc: 0.7")


@pytest.mark.parametrize("args, match", [
    (["sweep", "--amounts", "0.5,1.5"], "fractions in \\[0, 1\\]"),
    (["sweep", "--bogus"], "unrecognized arguments"),
    (["evaluate", "--data", "/nonexistent/place"], "no CINIC-10 data found"),
])
def test_bad_command_lines_get_one_clear_line(args, match):
    """Bad options and data paths exit non-zero with a message and no traceback."""
    r = run(*args)
    assert r.returncode != 0
    assert "Traceback" not in r.stderr
    import re
    assert re.search(match, r.stderr), r.stderr


def test_model_that_is_not_a_model(tmp_path, real_data):
    """A text file given as --model is refused in one line."""
    bad = tmp_path / "m.npz"
    bad.write_text("not a model")
    r = run("evaluate", "--model", str(bad), "--data", os.path.join(real_data, "cifar10_real_small.npz"))
    assert r.returncode == 2 and "Traceback" not in r.stderr and "m.npz" in r.stderr


def test_unwritable_output_folder(tmp_path, real_data):
    """An output folder that cannot be created is reported in one line."""
    blocker = tmp_path / "file"
    blocker.write_text("x")
    r = run("sweep", "--out", str(blocker / "sub"), "--data", os.path.join(real_data, "cifar10_real_small.npz"))
    assert r.returncode != 0 and "cannot write" in r.stderr and "Traceback" not in r.stderr
