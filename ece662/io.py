"""Model files: ece662's own ``.npz`` format and PyTorch ``state_dict`` files.

ece662 format (``save_model`` / ``load_model``)
    One ``.npz`` (read with ``allow_pickle=False``, so loading runs no code) holding
    ``__ece662_format__`` (the string ``"ece662-model-v1"``), ``__ece662_spec__`` (the
    architecture as JSON, see ``Module.spec``) and one array per state-dict key,
    including ``<name>_orig`` / ``<name>_mask`` of pruned parameters, which are pruned
    again on load.  Saving writes a temporary file beside the target and renames it
    into place, so a failed save never leaves a half-written file where a good one was.

PyTorch format (``read_torch_state_dict``)
    ``torch.save`` writes a zip archive: ``<folder>/data.pkl`` is a pickle of the
    state dict in which each tensor refers to a raw little-endian storage file
    ``<folder>/data/<key>``.  A pickle can name any Python callable, so an unpickled
    file can run arbitrary code.  ece662 never unpickles arbitrary objects: its
    unpickler accepts only the handful of names a state dict needs (an ``OrderedDict``,
    the tensor/parameter rebuild functions, typed storages) and refuses anything else,
    like torch's ``weights_only=True``.  Torch is never imported.
"""
import json
import os
import pickle
import tempfile
import zipfile
from collections import OrderedDict

import numpy as np

FORMAT = "ece662-model-v1"
_FORMAT_KEY = "__ece662_format__"
_SPEC_KEY = "__ece662_spec__"


# ============================================================================ ece662 format
def save_model(model, path):
    """Write ``model`` (architecture, weights, pruning masks) to ``path`` atomically.

    Parameters
    ----------
    model : ece662.layers.Sequential
    path : str or os.PathLike
        Used exactly as given (no ``.npz`` is appended).

    Examples
    --------
    >>> import os, tempfile
    >>> from ece662.models import default_convnet
    >>> path = os.path.join(tempfile.mkdtemp(), "net.npz")
    >>> save_model(default_convnet(seed=1), path)
    >>> load_model(path).state_dict()["fc.bias"].shape
    (10,)
    """
    from ece662.layers import Sequential
    if not isinstance(model, Sequential):
        raise TypeError(f"save_model: expected an ece662 Sequential model, got {type(model).__name__}")
    path = os.fspath(path)
    arrays = {_FORMAT_KEY: np.array(FORMAT), _SPEC_KEY: np.array(json.dumps(model.spec()))}
    arrays.update(model.state_dict())
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"save_model: the folder {folder} does not exist; create it first")
    fd, tmp = tempfile.mkstemp(prefix=".ece662-", suffix=".npz.tmp", dir=folder)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)      # mkstemp makes 0600; a model file is an ordinary file
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def load_model(path):
    """Read a model written by :func:`save_model` (pruned parameters come back pruned).

    Raises
    ------
    FileNotFoundError
        No file at ``path``.
    ValueError
        The file is not an ece662 model (not an npz, truncated, no spec, pickled objects,
        or arrays that do not fit the architecture); the message says which.
    """
    from ece662.layers import from_spec
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"load_model: no file at {path}")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except ValueError as e:
        if "pickle" in str(e).lower():
            raise ValueError(f"{path}: the file holds pickled Python objects, which ece662 refuses "
                             f"to load (they can run code); re-save it with ece662.save_model") from None
        raise ValueError(f"{path} is not an ece662 model file (.npz): {e}") from None
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        raise ValueError(f"{path} is not a readable ece662 model file: it is not a complete .npz "
                         f"archive ({e}); it may be truncated or be another kind of file") from None
    if _SPEC_KEY not in arrays:
        raise ValueError(f"{path} is an .npz archive but not an ece662 model (no {_SPEC_KEY} entry); "
                         f"for a PyTorch state_dict use ece662.pruning_helper.load_model(path, mode='torch')")
    spec = json.loads(str(arrays.pop(_SPEC_KEY)))
    arrays.pop(_FORMAT_KEY, None)
    model = from_spec(spec)
    _load_with_masks(model, arrays, source=path)
    return model.eval()


def _load_with_masks(model, arrays, source):
    """Prune the parameters whose ``_mask`` arrays are present, then load every array."""
    masked = [k[:-len("_mask")] for k in arrays if k.endswith("_mask")]
    if masked:
        from ece662 import pruning
        modules = dict(model.named_modules())
        for key in masked:
            mod_name, _, pname = key.rpartition(".")
            module = modules.get(mod_name)
            if module is None or pname not in module._parameters:
                raise ValueError(f"{source}: mask {key}_mask does not belong to any parameter of the model")
            mask = arrays[key + "_mask"]
            if mask.shape != module._parameters[pname].shape:
                raise ValueError(f"{source}: {key}_mask has shape {mask.shape}, but {key} has shape "
                                 f"{module._parameters[pname].shape}")
            pruning.custom_from_mask(module, pname, mask.astype(bool))
    try:
        model.load_state_dict(arrays)
    except (KeyError, ValueError) as e:
        raise ValueError(f"{source}: the stored arrays do not fit the stored architecture: {e}") from None


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
        import io as _io
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
    _load_with_masks(model, arrays, source=source)
    return model.eval()


# ============================================================================ Keras format
def read_keras_weights(path):
    """Read the weights of a Keras model file (``.keras`` or legacy ``.h5``), without Keras.

    Needs ``h5py`` (``pip install "ece662[tensorflow]"``).  Nothing in the file is executed:
    the ``.keras`` zip's ``config.json`` is parsed as JSON and the arrays read with h5py.

    Returns
    -------
    list of (layer name, [kernel, bias])
        For every layer that has weights, in model order, Keras layouts unchanged
        (Conv2D kernel ``(HH, WW, C, F)``, Dense kernel ``(in, out)``).
    """
    try:
        import h5py
    except ImportError:
        raise ImportError("reading Keras files needs h5py: pip install h5py "
                          "(or pip install -e \".[tensorflow]\")") from None
    import io as _io
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no file at {path}")
    layers = []
    try:
        if zipfile.is_zipfile(path):                       # Keras 3 native .keras
            with zipfile.ZipFile(path) as z:
                names = z.namelist()
                if "config.json" not in names or "model.weights.h5" not in names:
                    raise ValueError(f"{path} is a zip archive but not a .keras model "
                                     f"(no config.json / model.weights.h5)")
                config = json.loads(z.read("config.json"))
                weights = h5py.File(_io.BytesIO(z.read("model.weights.h5")), "r")
            with weights:
                for layer in config.get("config", {}).get("layers", []):
                    name = layer.get("config", {}).get("name")
                    group = weights.get(f"layers/{name}/vars")
                    if group is not None and len(group):
                        layers.append((name, [np.array(group[str(i)]) for i in range(len(group))]))
        else:                                              # legacy HDF5 .h5
            with h5py.File(path, "r") as f:
                if "model_weights" not in f:
                    raise ValueError(f"{path} is an HDF5 file without model_weights: not a Keras model file")
                mw = f["model_weights"]
                for raw in mw.attrs.get("layer_names", []):
                    name = raw.decode() if isinstance(raw, bytes) else str(raw)
                    found = {}

                    def collect(n, o, found=found):     # visititems stops at a non-None return
                        if isinstance(o, h5py.Dataset):
                            found[n.rsplit("/", 1)[-1].split(":")[0]] = o[()]

                    mw[name].visititems(collect)
                    if found:
                        layers.append((name, [found[k] for k in ("kernel", "bias") if k in found]))
    except (OSError, KeyError, json.JSONDecodeError) as e:
        raise ValueError(f"{path} is not a readable Keras model file ({e})") from None
    if not layers:
        raise ValueError(f"{path} holds no layer weights")
    return layers


def model_from_keras(path, model=None, input_shape=(3, 32, 32)):
    """Load a Keras model file into ``model`` (default: the course's ``default_convnet``).

    Keras keeps images NHWC: a Conv2D kernel is ``(HH, WW, C, F)`` (ece662: ``(F, C, HH, WW)``)
    and Flatten orders features ``(h, w, c)`` (ece662, like torch: ``(c, h, w)``), so the
    columns of a Dense layer that follows a Flatten are reordered, not just transposed.
    """
    from ece662.layers import Conv2d, Flatten, Linear
    from ece662.models import default_convnet
    keras_layers = read_keras_weights(path)
    model = default_convnet() if model is None else model
    targets, shape, flat_from = [], (1,) + tuple(input_shape), None
    for name, m in model.named_children():
        if isinstance(m, Flatten):
            flat_from = shape[1:]
        if isinstance(m, (Conv2d, Linear)):
            targets.append((name, m, flat_from if isinstance(m, Linear) else None))
            if isinstance(m, Linear):
                flat_from = None
        shape = m.output_shape(shape)
    if len(targets) != len(keras_layers):
        raise ValueError(f"{path} has {len(keras_layers)} layers with weights "
                         f"({[n for n, _ in keras_layers]}), the model has {len(targets)} "
                         f"({[n for n, _, _ in targets]}); pass a matching model=")
    sd = {}
    for (kname, arrays), (name, m, flat) in zip(keras_layers, targets):
        kernel, bias = arrays[0], (arrays[1] if len(arrays) > 1 else None)
        if isinstance(m, Conv2d):
            if kernel.ndim != 4:
                raise ValueError(f"{path}: Keras layer {kname} has a {kernel.ndim}-D kernel; {name} is a Conv2d")
            w = kernel.transpose(3, 2, 0, 1)
        else:
            if kernel.ndim != 2:
                raise ValueError(f"{path}: Keras layer {kname} has a {kernel.ndim}-D kernel; {name} is a Linear")
            if flat is not None and kernel.shape[0] == int(np.prod(flat)):
                C, H, W = flat
                w = kernel.reshape(H, W, C, -1).transpose(3, 2, 0, 1).reshape(kernel.shape[1], -1)
            else:
                w = kernel.T
        sd[f"{name}.weight"] = w
        if bias is not None:
            sd[f"{name}.bias"] = bias
    try:
        model.load_state_dict({k: np.ascontiguousarray(v, dtype=np.float32) for k, v in sd.items()})
    except (KeyError, ValueError) as e:
        raise ValueError(f"{path}: the Keras weights do not fit the model: {e}") from None
    return model.eval()
