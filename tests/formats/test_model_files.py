"""Model files: ece662's .npz format, PyTorch state_dicts read without torch, hostile files."""
import os
import pickle
import sys
import zipfile

import numpy as np
import pytest

from helpers import FIXTURES, REPO, assert_close
from ece662 import io as mio
from ece662.layers import Conv2d, Dropout, Flatten, Linear, MaxPool2d, ReLU, Sequential
from ece662.models import default_convnet
from ece662.pruning_helper import load_model, test_model


def test_npz_round_trip_is_exact(tmp_path):
    """save_model then load_model gives bit-identical weights and logits."""
    net = default_convnet(seed=7)
    path = tmp_path / "net.npz"
    mio.save_model(net, path)
    again = load_model(str(path))
    for k, v in net.state_dict().items():
        np.testing.assert_array_equal(again.state_dict()[k], v)
    x = np.random.default_rng(0).standard_normal((3, 3, 32, 32)).astype(np.float32)
    np.testing.assert_array_equal(again(x), net.eval()(x))


def test_failed_save_keeps_the_old_file(tmp_path, monkeypatch):
    """A save that fails midway leaves the previous file intact and no temporary files."""
    path = tmp_path / "net.npz"
    mio.save_model(default_convnet(seed=1), path)
    before = path.read_bytes()

    def broken_savez(f, **arrays):
        f.write(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(mio.np, "savez", broken_savez)
    with pytest.raises(OSError, match="disk full"):
        mio.save_model(default_convnet(seed=2), path)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["net.npz"]


def test_torch_fixture_loads_without_torch_and_gives_torch_logits(monkeypatch):
    """A real torch.save state_dict loads with torch unimportable and reproduces torch's logits."""
    monkeypatch.setitem(sys.modules, "torch", None)   # any `import torch` now fails
    net = load_model(os.path.join(FIXTURES, "torch_default_convnet.pt"), mode="torch")
    io = np.load(os.path.join(FIXTURES, "torch_default_convnet_io.npz"))
    assert_close(net(io["x"]), io["logits"], "torch fixture", rtol=1e-4, atol=1e-5)


def test_torch_sequential_loads_into_a_matching_model():
    """Any Sequential whose keys and shapes match can take a torch state_dict."""
    model = Sequential(Conv2d(3, 8, 3, stride=2, padding=1), ReLU(), MaxPool2d(2), Flatten(),
                       Linear(8 * 8 * 8, 5))
    net = load_model(os.path.join(FIXTURES, "torch_sequential.pt"), mode="torch", model=model)
    io = np.load(os.path.join(FIXTURES, "torch_sequential_io.npz"))
    assert_close(net(io["x"]), io["logits"], "torch sequential", rtol=1e-4, atol=1e-5)


def test_torch_state_dict_of_another_architecture_is_explained():
    """Loading a non-default state_dict without model= names the keys it found."""
    with pytest.raises(ValueError, match="default course network.*model=Sequential"):
        load_model(os.path.join(FIXTURES, "torch_sequential.pt"), mode="torch")
    wrong = Sequential(Conv2d(3, 4, 3, stride=2, padding=1), ReLU(), MaxPool2d(2), Flatten(),
                       Linear(4 * 8 * 8, 5))
    with pytest.raises(ValueError, match="0.weight"):
        load_model(os.path.join(FIXTURES, "torch_sequential.pt"), mode="torch", model=wrong)


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def _torch_like_zip(path, payload):
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("evil/data.pkl", payload)
        z.writestr("evil/byteorder", "little")


def test_malicious_torch_file_is_refused(tmp_path):
    """A .pt whose pickle calls os.system is refused before anything runs."""
    path = tmp_path / "evil.pt"
    _torch_like_zip(path, pickle.dumps({"conv1.weight": _Evil()}, protocol=2))
    with pytest.raises(ValueError, match="refusing to load (posix|os|nt).system"):
        load_model(str(path), mode="torch")


def test_pickled_model_object_gets_a_state_dict_hint(tmp_path):
    """A whole pickled nn.Module (not a state_dict) is refused with the fix in the message."""
    payload = b"\x80\x02ctorch.nn.modules.container\nSequential\nq\x00)\x81q\x01."
    path = tmp_path / "model.pt"
    _torch_like_zip(path, payload)
    with pytest.raises(ValueError, match=r"state_dict\(\)"):
        load_model(str(path), mode="torch")


def test_npz_with_pickled_objects_is_refused(tmp_path):
    """An .npz carrying an object array is not unpickled."""
    path = tmp_path / "evil.npz"
    np.savez(path, __ece662_spec__=np.array([_Evil()], dtype=object))
    with pytest.raises(ValueError, match="pickled"):
        load_model(str(path))


@pytest.mark.parametrize("mode", ["numpy", "torch"])
def test_truncated_and_foreign_files_get_clear_errors(tmp_path, mode):
    """Truncated archives, text files and other .npz files say what they are not."""
    good = tmp_path / "good"
    if mode == "numpy":
        mio.save_model(default_convnet(), good)
    else:
        good.write_bytes(open(os.path.join(FIXTURES, "torch_default_convnet.pt"), "rb").read())
    truncated = tmp_path / "truncated"
    truncated.write_bytes(good.read_bytes()[:2000])
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    for path in (truncated, text):
        with pytest.raises(ValueError, match="truncated|not a"):
            load_model(str(path), mode=mode)
    other = tmp_path / "other.npz"
    np.savez(other, X=np.zeros(3))
    with pytest.raises(ValueError, match="not"):
        load_model(str(other), mode=mode)
    with pytest.raises(FileNotFoundError):
        load_model(str(tmp_path / "missing.npz"), mode=mode)
    with pytest.raises(ValueError, match="unknown mode"):
        load_model(str(good), mode="caffe")


@pytest.mark.filterwarnings("ignore::ece662.pruning_helper.NearChanceWarning")  # an untrained model, on purpose
def test_test_model_prints_and_returns_a_deterministic_accuracy(capsys):
    """test_model prints 'Test Acc: x.xxxx' and gives the same number every time."""
    rng = np.random.default_rng(0)
    X = rng.standard_normal((50, 3, 32, 32)).astype(np.float32)
    y = rng.integers(0, 10, 50)
    net = default_convnet(seed=0)
    a = test_model(net, [X, y], batch_size=7)
    b = test_model(net, [X, y], batch_size=50)
    assert a == b
    expected = float(np.mean(net.eval()(X).argmax(1) == y))
    assert a == expected
    assert capsys.readouterr().out.splitlines() == [f"Test Acc: {a:.4f}"] * 2


def test_test_model_explains_uint8_images():
    """Raw uint8 NHWC images get a hint to use the data loader's normalisation."""
    X = np.zeros((4, 32, 32, 3), np.uint8)
    with pytest.raises(TypeError, match="get_CINIC10_data"):
        test_model(default_convnet(), [X, np.zeros(4, int)])


@pytest.mark.parametrize("ext", ["keras", "h5"])
def test_keras_files_load_without_keras_and_give_keras_logits(ext, monkeypatch):
    """Real Keras files (.keras and .h5) load with h5py alone and reproduce Keras' logits."""
    monkeypatch.setitem(sys.modules, "keras", None)
    monkeypatch.setitem(sys.modules, "tensorflow", None)
    net = load_model(os.path.join(FIXTURES, f"keras_default_convnet.{ext}"), mode="tensorflow")
    io = np.load(os.path.join(FIXTURES, "keras_default_convnet_io.npz"))
    assert_close(net(io["x"]), io["logits"], f"keras .{ext}", rtol=1e-4, atol=1e-5)


def test_keras_file_of_another_architecture_is_explained():
    """A Keras file whose layers do not fit the model says what it found."""
    model = Sequential(Conv2d(3, 8, 3), ReLU(), Flatten(), Linear(8 * 30 * 30, 5))
    with pytest.raises(ValueError, match="3 layers with weights.*has 2"):
        load_model(os.path.join(FIXTURES, "keras_default_convnet.keras"), mode="tensorflow", model=model)
    with pytest.raises(ValueError, match="not a .keras model|not a readable Keras"):
        load_model(os.path.join(FIXTURES, "torch_default_convnet.pt"), mode="tensorflow")


def _softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


@pytest.mark.parametrize("ext", ["keras", "h5"])
@pytest.mark.parametrize("name", ["keras_beyond", "keras_gap"])
def test_keras_architectures_beyond_the_course_cnn_build_from_their_config(name, ext, monkeypatch):
    """Real Keras 3 Sequentials (Conv2D same/stride 2, pooling max/average/global, LeakyReLU,
    Activation, ReLU, Dropout, Flatten, Dense) are built from the file's config, with Keras' outputs."""
    monkeypatch.setitem(sys.modules, "keras", None)
    path = os.path.join(FIXTURES, f"{name}.{ext}")
    io = np.load(os.path.join(FIXTURES, f"{name}_io.npz"))
    if name == "keras_beyond":       # its last Dense has a softmax, which ece662 leaves out (and says so)
        with pytest.warns(UserWarning, match="final softmax of Keras layer 'dense_1' is left out"):
            net = load_model(path, mode="tensorflow")
        out = _softmax(net(io["x"]))
    else:
        net = load_model(path, mode="tensorflow")
        out = net(io["x"])
    assert_close(out, io["out"], f"{name}.{ext}", rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("ext", ["keras", "h5"])
def test_keras_batchnorm_file(ext):
    """A Keras BatchNormalization loads with Keras' outputs once ece662 has BatchNorm2d; until then
    the error names the layer and what is missing."""
    import ece662.layers
    path = os.path.join(FIXTURES, f"keras_gap_bn.{ext}")
    if not hasattr(ece662.layers, "BatchNorm2d"):
        with pytest.raises(ValueError, match="'batch_normalization' is a BatchNormalization, which "
                                             "needs ece662.layers.BatchNorm2d"):
            load_model(path, mode="tensorflow")
        return
    io = np.load(os.path.join(FIXTURES, "keras_gap_bn_io.npz"))
    assert_close(load_model(path, mode="tensorflow")(io["x"]), io["out"], f"bn .{ext}", rtol=1e-4, atol=1e-5)


def test_keras_writer_round_trips_and_refuses_what_keras_cannot_say(tmp_path):
    """save_keras then load_model(mode='tensorflow') gives identical logits (padding 'same' at
    stride 1, Dropout, a Dense after a Flatten); an asymmetric padding is refused by name."""
    from ece662.formats.keras_format import save_keras
    net = Sequential(Conv2d(3, 6, 3, padding=1, seed=1), ReLU(), MaxPool2d(2), Dropout(0.2),
                     Conv2d(6, 4, 3, stride=2, seed=2), Flatten(), Linear(4 * 7 * 7, 5, seed=3)).eval()
    path = tmp_path / "net.keras"
    save_keras(net, path)
    x = np.random.default_rng(0).standard_normal((3, 3, 32, 32)).astype(np.float32)
    np.testing.assert_array_equal(load_model(str(path), mode="tensorflow")(x), net(x))
    with pytest.raises(ValueError, match="layer '0'.*padding 2"):
        save_keras(Sequential(Conv2d(3, 4, 3, padding=2)), tmp_path / "bad.keras")


@pytest.mark.oracle
def test_course_keras_file_is_read_by_real_keras(tmp_path, monkeypatch):
    """Real Keras 3 (torch backend) loads ece662/models/tensorflow.model and predicts the shipped logits
    (an optional oracle like torch: skipped where Keras is not installed)."""
    monkeypatch.setenv("KERAS_BACKEND", os.environ.get("KERAS_BACKEND", "torch"))
    keras = pytest.importorskip("keras")
    path = tmp_path / "course.keras"      # Keras insists on the .keras extension
    path.write_bytes(open(os.path.join(REPO, "ece662", "models",
                                       "tensorflow.model"), "rb").read())
    x = np.random.default_rng(0).standard_normal((4, 3, 32, 32)).astype(np.float32)
    out = np.asarray(keras.saving.load_model(str(path)).predict(x.transpose(0, 2, 3, 1), verbose=0))
    assert_close(out, load_model()(x), "real Keras", rtol=1e-4, atol=1e-5)


def test_keras_writer_round_trips_the_newer_layers(tmp_path):
    """BatchNorm2d (with running statistics), LeakyReLU, AvgPool2d and AdaptiveAvgPool2d(1) go to
    Keras and back with identical logits."""
    from ece662.formats.keras_format import save_keras
    import ece662.layers as L
    bn = L.BatchNorm2d(6, eps=1e-3, momentum=0.01)
    rng = np.random.default_rng(2)
    bn.load_state_dict({"weight": rng.uniform(0.5, 1.5, 6), "bias": rng.normal(0, 0.1, 6),
                        "running_mean": rng.normal(0, 0.2, 6), "running_var": rng.uniform(0.5, 2, 6),
                        "num_batches_tracked": np.array(3)})
    net = Sequential(Conv2d(3, 6, 3, seed=1), bn, L.LeakyReLU(0.1), L.AvgPool2d(2),
                     Conv2d(6, 4, 3, seed=2), ReLU(), L.AdaptiveAvgPool2d(1), Flatten(),
                     Linear(4, 5, seed=3)).eval()
    path = tmp_path / "net.keras"
    save_keras(net, path)
    back = load_model(str(path), mode="tensorflow")
    x = np.random.default_rng(0).standard_normal((3, 3, 32, 32)).astype(np.float32)
    np.testing.assert_array_equal(back(x), net(x))
    assert back[1].eps == 1e-3 and back[1].momentum == 0.01


@pytest.mark.parametrize("name", ["x.h5", "x.H5", "x.hdf5", "x.model", "x", "x.KERAS"])
def test_save_keras_refuses_names_keras_would_not_read_as_keras(tmp_path, name):
    """save_keras writes a .keras zip; under any other name (Keras reads .h5 as legacy HDF5) it is
    refused with a message naming the .keras path to use, and no file is created."""
    from ece662.formats.keras_format import save_keras
    net = Sequential(Conv2d(3, 4, 3, seed=1), Flatten(), Linear(4 * 30 * 30, 10, seed=2))
    with pytest.raises(ValueError, match=r"expected a path ending in \.keras.*Use '.*x\.keras'"):
        save_keras(net, tmp_path / name)
    assert os.listdir(tmp_path) == []
    save_keras(net, tmp_path / "x.keras")
    assert os.listdir(tmp_path) == ["x.keras"]


@pytest.mark.oracle
def test_real_keras_reads_what_save_keras_writes_and_only_under_keras(tmp_path, monkeypatch):
    """Why save_keras refuses other names: real Keras 3 loads its file as x.keras, and fails on the
    same bytes named x.h5 (it reads .h5 as the legacy HDF5 layout)."""
    monkeypatch.setenv("KERAS_BACKEND", os.environ.get("KERAS_BACKEND", "torch"))
    keras = pytest.importorskip("keras")
    from ece662.formats.keras_format import save_keras
    net = Sequential(Conv2d(3, 4, 3, seed=1), ReLU(), Flatten(), Linear(4 * 30 * 30, 10, seed=2)).eval()
    save_keras(net, tmp_path / "x.keras")
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    out = np.asarray(keras.saving.load_model(str(tmp_path / "x.keras")).predict(x.transpose(0, 2, 3, 1),
                                                                                verbose=0))
    assert_close(out, net(x), "real Keras", rtol=1e-4, atol=1e-5)
    (tmp_path / "x.h5").write_bytes((tmp_path / "x.keras").read_bytes())
    with pytest.raises(Exception):
        keras.saving.load_model(str(tmp_path / "x.h5"))
