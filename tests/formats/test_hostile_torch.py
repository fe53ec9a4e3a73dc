"""Hostile and careless PyTorch files: every one gets a clear ValueError, never a crash (issue 10).

Each test builds its file itself: by hand with ``torch_files`` (no torch needed), or with real
torch where the test is about what torch writes (skipped only where torch is absent).
"""
import json
import os
import pickle
import re
import subprocess
import sys
import textwrap
import warnings
import zipfile
from collections import OrderedDict

import numpy as np
import pytest

from helpers import FIXTURES, REPO, assert_close, requires_torch, torch
from ece662.layers import Conv2d, Flatten, Linear, MaxPool2d, ReLU, Sequential
from ece662.models import default_convnet
from ece662.pruning_helper import load_model
from ece662.formats.torch_format import read_torch_state_dict
from ece662.io import model_from_state_dict
from torch_files import (ORDERED_DICT, PROTO2, binbytes8, dict_pickle, op_global, op_value, simple_pt,
                         tensor_ops, tensor_pickle, write_pt)

ROOT = REPO
F32 = "FloatStorage"


# ============================================================================ 1. memory safety
# (name, simple_pt arguments, what the message must say); the entry "w" is always named
OUT_OF_BOUNDS = [
    ("10 elements over 1", dict(size=(10,), stride=(1,), numel=1), r"reach element 9 of a storage that holds 1\b"),
    ("4,000,000 over 1", dict(size=(2000, 2000), stride=(2000, 1), numel=1), r"reach element 3,999,999"),
    ("offset past the end", dict(size=(2,), stride=(1,), offset=5, numel=6), r"offset 5 reach element 6"),
    ("transposed view too far", dict(size=(3, 2), stride=(1, 3), numel=5), r"reach element 5 of a storage that holds 5"),
    ("negative stride", dict(size=(2,), stride=(-1,), offset=1, numel=2), r"negative offset, size or stride"),
    ("negative offset", dict(size=(2,), stride=(1,), offset=-1, numel=2), r"negative offset, size or stride"),
    ("negative size", dict(size=(-2,), stride=(1,), numel=2), r"negative offset, size or stride"),
    ("float size", dict(size=(2.0,), stride=(1,), numel=2), r"int size/stride"),
    ("bool size", dict(size=(True,), stride=(1,), numel=2), r"int size/stride"),
    ("str stride", dict(size=(2,), stride=("1",), numel=2), r"int size/stride"),
    ("float offset", dict(size=(2,), stride=(1,), offset=0.0, numel=2), r"int offset"),
    ("size and stride lengths differ", dict(size=(2, 1), stride=(1,), numel=2), r"equal length"),
    ("40 dimensions", dict(size=(1,) * 40, stride=(1,) * 40, numel=1), r"40 dimensions"),
    ("storage bytes not a multiple of float32", dict(size=(1,), stride=(1,), numel=1, storage=b"\0" * 6),
     r"6 bytes.*not a whole number of 4-byte float32"),
    ("storage shorter than declared", dict(size=(2,), stride=(1,), numel=2, storage=b"\0" * 4),
     r"holds 4 bytes.*2 float32 elements.*truncated"),
    ("storage longer than declared", dict(size=(1,), stride=(1,), numel=1, storage=b"\0" * 8),
     r"holds 8 bytes.*disagree"),
    ("a trillion elements declared", dict(size=(1,), stride=(1,), numel=10 ** 12, storage=bytes(4)), r"truncated"),
]


@pytest.mark.parametrize("name,kwargs,message", OUT_OF_BOUNDS, ids=[c[0] for c in OUT_OF_BOUNDS])
def test_tensor_outside_its_storage_is_refused_naming_file_and_entry(tmp_path, name, kwargs, message):
    """_rebuild_tensor_v2's offset/size/stride are untrusted: nothing is read outside the storage."""
    path = simple_pt(tmp_path / "bad.pt", **kwargs)
    with pytest.raises(ValueError, match=message) as err:
        read_torch_state_dict(path)
    assert str(path) in str(err.value) and "['w']" in str(err.value)


def test_valid_strided_views_match_torch_semantics(tmp_path):
    """Slices, transposes, expands (stride 0) and huge strides of length-1 dims are legal in torch."""
    cases = {  # name: (offset, size, stride, numel), checked against the index formula
        "slice": (2, (3,), (1,), 10), "transpose": (0, (3, 2), (1, 3), 6),
        "expand": (1, (4, 3), (0, 1), 4), "one element, huge stride": (5, (1, 2), (10 ** 30, 1), 7),
        "empty": (0, (0, 5), (5, 1), 0), "0-dim": (3, (), (), 4),
    }
    for name, (offset, size, stride, numel) in cases.items():
        path = simple_pt(tmp_path / "ok.pt", size=size, stride=stride, offset=offset, numel=numel)
        got = read_torch_state_dict(path)["w"]
        storage = np.arange(numel, dtype=np.float32)
        want = np.zeros(size, np.float32)
        for idx in np.ndindex(*size):
            want[idx] = storage[offset + sum(i * s for i, s in zip(idx, stride))]
        assert got.shape == tuple(size) and got.dtype == np.float32, name
        np.testing.assert_array_equal(got, want, err_msg=name)
        assert got.flags.writeable and got.flags.owndata, f"{name}: a copy, not a view of the file's bytes"
        assert got.flags.c_contiguous, f"{name}: C order, as the kernels expect"


def test_zero_dim_tensor_is_a_tensor(tmp_path):
    """BatchNorm's num_batches_tracked is a 0-dim int64 tensor: read as a 0-d array, not refused."""
    path = simple_pt(tmp_path / "bn.pt", size=(), stride=(), numel=1, storage=np.int64(37).tobytes(),
                     storage_type="LongStorage", key="bn1.num_batches_tracked")
    got = read_torch_state_dict(path)["bn1.num_batches_tracked"]
    assert isinstance(got, np.ndarray) and got.shape == () and got.dtype == np.int64 and int(got) == 37


def test_storages_shared_by_several_tensors_are_read_once(tmp_path):
    """Two tensors over one storage (torch writes it once) both come out right."""
    pkl = tensor_pickle([("a", tensor_ops(F32, "0", 6, 0, (3,), (1,))),
                         ("b", tensor_ops(F32, "0", 6, 3, (3,), (1,)))])
    path = write_pt(tmp_path / "shared.pt", pkl, {"0": np.arange(6, dtype=np.float32).tobytes()})
    sd = read_torch_state_dict(path)
    np.testing.assert_array_equal(sd["a"], [0, 1, 2])
    np.testing.assert_array_equal(sd["b"], [3, 4, 5])


# ============================================================================ 2. bounded memory, in a child process
def _bomb_files(folder):
    """Small files that ask for a lot: {name: (path, regex the error must match)}."""
    f = {}
    f["stride-0 expand to 4 GB"] = (simple_pt(folder / "expand.pt", size=(10 ** 9,), stride=(0,), numel=1),
                                    r"budget")
    f["4,000,000 over 1"] = (simple_pt(folder / "oob.pt", size=(2000, 2000), stride=(2000, 1), numel=1),
                             r"reach element")
    # a 400 MB storage of zeros, deflated to ~400 KB
    numel = 100_000_000
    path = folder / "zipbomb.pt"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as z:
        z.writestr("archive/data.pkl", tensor_pickle([("w", tensor_ops(F32, "0", numel, 0, (numel,), (1,)))]))
        with z.open("archive/data/0", "w") as member:
            zeros = bytes(1 << 22)
            for _ in range(numel * 4 // len(zeros)):
                member.write(zeros)
    f["zip bomb storage"] = (path, r"budget")
    path = folder / "pklbomb.pt"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as z:
        with z.open("archive/data.pkl", "w") as member:
            member.write(PROTO2 + b"]")
            for _ in range(25):
                member.write(b"N" * (1 << 22))       # 100 MB of None
            member.write(b".")
    f["zip bomb data.pkl"] = (path, r"data.pkl declares 104,857,60[0-9] bytes")
    f["memo index 2**31"] = (write_pt(folder / "memo.pt", PROTO2 + b"}r\xff\xff\xff\x7f.", {}),
                             r"memo index 2147483647")
    f["bytes declared as 1 TB"] = (write_pt(folder / "bytes8.pt", b"\x80\x04" + binbytes8(1 << 40) + b".", {}),
                                   r"not a state_dict pickle.*bytes")
    # a tuple nested 3,000,000 deep used as a dict key: hashing it overflows the C stack
    deep = PROTO2 + b"}N" + b"\x85" * 3_000_000 + b"Ns."
    f["tuples nested 3,000,000 deep"] = (write_pt(folder / "deep.pt", deep, {}), r"nested more than 100 deep")
    return f


CHILD = textwrap.dedent("""
    import json, resource, sys
    from ece662.formats.torch_format import read_torch_state_dict
    vm = int(next(l for l in open("/proc/self/status") if l.startswith("VmSize")).split()[1]) * 1024
    resource.setrlimit(resource.RLIMIT_AS, (vm + (1 << 30), resource.RLIM_INFINITY))   # 1 GiB more
    out = {}
    for name, path in json.loads(sys.argv[1]).items():
        try:
            read_torch_state_dict(path)
            out[name] = ["ok", ""]
        except BaseException as e:
            out[name] = [type(e).__name__, str(e)]
    print(json.dumps(out))
""")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_AS and /proc are Linux's")
def test_small_files_that_ask_for_gigabytes_are_refused_under_a_memory_limit(tmp_path):
    """Zip bombs, expands, huge memo indices or declared lengths, deep nesting: a ValueError each,
    in a child process that may use only 1 GiB more than it started with (a crash fails the test)."""
    files = _bomb_files(tmp_path)
    for name, (path, _) in files.items():
        assert os.path.getsize(path) < 4_000_000, name
    env = dict(os.environ, PYTHONPATH=ROOT)
    proc = subprocess.run([sys.executable, "-c", CHILD, json.dumps({k: str(p) for k, (p, _) in files.items()})],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, f"the child crashed (rc {proc.returncode}): {proc.stderr[-2000:]}"
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    for name, (path, message) in files.items():
        kind, text = results[name]
        assert kind == "ValueError", f"{name}: {kind}: {text[:300]}"
        assert str(path) in text, f"{name}: the message does not name the file: {text}"
        assert re.search(message, text), f"{name}: {text}"


def test_budget_is_adjustable_and_counts_every_tensor(tmp_path):
    """max_bytes caps what is read; a file within it reads as before."""
    path = simple_pt(tmp_path / "w.pt", size=(1000,), stride=(1,), numel=1000)
    assert read_torch_state_dict(path, max_bytes=9000)["w"].shape == (1000,)   # pickle, storage, copy
    with pytest.raises(ValueError, match=r"\['w'\] needs 4,000 bytes, beyond the 6,000-byte budget.*max_bytes"):
        read_torch_state_dict(path, max_bytes=6000)


def test_stored_member_claiming_more_bytes_than_the_archive_is_refused(tmp_path):
    """A central directory that declares a member larger than the file is caught before reading."""
    path = simple_pt(tmp_path / "w.pt", size=(4,), stride=(1,), numel=1 << 20, storage=bytes(16))
    raw = bytearray(path.read_bytes())
    # the central-directory entry of data/0: patch its compressed and uncompressed sizes to 4 MB
    cd = raw.rfind(b"PK\x01\x02", 0, raw.rfind(b"archive/data/0"))
    raw[cd + 20:cd + 28] = (4 << 20).to_bytes(4, "little") * 2
    path.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="storage archive/data/0 declares 4,194,304 bytes, more than the archive holds"):
        read_torch_state_dict(path)


# ============================================================================ 3. non-finite weights
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_weights_are_refused_or_warned(tmp_path, bad):
    """NaN/inf weights raise a ValueError naming the entry; on_nonfinite='warn' loads them with a warning."""
    storage = np.array([1.0, bad, 2.0], np.float32).tobytes()
    path = simple_pt(tmp_path / "nan.pt", size=(3,), stride=(1,), numel=3, storage=storage, key="fc.bias")
    with pytest.raises(ValueError, match=r"\['fc.bias'\] holds 1 non-finite values.*on_nonfinite='warn'"):
        read_torch_state_dict(path)
    with pytest.warns(UserWarning, match=r"\['fc.bias'\] holds 1 non-finite"):
        got = read_torch_state_dict(path, on_nonfinite="warn")
    assert not np.isfinite(got["fc.bias"][1])
    with pytest.raises(ValueError, match="on_nonfinite must be"):
        read_torch_state_dict(path, on_nonfinite="ignore")


def test_non_finite_weights_stop_load_model(tmp_path):
    """load_model(mode='torch') on a course network with a NaN weight says which entry is broken."""
    sd = read_torch_state_dict(os.path.join(FIXTURES, "torch_default_convnet.pt"))
    sd["conv2.weight"][0, 0, 0, 0] = np.nan
    path = _write_state_dict(tmp_path / "nan.pt", sd)
    with pytest.raises(ValueError, match=r"\['conv2.weight'\] holds 1 non-finite"):
        load_model(str(path), mode="torch")


def _write_state_dict(path, sd):
    """A float32 state dict as a torch file, by hand (one storage per entry)."""
    entries, storages = [], {}
    for i, (k, v) in enumerate(sd.items()):
        v = np.ascontiguousarray(v, dtype=np.float32)
        stride = tuple(s // 4 for s in v.strides)
        entries.append((k, tensor_ops(F32, str(i), v.size, 0, v.shape, stride)))
        storages[str(i)] = v.tobytes()
    return write_pt(path, tensor_pickle(entries), storages)


# ============================================================================ 4. messages that say what is wrong
def _png(path):
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(100))


def _npz_model(path):
    from ece662.io import save_model
    save_model(default_convnet(), path)


def _legacy(path):   # what torch < 1.6 (or _use_new_zipfile_serialization=False) writes first
    path.write_bytes(b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19.\x80\x02M\xe9\x03.")


FOREIGN = [
    ("png", _png, r"not a PyTorch file: it looks like a PNG image"),
    ("text", lambda p: p.write_text("conv1.weight = [[1, 2], [3, 4]]\n"), r"looks like a text file \(it starts with 'conv1"),
    ("empty", lambda p: p.write_bytes(b""), r"an empty file"),
    ("ece662 npz", _npz_model, r"an ece662 \.npz model.*mode='numpy'"),
    ("plain npz", lambda p: np.savez(open(p, "wb"), X=np.zeros(3)), r"a NumPy \.npz archive of arrays \(X\)"),
    ("keras", lambda p: p.write_bytes(open(os.path.join(FIXTURES, "keras_default_convnet.keras"), "rb").read()),
     r"a Keras \.keras model.*mode='tensorflow'"),
    ("h5", lambda p: p.write_bytes(open(os.path.join(FIXTURES, "keras_default_convnet.h5"), "rb").read()),
     r"HDF5 file.*mode='tensorflow'"),
    ("legacy torch", _legacy, r"legacy format of torch < 1\.6"),
    ("bare pickle", lambda p: p.write_bytes(pickle.dumps({"w": [1.0]}, protocol=2)), r"a bare pickle"),
    ("truncated zip", lambda p: p.write_bytes(open(os.path.join(FIXTURES, "torch_default_convnet.pt"), "rb").read()[:3000]),
     r"damaged or truncated zip archive"),
]


@pytest.mark.parametrize("name,make,message", FOREIGN, ids=[c[0] for c in FOREIGN])
def test_foreign_files_say_what_they_look_like(tmp_path, name, make, message):
    """A PNG, a text file, another model format: the error names the file and what it seems to be."""
    path = tmp_path / "model.pt"
    make(path)
    with pytest.raises(ValueError, match=message) as err:
        load_model(str(path), mode="torch")
    assert "pickled objects" not in str(err.value) and str(path) in str(err.value)


def test_bfloat16_is_unsupported_not_dangerous(tmp_path):
    """A bfloat16 storage is an unsupported dtype with its fix, not 'arbitrary code'."""
    path = simple_pt(tmp_path / "bf16.pt", size=(3,), stride=(1,), numel=3, storage=bytes(6),
                     storage_type="BFloat16Storage", key="fc.weight")
    with pytest.raises(ValueError, match=r"\['fc.weight'\]: unsupported dtype bfloat16 \(convert with \.float\(\)") as err:
        read_torch_state_dict(path)
    assert "arbitrary code" not in str(err.value)


@pytest.mark.parametrize("key", [5, 2.5, None, ("conv1", "weight")])
def test_non_string_key_is_named(tmp_path, key):
    """A state_dict key that is not a string is named in the error."""
    pkl = tensor_pickle([(key, tensor_ops(F32, "0", 1, 0, (1,), (1,)))])
    path = write_pt(tmp_path / "k.pt", pkl, {"0": bytes(4)})
    # an int or None reaches the dict and is named there; a float or a tuple, which could share one hash
    # with many others, is refused by the scan of the pickle, before any dict is built
    with pytest.raises(ValueError, match=r"state_dict\[.*\]: the key is an? (int|NoneType); state_dict keys are strings"
                                         r"|dict key or set element at byte \d+ is an? (float|tuple)") as err:
        load_model(str(path), mode="torch")
    assert repr(key)[:6] in str(err.value) or isinstance(key, tuple)


@pytest.mark.parametrize("payload,message", [
    (PROTO2 + op_global("numpy.core.multiarray", "scalar") + b".", r"numpy.core.multiarray.scalar.*float\(\)"),
    (PROTO2 + op_global("builtins", "eval") + b".", r"refusing to load builtins.eval"),
    (PROTO2 + op_global("__torch__.MyNet", "MyNet") + b".", r"TorchScript"),
    (PROTO2 + b"]" + b"\x83\x01\x00" + b".", r"opcode EXT2"),     # the copyreg registry
    (PROTO2 + b"\xff.", r"not a state_dict pickle"),                # no such opcode
    (PROTO2 + b"K\x01", r"not a state_dict pickle"),               # no STOP
    (PROTO2 + b"t.", r"MARK missing|stack underflow|not a state_dict"),
    (PROTO2 + ORDERED_DICT + op_value([1, 2]) + b"b.", r"damaged|not a state_dict"),
    (PROTO2 + op_global("torch", "FloatStorage") + b"}b.", r"BUILD on a storage|damaged"),
    (PROTO2 + b"N" + b"Q.", r"unsupported storage reference"),
    # BUILD with slot state on an allowed global would setattr() on it for the whole process
    (PROTO2 + op_global("torch._utils", "_rebuild_parameter") + op_value((None, {"__defaults__": (1,)})) + b"b0" +
     op_value({}) + b".", r"damaged"),
    (PROTO2 + op_value([1.5]) + b".", r"holds a list, not a state_dict"),
    (PROTO2 + op_value({}) + b".", r"holds an empty dict"),
    (PROTO2 + op_value({"w": 1.5}) + b".", r"entry 'w' is a float, not a tensor"),
])
def test_hostile_pickles_are_refused_with_a_message(tmp_path, payload, message):
    """Pickles that run code, use forbidden opcodes, or are malformed: a ValueError each."""
    path = write_pt(tmp_path / "p.pt", payload, {})
    with pytest.raises(ValueError, match=message):
        read_torch_state_dict(path)


# Python hashes an int k as k mod (2**61 - 1): these 80,000 keys all hash to 0, so a dict of them is built in
# 80,000**2 / 2 comparisons (48 s, in C, where Ctrl-C cannot stop it) from 1 MB of pickle
_SAME_HASH = [k * (2 ** 61 - 1) for k in range(1, 80_001)]


@pytest.mark.parametrize("container", ["dict", "OrderedDict", "checkpoint", "set", "frozenset"])
def test_keys_that_share_one_hash_are_refused_in_a_moment(tmp_path, container):
    """A dict (or set) of 80,000 ints that all hash to 0 is refused by the scan before it is built."""
    import time
    items = b"".join(op_value(k) + b"N" for k in _SAME_HASH)           # key, None
    elements = b"".join(op_value(k) for k in _SAME_HASH)
    payload = {"dict": PROTO2 + b"}(" + items + b"u.",
               "OrderedDict": PROTO2 + ORDERED_DICT + b"(" + items + b"u.",
               "checkpoint": PROTO2 + b"}(" + op_value("model_state_dict") + b"}(" + items + b"uu.",
               "set": b"\x80\x04\x8f(" + elements + b"\x90.",           # EMPTY_SET, MARK, ADDITEMS
               "frozenset": b"\x80\x04(" + elements + b"\x91."}[container]  # MARK, FROZENSET
    assert len(payload) < 1_100_000
    path = write_pt(tmp_path / "hash.pt", payload, {})
    start = time.perf_counter()
    with pytest.raises(ValueError, match=r"not a state_dict pickle: a dict key or set element at byte \d+ is an "
                                         r"int 23058430092136939\d+.*k \* \(2\*\*61 - 1\)") as err:
        read_torch_state_dict(path)
    assert time.perf_counter() - start < 2, "the scan itself must stay linear"
    assert str(path) in str(err.value)


def test_optimizer_states_keep_their_small_int_keys(tmp_path):
    """A training checkpoint's optimizer state ({0: {...}, 1: {...}}) still loads: ints below 2**31 are
    keys a real file has, each with its own hash."""
    pkl = tensor_pickle([("w", tensor_ops(F32, "0", 1, 0, (1,), (1,)))])
    optimizer = op_value({"state": {0: {"step": 3}, 1: {"step": 3}}, "param_groups": [{"params": [0, 1]}]})
    checkpoint = PROTO2 + b"}(" + op_value("model_state_dict") + pkl[2:-1] + op_value("optimizer") + optimizer + b"u."
    path = write_pt(tmp_path / "ckpt.pt", checkpoint, {"0": bytes(4)})
    with pytest.warns(UserWarning, match="training checkpoint"):
        assert list(read_torch_state_dict(path)) == ["w"]


# ============================================================================ 5. students' torch files, by hand
def test_checkpoint_dict_uses_its_model_state_dict_and_says_so(tmp_path):
    """{'epoch', 'model_state_dict', 'optimizer_state_dict', 'loss'}: weights from 'model_state_dict'."""
    sd = read_torch_state_dict(os.path.join(FIXTURES, "torch_default_convnet.pt"))
    plain = _write_state_dict(tmp_path / "plain.pt", sd)
    with zipfile.ZipFile(plain) as z:
        inner = z.read("archive/data.pkl")[2:-1]       # the state dict's opcodes
        storages = {n.split("/")[-1]: z.read(n) for n in z.namelist() if "/data/" in n}
    optimizer = op_value({"state": {}, "param_groups": [{"lr": 0.01, "params": [0, 1, 2], "nesterov": False}]})
    pkl = dict_pickle([("epoch", op_value(12)), ("model_state_dict", inner),
                       ("optimizer_state_dict", optimizer), ("loss", op_value(0.25))])
    path = write_pt(tmp_path / "ckpt.pt", pkl, storages)
    with pytest.warns(UserWarning, match=r"training checkpoint.*'epoch'.*from its entry 'model_state_dict'"):
        net = load_model(str(path), mode="torch")
    for k, v in sd.items():
        np.testing.assert_array_equal(net.state_dict()[k], v)
    # a checkpoint with the weights somewhere else is explained
    path = write_pt(tmp_path / "other.pt", dict_pickle([("epoch", op_value(1)), ("weights", inner)]), storages)
    with pytest.raises(ValueError, match=r"entry 'epoch' is an int.*\['model_state_dict', 'state_dict', 'model'\]"):
        load_model(str(path), mode="torch")


def test_data_parallel_prefix_is_dropped(tmp_path):
    """nn.DataParallel's 'module.' prefix on every key is removed."""
    sd = read_torch_state_dict(os.path.join(FIXTURES, "torch_default_convnet.pt"))
    path = _write_state_dict(tmp_path / "dp.pt", {"module." + k: v for k, v in sd.items()})
    assert list(read_torch_state_dict(path)) == list(sd)


def test_unknown_architecture_points_to_the_formats_that_carry_one():
    """A state_dict of another network, with no model=: the error says why and what to use instead."""
    with pytest.raises(ValueError, match=r"holds weights, not the architecture.*ece662.save_model.*mode='onnx'"):
        load_model(os.path.join(FIXTURES, "torch_sequential.pt"), mode="torch")


def test_sequential_keys_load_by_position_into_a_named_model():
    """'0.weight', '4.bias'... go into the model's layers in order when their shapes agree."""
    named = Sequential(OrderedDict([
        ("conv", Conv2d(3, 8, 3, stride=2, padding=1)), ("relu", ReLU()), ("pool", MaxPool2d(2)),
        ("flat", Flatten()), ("head", Linear(8 * 8 * 8, 5))]))
    net = load_model(os.path.join(FIXTURES, "torch_sequential.pt"), mode="torch", model=named)
    io = np.load(os.path.join(FIXTURES, "torch_sequential_io.npz"))
    assert_close(net(io["x"]), io["logits"], "torch sequential by position", rtol=1e-4, atol=1e-5)
    assert set(net.state_dict()) == {"conv.weight", "conv.bias", "head.weight", "head.bias"}


def test_position_mismatch_names_the_layer():
    """Too few layers, or a layer of another shape: the error shows both lists of layers."""
    small = Sequential(Conv2d(3, 8, 3, stride=2, padding=1), ReLU(), Flatten())
    with pytest.raises(ValueError, match=r"the file has 2 layers with weights, the model has 1.*mode='onnx'"):
        load_model(os.path.join(FIXTURES, "torch_sequential.pt"), mode="torch", model=small)
    wrong = Sequential(Conv2d(3, 8, 3), ReLU(), Flatten(), Linear(8 * 8 * 8, 6))
    with pytest.raises(ValueError, match=r"layer 1 with weights holds 0.weight \(8, 3, 3, 3\).*"
                                         r"layer 1.*4.weight \(6, 512\)|layer 2 with weights holds 4.weight \(5, 512\)"):
        load_model(os.path.join(FIXTURES, "torch_sequential.pt"), mode="torch", model=wrong)


def test_bad_masks_are_refused(tmp_path):
    """A 'weight_mask' with values other than 0/1, or an '_orig' without its mask, is refused."""
    sd = read_torch_state_dict(os.path.join(FIXTURES, "torch_default_convnet.pt"))
    sd["fc.weight_orig"] = sd.pop("fc.weight")
    sd["fc.weight_mask"] = np.full(sd["fc.weight_orig"].shape, 0.5, np.float32)
    with pytest.raises(ValueError, match=r"'fc.weight_mask' is not a pruning mask"):
        model_from_state_dict(sd)
    del sd["fc.weight_mask"]
    with pytest.raises(ValueError, match=r"'fc.weight_orig' has no 'fc.weight_mask' beside it"):
        model_from_state_dict(sd)


# ============================================================================ 5. students' torch files, made by torch
class _CourseNet(torch.nn.Module if torch else object):
    def __init__(self):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(3, 32, 5)
        self.conv2 = torch.nn.Conv2d(32, 32, 3)
        self.fc = torch.nn.Linear(1152, 10)

    def forward(self, x):
        x = torch.nn.functional.max_pool2d(torch.relu(self.conv1(x)), 2)
        x = torch.nn.functional.max_pool2d(torch.relu(self.conv2(x)), 2)
        return self.fc(torch.flatten(x, 1))


def _logits(net, x):
    with torch.no_grad():
        return net.eval()(torch.from_numpy(x)).numpy()


X = np.random.default_rng(3).standard_normal((4, 3, 32, 32)).astype(np.float32)


@requires_torch
@pytest.mark.parametrize("key", ["model_state_dict", "state_dict", "model"])
def test_torch_training_checkpoint_loads_with_torch_logits(tmp_path, key):
    """A real checkpoint with an Adam state, epoch and loss loads from its model key, giving torch's logits."""
    torch.manual_seed(0)
    net = _CourseNet()
    opt = torch.optim.Adam(net.parameters())
    net(torch.from_numpy(X)).sum().backward()
    opt.step()
    path = tmp_path / "ckpt.pt"
    torch.save({"epoch": 3, key: net.state_dict(), "optimizer_state_dict": opt.state_dict(),
                "loss": 0.5, "acc": torch.tensor(0.7), "classes": ["plane", "car"]}, path)
    with pytest.warns(UserWarning, match=f"from its entry '{key}'"):
        ours = load_model(str(path), mode="torch")
    assert_close(ours(X), _logits(net, X), f"checkpoint[{key!r}]", rtol=1e-4, atol=1e-5)


@requires_torch
def test_torch_sequential_course_net_loads_by_position(tmp_path):
    """The course network written as nn.Sequential: refused without model= (with the hint), loaded with it."""
    torch.manual_seed(1)
    seq = torch.nn.Sequential(torch.nn.Conv2d(3, 32, 5), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
                              torch.nn.Conv2d(32, 32, 3), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
                              torch.nn.Flatten(), torch.nn.Dropout(0.5), torch.nn.Linear(1152, 10))
    path = tmp_path / "seq.pt"
    torch.save(seq.state_dict(), path)
    with pytest.raises(ValueError, match=r"pass model=default_convnet\(\)"):
        load_model(str(path), mode="torch")
    ours = load_model(str(path), mode="torch", model=default_convnet())
    assert_close(ours(X), _logits(seq, X), "nn.Sequential course net", rtol=1e-4, atol=1e-5)


@requires_torch
@pytest.mark.parametrize("as_sequential", [False, True])
def test_torch_pruned_state_dict_loads_with_its_masks(tmp_path, as_sequential):
    """weight_orig + weight_mask from torch.nn.utils.prune load as an ece662 pruned model: same masks, same logits."""
    prune = torch.nn.utils.prune
    torch.manual_seed(2)
    if as_sequential:
        net = torch.nn.Sequential(torch.nn.Conv2d(3, 32, 5), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
                                  torch.nn.Conv2d(32, 32, 3), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
                                  torch.nn.Flatten(), torch.nn.Linear(1152, 10))
        convs, fc = (net[0], net[3]), net[7]
    else:
        net = _CourseNet()
        convs, fc = (net.conv1, net.conv2), net.fc
    prune.l1_unstructured(convs[0], "weight", amount=0.5)
    prune.ln_structured(convs[1], "weight", amount=0.25, n=1, dim=0)
    prune.l1_unstructured(fc, "weight", amount=0.9)
    prune.l1_unstructured(fc, "bias", amount=3)
    path = tmp_path / "pruned.pt"
    torch.save(net.state_dict(), path)
    ours = load_model(str(path), mode="torch", model=default_convnet() if as_sequential else None)
    masks = {n: m for n, m in ours.state_dict().items() if n.endswith("_mask")}
    assert set(masks) == {"conv1.weight_mask", "conv2.weight_mask", "fc.weight_mask", "fc.bias_mask"}
    for (name, mask), module in zip(sorted(masks.items()), [convs[0], convs[1], fc, fc]):
        torch_mask = getattr(module, name.split(".")[1]).detach().numpy().astype(bool)
        np.testing.assert_array_equal(mask.astype(bool), torch_mask, err_msg=name)
    assert_close(ours(X), _logits(net, X), "pruned torch model", rtol=1e-4, atol=1e-5)


@requires_torch
def test_torch_batchnorm_state_dict_is_read_and_explained(tmp_path):
    """BatchNorm's running stats and 0-dim num_batches_tracked are read; a model without a BN layer says so."""
    torch.manual_seed(3)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
                              torch.nn.Flatten(), torch.nn.Linear(8 * 30 * 30, 10))
    net.train()(torch.from_numpy(X))
    path = tmp_path / "bn.pt"
    torch.save(net.state_dict(), path)
    sd = read_torch_state_dict(path)
    for k, v in net.state_dict().items():
        np.testing.assert_array_equal(sd[k], v.numpy(), err_msg=k)
    assert sd["1.num_batches_tracked"].shape == () and int(sd["1.num_batches_tracked"]) == 1
    no_bn = Sequential(Conv2d(3, 8, 3), ReLU(), Flatten(), Linear(8 * 30 * 30, 10))
    with pytest.raises(ValueError, match=r"layer '1' is a BatchNorm.*needs a BatchNorm layer at that position"):
        load_model(str(path), mode="torch", model=no_bn)


@requires_torch
def test_torch_batchnorm_model_round_trips_with_torch_logits(tmp_path):
    """A student's torch CNN with BatchNorm, Dropout and LeakyReLU, trained a step so its running
    statistics are not the defaults, loads into the matching ece662 model (by position, since
    nn.Sequential names its layers 0, 1, ...) and gives torch's eval-mode logits."""
    from ece662.layers import BatchNorm1d, BatchNorm2d, Dropout, LeakyReLU
    torch.manual_seed(5)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8),
                              torch.nn.LeakyReLU(0.1), torch.nn.MaxPool2d(2), torch.nn.Flatten(),
                              torch.nn.Dropout(0.3), torch.nn.Linear(8 * 16 * 16, 16),
                              torch.nn.BatchNorm1d(16), torch.nn.ReLU(), torch.nn.Linear(16, 10))
    for _ in range(3):
        net.train()(torch.from_numpy(X))
    path = tmp_path / "student_bn.pt"
    torch.save({"epoch": 3, "model_state_dict": net.state_dict()}, path)
    ours = Sequential(Conv2d(3, 8, 3, padding=1), BatchNorm2d(8), LeakyReLU(0.1), MaxPool2d(2), Flatten(),
                      Dropout(0.3), Linear(8 * 16 * 16, 16), BatchNorm1d(16), ReLU(), Linear(16, 10))
    with pytest.warns(UserWarning, match="model_state_dict"):
        ours = load_model(str(path), mode="torch", model=ours)
    np.testing.assert_array_equal(ours[1].running_var, net[1].running_var.numpy())
    assert_close(ours(X), _logits(net, X), "torch BatchNorm CNN", rtol=1e-4, atol=1e-5)


@requires_torch
@pytest.mark.filterwarnings("ignore:`torch.jit.:DeprecationWarning")
def test_torch_made_oddities_get_their_own_messages(tmp_path):
    """bfloat16, a whole pickled model, TorchScript, the legacy format: each its own message."""
    torch.save({"w": torch.ones(3, dtype=torch.bfloat16)}, tmp_path / "bf16.pt")
    with pytest.raises(ValueError, match=r"unsupported dtype bfloat16 \(convert with \.float\(\)"):
        read_torch_state_dict(tmp_path / "bf16.pt")
    torch.save(torch.nn.Linear(2, 2), tmp_path / "whole.pt")
    with pytest.raises(ValueError, match=r"refusing to load torch.nn.modules.linear.Linear.*state_dict\(\)"):
        read_torch_state_dict(tmp_path / "whole.pt")
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), tmp_path / "jit.pt")
    with pytest.raises(ValueError, match=r"TorchScript archive \(torch.jit.save\)"):
        read_torch_state_dict(tmp_path / "jit.pt")
    torch.save({"w": torch.ones(2)}, tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    with pytest.raises(ValueError, match=r"legacy format of torch < 1\.6"):
        read_torch_state_dict(tmp_path / "legacy.pt")
    torch.save({"w": torch.ones(2), "n": torch.tensor(np.float64(3.0))}, tmp_path / "ok.pt")
    with warnings.catch_warnings():
        warnings.simplefilter("error")       # a plain state dict: no checkpoint warning
        assert set(read_torch_state_dict(tmp_path / "ok.pt")) == {"w", "n"}


def test_a_state_dict_finite_as_stored_but_not_as_computed_is_refused(tmp_path):
    """A BatchNorm running variance below 0 puts NaN in every logit: refused when the state_dict is loaded,
    naming the file and the layer, as for the other formats (ece662.layers.plan.check_finite_computation)."""
    from ece662.formats.torch_format import save_torch_state_dict
    from ece662.layers import BatchNorm2d
    net = Sequential(Conv2d(3, 4, 3, seed=0), BatchNorm2d(4), ReLU(), Flatten(), Linear(4 * 30 * 30, 2, seed=1))
    sd = net.state_dict()
    sd["1.running_var"] = np.array([1, -2, 1, 1], np.float32)
    path = tmp_path / "bn.pt"
    save_torch_state_dict(sd, path)
    fresh = Sequential(Conv2d(3, 4, 3, seed=0), BatchNorm2d(4), ReLU(), Flatten(), Linear(4 * 30 * 30, 2, seed=1))
    with pytest.raises(ValueError, match=r"bn.pt.*running_var holds 1 negative"):
        load_model(str(path), mode="torch", model=fresh)
