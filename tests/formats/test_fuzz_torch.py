"""Fuzzing the PyTorch reader with Hypothesis (issue 10, item 9).

Four generators of hostile files: byte-level mutations of a real torch.save file, member-level
mutations (the zip rewritten with correct CRCs, so the damage reaches the unpickler), random
opcode sequences over the allowed globals, and well-formed tensor pickles with random
offset/size/stride.  Only two outcomes are allowed:

* a state dict (or a model) that is *correct*: every array equals what an independent reference
  reader (Python's own unpickler + an index formula, no ``as_strided``) makes of the same file;
* a ``ValueError`` / ``TypeError`` with a message (or ``FileNotFoundError``).

Anything else (``MemoryError``, ``RecursionError``, ``KeyError``, a crash) fails.  Every example
runs under a memory limit (``RLIMIT_AS``: 1 GiB above what the process already maps, so a
blow-up raises ``MemoryError``) and a hang guard (``SIGALRM``, 60 s; not a speed test).

Examples per test: ``ECE662_FUZZ_EXAMPLES`` (default 100, so 400 in all); for a long run::

    ECE662_FUZZ_EXAMPLES=20000 python -m pytest tests/formats/test_fuzz_torch.py
"""
import contextlib
import io
import os
import pickle
import resource
import signal
import tempfile
import warnings
import zipfile
from collections import OrderedDict

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from helpers import FIXTURES
from ece662.layers import Sequential
from ece662.pruning_helper import load_model
from ece662.formats.torch_format import read_torch_state_dict
from torch_files import ORDERED_DICT, PROTO2, binbytes8, op_global, op_value, tensor_ops, tensor_pickle, write_pt

pytestmark = pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="needs Linux's /proc")

EXAMPLES = int(os.environ.get("ECE662_FUZZ_EXAMPLES", "100"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, print_blob=True,
                suppress_health_check=list(HealthCheck))
FIXTURE = os.path.join(FIXTURES, "torch_default_convnet.pt")
with open(FIXTURE, "rb") as _f:
    FIXTURE_BYTES = _f.read()
with zipfile.ZipFile(FIXTURE) as _z:
    MEMBERS = OrderedDict((n, _z.read(n)) for n in _z.namelist())
ORIGINAL = read_torch_state_dict(FIXTURE)
ALLOWED_ERRORS = (ValueError, TypeError, FileNotFoundError)


# ============================================================================ budgets
class _Hang(Exception):
    pass


def _raise_hang(signum, frame):
    raise _Hang("one example ran for more than 60 s")


@contextlib.contextmanager
def memory_and_time_budget(extra=1 << 30, seconds=60):
    """Allow ``extra`` bytes of address space beyond what is mapped now, and ``seconds`` of time."""
    vm = int(next(line for line in open("/proc/self/status") if line.startswith("VmSize")).split()[1]) * 1024
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    limit = vm + extra if hard == resource.RLIM_INFINITY else min(vm + extra, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    old = signal.signal(signal.SIGALRM, _raise_hang)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def test_the_memory_budget_catches_a_blowup():
    """The guard works: allocating 2 GiB inside it raises MemoryError, which no outcome check allows."""
    with memory_and_time_budget():
        with pytest.raises(MemoryError):
            np.ones(2 << 30, dtype=np.uint8)
    assert np.ones(1 << 20).sum() == 1 << 20     # and it is lifted afterwards


# ============================================================================ the reference reader
_REF_DTYPES = {"FloatStorage": "<f4", "DoubleStorage": "<f8", "HalfStorage": "<f2", "LongStorage": "<i8",
               "IntStorage": "<i4", "ShortStorage": "<i2", "CharStorage": "i1", "ByteStorage": "u1",
               "BoolStorage": "?"}


def _ref_rebuild(storage, offset, size, stride, *unused):
    """The element at (i0, i1, ...) is storage[offset + sum(i_d * stride_d)]: computed with np.indices."""
    if not size:
        return np.array(storage[offset])
    if 0 in size:
        return np.zeros(tuple(size), storage.dtype)
    index = np.full(tuple(size), offset, dtype=np.int64)
    for d, grid in enumerate(np.indices(tuple(size), dtype=np.int64)):
        if size[d] > 1:                   # i_d is always 0 along a dimension of length 1
            index += grid * stride[d]
    return storage[index]


class _Lazy:
    """A tensor the reference builds only if it is in the state dict (as ece662 does: a tensor that is
    overwritten by a duplicate key, or sits in an optimizer state, is never read)."""

    def __init__(self, *args):
        self.args = args


def reference_state_dict(path):
    """An independent reading of a file *our reader accepted*: Python's unpickler, no checks."""
    with zipfile.ZipFile(path) as zf:
        pkl = next(n for n in zf.namelist() if n.endswith("/data.pkl") and n.count("/") == 1)
        prefix = pkl[: -len("data.pkl")]

        class Ref(pickle.Unpickler):
            def find_class(self, module, name):
                if name == "OrderedDict":
                    return OrderedDict
                if name == "_rebuild_tensor_v2":
                    return _Lazy
                if name.startswith("_rebuild_parameter"):
                    return lambda data, *unused: data
                return name                       # a storage type: its name

            def persistent_load(self, pid):
                return pid

        def storage(pid):
            _, type_name, key, _, numel = pid
            raw = zf.read(f"{prefix}data/{key}")
            dtype = np.dtype(_REF_DTYPES[type_name])
            return np.frombuffer(raw, dtype=dtype)[:numel].astype(dtype.newbyteorder("="))

        obj = Ref(io.BytesIO(zf.read(pkl))).load()
        if not all(isinstance(v, _Lazy) for v in obj.values()):
            obj = next(obj[k] for k in ("model_state_dict", "state_dict", "model") if isinstance(obj.get(k), dict))
        obj = OrderedDict((k, _ref_rebuild(storage(t.args[0]), *t.args[1:])) for k, t in obj.items())
    if all(k.startswith("module.") for k in obj):
        obj = OrderedDict((k[len("module."):], v) for k, v in obj.items())
    return obj


def _gist(e):
    """The kind of error, without the file name and numbers, to count outcomes."""
    import re
    text = str(e).split(": ", 1)[-1]
    return re.sub(r"[0-9,]+|'[^']*'", "#", text)[:60]


def check_state_dict(path):
    """read_torch_state_dict: a correct dict, or an allowed error with a message."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)      # "a training checkpoint" notes
            with memory_and_time_budget():
                got = read_torch_state_dict(path)
    except ALLOWED_ERRORS as e:
        assert str(e).strip(), f"{type(e).__name__} without a message"
        event(f"{type(e).__name__}: {_gist(e)}")   # shown by pytest --hypothesis-show-statistics
        return None
    event("loaded")
    want = reference_state_dict(path)
    assert list(got) == list(want)
    for k in got:
        assert isinstance(got[k], np.ndarray) and got[k].dtype == want[k].dtype, k
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)
        if got[k].dtype.kind == "f":
            assert np.isfinite(got[k]).all(), k
    return got


def check_model(path):
    """load_model(mode='torch'): a model of the course network's shapes, or an allowed error."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            with memory_and_time_budget():
                net = load_model(str(path), mode="torch")
    except ALLOWED_ERRORS as e:
        assert str(e).strip(), f"{type(e).__name__} without a message"
        event(f"{type(e).__name__}: {_gist(e)}")   # shown by pytest --hypothesis-show-statistics
        return None
    event("loaded")
    assert isinstance(net, Sequential)
    sd = net.state_dict()
    want = reference_state_dict(path)
    for k, v in sd.items():
        np.testing.assert_array_equal(v, want[k].astype(v.dtype), err_msg=k)
    return net


@pytest.fixture(scope="module")
def scratch():
    with tempfile.TemporaryDirectory() as d:
        yield os.path.join(d, "fuzz.pt")


# ============================================================================ 1. bytes of a real file
byte_edits = st.lists(st.one_of(
    st.tuples(st.just("flip"), st.integers(0, len(FIXTURE_BYTES) - 1), st.integers(1, 255)),
    st.tuples(st.just("truncate"), st.integers(0, len(FIXTURE_BYTES) - 1), st.just(0)),
    st.tuples(st.just("zero"), st.integers(0, len(FIXTURE_BYTES) - 1), st.integers(1, 64)),
    st.tuples(st.just("insert"), st.integers(0, len(FIXTURE_BYTES) - 1), st.integers(0, 255)),
), min_size=1, max_size=6)


def _apply(data, edits):
    data = bytearray(data)
    for kind, pos, value in edits:
        pos = min(pos, max(len(data) - 1, 0))
        if kind == "flip" and data:
            data[pos] ^= value
        elif kind == "truncate":
            del data[pos:]
        elif kind == "zero":
            data[pos:pos + value] = bytes(len(data[pos:pos + value]))
        elif kind == "insert":
            data[pos:pos] = bytes([value])
    return bytes(data)


@FUZZ
@given(edits=byte_edits)
def test_fuzz_mutated_torch_file_bytes(scratch, edits):
    """Flipped, zeroed, inserted or cut bytes anywhere in a real torch.save file."""
    with open(scratch, "wb") as f:
        f.write(_apply(FIXTURE_BYTES, edits))
    check_model(scratch)


# ============================================================================ 2. members of a real file
PICKLE_NAME = next(n for n in MEMBERS if n.endswith("data.pkl"))
STORAGE_NAMES = [n for n in MEMBERS if "/data/" in n]
member_edits = st.lists(st.one_of(
    st.tuples(st.just("pickle"), byte_edits),
    st.tuples(st.just("resize"), st.sampled_from(STORAGE_NAMES), st.integers(-9000, 9000)),
    st.tuples(st.just("drop"), st.sampled_from(list(MEMBERS))),
    st.tuples(st.just("deflate"), st.sampled_from(list(MEMBERS))),
    st.tuples(st.just("rename"), st.sampled_from(list(MEMBERS)), st.sampled_from(
        ["x/data.pkl", "a/b/data.pkl", "torch_default_convnet/data/9", "torch_default_convnet/constants.pkl"])),
), min_size=1, max_size=4)


@FUZZ
@given(edits=member_edits)
def test_fuzz_mutated_torch_members(scratch, edits):
    """A real file's pickle edited, storages resized, members dropped, renamed or deflated (CRCs stay valid)."""
    members = OrderedDict((n, [data, zipfile.ZIP_STORED]) for n, data in MEMBERS.items())
    for edit in edits:
        if edit[0] == "pickle" and PICKLE_NAME in members:
            members[PICKLE_NAME][0] = _apply(members[PICKLE_NAME][0], edit[1])
        elif edit[0] == "resize" and edit[1] in members:
            data = members[edit[1]][0]
            members[edit[1]][0] = data[:edit[2]] if edit[2] < 0 else data + bytes(edit[2])
        elif edit[0] == "drop":
            members.pop(edit[1], None)
        elif edit[0] == "deflate" and edit[1] in members:
            members[edit[1]][1] = zipfile.ZIP_DEFLATED
        elif edit[0] == "rename" and edit[1] in members:
            members[edit[2]] = members.pop(edit[1])
    with zipfile.ZipFile(scratch, "w") as z:
        for name, (data, compression) in members.items():
            z.writestr(name, data, compress_type=compression)
    check_state_dict(scratch)


# ============================================================================ 3. random opcode sequences
GLOBALS = [("collections", "OrderedDict"), ("torch._utils", "_rebuild_tensor_v2"),
           ("torch._utils", "_rebuild_parameter"), ("torch", "FloatStorage"), ("torch", "LongStorage"),
           ("torch", "HalfStorage"), ("torch", "BoolStorage"), ("torch", "BFloat16Storage"),
           ("builtins", "eval"), ("os", "system"), ("torch.nn.modules.linear", "Linear")]
small_values = st.one_of(st.integers(-3, 40), st.sampled_from([2 ** 31, 2 ** 63, -2 ** 63, 10 ** 30]),
                         st.sampled_from(["storage", "cpu", "0", "1", "w", "conv1.weight", "model_state_dict"]),
                         st.floats(allow_nan=True), st.booleans(), st.none())
opcode = st.one_of(
    st.sampled_from([b"(", b"t", b"\x85", b"\x86", b"\x87", b")", b"]", b"}", b"l", b"d", b"a", b"e",
                     b"s", b"u", b"R", b"b", b"Q", b"N", b"\x88", b"\x89", b"0", b"1", b"2",
                     b"\x8f", b"\x90", b"\x91", b"\x94", b"\x81", b"\x92", b"\x97", b"\x98"]),
    small_values.map(op_value),
    st.sampled_from(GLOBALS).map(lambda g: op_global(*g)),
    st.integers(0, 8).map(lambda i: b"q" + bytes([i])),                  # BINPUT
    st.integers(0, 8).map(lambda i: b"h" + bytes([i])),                  # BINGET
    st.sampled_from([b"r\xff\xff\xff\x7f", b"j\xff\xff\xff\x7f", binbytes8(1 << 40), b"\x8a\xff" + bytes(4)]),
    st.builds(tensor_ops, st.sampled_from(["FloatStorage", "LongStorage", "BFloat16Storage"]),
              st.sampled_from(["0", "1", "9"]), st.integers(0, 12), st.integers(-1, 12),
              st.lists(st.integers(-1, 5), max_size=3).map(tuple), st.lists(st.integers(-1, 5), max_size=3).map(tuple)),
)
# a plausible "key: tensor" pair over storage "0" or "1" (6 float32 elements each)
pair = st.builds(lambda key, storage, size: op_value(key) + tensor_ops("FloatStorage", storage, 6, 0, size, (1,)),
                 st.sampled_from(["a", "b", "conv1.weight"]), st.sampled_from(["0", "1"]),
                 st.integers(0, 7).map(lambda n: (n,)))


@FUZZ
@given(framed=st.booleans(), ops=st.one_of(st.lists(st.one_of(opcode, pair), max_size=40),
                                            st.lists(pair, min_size=1, max_size=4)), storages=st.dictionaries(
    st.sampled_from(["0", "1"]), st.sampled_from([24, 24, 24, 0, 23, 52]).map(
        lambda nbytes: np.arange(13, dtype=np.float32).tobytes()[:nbytes])))
def test_fuzz_random_opcode_sequences(scratch, framed, ops, storages):
    """Random pickles built from state-dict opcodes and globals (allowed and forbidden) over random storages;
    half of them inside ``OrderedDict()`` + MARK ... SETITEMS, as a state dict's items are; some
    sequences are only plausible ``key, tensor`` pairs."""
    body = b"".join(ops)
    if framed:
        body = ORDERED_DICT + b"(" + body + b"u"
    write_pt(scratch, PROTO2 + body + b".", storages)
    check_state_dict(scratch)


# ============================================================================ 4. random rebuild arguments
ITEMSIZE = {"FloatStorage": 4, "DoubleStorage": 8, "LongStorage": 8, "BoolStorage": 1, "HalfStorage": 2}
odd = st.sampled_from([-1, -2, 2 ** 31, 2 ** 62, 10 ** 20, 1.0, True, None, "2", (1,)])


@st.composite
def rebuild_case(draw):
    """1-3 tensors over 1-2 storages: mostly plausible arguments, sometimes hostile ones.

    Returns (entries, storages) for ``tensor_pickle`` / ``write_pt``.
    """
    kinds = {k: draw(st.sampled_from(sorted(ITEMSIZE))) for k in ("0", "1")}
    numels = {k: draw(st.integers(0, 40)) for k in ("0", "1")}
    entries = []
    for i in range(draw(st.integers(1, 3))):
        key = draw(st.sampled_from(["0", "1"]))
        ndim = draw(st.integers(0, 4))
        size = [draw(st.integers(0, 5)) for _ in range(ndim)]
        stride = [draw(st.integers(0, 12)) for _ in range(ndim)]
        offset = draw(st.one_of(st.just(0), st.integers(0, 40)))
        for args in (size, stride):           # now and then, one hostile value
            if args and draw(st.integers(0, 4)) == 0:
                args[draw(st.integers(0, len(args) - 1))] = draw(odd)
        if draw(st.integers(0, 9)) == 0:
            offset = draw(odd)
        numel = numels[key] if draw(st.integers(0, 9)) else draw(st.integers(0, 10 ** 5))
        entries.append((f"t{i}", tensor_ops(kinds[key], key, numel, offset, tuple(size), tuple(stride))))
    storages = {}
    for key in ("0", "1"):
        nbytes = numels[key] * ITEMSIZE[kinds[key]]
        nbytes = draw(st.sampled_from([nbytes] * 6 + [nbytes - 1, nbytes + 3, 0]))
        if draw(st.integers(0, 19)):          # and now and then a missing storage
            storages[key] = np.random.default_rng(max(nbytes, 0)).integers(0, 2, max(nbytes, 0), dtype=np.uint8).tobytes()
    return entries, storages


@FUZZ
@given(case=rebuild_case())
def test_fuzz_rebuild_arguments(scratch, case):
    """Well-formed pickles with random offsets, sizes, strides, element counts and storage byte lengths:
    what loads equals the index formula; what does not is a ValueError."""
    entries, storages = case
    write_pt(scratch, tensor_pickle(entries), storages)
    check_state_dict(scratch)
