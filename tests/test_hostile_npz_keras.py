"""Hostile and careless ece662 .npz and Keras files: a clear ValueError (naming the file, and the
layer where there is one), bounded memory, never a traceback from deep inside numpy or h5py."""
import builtins
import io
import json
import os
import tracemalloc
import zipfile

import numpy as np
import pytest

from conftest import FIXTURES
from ece662 import io as mio
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


def test_npz_with_too_many_values_is_refused_before_reading(tmp_path):
    """Arrays that together exceed the budget are refused from their headers, before their data."""
    members = _good_members()
    n = 2 * mio.MAX_PARAMETERS // 3 + 1
    for i in range(3):       # honest headers, but each member's declared size is checked, then summed
        members[f"extra{i}"] = _npy(np.zeros(n, np.uint8))
    path = _npz(tmp_path / "big.npz", members)
    with pytest.raises(ValueError, match="more than 100,000,000 values .at 'extra2'"):
        _load_within(path, limit_mb=300)


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
        if os.fspath(file) == str(path):
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
