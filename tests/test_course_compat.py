"""The course notebook's own calls, as written: test_model's modes, labels it refuses, empty batches."""
import os
import zipfile

import numpy as np
import pytest

from conftest import FIXTURES, requires_torch, torch
from ece662 import torch_format
from ece662.models import default_convnet
from ece662.pruning_helper import predict_logits, test_model
from ece662.torch_format import read_torch_state_dict, save_torch_state_dict


def _images(n, seed=0):
    return np.random.default_rng(seed).standard_normal((n, 3, 32, 32)).astype(np.float32)


@pytest.mark.parametrize("mode", ["torch", "tensorflow", "numpy"])
def test_test_model_takes_the_course_modes(mode, capsys):
    """test_model(model, test_data, mode=...) runs for every mode the course uses, same number."""
    X, y = _images(20), np.random.default_rng(1).integers(0, 10, 20)
    net = default_convnet(seed=3)
    acc = test_model(net, [X, y], mode=mode)
    assert acc == float(np.mean(net.eval()(X).argmax(1) == y))
    assert capsys.readouterr().out == f"Test Acc: {acc:.4f}\n"


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
    from ece662.torch_format import read_torch_state_dict
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
