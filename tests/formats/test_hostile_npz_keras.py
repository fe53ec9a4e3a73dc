"""Hostile and careless ece662 .npz and Keras files: a clear ValueError (naming the file, and the
layer where there is one), bounded memory, never a traceback from deep inside numpy or h5py."""
import builtins
import functools
import io
import json
import os
import re
import subprocess
import sys
import tracemalloc
import zipfile

import numpy as np
import pytest

from helpers import FIXTURES
from ece662 import io as mio
from ece662.formats import common as formats_common
from ece662.models import default_convnet
from ece662.pruning_helper import load_model


def _npy(array=None, header=None):
    """The bytes of one .npy member; ``header`` replaces the real header dict (for lies)."""
    buf = io.BytesIO()
    np.lib.format.write_array(buf, np.asarray(array), allow_pickle=False)
    if header is None:
        return buf.getvalue()
    out = io.BytesIO()
    np.lib.format.write_array_header_1_0(out, header)
    data = buf.getvalue()
    return out.getvalue() + data[len(data) - np.asarray(array).nbytes:]


def _npz(path, members):
    with zipfile.ZipFile(path, "w") as z:
        for name, data in members.items():
            z.writestr(name + ".npy", data)
    return str(path)


def _good_members(net=None, spec=None):
    net = net or default_convnet(seed=0)
    members = {"__ece662_format__": _npy(np.array("ece662-model-v1")),
               "__ece662_spec__": _npy(np.array(spec if spec is not None else json.dumps(net.spec())))}
    members.update({k: _npy(v) for k, v in net.state_dict().items()})
    return members


def _load_within(path, limit_mb=64):
    """load_model(path), asserting Python/numpy allocate at most ``limit_mb`` on the way."""
    tracemalloc.start()
    try:
        return load_model(path)
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert peak < limit_mb * 2 ** 20, f"loading {path} allocated {peak / 2 ** 20:.0f} MB"


@pytest.mark.parametrize("declared", [(10 ** 11,), (200_000_000,), (32, 3, 5, 6)])
def test_npz_header_declaring_more_than_the_member_holds_is_refused_without_allocating(tmp_path, declared):
    """A .npy header that declares a shape its bytes do not hold is refused before any allocation."""
    members = _good_members()
    w = default_convnet().state_dict()["conv1.weight"]
    members["conv1.weight"] = _npy(w, header={"descr": "<f4", "fortran_order": False, "shape": declared})
    path = _npz(tmp_path / "lying.npz", members)
    with pytest.raises(ValueError, match=r"lying.npz: array 'conv1.weight' declares shape .* but its "
                                         r"archive member holds 9,600"):
        _load_within(path)


def test_npz_with_too_many_values_is_refused_before_reading(tmp_path, monkeypatch):
    """Arrays that together exceed the budget are refused from their headers, before their data
    (the budget is lowered here so that the test file stays small)."""
    monkeypatch.setattr(formats_common, "MAX_PARAMETERS", 30_000)
    members = _good_members()          # 23,210 weights
    for i in range(3):                 # honest headers; their declared sizes are summed as they come
        members[f"extra{i}"] = _npy(np.zeros(13_000, np.uint8))
    path = _npz(tmp_path / "big.npz", members)
    with pytest.raises(ValueError, match="more than 60,000 values .at 'extra2'"):
        _load_within(path)


def test_npz_object_array_anywhere_is_refused(tmp_path):
    """An object (pickle) array among the weights is refused as pickled objects, nothing unpickled."""
    members = _good_members()
    buf = io.BytesIO()
    np.lib.format.write_array(buf, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    members["fc.bias"] = buf.getvalue()
    with pytest.raises(ValueError, match="pickled Python objects .array 'fc.bias'"):
        load_model(_npz(tmp_path / "obj.npz", members))


@pytest.mark.parametrize("spec, message", [
    ("{not json", r"spec.npz: the model spec .__ece662_spec__. is not valid JSON"),
    (json.dumps({"type": "Sequential"}), "spec.npz: the spec has no list of 'layers'"),
    (json.dumps({"type": "Sequential", "layers": {"conv1": 1}}), "no list of 'layers'"),
    (json.dumps({"type": "Sequential", "layers": [["conv1"]]}), r"layer 0 of the spec is not a \[name"),
    (json.dumps({"type": "Sequential", "layers": [["conv1", {"type": "Evil"}]]}),
     "spec.npz: layer 'conv1': unknown type 'Evil'"),
    (json.dumps({"type": "Sequential", "layers": [["a", {"type": "ReLU"}], ["a", {"type": "ReLU"}]]}),
     "names must be unique"),
    (json.dumps({"type": "Sequential", "layers": [["fc", {"type": "Linear", "args": {
        "in_features": 2 ** 20, "out_features": 2 ** 20}}]]}), "need 1,099,512,676,352 weights"),
    (json.dumps({"type": "Sequential", "layers": [["fc", {"type": "Linear", "args": {
        "in_features": 10 ** 12, "out_features": 1}}]]}), "'in_features' = 1000000000000 is out of range"),
    (json.dumps({"type": "Sequential", "layers": [["fc", {"type": "Linear", "args": {
        "in_features": {"x": 1}, "out_features": 1}}]]}), "'in_features' .* is not a number"),
    (json.dumps({"type": "Sequential", "layers": [["d", {"type": "Dropout", "args": {"p": float("nan")}}]]}),
     "argument 'p' is nan"),
    (json.dumps(["Sequential"]), "expected a spec"),
])
def test_npz_spec_is_validated_before_any_layer_is_made(tmp_path, spec, message):
    """Malformed, unknown or oversized specs are refused, naming the file, before allocation."""
    path = _npz(tmp_path / "spec.npz", _good_members(spec=spec))
    with pytest.raises(ValueError, match=message):
        _load_within(path)


def test_npz_spec_that_is_not_one_string_is_refused(tmp_path):
    """__ece662_spec__ must be a single JSON string."""
    members = _good_members()
    members["__ece662_spec__"] = _npy(np.zeros(3))
    with pytest.raises(ValueError, match="must be one JSON string"):
        load_model(_npz(tmp_path / "s.npz", members))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_npz_non_finite_weights_name_the_layer(tmp_path, bad):
    """A NaN or infinite weight is an error naming the layer, not a model that scores 10%."""
    net = default_convnet(seed=0)
    net.conv2.weight[3, 1, 0, 0] = bad
    path = tmp_path / "nan.npz"
    mio.save_model(net, path)
    with pytest.raises(ValueError, match=r"nan.npz: conv2.weight \(layer 'conv2'\) holds 1 NaN or infinite"):
        load_model(str(path))


def test_npz_pruned_model_with_non_finite_orig_is_refused(tmp_path):
    """The check also covers a pruned parameter's weight_orig."""
    from ece662 import pruning
    net = default_convnet(seed=0)
    pruning.l1_unstructured(net.fc, "weight", amount=0.5)
    net.fc.weight_orig[0, 0] = np.nan
    path = tmp_path / "p.npz"
    mio.save_model(net, path)
    with pytest.raises(ValueError, match=r"fc.weight_orig \(layer 'fc'\)"):
        load_model(str(path))


def test_npz_permission_error_is_not_called_corrupt(tmp_path, monkeypatch):
    """A file this user cannot read says 'permission denied', not 'corrupt or truncated'."""
    path = tmp_path / "locked.npz"
    mio.save_model(default_convnet(), path)
    real_open = builtins.open

    def locked(file, *args, **kwargs):
        if isinstance(file, (str, os.PathLike)) and os.fspath(file) == str(path):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", locked)
    monkeypatch.setattr(io, "open", locked)
    with pytest.raises(PermissionError, match="permission denied; check the file's permissions") as e:
        load_model(str(path))
    assert "truncated" not in str(e.value)


def test_npz_with_a_foreign_member_or_format_is_refused(tmp_path):
    """A member that is not an array, or a format string from elsewhere, is named."""
    members = _good_members()
    path = _npz(tmp_path / "x.npz", members)
    with zipfile.ZipFile(path, "a") as z:
        z.writestr("notes.txt", "hello")
    with pytest.raises(ValueError, match="'notes.txt' is not an array"):
        load_model(path)
    members["__ece662_format__"] = _npy(np.array("ece662-model-v9"))
    with pytest.raises(ValueError, match="unknown ece662 format 'ece662-model-v9'"):
        load_model(_npz(tmp_path / "y.npz", members))


def test_npz_honest_files_still_load(tmp_path):
    """The checks refuse nothing ece662 writes: dense, pruned and the shipped model load as before."""
    from ece662 import pruning
    net = default_convnet(seed=4)
    pruning.ln_structured(net.conv1, "weight", amount=8, n=2, dim=0)
    path = tmp_path / "pruned.npz"
    mio.save_model(net, path)
    again = _load_within(str(path))
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    np.testing.assert_array_equal(again(x), net.eval()(x))
    assert load_model() is not None


def test_npz_string_arrays_are_bounded_and_counted(tmp_path):
    """Strings besides the format and the spec are refused (they escaped the value budget: 400 of 4 MB
    each made 1.6 GB), and the spec's declared length is bounded before it is read."""
    members = _good_members()
    members["notes"] = _npy(np.array(["x" * 1000] * 3))
    path = _npz(tmp_path / "notes.npz", members)
    with pytest.raises(ValueError, match=r"array 'notes' holds strings \(<U1000\)") as err:
        _load_within(path)
    assert path in str(err.value)
    members = _good_members(spec=" " * 1_000_001)
    path = _npz(tmp_path / "long-spec.npz", members)
    with pytest.raises(ValueError, match=r"'__ece662_spec__' declares 1,000,001 characters, more than the 1,000,000"):
        _load_within(path)
    members = _good_members()
    members["__ece662_format__"] = _npy(np.array("v" * 65))
    with pytest.raises(ValueError, match=r"'__ece662_format__' declares 65 characters"):
        _load_within(_npz(tmp_path / "long-format.npz", members))


def test_npz_mask_that_is_not_zero_or_one_is_refused(tmp_path):
    """A weight_mask of 0.5 was read as True (pruning nothing); like the torch reader, ece662 .npz refuses it."""
    from ece662 import pruning
    net = default_convnet(seed=4)
    pruning.l1_unstructured(net.fc, "weight", amount=0.5)
    members = _good_members(net)
    mask = net.state_dict()["fc.weight_mask"].astype(np.float32)
    mask[0, 0] = 0.5
    members["fc.weight_mask"] = _npy(mask)
    path = _npz(tmp_path / "half.npz", members)
    with pytest.raises(ValueError, match=r"fc.weight_mask is not a pruning mask: it holds 1 values other than "
                                         r"0 and 1 \(e.g. 0.5\)") as err:
        load_model(path)
    assert path in str(err.value)
    mask[0, 0] = 1.0                         # float 0./1. masks, as torch writes them, still load
    members["fc.weight_mask"] = _npy(mask)
    assert load_model(_npz(tmp_path / "float.npz", members)) is not None


def test_npz_spec_with_a_5000_digit_integer_names_the_file(tmp_path):
    """json.loads refuses integers of over 4,300 digits with a ValueError that is not a JSONDecodeError;
    the message still names the file."""
    spec = json.dumps(default_convnet(seed=0).spec()).replace('"out_channels": 32', '"out_channels": ' + "9" * 5000, 1)
    assert "9" * 5000 in spec
    path = _npz(tmp_path / "digits.npz", _good_members(spec=spec))
    with pytest.raises(ValueError, match=r"the model spec \(__ece662_spec__\) is not valid JSON .*4300") as err:
        load_model(path)
    assert str(err.value).startswith(path)
    from ece662.formats.spec import read_architecture       # the same spec as an --arch net.json file
    arch = tmp_path / "net.json"
    arch.write_text(spec)
    with pytest.raises(ValueError, match=r"is not a JSON architecture .*4300") as err:
        read_architecture(arch)
    assert str(err.value).startswith(str(arch))


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="FIFOs are POSIX")
@pytest.mark.parametrize("writer", ["save_model", "save_torch_state_dict", "save_keras", "save_onnx"])
def test_saving_over_a_fifo_or_folder_is_refused_and_leaves_it(tmp_path, writer):
    """atomic_write would os.replace a FIFO or device by a file (as root, save_model(m, os.devnull) would
    replace /dev/null): a target that exists and is not a regular file is refused, and stays what it was."""
    import re
    import stat
    if writer == "save_onnx":
        pytest.importorskip("onnx")
    net = default_convnet(seed=0)
    save = {"save_model": mio.save_model, "save_keras": mio.save_keras, "save_onnx": mio.save_onnx,
            "save_torch_state_dict": lambda m, p: mio.save_torch_state_dict(m.state_dict(), p)}[writer]
    ext = {"save_model": ".npz", "save_torch_state_dict": ".pt", "save_keras": ".keras", "save_onnx": ".onnx"}[writer]
    fifo, folder, link = tmp_path / ("fifo" + ext), tmp_path / ("folder" + ext), tmp_path / ("link" + ext)
    os.mkfifo(fifo)
    folder.mkdir()
    os.symlink(fifo, link)
    for target in (fifo, folder, link):
        with pytest.raises(ValueError, match=re.escape(f"{writer}: {target} exists and is not a regular file")):
            save(net, str(target))
    assert stat.S_ISFIFO(os.stat(fifo).st_mode) and os.path.isdir(folder)
    assert sorted(os.listdir(tmp_path)) == sorted(p.name for p in (fifo, folder, link))   # no temporary file left


def test_saving_through_a_symlink_to_a_file_replaces_the_link(tmp_path):
    """A symbolic link to a regular file is replaced by the new file; the file it pointed to is untouched."""
    net = default_convnet(seed=0)
    old = tmp_path / "old.npz"
    old.write_bytes(b"keep me")
    link = tmp_path / "link.npz"
    os.symlink(old, link)
    mio.save_model(net, str(link))
    assert not os.path.islink(link) and old.read_bytes() == b"keep me"
    assert load_model(str(link)) is not None


# ================================================================= Keras files
h5py = pytest.importorskip("h5py")
KERAS = os.path.join(FIXTURES, "keras_default_convnet.keras")


def _keras_with(path, config=None, weights=None, source=KERAS):
    """A copy of a real .keras fixture with config.json and/or model.weights.h5 replaced."""
    with zipfile.ZipFile(source) as z:
        members = {n: z.read(n) for n in z.namelist()}
    if config is not None:
        members["config.json"] = config if isinstance(config, bytes) else json.dumps(config).encode()
    if weights is not None:
        members["model.weights.h5"] = weights
    with zipfile.ZipFile(path, "w") as z:
        for n, data in members.items():
            z.writestr(n, data)
    return str(path)


def _fixture_config():
    with zipfile.ZipFile(KERAS) as z:
        return json.loads(z.read("config.json"))


def _weights_edited(edit):
    """The fixture's model.weights.h5 bytes after ``edit(h5py.File)``."""
    with zipfile.ZipFile(KERAS) as z:
        buf = io.BytesIO(z.read("model.weights.h5"))
    with h5py.File(buf, "r+") as f:
        edit(f)
    return buf.getvalue()


def _load_keras_within(path, limit_mb=64):
    tracemalloc.start()
    try:
        return load_model(path, mode="tensorflow")
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert peak < limit_mb * 2 ** 20, f"loading {path} allocated {peak / 2 ** 20:.0f} MB"


@pytest.mark.parametrize("declared", [(100_000, 100_000), (1152, 11), (2,)])
def test_keras_dataset_shape_is_checked_against_the_architecture_before_reading(tmp_path, declared):
    """An HDF5 dataset declaring a shape the architecture does not have is refused unread,
    even one that declares 40 GB in a file of a few kB."""
    def swap(f):
        del f["layers/dense/vars/0"]
        f.create_dataset("layers/dense/vars/0", shape=declared, dtype="f4", chunks=True)
    path = _keras_with(tmp_path / "big.keras", weights=_weights_edited(swap))
    with pytest.raises(ValueError, match=r"big.keras: .*(Keras layer 'dense': weight 0 is declared "
                                         r"\(.*\), the architecture needs \(1152, 10\)|more than)"):
        _load_keras_within(path)


def test_keras_weights_over_the_budget_are_refused(tmp_path, monkeypatch):
    """More declared weights than MAX_PARAMETERS: refused from the metadata alone."""
    monkeypatch.setattr(formats_common, "MAX_PARAMETERS", 10_000)
    with pytest.raises(ValueError, match="declare 23,210 values, more than the 10,000"):
        load_model(KERAS, mode="tensorflow")


@pytest.mark.parametrize("config, message", [
    (b"{not json", "config.json is not valid JSON"),
    (b"\xff\xfe", "config.json is not UTF-8 text"),
    ([1, 2], "not a Keras model config"),
    ({"class_name": "Functional", "config": {"layers": []}}, "Keras 'Functional' model.*model="),
    ({"class_name": "Sequential", "config": {}}, "no list of 'layers'"),
    ({"class_name": "Sequential", "config": {"layers": [{"class_name": 3}]}}, "layer 0 is not a"),
    ({"class_name": "Sequential", "config": {"layers": [{"class_name": "Dense", "config": {"name": 5}}]}},
     "layer 0 is not a"),
])
def test_malformed_keras_config_gets_a_clear_error(tmp_path, config, message):
    """A damaged or foreign config.json is a ValueError naming the file, not a traceback."""
    path = _keras_with(tmp_path / "bad.keras", config=config)
    with pytest.raises(ValueError, match=f"bad.keras: .*{message}"):
        load_model(path, mode="tensorflow")


def _config_with(edit):
    config = _fixture_config()
    edit(config["config"]["layers"])
    return config


@pytest.mark.parametrize("edit, message", [
    (lambda layers: layers[1]["config"].update(filters="32"), "'conv2d': filters must be a positive int"),
    (lambda layers: layers[1]["config"].update(kernel_size=[5, 5, 5]), "'conv2d': kernel_size must be"),
    (lambda layers: layers[1]["config"].update(activation="gelu"), "'conv2d': activation 'gelu'"),
    (lambda layers: layers[1]["config"].update(dilation_rate=[2, 2]), "dilated or grouped"),
    (lambda layers: layers[1]["config"].update(padding="causal"), "padding 'causal'"),
    (lambda layers: layers[1]["config"].update(data_format="channels_first"), "only channels_last"),
    (lambda layers: layers.insert(2, {"class_name": "LSTM", "config": {"name": "lstm"}}),
     "'lstm' is a LSTM, which ece662 cannot build"),
    (lambda layers: layers[0]["config"].update(batch_shape=[None, 32, 32]), "not \\[batch, height"),
    (lambda layers: layers[6]["config"].update(units=-1), "'dense': units must be a positive int"),
    (lambda layers: layers[2]["config"].update(pool_size=[2, 3]), "ece662 pools are square"),
])
def test_keras_layer_settings_ece662_cannot_build_are_named(tmp_path, edit, message):
    """Every Keras setting without an ece662 equivalent is refused, naming the layer."""
    path = _keras_with(tmp_path / "odd.keras", config=_config_with(edit))
    with pytest.raises(ValueError, match=message):
        load_model(path, mode="tensorflow")


def test_keras_asymmetric_same_padding_is_explained(tmp_path):
    """'same' padding at stride 2 on an even input pads one side more: refused with the reason."""
    def edit(layers):
        layers[1]["config"].update(kernel_size=[3, 3], strides=[2, 2], padding="same")
    path = _keras_with(tmp_path / "asym.keras", config=_config_with(edit))
    with pytest.raises(ValueError, match="pads 0 before and 1 after.*symmetrically"):
        load_model(path, mode="tensorflow")


@pytest.mark.parametrize("bad", [np.nan, np.inf])
@pytest.mark.parametrize("ext", ["keras", "h5"])
def test_keras_non_finite_weights_name_the_layer(tmp_path, bad, ext):
    """A NaN/inf weight in a Keras file is an error naming the Keras layer."""
    if ext == "keras":
        def poison(f):
            f["layers/conv2d_1/vars/1"][3] = bad
        path = _keras_with(tmp_path / "nan.keras", weights=_weights_edited(poison))
    else:
        path = str(tmp_path / "nan.h5")
        with open(os.path.join(FIXTURES, "keras_default_convnet.h5"), "rb") as src, open(path, "wb") as dst:
            dst.write(src.read())
        with h5py.File(path, "r+") as f:
            f["model_weights/conv2d_1/sequential/conv2d_1/bias"][3] = bad
    with pytest.raises(ValueError, match="Keras layer 'conv2d_1': weight 1 holds 1 NaN or infinite"):
        load_model(path, mode="tensorflow")


def test_keras_non_float_dataset_is_refused(tmp_path):
    """A weight stored as strings or integers is refused by dtype, before it is read."""
    def swap(f):
        del f["layers/dense/vars/1"]
        f.create_dataset("layers/dense/vars/1", data=np.arange(10, dtype=np.int64))
    path = _keras_with(tmp_path / "int.keras", weights=_weights_edited(swap))
    with pytest.raises(ValueError, match="'dense': weight 1 has dtype int64, expected floats"):
        load_model(path, mode="tensorflow")


def test_keras_weights_group_with_odd_names_is_refused(tmp_path):
    """A vars group whose datasets are not named 0, 1, ... is refused, naming the group."""
    def rename(f):
        f.move("layers/dense/vars/1", "layers/dense/vars/bias")
    path = _keras_with(tmp_path / "odd.keras", weights=_weights_edited(rename))
    with pytest.raises(ValueError, match="layers/dense/vars holds .* expected datasets named 0, 1, 2"):
        load_model(path, mode="tensorflow")


def test_keras_legacy_h5_without_weights_is_refused(tmp_path):
    """An HDF5 file that is not a Keras model says so."""
    path = tmp_path / "data.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("x", data=np.zeros(3))
    with pytest.raises(ValueError, match="without model_weights"):
        load_model(str(path), mode="tensorflow")


def test_keras_file_without_layer_names_in_vars_still_loads(tmp_path):
    """Weights groups that do not record their layer's name are matched by Keras' class-based names."""
    def strip(f):
        for g in f["layers"].values():
            del g["vars"].attrs["name"]
    path = _keras_with(tmp_path / "old.keras", weights=_weights_edited(strip))
    io_ = np.load(os.path.join(FIXTURES, "keras_default_convnet_io.npz"))
    np.testing.assert_allclose(load_model(path, mode="tensorflow")(io_["x"]), io_["logits"],
                               rtol=1e-4, atol=1e-5)


def test_keras_permission_error_is_not_called_unreadable(tmp_path, monkeypatch):
    """A Keras file this user cannot read says 'permission denied'."""
    path = _keras_with(tmp_path / "locked.keras")
    real_open = builtins.open

    def locked(file, *args, **kwargs):
        if isinstance(file, (str, os.PathLike)) and os.fspath(file) == path:
            raise PermissionError(13, "Permission denied", path)
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", locked)
    monkeypatch.setattr(io, "open", locked)
    with pytest.raises(PermissionError, match="permission denied; check the file's permissions"):
        load_model(path, mode="tensorflow")


# ----------------------------------------------------------------- Keras: a config is a budget too
def _dense_units(units):
    return _config_with(lambda layers: layers[6]["config"].update(units=units))


def _empty_weights():
    buf = io.BytesIO()
    h5py.File(buf, "w").close()
    return buf.getvalue()


@pytest.mark.parametrize("edit, message", [
    (lambda layers: layers[6]["config"].update(units=1_000_000), r"up to 'dense' need 1,153,011,680 weights"),
    (lambda layers: (layers[1]["config"].update(filters=65536), layers[3]["config"].update(filters=65536)),
     r"up to 'conv2d_1' need 38,6\d\d,\d\d\d,\d\d\d weights"),
])
def test_keras_config_needing_more_weights_than_the_budget_is_refused_before_building(tmp_path, edit, message):
    """A few kB of config whose layers would need billions of weights (and no weights at all in the
    file) is refused from the settings alone, before any layer is made."""
    path = _keras_with(tmp_path / "huge.keras", config=_config_with(edit), weights=_empty_weights())
    assert os.path.getsize(path) < 10_000
    with pytest.raises(ValueError, match=f"huge.keras: the config's layers {message}, more than the "
                                         f"50,000,000 ece662 reads"):
        _load_keras_within(path)


def test_keras_config_budget_follows_max_parameters(tmp_path, monkeypatch):
    """The config's count is checked against common.MAX_PARAMETERS as it is at load time."""
    path = _keras_with(tmp_path / "c.keras", config=_dense_units(20), weights=_empty_weights())
    monkeypatch.setattr(formats_common, "MAX_PARAMETERS", 18_000)
    with pytest.raises(ValueError, match=r"c.keras: the config's layers up to 'dense' need 3\d,\d\d\d weights, "
                                         r"more than the 18,000"):
        load_model(path, mode="tensorflow")


def test_keras_config_with_too_many_layers_is_refused(tmp_path):
    """More than 1000 layers in a Sequential config is refused before any is looked at."""
    config = _config_with(lambda layers: layers.extend(
        {"class_name": "Dropout", "config": {"name": f"d{i}", "rate": 0.1}} for i in range(1001)))
    path = _keras_with(tmp_path / "long.keras", config=config)
    with pytest.raises(ValueError, match=r"long.keras: config.json lists 1,008 layers, more than the 1000"):
        load_model(path, mode="tensorflow")


def test_keras_reader_draws_no_random_initial_weights(tmp_path, monkeypatch):
    """Layers built from a Keras config get zeros, not random numbers the file overwrites
    (which would cost float64 memory, twice the weights' size)."""
    def no_rng(*args, **kwargs):
        raise AssertionError("the Keras reader drew random initial weights")
    monkeypatch.setattr(np.random, "default_rng", no_rng)
    io_ = np.load(os.path.join(FIXTURES, "keras_default_convnet_io.npz"))
    np.testing.assert_allclose(load_model(KERAS, mode="tensorflow")(io_["x"]), io_["logits"],
                               rtol=1e-4, atol=1e-5)


# ----------------------------------------------------------------- Keras: HDF5 that reaches outside
SECRET = b"password=hunter2 and other secrets, 40 B"
H5_BIAS = {"keras": "layers/dense/vars/1", "h5": "model_weights/dense/sequential/dense/bias"}


def _outside_files(tmp_path):
    """A secret text file and an HDF5 file holding a float array, both outside the model."""
    secret = tmp_path / "elsewhere" / "secret.txt"
    secret.parent.mkdir()
    secret.write_bytes(SECRET)
    other = tmp_path / "elsewhere" / "other.h5"
    with h5py.File(other, "w") as f:
        f["data"] = np.frombuffer(SECRET, np.float32)
    return str(secret), str(other)


def _reach_outside(kind, secret, other):
    """An edit that makes the dense bias come from outside the file in the way ``kind`` says."""
    def edit(f, bias):
        del f[bias]
        if kind == "external raw storage":
            f.create_dataset(bias, shape=(10,), dtype="f4", external=[(secret, 0, 40)])
        elif kind == "external link":
            f[bias] = h5py.ExternalLink(other, "/data")
        elif kind == "virtual dataset":
            layout = h5py.VirtualLayout(shape=(10,), dtype="f4")
            layout[:] = h5py.VirtualSource(other, "data", shape=(10,))
            f.create_virtual_dataset(bias, layout)
        elif kind == "soft link loop":
            f[bias] = h5py.SoftLink("/" + bias)
        elif kind == "soft link out of the tree":
            f["elsewhere"] = np.frombuffer(SECRET, np.float32)
            f[bias] = h5py.SoftLink("/elsewhere")
    return edit


HDF5_REACHES = {"external raw storage": r"keeps its data in the external file\(s\) \['.*secret.txt'\]",
                "external link": r"is an external link to '/data' in the file '.*other.h5'",
                "virtual dataset": r"is a virtual dataset",
                "soft link loop": r"is a soft link to '/.*(bias|vars/1)'.*loop",
                "soft link out of the tree": r"is a soft link to '/elsewhere'"}


@pytest.mark.parametrize("ext", ["keras", "h5"])
@pytest.mark.parametrize("kind", list(HDF5_REACHES))
def test_keras_hdf5_that_reaches_outside_the_file_is_refused(tmp_path, kind, ext):
    """External links, external raw storage, virtual datasets and soft links (which can loop)
    are refused, naming the file and the entry: no byte of another file becomes a weight."""
    secret, other = _outside_files(tmp_path)
    edit = _reach_outside(kind, secret, other)
    if ext == "keras":
        path = _keras_with(tmp_path / "m.keras", weights=_weights_edited(lambda f: edit(f, H5_BIAS[ext])))
    else:
        path = str(tmp_path / "m.h5")
        with open(os.path.join(FIXTURES, "keras_default_convnet.h5"), "rb") as src, open(path, "wb") as dst:
            dst.write(src.read())
        with h5py.File(path, "r+") as f:
            edit(f, H5_BIAS[ext])
    with pytest.raises(ValueError, match=f"m.{ext}: HDF5 (entry|dataset) '.*' {HDF5_REACHES[kind]}"):
        load_model(path, mode="tensorflow")
    with pytest.raises(ValueError, match=HDF5_REACHES[kind]):
        mio.read_keras_weights(path)


@functools.lru_cache(maxsize=None)
def _deflated_zeros(n):
    """A zlib stream that inflates to ``n`` zero bytes (about n / 1000 bytes long)."""
    import zlib
    z, zeros, parts = zlib.compressobj(9), bytes(1 << 22), []
    for _ in range(n // len(zeros)):
        parts.append(z.compress(zeros))
    parts.append(z.flush())
    return b"".join(parts)


def _chunk_bomb(f, name, chunk_bytes=1 << 30):
    """Replace dataset ``name`` (10 float32) by one stored in a single gzip chunk that inflates to
    ``chunk_bytes``, written pre-compressed so that building it costs a few MB."""
    del f[name]
    ds = f.create_dataset(name, shape=(10,), maxshape=(None,), dtype="f4",
                          chunks=(chunk_bytes // 4,), compression="gzip")
    ds.id.write_direct_chunk((0,), _deflated_zeros(chunk_bytes))


def _keras_bomb_files(tmp_path):
    """{name: (path, message)}: small Keras files that would ask for gigabytes."""
    files = {}
    path = _keras_with(tmp_path / "units.keras", config=_dense_units(1_000_000), weights=_empty_weights())
    files["Dense(units=1e6) without weights"] = (path, r"need 1,153,011,680 weights")
    config = _config_with(lambda layers: (layers[1]["config"].update(filters=65536),
                                          layers[3]["config"].update(filters=65536)))
    files["two Conv2D(65536)"] = (_keras_with(tmp_path / "filters.keras", config=config, weights=_empty_weights()),
                                  r"need 38,6\d\d,\d\d\d,\d\d\d weights")
    files["1 GB gzip chunk (.keras)"] = (
        _keras_with(tmp_path / "chunk.keras", weights=_weights_edited(lambda f: _chunk_bomb(f, H5_BIAS["keras"]))),
        r"chunks of 1,073,741,824 bytes")
    path = str(tmp_path / "chunk.h5")
    with open(os.path.join(FIXTURES, "keras_default_convnet.h5"), "rb") as src, open(path, "wb") as dst:
        dst.write(src.read())
    with h5py.File(path, "r+") as f:
        _chunk_bomb(f, H5_BIAS["h5"])
    files["1 GB gzip chunk (.h5)"] = (path, r"chunks of 1,073,741,824 bytes")
    return files


KERAS_CHILD = """
import json, resource, sys
from ece662.pruning_helper import load_model
vm = int(next(l for l in open("/proc/self/status") if l.startswith("VmSize")).split()[1]) * 1024
resource.setrlimit(resource.RLIMIT_AS, (vm + (1 << 30), resource.RLIM_INFINITY))   # 1 GiB more
out = {}
for name, path in json.loads(sys.argv[1]).items():
    try:
        load_model(path, mode="tensorflow")
        out[name] = ["ok", ""]
    except BaseException as e:
        out[name] = [type(e).__name__, str(e)]
print(json.dumps(out))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_AS and /proc are Linux's")
def test_keras_files_that_ask_for_gigabytes_are_refused_under_a_memory_limit(tmp_path):
    """Configs that need billions of weights and a 1 GB decompressed chunk: a ValueError each,
    naming the file, in a child process that may use only 1 GiB more than it started with."""
    files = _keras_bomb_files(tmp_path)
    for name, (path, _) in files.items():
        assert os.path.getsize(path) < 4_000_000, name
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ, PYTHONPATH=root)
    proc = subprocess.run([sys.executable, "-c", KERAS_CHILD, json.dumps({k: p for k, (p, _) in files.items()})],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, f"the child crashed (rc {proc.returncode}): {proc.stderr[-2000:]}"
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    for name, (path, message) in files.items():
        kind, text = results[name]
        assert kind == "ValueError", f"{name}: {kind}: {text[:300]}"
        assert str(path) in text, f"{name}: the message does not name the file: {text}"
        assert re.search(message, text), f"{name}: {text}"


# ============================================================================ issue 25: what the model computes with
def _bn_net():
    from ece662.layers import AdaptiveAvgPool2d, BatchNorm2d, Conv2d, Flatten, LeakyReLU, Linear, Sequential
    return Sequential(Conv2d(3, 4, 3, seed=0), BatchNorm2d(4), LeakyReLU(0.1), AdaptiveAvgPool2d(1),
                      Flatten(), Linear(4, 2, seed=1)).eval()


@pytest.mark.parametrize("damage, message", [
    ("float64 1e39", r"cast.npz: 0.weight \(layer '0'\) holds 1 NaN or infinite"),
    ("running_var < 0", r"cast.npz: layer '1' \(BatchNorm2d\): running_var holds 1 negative"),
    ("fold overflows float32", r"cast.npz: layer '1' \(BatchNorm2d\): folded into '0', the weights holds"),
    ("LeakyReLU slope 1e308", r"cast.npz: layer '2': argument 'negative_slope' is 1e\+308, not a finite float32"),
])
def test_npz_weights_are_checked_as_the_model_computes_them(tmp_path, damage, message):
    """Weights finite as stored but not as computed are refused naming the file and the layer:
    float64 1e39 (inf once cast to float32), a negative running variance, a batch norm whose fold
    into the conv overflows, a LeakyReLU slope beyond float32 (each returned NaN logits before)."""
    net = _bn_net()
    members = _good_members(net)
    if damage == "float64 1e39":
        w = net.state_dict()["0.weight"].astype(np.float64)
        w[1, 2, 0, 0] = 1e39
        members["0.weight"] = _npy(w)
    elif damage == "running_var < 0":
        members["1.running_var"] = _npy(np.array([1, -2, 1, 1], np.float32))
    elif damage == "fold overflows float32":
        members["0.weight"] = _npy(np.full((4, 3, 3, 3), 1e20, np.float32))
        members["1.weight"] = _npy(np.array([1, 1e20, 1, 1], np.float32))
    else:
        spec = net.spec()
        spec["layers"][2][1]["args"]["negative_slope"] = 1e308
        members["__ece662_spec__"] = _npy(np.array(json.dumps(spec)))
    with pytest.raises(ValueError, match=message):
        _load_within(_npz(tmp_path / "cast.npz", members))


def test_npz_conv_padding_not_smaller_than_its_kernel_is_refused(tmp_path):
    """A 4 kB file with a 3x3 conv padded by 3000 before a global pool (gigabytes of activations
    per 10 images) is refused when it is read, naming the file and the layer; padding 2 still loads."""
    from ece662.layers import AdaptiveAvgPool2d, Conv2d, Flatten, Linear, Sequential
    for padding, ok in ((3000, False), (3, False), (2, True)):
        net = Sequential(Conv2d(3, 4, 3, padding=padding, seed=0), AdaptiveAvgPool2d(1), Flatten(),
                         Linear(4, 2, seed=1))
        path = _npz(tmp_path / "pad.npz", _good_members(net))
        assert os.path.getsize(path) < 4000
        if ok:
            assert _load_within(path)[0].padding == padding
        else:
            with pytest.raises(ValueError, match=rf"pad.npz: layer '0': padding {padding} with kernel_size "
                                                 rf"\[3, 3\]; .* smaller than the kernel \(at most 2\)"):
                _load_within(path)


NPZ_CHILD = """
import json, resource, sys
import numpy as np
from ece662.pruning_helper import load_model
vm = int(next(l for l in open("/proc/self/status") if l.startswith("VmSize")).split()[1]) * 1024
resource.setrlimit(resource.RLIMIT_AS, (vm + (1 << 30), resource.RLIM_INFINITY))   # 1 GiB more
out = {}
x = np.zeros((10, 3, 32, 32), np.float32)
for name, path in json.loads(sys.argv[1]).items():
    try:
        load_model(path)(x)
        out[name] = ["ok", ""]
    except BaseException as e:
        out[name] = [type(e).__name__, str(e)]
print(json.dumps(out))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_AS and /proc are Linux's")
def test_npz_models_whose_activations_need_gigabytes_are_refused_under_a_memory_limit(tmp_path):
    """Loading and evaluating 10 images, in a child process allowed 1 GiB more than it starts with:
    padding 3000 is refused at load (naming the file); 20,000 1x1 filters (20 M values per image)
    load, and evaluating them is refused before the activation is allocated (a ValueError naming
    the budget, not a MemoryError)."""
    import subprocess
    from helpers import REPO
    from ece662.layers import AdaptiveAvgPool2d, Conv2d, Flatten, Linear, Sequential
    files = {}
    for name, conv, message in (
            ("padding 3000", Conv2d(3, 1, 3, padding=3000, seed=0), r"pad3000.npz: layer '0': padding 3000"),
            ("20,000 filters", Conv2d(3, 20_000, 1, seed=0), r"0 \(Conv2d\) would make an output of shape "
                                                            r"\(N, 20000, 32, 32\).*MAX_ACTIVATION_VALUES")):
        net = Sequential(conv, AdaptiveAvgPool2d(1), Flatten(), Linear(conv.out_channels, 2, seed=1))
        path = _npz(tmp_path / ("pad3000.npz" if "padding" in name else "wide.npz"), _good_members(net))
        files[name] = (path, message)
    env = dict(os.environ, PYTHONPATH=REPO)
    proc = subprocess.run([sys.executable, "-c", NPZ_CHILD, json.dumps({k: p for k, (p, _) in files.items()})],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, f"the child crashed (rc {proc.returncode}): {proc.stderr[-2000:]}"
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    for name, (path, message) in files.items():
        kind, text = results[name]
        assert kind == "ValueError", f"{name}: {kind}: {text[:300]}"
        assert re.search(message, text), f"{name}: {text}"
    assert files["padding 3000"][0] in results["padding 3000"][1]
