"""The command line: the sweep on real data, and one clear line for each kind of bad input."""
import json
import os
import subprocess
import sys

import pytest
from helpers import FIXTURES


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
    for png in ("per_layer_sparsity.png", "speedup_vs_ideal.png", "weight_histograms.png",
                "conv1_filters_l2_50.png", "mask_global_l1_50.png"):
        assert (out / png).stat().st_size > 5_000, png
    assert rows[3]["images_per_s_pruned"] > 0 and rows[3]["flops_skip"] < rows[0]["flops_skip"]
    for row in rows:      # speed is a paired, repeated measurement: a median inside its interval and its IQR
        assert row["speedup_low"] <= row["speedup"] <= row["speedup_high"]
        assert row["speedup_iqr_low"] <= row["speedup"] <= row["speedup_iqr_high"]
        assert row["masks_only_low"] <= row["masks_only"] <= row["masks_only_high"]
        assert isinstance(row["speedup_flag"], str) and row["timing_rounds"] == 35
    assert rows[3]["flop_ideal"] == pytest.approx(rows[3]["flops_dense"] / rows[3]["flops_skip"])
    header = r.stdout.splitlines()[3]
    assert "speedup_95%" in header and "masks_only" in header and "flop_ideal" in header


def test_sweep_with_finetuning_and_iterative_pruning(real_data, tmp_path):
    """--finetune adds accuracy after fine-tuning; --iterative adds prune-fine-tune rounds."""
    out = tmp_path / "ft"
    r = run("sweep", "--data", os.path.join(real_data, "cifar10_real_small.npz"), "--out", str(out),
            "--amounts", "0.6", "--filter-amounts", "0.5", "--scope", "both", "--finetune", "1",
            "--finetune-images", "500", "--iterative", "2", "--timing-images", "0", "--num-test", "300")
    assert r.returncode == 0, r.stderr
    rows = json.loads((out / "results.json").read_text())
    methods = [row["method"] for row in rows]
    assert methods == ["none", "global_l1_unstructured", "l2_structured_filters",
                       "l2_structured_filters_global", "global_l1_iterative_2x1ep"]
    for row in rows[1:4]:
        assert 0 <= row["accuracy_finetuned"] <= 1
    assert abs(rows[4]["sparsity"] - 0.6) < 0.01
    assert "acc_finetuned" in r.stdout


def test_unpruned_accuracy_is_identical_on_every_run(real_data):
    """`evaluate` prints the same accuracy twice (the course notebook's wandered)."""
    outs = [run("evaluate", "--data", os.path.join(real_data, "cifar10_real_small.npz")).stdout for _ in range(2)]
    assert outs[0] == outs[1] and outs[0].startswith("Test Acc: 0.7")


@pytest.mark.parametrize("args, match", [
    (["sweep", "--amounts", "0.5,1.5"], "fractions in \\[0, 1\\]"),
    (["sweep", "--amounts", "1.0"], "--amounts: amount 1.0 prunes every weight"),
    (["sweep", "--filter-amounts", "1.0"], "--filter-amounts: amount 1.0 prunes every weight"),
    (["sweep", "--amounts", "a,b"], "comma-separated fractions"),
    (["sweep", "--timing-images", "-5"], "--timing-images: expected a whole number >= 0"),
    (["sweep", "--finetune", "-1"], "--finetune: expected a whole number >= 0"),
    (["sweep", "--timing-repeats", "0"], "--timing-repeats: expected a whole number >= 1"),
    (["sweep", "--num-test", "0"], "--num-test: expected a whole number >= 1"),
    (["sweep", "--finetune-images", "-3"], "--finetune-images: expected a whole number >= 1"),
    (["sweep", "--finetune-lr", "nan"], "--finetune-lr: expected a positive number"),
    (["sweep", "--bogus"], "unrecognized arguments"),
    (["evaluate", "--data", "/nonexistent/place"], "no CINIC-10 data found"),
    (["sweep", "--iterative", "3"], "needs --finetune"),
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


def _small_sweep(real_data, out, *extra):
    from ece662 import cli
    return cli.main(["sweep", "--data", os.path.join(real_data, "cifar10_real_small.npz"), "--out", str(out),
                     "--amounts", "0.3,0.6", "--filter-amounts", "0.5", "--num-test", "200", *extra])


def test_interrupted_rerun_keeps_the_complete_run(real_data, tmp_path, monkeypatch, capsys):
    """Ctrl-C while re-running into a folder with a complete run: the complete run stays as it was, and the
    interrupted run's finished rows (baseline and unstructured) are kept apart in out/incomplete/."""
    from ece662 import experiments
    out = tmp_path / "out"
    assert _small_sweep(real_data, out, "--no-timing") == 0
    before = {f: (out / f).read_bytes() for f in os.listdir(out) if not f.startswith(".")}
    assert "results.json" in before and "accuracy_vs_sparsity.png" in before

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(experiments, "structured_sweep", interrupted)
    capsys.readouterr()
    code = _small_sweep(real_data, out, "--no-timing", "--seed", "1")
    err = capsys.readouterr().err
    assert code == 130 and "interrupted" in err and "incomplete" in err
    after = {f: (out / f).read_bytes() for f in os.listdir(out) if (out / f).is_file()}
    assert after == before                                   # nothing of the complete run lost or changed
    rows = json.loads((out / "incomplete" / "results.json").read_text())
    assert [r["target"] for r in rows] == [0.0, 0.3, 0.6]
    assert not [f for f in os.listdir(out) if f.startswith(".sweep-in-progress")]


def test_wrote_line_lists_only_this_runs_files(real_data, tmp_path, capsys):
    """A timed run, then an accuracy-only run into the same folder: the second lists (and leaves) no speed plot."""
    out = tmp_path / "out"
    assert _small_sweep(real_data, out, "--timing-images", "50", "--timing-repeats", "2") == 0
    first = capsys.readouterr().out.splitlines()[-1]
    assert "speedup_vs_ideal.png" in first and (out / "speedup_vs_ideal.png").exists()
    assert _small_sweep(real_data, out, "--no-timing") == 0
    last = capsys.readouterr().out.splitlines()[-1]
    assert last.startswith(f"wrote {out}/: ") and "results.json" in last
    assert "speedup_vs_ideal.png" not in last.split(" (removed")[0]
    assert "removed the previous run's speedup_vs_ideal.png" in last
    assert not (out / "speedup_vs_ideal.png").exists()
    assert "speedup" not in json.loads((out / "results.json").read_text())[1]


@pytest.mark.parametrize("mode, fixture", [("torch", "torch_default_convnet.pt"),
                                           ("tensorflow", "keras_default_convnet.keras")])
def test_evaluate_models_from_other_frameworks(real_data, mode, fixture):
    """`evaluate --mode torch|tensorflow` reads the course's file formats (untrained fixtures: ~10%)."""
    path = os.path.join(FIXTURES, fixture)
    r = run("evaluate", "--model", path, "--mode", mode, "--data", os.path.join(real_data, "cifar10_real_small.npz"))
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("Test Acc: 0.")


def test_compare_runs_every_schedule_at_one_budget(real_data, tmp_path):
    """`python -m ece662 compare` trains each schedule once at the same budget and writes its table and plot."""
    out = tmp_path / "cmp"
    r = run("compare", "--data", os.path.join(real_data, "cifar10_real_small.npz"), "--train-images", "200",
            "--epochs", "1", "--sparsities", "0.5", "--out", str(out))
    assert r.returncode == 0, r.stderr
    table = json.loads((tmp_path / "cmp.json").read_text())
    assert table["command"].startswith("python -m ece662 compare")
    runs = {rec["schedule"]: rec for rec in table["records"] if rec["schedule"] != "dense"}
    assert set(runs) == {"one-shot", "iterative", "gradual", "rewind"}
    assert all(rec["epochs"] == 1 and abs(rec["measured_sparsity"] - 0.5) < 0.01 for rec in runs.values())
    assert (tmp_path / "cmp.png").stat().st_size > 0


@pytest.mark.parametrize("args, match", [(["--sparsities", "abc"], "expected comma-separated fractions"),
                                         (["--sparsities", "1.0"], r"fraction in \[0, 1\)"),
                                         (["--epochs", "0"], "positive whole number")])
def test_compare_bad_options_get_one_clear_line(args, match):
    """`compare` refuses bad options in one line on stderr, no traceback."""
    import re
    r = run("compare", *args)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert re.search(match, r.stderr.strip().splitlines()[-1]), r.stderr


def test_evaluate_a_torch_file_with_its_architecture_from_json(real_data, tmp_path):
    """`--arch net.json` says which network a state_dict's weights belong to; a bad file is one line."""
    from ece662.models import default_convnet
    arch = tmp_path / "net.json"
    arch.write_text(json.dumps(default_convnet().spec()))
    path = os.path.join(FIXTURES, "torch_default_convnet.pt")
    data = os.path.join(real_data, "cifar10_real_small.npz")
    r = run("evaluate", "--model", path, "--mode", "torch", "--arch", str(arch), "--data", data)
    assert r.returncode == 0 and r.stdout.startswith("Test Acc: 0."), r.stderr
    arch.write_text('{"type": "Sequential", "layers": [["x", {"type": "Lambda", "args": {}}]]}')
    r = run("evaluate", "--model", path, "--mode", "torch", "--arch", str(arch), "--data", data)
    assert r.returncode == 2 and "Traceback" not in r.stderr and "Lambda" in r.stderr, r.stderr


def test_evaluate_without_a_model_reads_the_shipped_file_of_the_mode_asked_for(monkeypatch):
    """`evaluate --mode torch` with no --model reads the shipped torch.model, not silently the .npz."""
    import numpy as np
    import ece662.io as io
    from ece662.pruning_helper import load_model
    read = []
    real = io.read_torch_state_dict
    monkeypatch.setattr(io, "read_torch_state_dict", lambda path, *a, **k: read.append(str(path)) or real(path, *a, **k))
    from_torch = load_model(mode="torch")
    assert len(read) == 1 and read[0].endswith(os.path.join("models", "torch.model"))
    for ours, theirs in zip(load_model().parameters(), from_torch.parameters()):
        np.testing.assert_array_equal(ours, theirs)
    r = run("evaluate", "--mode", "onnx")
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert "no pretrained model ships as a 'onnx' file" in r.stderr and "save_model" in r.stderr


def _tiny_data(tmp_path):
    """20 test images, two per class, half of them black and half white: pixel values 0 and 255."""
    import numpy as np
    path = tmp_path / "tiny.npz"
    pixels = np.zeros((20, 32, 32, 3), np.uint8)
    pixels[1::2] = 255
    np.savez(path, X_test=pixels, y_test=np.arange(20) % 10)
    return str(path)


@pytest.mark.parametrize("scaling, low, high", [("unit", 0.0, 1.0), ("none", 0.0, 255.0),
                                                 ("cinic", -1.98, 2.21)])
def test_normalize_scales_the_images_the_model_sees(tmp_path, monkeypatch, scaling, low, high):
    """`evaluate --normalize unit|none|cinic` hands the model pixels/255, raw 0-255 floats or CINIC-10
    mean/std images: the range of the X_test that reaches test_model says which."""
    import numpy as np
    from ece662 import cli, pruning_helper
    seen = {}

    def record(model, test_data, **kwargs):
        X = np.asarray(test_data[0])
        seen.update(dtype=X.dtype, low=float(X.min()), high=float(X.max()))
        return 0.5
    monkeypatch.setattr(pruning_helper, "test_model", record)
    assert cli.main(["evaluate", "--data", _tiny_data(tmp_path), "--normalize", scaling]) == 0
    assert seen["dtype"] == np.float32
    assert seen["low"] == pytest.approx(low, abs=0.01) and seen["high"] == pytest.approx(high, abs=0.01)


def test_a_model_at_chance_gets_a_warning_that_names_the_fixes(tmp_path):
    """`evaluate` and `sweep` of a model that always predicts class 0 (accuracy 0.1 on balanced labels:
    chance) print one `ece662: warning:` naming --normalize, the architecture and an untrained model; a
    bad --normalize is refused in one line, and --finetune (which trains on CINIC-10 scaling) refuses
    another scaling."""
    import numpy as np
    from ece662.io import save_model
    from ece662.layers import Conv2d, Flatten, Linear, ReLU, Sequential
    net = Sequential(Conv2d(3, 2, 3, seed=1), ReLU(), Flatten(), Linear(2 * 30 * 30, 10, seed=2))
    state = net.state_dict()
    state["3.bias"] = np.array([1e6] + [0] * 9, np.float32)     # class 0 whatever the image
    net.load_state_dict(state)
    save_model(net, tmp_path / "class0.npz")
    data = _tiny_data(tmp_path)
    r = run("evaluate", "--model", str(tmp_path / "class0.npz"), "--data", data, "--normalize", "unit")
    assert r.returncode == 0 and r.stdout == "Test Acc: 0.1000\n", r.stderr
    warning = [line for line in r.stderr.splitlines() if "near chance" in line]
    assert len(warning) == 1 and warning[0].startswith("ece662: warning: unpruned model: accuracy 0.1000 on 20")
    assert "--normalize unit" in warning[0] and "architecture" in warning[0] and "untrained" in warning[0]
    r = run("sweep", "--model", str(tmp_path / "class0.npz"), "--data", data, "--out", str(tmp_path / "out"),
            "--amounts", "0.5", "--filter-amounts", "0.5", "--no-timing")
    assert r.returncode == 0, r.stderr
    assert "unpruned test accuracy: 0.1000" in r.stdout
    assert "ece662: warning: unpruned model: accuracy 0.1000 on 20 images is near chance" in r.stderr
    r = run("evaluate", "--data", data, "--normalize", "imagenet")
    assert r.returncode == 2 and "invalid choice: 'imagenet'" in r.stderr and "Traceback" not in r.stderr
    r = run("sweep", "--data", data, "--normalize", "unit", "--finetune", "1", "--out", str(tmp_path / "ft"))
    assert r.returncode != 0 and "--finetune trains on CINIC-10 mean/std" in r.stderr, r.stderr


def test_a_state_dict_without_arch_gets_command_line_advice(tmp_path):
    """A state_dict that is not the course network, given without --arch: the command line says --arch
    net.json and how to write it (json.dump(model.spec(), f)), not Python's model=...; Python callers
    keep model=.  A file with the course network's shapes under nn.Sequential names gets the one-line
    command that writes that net.json, and following it works."""
    import numpy as np
    from ece662.io import save_torch_state_dict
    from ece662.layers import Conv2d, Flatten, Linear, ReLU, Sequential
    from ece662.models import default_convnet
    from ece662.pruning_helper import load_model
    other = tmp_path / "other.pt"
    save_torch_state_dict(Sequential(Conv2d(3, 4, 3, seed=1), ReLU(), Flatten(),
                                     Linear(4 * 30 * 30, 10, seed=2)).state_dict(), str(other))
    data = _tiny_data(tmp_path)
    r = run("evaluate", "--model", str(other), "--mode", "torch", "--data", data)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "--arch net.json" in r.stderr and "json.dump(model.spec(), f)" in r.stderr, r.stderr
    assert "model=" not in r.stderr
    with pytest.raises(ValueError, match=r"Pass model=Sequential\(\.\.\.\)"):
        load_model(str(other), mode="torch")
    # the course network as an nn.Sequential would name it: 0.weight, 3.weight, 7.weight ...
    course = default_convnet(seed=0)
    positions = {name: str(i) for i, (name, _) in enumerate(course.named_children())}
    renamed = {positions[k.split(".")[0]] + "." + k.split(".")[1]: v for k, v in course.state_dict().items()}
    as_sequential = tmp_path / "seq.pt"
    save_torch_state_dict(renamed, str(as_sequential))
    r = run("evaluate", "--model", str(as_sequential), "--mode", "torch", "--data", data)
    assert r.returncode == 2 and "shapes of the course network" in r.stderr and "model=" not in r.stderr
    command = r.stderr.split('python -c "')[1].split('"')[0]
    import ece662                    # the command runs in tmp_path, with the ece662 under test
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(os.path.abspath(ece662.__file__))))
    subprocess.run([sys.executable, "-c", command], cwd=tmp_path, env=env, check=True)
    r = run("evaluate", "--model", str(as_sequential), "--mode", "torch", "--arch", str(tmp_path / "net.json"),
            "--data", data)
    assert r.returncode == 0 and r.stdout.startswith("Test Acc: "), r.stderr


def test_weight_histograms_of_a_model_whose_weights_are_all_zero(tmp_path):
    """A model with no non-zero weight (every weight pruned, or an untrained zero model) still gets its figure:
    the sweep once stopped there ("zero-size array to reduction operation minimum")."""
    import matplotlib
    matplotlib.use("Agg")
    from ece662 import plots
    from ece662.models import default_convnet
    net = default_convnet(seed=0)
    for _, m in net.named_modules():
        if hasattr(m, "weight"):
            m.weight[...] = 0
    plots.weight_histograms(net, path=tmp_path / "w.png")
    assert (tmp_path / "w.png").stat().st_size > 1000


# ---------------------------------------------------------------------------- compare's --out
def _fake_compare(monkeypatch, records=None, plot=None):
    """`compare` with instant stand-ins for the data and the training (records as given)."""
    import numpy as np
    from ece662 import data_utils, experiments, plots
    calls = []

    def data(path, splits, **kw):
        calls.append(splits)
        X, y = np.zeros((2, 32, 32, 3), np.uint8), np.array([0, 1])
        return {"source": "fake", "X_train": X, "y_train": y, "X_test": np.zeros((2, 3, 32, 32), np.float32),
                "y_test": y}

    monkeypatch.setattr(data_utils, "get_CINIC10_data", data)
    monkeypatch.setattr(experiments, "compare_schedules", lambda *a, **kw: records if records is not None else
                        [{"schedule": "dense", "sparsity": 0.0, "accuracy": 0.5, "epochs": 1}])
    if plot is not None:
        monkeypatch.setattr(plots, "compare_schedules", plot)
    return calls


def test_compare_checks_its_out_folder_before_training(tmp_path, monkeypatch, capsys):
    """--out in a folder that does not exist, or cannot be written, stops before any data is loaded or
    any schedule trained, in one line naming the folder."""
    from ece662 import cli
    calls = _fake_compare(monkeypatch)
    with pytest.raises(SystemExit, match=r"the folder of --out .*missing/cmp, .*missing, does not exist; "
                                         r"create it first"):
        cli.main(["compare", "--out", str(tmp_path / "missing" / "cmp")])
    (tmp_path / "file").write_text("x")
    with pytest.raises(SystemExit, match=r"file, does not exist"):
        cli.main(["compare", "--out", str(tmp_path / "file" / "cmp")])
    if os.geteuid() != 0:               # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o555)
        with pytest.raises(SystemExit, match=r"cannot write to the folder of --out"):
            cli.main(["compare", "--out", str(locked / "cmp")])
    assert calls == []


def test_compare_writes_its_files_atomically(tmp_path, monkeypatch):
    """A plot that fails half-way leaves the previous PNG whole and no temporary file; results that
    cannot be written as JSON leave the previous JSON whole."""
    from ece662 import cli
    out = tmp_path / "cmp"
    (tmp_path / "cmp.json").write_text('{"old": true}')
    (tmp_path / "cmp.png").write_bytes(b"old png")

    def broken_plot(records, path):
        path.write(b"half a png")
        raise RuntimeError("the plot failed")

    _fake_compare(monkeypatch, plot=broken_plot)
    with pytest.raises(RuntimeError, match="the plot failed"):
        cli.main(["compare", "--out", str(out)])
    assert json.loads((tmp_path / "cmp.json").read_text())["records"][0]["schedule"] == "dense"
    assert (tmp_path / "cmp.png").read_bytes() == b"old png"
    assert sorted(os.listdir(tmp_path)) == ["cmp.json", "cmp.png"]
    (tmp_path / "cmp.json").write_text('{"old": true}')
    _fake_compare(monkeypatch, records=[{"schedule": "dense", "accuracy": object()}])
    assert cli.main(["compare", "--out", str(out)]) == 2            # TypeError: one line, exit 2
    assert json.loads((tmp_path / "cmp.json").read_text()) == {"old": True}
    assert sorted(os.listdir(tmp_path)) == ["cmp.json", "cmp.png"]


# ---------------------------------------------------------------------------- models that cannot be swept
def test_filter_amount_that_leaves_a_layer_no_filter_is_refused(real_data, tmp_path, capsys):
    """--filter-amounts 0.99 rounds to all 32 filters of conv1 (1.0 is refused for that reason):
    refused before anything runs, with the largest amount that keeps a filter in every layer."""
    from ece662 import cli
    data = os.path.join(real_data, "cifar10_real_small.npz")
    assert cli.main(["sweep", "--data", data, "--filter-amounts", "0.5,0.99", "--no-timing",
                     "--num-test", "50", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("ece662: --filter-amounts 0.99 prunes all 32 live filters of "
                                               "conv1 (round(0.99 x 32) = 32)"), err
    assert "use at most 0.98" in err[0]


def test_a_flop_ratio_with_no_flops_left_is_said_in_words():
    """The table never prints 'infx'."""
    from ece662 import cli
    assert cli._cell({"flop_ideal": float("inf")}, "flop_ideal") == "no FLOPs"
    assert cli._cell({"flop_ideal": 2.0}, "flop_ideal") == "2.00x"


@pytest.mark.parametrize("command", ["evaluate", "sweep", "compare"])
def test_an_empty_model_is_refused_in_one_line(real_data, tmp_path, command, capsys):
    """A saved Sequential() with no layers: one line naming the file, not 'label out of range' (evaluate)
    or a numpy broadcast error (sweep)."""
    from ece662 import cli
    from ece662.io import save_model
    from ece662.layers import Sequential
    path = str(tmp_path / "empty.npz")
    save_model(Sequential(), path)
    args = [command, "--model", path, "--data", os.path.join(real_data, "cifar10_real_small.npz")]
    args += {"evaluate": ["--num-test", "50"], "sweep": ["--num-test", "50", "--no-timing", "--out", str(tmp_path / "o")],
             "compare": ["--train-images", "20", "--epochs", "1", "--out", str(tmp_path / "c")]}[command]
    assert cli.main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0] == (f"ece662: {path}: the model has no layers, so it computes no class scores; "
                                        f"save the trained network (ece662.save_model(model, path)), not an "
                                        f"empty Sequential()"), err


def test_a_model_without_a_classifier_is_refused_in_one_line(real_data, tmp_path, capsys):
    """A model whose output is not one score per class (here a lone ReLU) is refused, saying so."""
    from ece662 import cli
    from ece662.io import save_model
    from ece662.layers import ReLU, Sequential
    path = str(tmp_path / "relu.npz")
    save_model(Sequential(ReLU()), path)
    assert cli.main(["evaluate", "--model", path, "--num-test", "50",
                     "--data", os.path.join(real_data, "cifar10_real_small.npz")]) == 2
    err = capsys.readouterr().err.strip()
    assert f"{path}: the model turns a (3, 32, 32) image into an output of shape (3, 32, 32), not one score " \
           f"per class" in err


def test_every_column_of_the_sweep_is_explained_under_the_table_and_beside_the_csv(real_data, tmp_path):
    """A student reads the table without the code: a legend line per column shown (target: a fraction of the
    FILTERS for filter rows), and a README beside results.csv that explains every CSV column family."""
    import csv
    out = tmp_path / "sweep"
    r = run("sweep", "--data", os.path.join(real_data, "cifar10_real_small.npz"), "--num-test", "200",
            "--amounts", "0.5", "--filter-amounts", "0.5", "--no-timing", "--out", str(out))
    assert r.returncode == 0, r.stderr
    legend = r.stdout.split("what the columns mean", 1)[1]
    for col in ("method", "target", "sparsity", "accuracy", "dead_filters", "flop_ideal"):
        assert f"  {col}: " in legend
    assert "FILTERS for filter rows" in legend
    readme = (out / "README.md").read_text()
    header = next(csv.reader(open(out / "results.csv")))
    with open(os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                           "docs", "readme_results.json")) as f:
        recorded = json.load(f)                       # a timed sweep and a fine-tuned one: every column there is
    header += [k for run in recorded.values() if isinstance(run, dict) for r in run.get("records", []) for k in r]
    from ece662.cli import COLUMNS
    families = [k.replace("<layer>", "").replace("*", "") for key in COLUMNS for k in key.split(", ")]
    families += ["images_per_s", "speedup_flag", "masks_only_flag"]
    for col in set(header):
        assert any(col == f or (f.endswith("_") and col.startswith(f)) or (f.startswith("_") and col.endswith(f))
                   or col.startswith(f + "_") for f in families), f"results.csv column {col!r} is not explained"
    assert "`target`" in readme
