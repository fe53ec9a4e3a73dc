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
