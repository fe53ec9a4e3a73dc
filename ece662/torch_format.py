"""PyTorch ``state_dict`` files, read without torch (``read_torch_state_dict``).

``torch.save`` writes a zip archive: ``<folder>/data.pkl`` is a pickle of the
state dict in which each tensor refers to a raw little-endian storage file
``<folder>/data/<key>``.  A pickle can name any Python callable, so an unpickled
file can run arbitrary code.  ece662 never unpickles arbitrary objects: its
unpickler accepts only the handful of names a state dict needs (an ``OrderedDict``,
the tensor/parameter rebuild functions, typed storages) and refuses anything else,
like torch's ``weights_only=True``.  Torch is never imported.
"""
import io as _io
import os
import pickle
import zipfile
from collections import OrderedDict

import numpy as np

# ============================================================================ torch format
_TORCH_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "LongStorage": np.int64, "IntStorage": np.int32, "ShortStorage": np.int16,
    "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_,
}


class _StorageType:
    """Stands in for ``torch.FloatStorage`` etc.: only remembers the numpy dtype."""

    def __init__(self, name):
        self.name, self.dtype = name, _TORCH_DTYPES[name]


def _rebuild_tensor(storage, storage_offset, size, stride, *unused):
    """``torch._utils._rebuild_tensor_v2``: a strided view into a storage, copied out."""
    if len(size) == 0:
        return storage[storage_offset].copy()
    item = storage.itemsize
    view = np.lib.stride_tricks.as_strided(storage[storage_offset:], shape=tuple(size),
                                           strides=tuple(s * item for s in stride))
    return np.array(view)


def _rebuild_parameter(data, requires_grad, backward_hooks, *unused):
    """``torch._utils._rebuild_parameter``: a Parameter is just its data here."""
    return data


class _StateDictUnpickler(pickle.Unpickler):
    """Unpickles a state dict and nothing else (the guard against malicious files)."""

    def __init__(self, file, zf, prefix, source):
        super().__init__(file)
        self._zf, self._prefix, self._source = zf, prefix, source

    def find_class(self, module, name):
        if (module, name) == ("collections", "OrderedDict"):
            return OrderedDict
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor
        if (module, name) == ("torch._utils", "_rebuild_parameter"):
            return _rebuild_parameter
        if module == "torch" and name in _TORCH_DTYPES:
            return _StorageType(name)
        hint = ""
        if module.startswith("torch.nn") or module == "__main__":
            hint = (" The file seems to hold a whole pickled model object, not a state_dict: "
                    "save it with torch.save(model.state_dict(), path) instead.")
        raise pickle.UnpicklingError(
            f"{self._source}: refusing to load {module}.{name}: a state_dict file may only contain "
            f"tensors in (Ordered)dicts, and unpickling other objects can run arbitrary code.{hint}")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"
                and isinstance(pid[1], _StorageType)):
            raise pickle.UnpicklingError(f"{self._source}: unsupported storage reference {pid!r}")
        _, storage_type, key, _location, numel = pid
        name = f"{self._prefix}data/{key}"
        try:
            raw = self._zf.read(name)
        except KeyError:
            raise pickle.UnpicklingError(f"{self._source}: storage {name} is missing from the archive") from None
        dtype = np.dtype(storage_type.dtype).newbyteorder("<")
        if len(raw) < numel * dtype.itemsize:
            raise pickle.UnpicklingError(f"{self._source}: storage {name} holds {len(raw)} bytes, "
                                         f"expected {numel * dtype.itemsize}; the file is truncated")
        return np.frombuffer(raw, dtype=dtype, count=numel).astype(dtype.newbyteorder("="))


def read_torch_state_dict(path):
    """Read a ``torch.save(model.state_dict(), path)`` file into ``{key: ndarray}``, without torch.

    Raises
    ------
    FileNotFoundError
        No file at ``path``.
    ValueError
        Not a torch zip archive (e.g. the legacy pre-1.6 format, or a truncated file),
        or the pickle names anything but state-dict building blocks.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no file at {path}")
    try:
        zf = zipfile.ZipFile(path)
    except zipfile.BadZipFile:
        raise ValueError(f"{path} is not a PyTorch zip archive: it may be truncated, written by "
                         f"torch < 1.6 (re-save it with a recent torch), or not a model file at all") from None
    with zf:
        pkl = [n for n in zf.namelist() if n.endswith("data.pkl") and n.count("/") <= 1]
        if not pkl:
            raise ValueError(f"{path} is a zip archive but not a torch.save file (no data.pkl inside)")
        prefix = pkl[0][: -len("data.pkl")]
        byteorder = prefix + "byteorder"
        if byteorder in zf.namelist() and zf.read(byteorder).strip() != b"little":
            raise ValueError(f"{path} was written on a big-endian machine, which ece662 does not read")
        try:
            raw_pickle = zf.read(pkl[0])
            obj = _StateDictUnpickler(_io.BytesIO(raw_pickle), zf, prefix, path).load()
        except pickle.UnpicklingError as e:
            raise ValueError(str(e)) from None
        except (EOFError, zipfile.BadZipFile, ValueError, TypeError, IndexError) as e:
            raise ValueError(f"{path}: the archive is damaged or not a state_dict ({e})") from None
    if not isinstance(obj, dict):
        raise ValueError(f"{path} holds a {type(obj).__name__}, not a state_dict")
    out = OrderedDict()
    for k, v in obj.items():
        if not isinstance(v, np.ndarray):
            raise ValueError(f"{path}: entry {k!r} is a {type(v).__name__}, not a tensor")
        # nn.DataParallel prefixes every key with "module."
        out[k[len("module."):] if k.startswith("module.") else k] = v
    return out


def model_from_state_dict(state_dict, model=None, source="state_dict"):
    """Put a state dict's arrays into ``model`` (default: the course's ``default_convnet``).

    Every key and shape is checked first; the error names what does not fit.
    """
    from ece662.models import default_convnet
    if model is None:
        model = default_convnet()
        expected = {k: v.shape for k, v in model.state_dict().items()}
        got = {k: tuple(v.shape) for k, v in state_dict.items() if not k.endswith("num_batches_tracked")}
        if expected != got:
            raise ValueError(
                f"{source} does not hold the default course network: expected keys and shapes "
                f"{expected}, got {got}. For another architecture pass model=Sequential(...) whose "
                f"state_dict keys and shapes match")
    arrays = {k: np.asarray(v, dtype=np.float32) for k, v in state_dict.items()}
    from ece662.io import _load_with_masks
    _load_with_masks(model, arrays, source=source)
    return model.eval()


# ============================================================================ torch format: writing
# ``save_torch_state_dict`` writes what ``torch.save(state_dict, path)`` writes, without torch, so
# that ece662 can ship a ``.pt`` file that real torch reads with ``torch.load(path, weights_only=True)``.
# The archive, as torch 2.x lays it out (``<archive>/`` is a folder name inside the zip):
#
#   archive/data.pkl            the pickle (protocol 2) of an OrderedDict {key: tensor}
#   archive/.format_version     b"1"
#   archive/.storage_alignment  b"64": every member's bytes start at a multiple of 64 in the file
#   archive/byteorder           b"little"
#   archive/data/<i>            tensor i's raw storage, little-endian, C order
#   archive/version             b"3\n"
#   archive/.data/serialization_id
#
# Every tensor is pickled as ``torch._utils._rebuild_tensor_v2(storage, storage_offset, size, stride,
# requires_grad, backward_hooks)``, and its storage as a *persistent id*
# ``("storage", torch.FloatStorage, "<i>", "cpu", numel)`` that the loader resolves to ``data/<i>``.
# The pickle is written opcode by opcode (below), because Python's pickler can only name
# functions it can import, and torch is not imported here.
import hashlib as _hashlib
import struct as _struct
import tempfile as _tempfile

_STORAGE_NAMES = {np.dtype(np.float32): "FloatStorage", np.dtype(np.float64): "DoubleStorage",
                  np.dtype(np.float16): "HalfStorage", np.dtype(np.int64): "LongStorage",
                  np.dtype(np.int32): "IntStorage", np.dtype(np.int16): "ShortStorage",
                  np.dtype(np.int8): "CharStorage", np.dtype(np.uint8): "ByteStorage",
                  np.dtype(np.bool_): "BoolStorage"}
_ALIGNMENT = 64


class _PickleWriter:
    """Emits pickle protocol-2 opcodes (the names are those of ``pickletools.dis``)."""

    def __init__(self):
        self.out = bytearray(b"\x80\x02")                     # PROTO 2

    def global_(self, module, name):
        self.out += b"c" + f"{module}\n{name}\n".encode()     # GLOBAL: push module.name

    def str_(self, s):
        b = s.encode("utf-8")
        self.out += b"X" + _struct.pack("<I", len(b)) + b     # BINUNICODE

    def int_(self, n):
        if 0 <= n < 256:
            self.out += b"K" + _struct.pack("<B", n)          # BININT1
        elif 0 <= n < 65536:
            self.out += b"M" + _struct.pack("<H", n)          # BININT2
        elif -2 ** 31 <= n < 2 ** 31:
            self.out += b"J" + _struct.pack("<i", n)          # BININT
        else:
            b = n.to_bytes((n.bit_length() + 8) // 8, "little", signed=True)
            self.out += b"\x8a" + _struct.pack("<B", len(b)) + b   # LONG1

    def tuple_(self, items):
        self.out += b"("                                      # MARK
        for n in items:
            self.int_(n)
        self.out += b"t"                                      # TUPLE (from the MARK)

    def empty_ordered_dict(self):
        self.global_("collections", "OrderedDict")
        self.out += b")R"                                     # EMPTY_TUPLE, REDUCE: OrderedDict()

    def op(self, code):
        self.out += code


def _state_dict_pickle(arrays):
    """The ``data.pkl`` bytes for ``[(key, C-contiguous ndarray), ...]``; storage i is tensor i."""
    p = _PickleWriter()
    p.empty_ordered_dict()
    p.op(b"(")                                                # MARK: the (key, tensor) pairs follow
    for i, (key, a) in enumerate(arrays):
        p.str_(key)
        p.global_("torch._utils", "_rebuild_tensor_v2")
        p.op(b"(")                                            # MARK: its arguments
        p.op(b"(")                                            # MARK: the storage's persistent id
        p.str_("storage")
        p.global_("torch", _STORAGE_NAMES[a.dtype])
        p.str_(str(i))
        p.str_("cpu")
        p.int_(a.size)
        p.op(b"tQ")                                           # TUPLE, BINPERSID: storage i
        p.int_(0)                                             # storage_offset
        p.tuple_(a.shape)                                     # size
        p.tuple_([s // a.itemsize for s in a.strides] if a.size else [1] * a.ndim)   # stride
        p.op(b"\x89")                                         # NEWFALSE: requires_grad
        p.empty_ordered_dict()                                # backward_hooks
        p.op(b"tR")                                           # TUPLE, REDUCE: the tensor
    p.op(b"u.")                                               # SETITEMS, STOP
    return bytes(p.out)


def _aligned_member(zf, f, name, data):
    """Write one stored (uncompressed) zip member whose bytes start at a multiple of 64, padding
    the local header's extra field as torch does (an ``FB`` record of ``Z`` bytes)."""
    header = 30 + len(name.encode()) + 4                      # fixed header + name + FB record head
    pad = -(f.tell() + header) % _ALIGNMENT
    info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
    info.compress_type = zipfile.ZIP_STORED
    info.extra = b"FB" + _struct.pack("<H", pad) + b"Z" * pad
    zf.writestr(info, data)


def save_torch_state_dict(state_dict, path, archive_name="archive"):
    """Write ``{key: ndarray}`` as ``torch.save(state_dict, path)`` would, without torch.

    Real torch reads the file with ``torch.load(path, weights_only=True)`` and gets an
    ``OrderedDict`` of tensors with the same keys, shapes, dtypes and values.  The file is
    written to a temporary name beside ``path`` and renamed into place, so a failed save
    never leaves a half-written file where a good one was.  The output depends only on the
    arrays (no time stamps), so the same state dict always gives the same bytes.

    Parameters
    ----------
    state_dict : mapping of str -> ndarray
        E.g. ``model.state_dict()``.  dtypes: float32/64/16, int64/32/16/8, uint8, bool.
    path : str or os.PathLike
    archive_name : str
        The folder name inside the zip (torch uses the file's stem; any name loads).

    Raises
    ------
    TypeError
        A key that is not a string, or a value that is not an array.
    ValueError
        A dtype torch has no storage for.
    FileNotFoundError
        The target folder does not exist.

    Examples
    --------
    >>> import os, tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "w.pt")
    >>> save_torch_state_dict({"fc.bias": np.arange(3, dtype=np.float32)}, path)
    >>> read_torch_state_dict(path)["fc.bias"]
    array([0., 1., 2.], dtype=float32)
    """
    if not isinstance(state_dict, dict):
        raise TypeError(f"save_torch_state_dict: expected a dict of arrays, got {type(state_dict).__name__}")
    arrays = []
    for key, value in state_dict.items():
        if not isinstance(key, str):
            raise TypeError(f"save_torch_state_dict: keys must be strings, got {key!r}")
        if not isinstance(value, np.ndarray):
            raise TypeError(f"save_torch_state_dict: {key!r} is a {type(value).__name__}, expected an ndarray")
        a = value.astype(value.dtype.newbyteorder("="), order="C", copy=False)   # keeps 0-d as 0-d
        if a.dtype not in _STORAGE_NAMES:
            raise ValueError(f"save_torch_state_dict: {key!r} has dtype {a.dtype}, which torch has no "
                             f"storage for; use one of {sorted(str(d) for d in _STORAGE_NAMES)}")
        arrays.append((key, a))
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"save_torch_state_dict: the folder {folder} does not exist; create it first")
    pkl = _state_dict_pickle(arrays)
    storages = [a.astype(a.dtype.newbyteorder("<")).tobytes() for _, a in arrays]
    # torch writes a random id; a digest of the content keeps equal state dicts byte-identical
    digest = _hashlib.sha256(pkl + b"".join(storages)).digest()
    serialization_id = str(int.from_bytes(digest[:16], "big")).zfill(40)[:40].encode()
    fd, tmp = _tempfile.mkstemp(prefix=".ece662-", suffix=".pt.tmp", dir=folder)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)      # mkstemp makes 0600; a model file is an ordinary file
    try:
        with os.fdopen(fd, "wb") as f:
            with zipfile.ZipFile(f, "w", zipfile.ZIP_STORED) as zf:
                members = [("data.pkl", pkl), (".format_version", b"1"),
                           (".storage_alignment", str(_ALIGNMENT).encode()), ("byteorder", b"little")]
                members += [(f"data/{i}", raw) for i, raw in enumerate(storages)]
                members += [("version", b"3\n"), (".data/serialization_id", serialization_id)]
                for name, data in members:
                    _aligned_member(zf, f, f"{archive_name}/{name}", data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
