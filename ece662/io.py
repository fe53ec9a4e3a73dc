"""Model files: ece662's own ``.npz`` format, and the entry point to the other formats.

ece662 format (``save_model`` / ``load_model``)
    One ``.npz`` (never unpickled, so loading runs no code) holding
    ``__ece662_format__`` (the string ``"ece662-model-v1"``), ``__ece662_spec__`` (the
    architecture as JSON, see ``Module.spec``) and one array per state-dict key,
    including ``<name>_orig`` / ``<name>_mask`` of pruned parameters, which are pruned
    again on load.  Saving writes a temporary file beside the target and renames it
    into place, so a failed save never leaves a half-written file where a good one was.
    Loading treats the file as untrusted input (see :func:`load_model`).

Other formats live beside this module and are re-exported here:
``ece662.torch_format`` (PyTorch state_dicts, read and written without torch) and
``ece662.keras_format`` (Keras files, read and written with h5py, without Keras).
"""
import json
import os
import zipfile

import numpy as np

from ece662.files import atomic_write

FORMAT = "ece662-model-v1"
_FORMAT_KEY = "__ece662_format__"
_SPEC_KEY = "__ece662_spec__"
# the most weights (values) a model file may declare: 50 million float32 are 200 MB, far more
# than any course network (the default one has 23,210); a file that declares more is refused
# before anything is allocated
MAX_PARAMETERS = 50_000_000


# ============================================================================ ece662 format
def save_model(model, path):
    """Write ``model`` (architecture, weights, pruning masks) to ``path`` atomically.

    Parameters
    ----------
    model : ece662.layers.Sequential
    path : str or os.PathLike
        Used exactly as given (no ``.npz`` is appended).  A name ending in ``.onnx`` writes
        an ONNX graph instead (:func:`ece662.onnx_format.save_onnx`; needs ``onnx``).

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
    if path.lower().endswith(".onnx"):       # the format every runtime reads (pip install onnx)
        return save_onnx(model, path)
    arrays = {_FORMAT_KEY: np.array(FORMAT), _SPEC_KEY: np.array(json.dumps(model.spec()))}
    arrays.update(model.state_dict())
    with atomic_write(path, "save_model") as f:
        np.savez(f, **arrays)


def load_model(path):
    """Read a model written by :func:`save_model` (pruned parameters come back pruned).

    The file is untrusted input, checked in this order, before anything large is allocated:
    each array's ``.npy`` header (no pickled objects; the declared shape must fit the bytes the
    zip member really holds; at most :data:`MAX_PARAMETERS` values in all), then the
    architecture's JSON spec (known layer types, argument types, at most
    :data:`MAX_PARAMETERS` weights), then the arrays' values (no NaN or infinity).

    Raises
    ------
    FileNotFoundError
        No file at ``path``.
    PermissionError
        The file cannot be read by this user.
    ValueError
        The file is not an ece662 model (not an npz, truncated, no spec, pickled objects,
        a damaged or oversized spec, non-finite weights, or arrays that do not fit the
        architecture); the message says which.
    """
    from ece662.layers import from_spec
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"load_model: no file at {path}")
    arrays = _read_npz(path)
    if _SPEC_KEY not in arrays:
        raise ValueError(f"{path} is an .npz archive but not an ece662 model (no {_SPEC_KEY} entry); "
                         f"for a PyTorch state_dict use ece662.pruning_helper.load_model(path, mode='torch')")
    fmt = arrays.pop(_FORMAT_KEY, None)
    if fmt is not None and (fmt.dtype.kind != "U" or fmt.shape != () or str(fmt) != FORMAT):
        raise ValueError(f"{path}: unknown ece662 format {str(fmt)[:40]!r} (this ece662 reads {FORMAT!r}); "
                         f"it may have been written by a newer ece662")
    spec = _parse_spec(arrays.pop(_SPEC_KEY), path)
    check_finite(arrays, path)
    model = from_spec(spec)
    _load_with_masks(model, arrays, source=path)
    return model.eval()


# ---------------------------------------------------------------- reading an .npz safely
_MAX_SPEC_CHARS = 1_000_000        # a spec is a few hundred characters per layer
_MAX_LAYERS = 1000
_MAX_DIM = 2 ** 20                 # no size argument of a layer (channels, features, kernel) exceeds this


def _read_npz(path):
    """``{key: ndarray}`` of an ``.npz``, each member's ``.npy`` header checked before its data are read.

    ``np.load`` allocates whatever a header declares before it reads a byte, so a 1 kB file
    declaring a shape of ``(10**12,)`` would ask for terabytes; here the declared size must
    equal what the zip member holds, and all arrays together stay within ``2 * MAX_PARAMETERS``
    values (weights and their masks).
    """
    fmt = np.lib.format
    try:
        zf = zipfile.ZipFile(path)
    except PermissionError:
        raise PermissionError(f"cannot read {path}: permission denied; check the file's "
                              f"permissions (ls -l {path})") from None
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as e:
        raise ValueError(f"{path} is not a readable ece662 model file: it is not a complete .npz "
                         f"archive ({e}); it may be truncated or be another kind of file") from None
    arrays, total = {}, 0
    names = zf.namelist()
    if any(n.endswith("data.pkl") for n in names) or "config.json" in names:
        kind, mode = ("a PyTorch file (torch.save)", "torch") if "config.json" not in names else \
                     ("a Keras .keras file", "tensorflow")
        zf.close()
        raise ValueError(f"{path} is {kind}, not an ece662 .npz model: load it with "
                         f"load_model(path, mode='{mode}') (on the command line: --mode {mode})")
    try:
        with zf:
            for info in zf.infolist():
                if not info.filename.endswith(".npy"):
                    raise ValueError(f"{path}: the archive member {info.filename!r} is not an array "
                                     f"(.npy); this is not a file ece662 wrote")
                key = info.filename[:-len(".npy")]
                with zf.open(info) as f:
                    version = fmt.read_magic(f)
                    if version == (1, 0):
                        shape, fortran, dtype = fmt.read_array_header_1_0(f)
                    elif version == (2, 0):
                        shape, fortran, dtype = fmt.read_array_header_2_0(f)
                    else:
                        raise ValueError(f"{path}: array {key!r} uses .npy format {version}, "
                                         f"which ece662 files never do")
                    header = f.tell()
                if dtype.hasobject:
                    raise ValueError(f"{path}: the file holds pickled Python objects (array {key!r}), "
                                     f"which ece662 refuses to load (they can run code); re-save it "
                                     f"with ece662.save_model")
                if dtype.kind not in "fbiuU" or dtype.fields is not None:
                    raise ValueError(f"{path}: array {key!r} has dtype {dtype}; ece662 files hold "
                                     f"float, integer and boolean arrays and a JSON string")
                count = 1
                for n in shape:
                    count *= n
                if count * dtype.itemsize != info.file_size - header:
                    raise ValueError(f"{path}: array {key!r} declares shape {shape} of {dtype} "
                                     f"({count * dtype.itemsize:,} bytes), but its archive member holds "
                                     f"{info.file_size - header:,}; the file is damaged or crafted")
                if dtype.kind == "U" and count * dtype.itemsize > 4 * _MAX_SPEC_CHARS:
                    raise ValueError(f"{path}: the string {key!r} declares {count * dtype.itemsize:,} "
                                     f"bytes; a model spec is far smaller")
                total += count if dtype.kind != "U" else 0
                if total > 2 * MAX_PARAMETERS:
                    raise ValueError(f"{path}: the arrays declare more than {2 * MAX_PARAMETERS:,} "
                                     f"values (at {key!r}), more than ece662 loads (ece662.io.MAX_PARAMETERS)")
                with zf.open(info) as f:
                    arrays[key] = fmt.read_array(f, allow_pickle=False)
    except PermissionError:
        raise
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        raise ValueError(f"{path} is not a readable ece662 model file: it is not a complete .npz "
                         f"archive ({e}); it may be truncated or be another kind of file") from None
    except ValueError as e:
        if str(e).startswith(path):
            raise
        raise ValueError(f"{path} is not an ece662 model file (.npz): {e}") from None
    return arrays


def _parse_spec(value, path):
    """The JSON architecture spec, checked (types, counts, known layers, a weight budget)
    before any layer is made."""
    if value.dtype.kind != "U" or value.shape != ():
        raise ValueError(f"{path}: {_SPEC_KEY} must be one JSON string, got an array of {value.dtype} "
                         f"with shape {value.shape}")
    try:
        spec = json.loads(str(value))
    except (json.JSONDecodeError, RecursionError) as e:
        raise ValueError(f"{path}: the model spec ({_SPEC_KEY}) is not valid JSON ({str(e)[:200]}); "
                         f"the file is damaged") from None
    check_spec(spec, path)
    return spec


def read_architecture(path):
    """An untrained model built from a JSON architecture file (the format of ``Module.spec()``).

    A PyTorch state_dict holds weights but not the network they belong to; this file says it,
    e.g. for ``python -m ece662 evaluate --model net.pt --mode torch --arch net.json``.
    Write one with ``json.dump(model.spec(), f)``.  Checked like an ``.npz`` model's spec
    (:func:`check_spec`) before any layer is made.

    Examples
    --------
    >>> import json, os, tempfile
    >>> from ece662.models import default_convnet
    >>> path = os.path.join(tempfile.mkdtemp(), "net.json")
    >>> with open(path, "w") as f:
    ...     json.dump(default_convnet().spec(), f)
    >>> [name for name, _ in read_architecture(path).named_children()][:3]
    ['conv1', 'relu1', 'pool1']
    """
    from ece662.layers import from_spec
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no architecture file at {path}")
    with open(path, "rb") as f:
        text = f.read(_MAX_SPEC_CHARS + 1)
    if len(text) > _MAX_SPEC_CHARS:
        raise ValueError(f"{path}: an architecture file is at most {_MAX_SPEC_CHARS:,} bytes; this one is larger")
    try:
        spec = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
        raise ValueError(f"{path} is not a JSON architecture ({str(e)[:200]}); write one with "
                         f"json.dump(model.spec(), f)") from None
    check_spec(spec, path)
    return from_spec(spec)


def check_spec(spec, source="spec"):
    """Check an architecture spec (``Module.spec()`` output) without building it.

    Raises
    ------
    ValueError
        Not ``{"type": "Sequential", "layers": [[name, {"type", "args"}], ...]}``, an unknown
        layer type, an argument of the wrong type or absurd size, or more than
        :data:`MAX_PARAMETERS` weights in all; the message names the layer.
    """
    from ece662.layers.modules import LAYER_TYPES
    if not isinstance(spec, dict) or spec.get("type") != "Sequential":
        raise ValueError(f"{source}: expected a spec {{'type': 'Sequential', 'layers': [...]}}, "
                         f"got {str(spec)[:80]}")
    layers = spec.get("layers")
    if not isinstance(layers, list):
        raise ValueError(f"{source}: the spec has no list of 'layers' (got {str(layers)[:60]})")
    if len(layers) > _MAX_LAYERS:
        raise ValueError(f"{source}: the spec has {len(layers):,} layers, more than {_MAX_LAYERS}")
    names, weights = set(), 0
    for i, entry in enumerate(layers):
        if not (isinstance(entry, list) and len(entry) == 2 and isinstance(entry[0], str)
                and isinstance(entry[1], dict)):
            raise ValueError(f"{source}: layer {i} of the spec is not a [name, {{'type': ..., "
                             f"'args': {{...}}}}] pair: {str(entry)[:80]}")
        name, layer = entry
        if not name or "." in name or name in names:
            raise ValueError(f"{source}: layer {i} has the name {name!r}; names must be unique, "
                             f"non-empty and without dots")
        names.add(name)
        if layer.get("type") not in LAYER_TYPES:
            raise ValueError(f"{source}: layer {name!r}: unknown type {str(layer.get('type'))[:40]!r}; "
                             f"known types are {sorted(LAYER_TYPES)}")
        args = layer.get("args", {})
        if not isinstance(args, dict):
            raise ValueError(f"{source}: layer {name!r}: args must be an object, got {str(args)[:60]}")
        for k, v in args.items():
            values = v if isinstance(v, list) and len(v) <= 2 else [v]
            for x in values:
                if not (x is None or isinstance(x, (bool, int, float, str))):
                    raise ValueError(f"{source}: layer {name!r}: argument {k!r} = {str(v)[:60]} is "
                                     f"not a number, string or pair of numbers")
                if isinstance(x, int) and not isinstance(x, bool) and not 0 <= x <= _MAX_DIM:
                    raise ValueError(f"{source}: layer {name!r}: argument {k!r} = {x} is out of "
                                     f"range (0 .. {_MAX_DIM:,})")
                if isinstance(x, float) and not np.isfinite(x):
                    raise ValueError(f"{source}: layer {name!r}: argument {k!r} is {x}")
        weights += _spec_weights(layer["type"], args)
        if weights > MAX_PARAMETERS:
            raise ValueError(f"{source}: the spec's layers (up to {name!r}) need {weights:,} weights, "
                             f"more than the {MAX_PARAMETERS:,} ece662 loads (ece662.io.MAX_PARAMETERS)")


def _spec_weights(layer_type, args):
    """How many weights a layer of a spec allocates (an upper bound), from its arguments alone."""
    def number(key):
        v = args.get(key, 1)
        v = v if isinstance(v, list) else [v]
        out = 1
        for x in v:
            out *= x if isinstance(x, int) and not isinstance(x, bool) else 1
        return out
    if layer_type == "Conv2d":
        return number("out_channels") * (number("in_channels") * number("kernel_size") + 1)
    if layer_type == "Linear":
        return number("out_features") * (number("in_features") + 1)
    return 4 * number("num_features") if "num_features" in args else 0


def check_finite(arrays, source):
    """Refuse float arrays holding NaN or infinity, naming the layer (a model with them only
    ever predicts one class, which would look like a 10% accuracy instead of an error)."""
    for key, a in arrays.items():
        if a.dtype.kind == "f" and not np.isfinite(a).all():
            bad = int(np.count_nonzero(~np.isfinite(a)))
            layer = key.rsplit(".", 1)[0] if "." in key else key
            raise ValueError(f"{source}: {key} (layer {layer!r}) holds {bad} NaN or infinite values of "
                             f"{a.size}; the model cannot be evaluated (was training diverging when "
                             f"it was saved?)")


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


# the other formats, re-exported (they import this module lazily, inside functions)
from ece662.torch_format import (model_from_state_dict, read_torch_state_dict,  # noqa: E402
                                  save_torch_state_dict)
from ece662.keras_format import model_from_keras, read_keras_weights, save_keras  # noqa: E402
from ece662.onnx_format import read_onnx, save_onnx  # noqa: E402  (imports onnx only when used)
