"""The course notebook's own calls, as written: test_model's modes, labels it refuses, empty batches."""
import importlib.util
import os
import re
import warnings
import zipfile

import numpy as np
import pytest

from helpers import FIXTURES, REPO, requires_torch, torch
from ece662.formats import torch_format
from ece662.models import default_convnet
from ece662.data_utils import get_CINIC10_data
from ece662.pruning_helper import load_model, predict_logits, test_model
from ece662.formats.torch_format import read_torch_state_dict, save_torch_state_dict


def _images(n, seed=0):
    return np.random.default_rng(seed).standard_normal((n, 3, 32, 32)).astype(np.float32)


@pytest.mark.filterwarnings("ignore::ece662.pruning_helper.NearChanceWarning")  # an untrained model, on purpose
@pytest.mark.parametrize("mode", ["torch", "tensorflow", "numpy"])
def test_test_model_takes_the_course_modes(mode, capsys):
    """test_model(model, test_data, mode=...) runs for every mode the course uses, same number."""
    X, y = _images(20), np.random.default_rng(1).integers(0, 10, 20)
    net = default_convnet(seed=3)
    acc = test_model(net, [X, y], mode=mode)
    assert acc == float(np.mean(net.eval()(X).argmax(1) == y))
    assert capsys.readouterr().out == f"Test Acc: {acc:.4f}\n"


def _zero_model():
    """A model whose weights are all zero: equal logits for every image, so it always predicts class 0."""
    from ece662.layers import Conv2d, Flatten, Linear, ReLU, Sequential
    net = Sequential(Conv2d(3, 2, 3), ReLU(), Flatten(), Linear(2 * 30 * 30, 10))
    net.load_state_dict({k: np.zeros_like(v) for k, v in net.state_dict().items()})
    return net.eval()


def test_test_model_warns_when_an_unpruned_model_is_near_chance():
    """An unpruned model at chance (all-zero weights: 0.1 on balanced labels) gets a warning naming the
    likely causes and the normalize= fix; a pruned one (its pruning may be the cause) does not."""
    from ece662 import pruning as prune
    from ece662.pruning_helper import NearChanceWarning
    X, y = _images(40), np.arange(40) % 10
    with pytest.warns(NearChanceWarning, match=r"accuracy 0\.1000 on 40 images is near chance.*"
                                               r"normalize='unit'.*architecture.*untrained"):
        assert test_model(_zero_model(), [X, y], verbose=False) == 0.1
    pruned = _zero_model()
    prune.l1_unstructured(pruned[0], "weight", amount=0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("error", NearChanceWarning)
        assert test_model(pruned, [X, y], verbose=False) == 0.1


def test_test_model_refuses_an_unknown_mode():
    """A typo in mode is an error that lists the modes, not silently ignored."""
    with pytest.raises(ValueError, match=r"unknown mode 'pytorch'.*'numpy', 'torch', 'tensorflow'"):
        test_model(default_convnet(), [_images(2), np.zeros(2, int)], mode="pytorch")
    with pytest.raises(TypeError, match="batch_size=50"):
        test_model(default_convnet(), [_images(2), np.zeros(2, int)], 50)


def test_test_model_refuses_a_foreign_model():
    """Something that is not an ece662 model gets a pointer to load_model."""
    with pytest.raises(TypeError, match="load_model"):
        test_model(object(), [_images(2), np.zeros(2, int)], mode="torch")


@pytest.mark.parametrize("labels, message", [
    (np.array([0.0, 1.0, 2.0, 3.0]), "integer class labels.*float64.*astype"),
    (np.array([0.0, np.nan, 2.0, 3.0]), "1 of them NaN"),
    (np.array([0, -1, 2, 3]), ">= 0, got -1 .at index 1"),
    (np.array([0, 1, 10, 3]), "label 10 .at index 2. is out of range.*10 classes"),
    (np.array([0, 1, 2]), r"shape \(4,\)"),
    (np.array([True, False, True, False]), "integer class labels.*bool"),
    (np.array([[0], [1], [2], [3]]), r"shape \(4,\)"),
])
def test_test_model_refuses_labels_it_cannot_compare(labels, message):
    """Float, NaN, negative, out-of-range or mis-sized labels are an error, never an accuracy of 0.0."""
    with pytest.raises(ValueError, match=message):
        test_model(default_convnet(), [_images(4), labels], verbose=False)


def test_empty_batch_gives_an_empty_result():
    """predict_logits on zero images is an empty (0, 10) array; test_model says there is nothing to score."""
    net = default_convnet()
    out = predict_logits(net, _images(0))
    assert out.shape == (0, 10) and out.dtype == np.float32
    from ece662 import pruning
    pruning.ln_structured(net.conv1, "weight", amount=8, n=2, dim=0)   # the live-only path too
    assert predict_logits(net, _images(0)).shape == (0, 10)
    with pytest.raises(ValueError, match="no images"):
        test_model(net, [_images(0), np.zeros(0, int)])


# ---------------------------------------------------------------- the torch-format writer
def _various_state_dict():
    from ece662.formats.torch_format import read_torch_state_dict
    sd = dict(read_torch_state_dict(os.path.join(FIXTURES, "torch_default_convnet.pt")))
    sd.update({"bn.num_batches_tracked": np.array(7, dtype=np.int64),     # 0-dim, as BatchNorm's
               "empty": np.zeros((0, 3), np.float32),
               "long": np.arange(70000, dtype=np.int64) - 35000,
               "mask": np.array([[True, False], [False, True]]),
               "fortran": np.asfortranarray(np.arange(6.0).reshape(2, 3)),
               "big_endian": np.arange(4, dtype=">f4")})
    return sd


@requires_torch
def test_written_torch_file_is_read_by_real_torch(tmp_path):
    """torch.load(weights_only=True) reads save_torch_state_dict's file: same keys, order, dtypes, values."""
    sd = _various_state_dict()
    path = tmp_path / "w.pt"
    save_torch_state_dict(sd, path)
    loaded = torch.load(path, weights_only=True)
    assert list(loaded) == list(sd)
    for key, value in sd.items():
        t = loaded[key]
        assert tuple(t.shape) == value.shape, key
        assert t.numpy().dtype == value.dtype.newbyteorder("="), key
        np.testing.assert_array_equal(t.numpy(), value, err_msg=key)
    net = torch.nn.Linear(1152, 10)
    net.load_state_dict({"weight": loaded["fc.weight"], "bias": loaded["fc.bias"]})  # real tensors


def test_written_torch_file_is_read_back_by_ece662(tmp_path):
    """ece662's own reader gives back the arrays the writer was given, bit for bit."""
    sd = {k: v for k, v in _various_state_dict().items() if v.ndim}
    path = tmp_path / "w.pt"
    save_torch_state_dict(sd, path)
    back = read_torch_state_dict(path)
    assert list(back) == list(sd)
    for key, value in sd.items():
        assert back[key].dtype == value.dtype.newbyteorder("=")
        np.testing.assert_array_equal(back[key], value, err_msg=key)


def test_written_torch_file_has_torchs_layout(tmp_path):
    """The archive holds the members torch writes, uncompressed, each starting on a 64-byte boundary."""
    path = tmp_path / "w.pt"
    save_torch_state_dict({"a": np.ones(3, np.float32), "b": np.zeros((2, 2), np.float32)}, path)
    with zipfile.ZipFile(path) as z:
        names = z.namelist()
        assert names == ["archive/data.pkl", "archive/.format_version", "archive/.storage_alignment",
                         "archive/byteorder", "archive/data/0", "archive/data/1", "archive/version",
                         "archive/.data/serialization_id"]
        assert z.read("archive/byteorder") == b"little" and z.read("archive/version") == b"3\n"
        raw = path.read_bytes()
        for info in z.infolist():
            assert info.compress_type == zipfile.ZIP_STORED
            start = info.header_offset + 30 + len(info.filename) + len(info.extra)
            assert start % 64 == 0, info.filename
            assert raw[start:start + info.file_size] == z.read(info)
        assert z.read("archive/data/0") == np.ones(3, "<f4").tobytes()


def test_torch_writer_is_deterministic_and_atomic(tmp_path, monkeypatch):
    """The same arrays give the same bytes; a failed write keeps the old file and leaves no temporary."""
    path, again = tmp_path / "a.pt", tmp_path / "b.pt"
    save_torch_state_dict({"w": np.arange(5, dtype=np.float32)}, path)
    save_torch_state_dict({"w": np.arange(5, dtype=np.float32)}, again)
    assert path.read_bytes() == again.read_bytes()
    before = path.read_bytes()

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(torch_format, "_aligned_member", broken)
    with pytest.raises(OSError, match="disk full"):
        save_torch_state_dict({"w": np.zeros(5, np.float32)}, path)
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["a.pt", "b.pt"]


@pytest.mark.parametrize("state_dict, error, message", [
    ({1: np.zeros(2, np.float32)}, TypeError, "keys must be strings"),
    ({"w": [1.0, 2.0]}, TypeError, "'w' is a list"),
    ({"w": np.zeros(2, np.complex64)}, ValueError, "complex64.*no storage"),
    ([("w", np.zeros(2))], TypeError, "expected a dict"),
])
def test_torch_writer_refuses_what_torch_cannot_hold(tmp_path, state_dict, error, message):
    """Non-string keys, non-arrays and dtypes without a torch storage are refused before writing."""
    with pytest.raises(error, match=message):
        save_torch_state_dict(state_dict, tmp_path / "w.pt")
    assert os.listdir(tmp_path) == []


# ---------------------------------------------------------------- the course's own model files
MODELS = os.path.join(REPO, "ece662", "models")


def _make_course_files():
    spec = importlib.util.spec_from_file_location("make_course_files",
                                                  os.path.join(REPO, "scripts", "make_course_files.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_course_files_are_what_the_script_makes_from_the_shipped_npz(tmp_path):
    """torch.model and tensorflow.model equal, byte for byte, what scripts/make_course_files.py
    writes from today's default_convnet.npz (re-run the script after retraining)."""
    _make_course_files().write_course_files(str(tmp_path))
    for name in ("torch.model", "tensorflow.model"):
        shipped = os.path.join(MODELS, name)
        assert os.path.isfile(shipped), f"{name} is missing: run python scripts/make_course_files.py"
        assert open(shipped, "rb").read() == (tmp_path / name).read_bytes(), \
            f"ece662/models/{name} is stale: run python scripts/make_course_files.py"


@pytest.mark.parametrize("mode", ["torch", "tensorflow"])
def test_course_files_give_the_shipped_models_logits(mode):
    """load_model('ece662/models/<mode>.model', mode=mode) computes exactly the shipped model's logits."""
    shipped = load_model()
    model = load_model(os.path.join(MODELS, f"{mode}.model"), mode=mode)
    x = _images(16, seed=5)
    np.testing.assert_array_equal(model(x), shipped(x))


@requires_torch
def test_torch_course_file_is_the_shipped_state_dict_for_real_torch():
    """Real torch reads torch.model (weights_only=True) as the course CNN's state_dict of the
    shipped weights."""
    sd = torch.load(os.path.join(MODELS, "torch.model"), weights_only=True)
    shipped = load_model().state_dict()
    assert list(sd) == list(shipped)
    for key, value in shipped.items():
        np.testing.assert_array_equal(sd[key].numpy(), value, err_msg=key)


COURSE_LOAD_CELL = """
import os
from ece662.pruning_helper import test_model, load_model
from ece662.data_utils import get_CINIC10_data
data = get_CINIC10_data(); mode = '{mode}'  # torch or tensorflow
test_data = [data['X_test'], data['y_test']]
path = os.path.join('ece662', 'models', f'{{mode}}.model')
model = load_model(path, mode=mode)
test_model(model, test_data, mode=mode)
"""


@pytest.fixture(scope="module")
def shipped_accuracy(real_data):
    """The shipped .npz model's accuracy on the real 10,000-image test split."""
    data = get_CINIC10_data(real_data)
    assert len(data["y_test"]) == 10000
    return test_model(load_model(), [data["X_test"], data["y_test"]], verbose=False)


@pytest.mark.parametrize("mode", ["torch", "tensorflow"])
def test_course_load_cell_runs_unchanged_from_the_repository_root(mode, real_data, shipped_accuracy,
                                                                   monkeypatch, capsys):
    """The course notebook's first cell, as written, prints the shipped model's test accuracy."""
    monkeypatch.setenv("ECE662_DATA", real_data)
    monkeypatch.chdir(REPO)
    exec(compile(COURSE_LOAD_CELL.format(mode=mode), "course cell", "exec"), {})
    assert capsys.readouterr().out == f"Test Acc: {shipped_accuracy:.4f}\n"
    assert shipped_accuracy > 0.7                   # a trained model, not chance


# ---------------------------------------------------------------- the porting guide (docs/course-port.md)
def _guide_blocks():
    text = open(os.path.join(REPO, "docs", "course-port.md"), encoding="utf-8").read()
    start = text.index("## Porting the course notebook")
    end = text.find("\n## ", start + 1)
    section = text[start:end if end != -1 else len(text)]
    blocks = re.findall(r"<!-- (course|ece662) -->\n```py\n(.*?)```", section, flags=re.S)
    return [b for kind, b in blocks if kind == "course"], [b for kind, b in blocks if kind == "ece662"]


def test_porting_guide_pairs_every_course_cell_with_an_ece662_cell():
    """Each course cell has its ece662 version, line for line, and the lines that differ are the
    ones the guide's table names (imports, nn.Conv2d/nn.Linear, numel, dim=, torch.sum)."""
    course, ported = _guide_blocks()
    assert len(course) == len(ported) == 5
    allowed = ("import", "nn.", "numel()", "dim=", "torch.sum")
    for c, p in zip(course, ported):
        for a, b in zip(c.splitlines(), p.splitlines()):
            if a != b and not a.startswith("import"):
                assert any(t in a for t in allowed), f"unexplained change: {a!r} -> {b!r}"
        body = lambda block: [l for l in block.splitlines() if not l.startswith(("import", "from"))]
        assert len(body(c)) == len(body(p))


def test_porting_guide_runs_and_matches_the_sweeps(real_data, shipped_accuracy, monkeypatch, capsys):
    """The guide's ece662 cells run as written from the repository root on the real 10k test split;
    their accuracies equal ece662.experiments' unstructured and structured sweeps."""
    from ece662 import experiments
    monkeypatch.setenv("ECE662_DATA", real_data)
    monkeypatch.chdir(REPO)
    namespace = {}
    for block in _guide_blocks()[1]:
        exec(compile(block, "docs/course-port.md", "exec"), namespace)
    out = capsys.readouterr().out
    assert out.startswith(f"Test Acc: {shipped_accuracy:.4f}\n23210 parameters\n")
    model, (X, y) = namespace["model"], namespace["test_data"]
    unstructured = experiments.unstructured_sweep(model, X, y)
    structured = experiments.structured_sweep(model, X, y, scope="layer", n=2)
    assert namespace["unstructured"] == [r["accuracy"] for r in unstructured]
    assert namespace["structured"] == [r["accuracy"] for r in structured]
    for r in unstructured:
        assert f"sparsity {r['sparsity']:.2f}: Test Acc: {r['accuracy']:.4f}" in out
    assert "conv1: 24 of 32 filters pruned" in out          # 0.75 of 32 filters
    assert namespace["sparsity"](namespace["pruned"]) == experiments.sparsity(namespace["pruned"])[0]
    assert all(not n.endswith("_orig") for n in out.splitlines()[-1].split("'")[1::2])


def test_a_framework_file_loaded_as_npz_names_the_mode_to_use():
    """The course's torch.model / tensorflow.model loaded without mode= say which mode reads them;
    an unknown shipped-model name lists the names that exist."""
    models = os.path.join(REPO, "ece662", "models")
    with pytest.raises(ValueError, match=r"PyTorch file .*mode='torch'"):
        load_model(os.path.join(models, "torch.model"))
    with pytest.raises(ValueError, match=r"Keras .keras file.*mode='tensorflow'"):
        load_model(os.path.join(models, "tensorflow.model"))
    with pytest.raises(FileNotFoundError, match=r"no shipped model has that name.*pruned-80"):
        load_model("pruned-50")


@pytest.mark.parametrize("mode", ["torch", "tensorflow"])
def test_course_paths_resolve_from_notebooks_folder(mode, tmp_path, monkeypatch):
    """The course cell's relative path ece662/models/<mode>.model, run from notebooks/ (or anywhere
    without that file), reads the package's own file; a file at that path in the working directory
    comes first; a missing ece662/... file says to run from the repository root."""
    notebooks = tmp_path / "notebooks"
    notebooks.mkdir()
    monkeypatch.chdir(notebooks)
    path = os.path.join("ece662", "models", f"{mode}.model")
    model = load_model(path, mode=mode)
    for ours, shipped in zip(model.parameters(), load_model(mode=mode).parameters()):
        np.testing.assert_array_equal(ours, shipped)
    with pytest.raises(FileNotFoundError, match=r"no file at '.*nothere.model', neither in the working "
                                                r"directory .*notebooks nor in the installed ece662.*"
                                                r"run from there"):
        load_model(os.path.join("ece662", "models", "nothere.model"), mode=mode)
    if mode == "torch":              # a student's own ece662/models/torch.model beside them is read first
        os.makedirs(os.path.join("ece662", "models"))
        own = default_convnet(seed=5)
        save_torch_state_dict(own.state_dict(), path)
        np.testing.assert_array_equal(load_model(path, mode="torch").state_dict()["fc.weight"],
                                      own.state_dict()["fc.weight"])
