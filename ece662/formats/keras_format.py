"""Keras model files (``.keras`` zip or legacy ``.h5``), read and written with h5py, without Keras.

Reading (``model_from_keras``, ``load_model(path, mode='tensorflow')``): the architecture is
built from the file's own config (a Keras ``Sequential`` of Conv2D, MaxPooling2D, Dense,
Flatten, Dropout, Activation/ReLU, InputLayer; AveragePooling2D, GlobalAveragePooling2D and
BatchNormalization when ``ece662.layers`` has them), or given as ``model=``.  Every file is
untrusted input: ``config.json`` is parsed as JSON (nothing is executed), every layer's
settings are checked before a layer is made, every HDF5 dataset's declared shape and dtype
are checked against the architecture (and a total budget) *before* its data are read, and
weights that are NaN or infinite are refused, naming the layer.

Keras keeps images NHWC, ece662 NCHW: a Conv2D kernel ``(HH, WW, C, F)`` becomes
``(F, C, HH, WW)``, a Dense kernel ``(in, out)`` becomes ``(out, in)``, and a Dense layer
after a Flatten has its input features reordered from Keras' ``(h, w, c)`` to ``(c, h, w)``.
"""
import contextlib
import io as _io
import json
import math
import os
import warnings
import zipfile

import numpy as np

import ece662.layers as L
from ece662.formats import common
from ece662.formats.common import atomic_write, effective
from ece662.layers import Conv2d, Dropout, Flatten, Linear, MaxPool2d, ReLU
from ece662.layers.plan import check_finite_computation
from ece662.safezip import ZipReader

_MAX_CONFIG_BYTES = 16 * 2 ** 20       # a Sequential's config.json is a few kB
_MAX_LAYERS = 1000                     # as for an ece662 .npz's spec; the course networks have ~10


# ============================================================================ Keras format: reading
def _error(path, msg):
    return ValueError(f"{path}: {msg}")


def _parse_config(raw, path, where):
    """The JSON text of a Keras model config -> its list of layer configs (checked for shape)."""
    if isinstance(raw, bytes):
        try:
            raw = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise _error(path, f"{where} is not UTF-8 text ({e}); the file is damaged") from None
    try:
        config = json.loads(raw)
    except (json.JSONDecodeError, RecursionError) as e:
        raise _error(path, f"{where} is not valid JSON ({str(e)[:200]}); the file is damaged or "
                           f"not a Keras model") from None
    if not isinstance(config, dict) or not isinstance(config.get("config"), dict):
        raise _error(path, f"{where} is not a Keras model config (expected an object with "
                           f"'class_name' and 'config', got {str(config)[:80]!r})")
    if config.get("class_name") != "Sequential":
        raise _error(path, f"{where} describes a Keras {config.get('class_name')!r} model; ece662 "
                           f"builds Sequential models only: pass model= with the architecture")
    layers = config["config"].get("layers")
    if not isinstance(layers, list):
        raise _error(path, f"{where}: the Sequential config has no list of 'layers'")
    if len(layers) > _MAX_LAYERS:
        raise _error(path, f"{where} lists {len(layers):,} layers, more than the {_MAX_LAYERS} ece662 builds")
    names = set()
    for i, layer in enumerate(layers):
        if not (isinstance(layer, dict) and isinstance(layer.get("class_name"), str)
                and isinstance(layer.get("config"), dict)
                and isinstance(layer["config"].get("name", ""), str)):
            raise _error(path, f"{where}: layer {i} is not a {{'class_name': str, 'config': {{...}}}} "
                               f"object: {str(layer)[:80]!r}")
        name = layer["config"].get("name") or f"layer{i}"
        if name in names:
            raise _error(path, f"{where}: two layers are named {name!r}")
        names.add(name)
    build = config.get("build_config") or config["config"].get("build_input_shape")
    return layers, build


def _vars_name(group):
    name = group.attrs.get("name")
    return name.decode() if isinstance(name, bytes) else name


def _datasets_in_order(group, keys, path, layer):
    import h5py
    out = []
    for k in keys:
        obj = group.get(k)
        if not isinstance(obj, h5py.Dataset) or obj.shape is None:
            raise _error(path, f"layer {layer!r}: weight {k!r} is missing or not an array")
        out.append(obj)
    return out


# HDF5 filters libhdf5 has built in (deflate, shuffle, fletcher32, szip, nbit, scaleoffset) and
# h5py's lzf; any other filter id makes libhdf5 look for a plugin library on disk and load it
_BUILTIN_FILTERS = {1, 2, 3, 4, 5, 6, 32000}
_MAX_HDF5_LINKS = 100_000          # a Sequential's weights file has a few dozen


def _check_hdf5_tree(f, path):
    """Refuse an HDF5 file that reaches outside itself, before any dataset is read.

    HDF5 can make a dataset's bytes come from elsewhere on the machine: an external link
    (a name that opens another file), external raw storage (a dataset whose data are kept in
    another file), a virtual dataset (one stitched from datasets of other files).  h5py follows
    all three silently, so a "weight" could hold any file the user can read.  Keras writes none
    of them, nor soft links (names for other paths, which can also loop), so every link that is
    not a hard link is refused, and every dataset is checked for external and virtual storage,
    for filters that would make libhdf5 load a plugin, and for chunks larger than the dataset
    (a chunk is decompressed whole: a 4 GB chunk of zeros fits in a few MB).

    ``H5Lvisit`` (h5py's low-level ``links.visit``) lists every link once, without following soft
    or external links, and enters a group reached twice by hard links only once.  Its callback
    returns the first problem (returning a value stops the walk; an exception raised inside it
    would cross libhdf5's C frames), and the problem is raised here.
    """
    import h5py
    seen = [0]

    def problem(raw, info):
        seen[0] += 1
        if seen[0] > _MAX_HDF5_LINKS:
            return (f"the HDF5 file holds more than {_MAX_HDF5_LINKS:,} objects; a Keras model's "
                    f"weights file holds a few dozen")
        name = raw.decode("utf-8", "replace")
        try:
            if info.type == h5py.h5l.TYPE_EXTERNAL:
                link = f.get(raw, getlink=True)
                return (f"HDF5 entry {name!r} is an external link to {link.path!r} in the file "
                        f"{link.filename!r}; a model file must hold its own weights (refused, "
                        f"nothing was read from that file)")
            if info.type == h5py.h5l.TYPE_SOFT:
                return (f"HDF5 entry {name!r} is a soft link to {f.get(raw, getlink=True).path!r}; "
                        f"Keras never writes links, and one can point anywhere or loop (refused)")
            if info.type != h5py.h5l.TYPE_HARD:
                return f"HDF5 entry {name!r} is a user-defined link (type {info.type}); refused"
            obj = f.get(raw)       # every link on the way is a hard one: H5Lvisit follows no other
            return _dataset_storage_problem(obj, name) if isinstance(obj, h5py.Dataset) else None
        except Exception as e:     # noqa: BLE001 -- an exception must not cross libhdf5's C frames
            return f"HDF5 entry {name!r} cannot be inspected ({type(e).__name__}: {e}); the file is damaged"

    found = f.id.links.visit(problem, info=True)
    if found is not None:
        raise _error(path, found)


def _dataset_storage_problem(ds, name):
    """Why a dataset's bytes live outside the file or would decode at an unbounded size; None if fine."""
    if ds.is_virtual:
        return (f"HDF5 dataset {name!r} is a virtual dataset (its data come from other files); a "
                f"model file must hold its own weights (refused)")
    if ds.external:
        files = sorted({os.fsdecode(e[0]) for e in ds.external})
        return (f"HDF5 dataset {name!r} keeps its data in the external file(s) {files}; a model "
                f"file must hold its own weights (refused, nothing was read)")
    plist = ds.id.get_create_plist()
    for i in range(plist.get_nfilters()):
        fid = plist.get_filter(i)[0]
        if fid not in _BUILTIN_FILTERS:
            return (f"HDF5 dataset {name!r} uses compression filter {fid}, which is not built into "
                    f"libhdf5 (it would load a plugin library); save it uncompressed or with gzip")
    if ds.chunks is not None and ds.shape is not None:
        chunk = math.prod(ds.chunks) * ds.dtype.itemsize
        if chunk > max(math.prod(ds.shape) * ds.dtype.itemsize, 2 ** 20):
            return (f"HDF5 dataset {name!r} is stored in chunks of {chunk:,} bytes, more than the "
                    f"dataset {ds.shape} needs; a chunk is decompressed whole (refused)")
    return None


@contextlib.contextmanager
def _keras_file(path):
    """Open a Keras file; yield ``(layer configs or None, build info, {layer name: [h5py.Dataset]})``.

    Nothing but JSON and HDF5 metadata has been read when this yields: the datasets'
    shapes are known, their data are not loaded yet.
    """
    h5py = _import_h5py()
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no file at {path}")
    config_layers, build, weights = None, None, {}
    try:
        open(path, "rb").close()
    except PermissionError:
        raise PermissionError(f"cannot read {path}: permission denied; check the file's "
                              f"permissions (ls -l {path})") from None
    try:
        if zipfile.is_zipfile(path):                       # Keras 3 native .keras
            with ZipReader(path) as z:                     # refuses duplicate names, bzip2/lzma, lying sizes
                infos = {i.filename: i for i in z.infolist()}
                if "config.json" not in infos or "model.weights.h5" not in infos:
                    raise _error(path, "a zip archive but not a .keras model (no config.json / "
                                       "model.weights.h5)")
                # a member's declared size bounds what reading it can return
                if infos["config.json"].file_size > _MAX_CONFIG_BYTES:
                    raise _error(path, f"config.json declares {infos['config.json'].file_size:,} "
                                       f"bytes, more than a model config needs ({_MAX_CONFIG_BYTES:,})")
                if infos["model.weights.h5"].file_size > 4 * common.MAX_PARAMETERS + 2 ** 24:
                    raise _error(path, f"model.weights.h5 declares {infos['model.weights.h5'].file_size:,} "
                                       f"bytes, more than {common.MAX_PARAMETERS:,} float32 weights")
                config_layers, build = _parse_config(z.read("config.json", _MAX_CONFIG_BYTES), path,
                                                     "config.json")
                h5 = h5py.File(_io.BytesIO(z.read("model.weights.h5", infos["model.weights.h5"].file_size)), "r")
            with h5:
                _check_hdf5_tree(h5, path)
                by_group = {}
                layers = h5.get("layers")
                for gname in (layers.keys() if isinstance(layers, h5py.Group) else []):
                    vars_ = layers[gname].get("vars")
                    if isinstance(vars_, h5py.Group):
                        keys = sorted(vars_.keys(), key=lambda k: (len(k), k))
                        if keys != [str(i) for i in range(len(keys))]:
                            raise _error(path, f"layers/{gname}/vars holds {keys[:5]}, expected "
                                               f"datasets named 0, 1, 2, ...")
                        by_group[gname] = (_vars_name(vars_), keys, vars_)
                named = {n: (keys, g) for n, keys, g in by_group.values() if n}
                if not named:
                    # a file that does not record layer names in vars: Keras names the groups
                    # by class in model order (conv2d, conv2d_1, ...)
                    seen = {}
                    for layer in config_layers:
                        group = _snake_case(layer["class_name"])
                        n = seen.get(group, 0)
                        seen[group] = n + 1
                        found = by_group.get(group if n == 0 else f"{group}_{n}")
                        if found:
                            named[layer["config"].get("name")] = found[1:]
                for layer in config_layers:
                    name = layer["config"].get("name")
                    if name in named and named[name][0]:
                        keys, g = named[name]
                        weights[name] = _datasets_in_order(g, keys, path, name)
                yield config_layers, build, weights
        else:                                              # legacy HDF5 .h5
            with h5py.File(path, "r") as f:
                _check_hdf5_tree(f, path)
                if "model_weights" not in f:
                    raise _error(path, "an HDF5 file without model_weights: not a Keras model file")
                if "model_config" in f.attrs:
                    config_layers, build = _parse_config(f.attrs["model_config"], path, "model_config")
                mw = f["model_weights"]
                for raw in np.atleast_1d(mw.attrs.get("layer_names", [])):
                    name = raw.decode() if isinstance(raw, bytes) else str(raw)
                    group = mw.get(name)
                    if not isinstance(group, h5py.Group):
                        raise _error(path, f"layer {name!r} is listed but has no weights group")
                    wnames = [w.decode() if isinstance(w, bytes) else str(w)
                              for w in np.atleast_1d(group.attrs.get("weight_names", []))]
                    if wnames:
                        weights[name] = _datasets_in_order(group, wnames, path, name)
                yield config_layers, build, weights
    except (OSError, KeyError, RuntimeError, zipfile.BadZipFile) as e:   # h5py's or zipfile's: a damaged container
        raise ValueError(f"{path} is not a readable Keras model file ({e})") from None


def _read_checked(ds, expected, path, kname, what):
    """Read one dataset after checking its declared shape and dtype; refuse NaN/inf."""
    if tuple(ds.shape) != tuple(expected):
        raise _error(path, f"Keras layer {kname!r}: {what} is declared {tuple(ds.shape)}, the "
                           f"architecture needs {tuple(expected)}")
    if ds.dtype.kind != "f":
        raise _error(path, f"Keras layer {kname!r}: {what} has dtype {ds.dtype}, expected floats")
    a = np.asarray(ds[()], dtype=np.float32)
    if not np.isfinite(a).all():
        bad = int(np.count_nonzero(~np.isfinite(a)))
        raise _error(path, f"Keras layer {kname!r}: {what} holds {bad} NaN or infinite values; "
                           f"the model cannot be evaluated (was it diverging when saved?)")
    return a


def read_keras_weights(path):
    """Read the weights of a Keras model file (``.keras`` or legacy ``.h5``), without Keras.

    Needs ``h5py`` (``pip install "ece662[tensorflow]"``).  Nothing in the file is executed.

    Returns
    -------
    list of (layer name, [ndarray, ...])
        For every layer that has weights, in model order, Keras layouts unchanged
        (Conv2D kernel ``(HH, WW, C, F)``, Dense kernel ``(in, out)``), float32.

    Raises
    ------
    ValueError
        Not a Keras file, a damaged config, more than ``ece662.formats.common.MAX_PARAMETERS`` weights,
        non-float or non-finite weights.
    """
    path = os.fspath(path)
    with _keras_file(path) as (config_layers, _build, weights):
        order = ([l["config"].get("name") for l in config_layers] if config_layers is not None
                 else list(weights))
        _check_budget(weights, path, common.MAX_PARAMETERS)
        out = [(n, [_read_checked(ds, ds.shape, path, n, f"weight {i}") for i, ds in enumerate(weights[n])])
               for n in order if n in weights]
    if not out:
        raise ValueError(f"{path} holds no layer weights")
    return out


def _check_budget(weights, path, budget):
    total = sum(math.prod(ds.shape) for dss in weights.values() for ds in dss)
    if total > budget:
        raise _error(path, f"the weights declare {total:,} values, more than the {budget:,} "
                           f"ece662 reads (ece662.formats.common.MAX_PARAMETERS)")


# ---------------------------------------------------------------- Keras config -> ece662 layers
_SUPPORTED = ("InputLayer", "Conv2D", "MaxPooling2D", "AveragePooling2D", "GlobalAveragePooling2D",
              "BatchNormalization", "Dense", "Flatten", "Dropout", "Activation", "ReLU", "LeakyReLU")


def _pair(value, what, name, path):
    """Keras' int-or-[a, b] arguments -> (a, b) of positive ints."""
    v = [value, value] if isinstance(value, int) else value
    if not (isinstance(v, (list, tuple)) and len(v) == 2
            and all(isinstance(x, int) and not isinstance(x, bool) and 0 < x <= 4096 for x in v)):
        raise _error(path, f"Keras layer {name!r}: {what} must be a positive int or a pair of them, "
                           f"got {value!r}")
    return tuple(v)


def _activation_layers(activation, name, path, last):
    """The ece662 layers that follow a Keras layer's ``activation=``."""
    if activation in (None, "linear"):
        return []
    if activation == "relu":
        return [(f"{name}_relu", ReLU())]
    if activation == "leaky_relu":          # Keras 3's default slope
        return [(f"{name}_relu", _leaky_relu(0.2, name, path))]
    if activation == "softmax" and last:
        warnings.warn(f"{path}: the final softmax of Keras layer {name!r} is left out: ece662 models "
                      f"return logits (the predicted classes and the accuracy are the same)", stacklevel=4)
        return []
    raise _error(path, f"Keras layer {name!r}: activation {activation!r} is not supported "
                       f"(relu, linear, and softmax on the last layer are)")


def _leaky_relu(slope, name, path):
    if not (isinstance(slope, (int, float)) and not isinstance(slope, bool) and 0 <= slope < 1e3
            and math.isfinite(slope)):
        raise _error(path, f"Keras layer {name!r}: negative_slope must be a number, got {slope!r}")
    return _optional_layer(L, "LeakyReLU", name, "LeakyReLU", path)(float(slope))


def _same_padding(size, k, s, name, path):
    """Keras' ``padding='same'`` as ece662's symmetric padding, when it is symmetric."""
    total = max((-(-size // s) - 1) * s + k - size, 0)
    if total % 2:
        raise _error(path, f"Keras layer {name!r}: padding='same' pads {total // 2} before and "
                           f"{total - total // 2} after for a {size}-pixel input (kernel {k}, "
                           f"stride {s}); ece662 pads symmetrically. Use an odd kernel with stride 1")
    return total // 2


class _ParameterBudget:
    """The weights a config's layers need, counted from their settings *before* each layer is
    made, against ``common.MAX_PARAMETERS`` (read at call time, so tests can lower it): a 6 kB
    config whose Dense has a million units must not allocate gigabytes to find out."""

    def __init__(self, path):
        self.path, self.total, self.limit = path, 0, common.MAX_PARAMETERS

    def take(self, count, name):
        self.total += count
        if self.total > self.limit:
            raise _error(self.path, f"the config's layers up to {name!r} need {self.total:,} weights, more "
                                    f"than the {self.limit:,} ece662 reads "
                                    f"(ece662.formats.common.MAX_PARAMETERS); nothing was allocated")


class _NoInitialisation:
    """Stands in for a layer's ``rng`` when the file's weights will replace the initial ones:
    ``Conv2d`` and ``Linear`` draw ``rng.uniform(...)`` (float64, twice the weights' size) and
    cast it to float32; this gives float32 zeros, with no random numbers drawn."""

    @staticmethod
    def uniform(low, high, size):
        return np.zeros(size, np.float32)


_NO_INIT = _NoInitialisation()


def model_from_keras_config(config_layers, path="the Keras config", build=None,
                            input_shape=None):
    """Build the ece662 ``Sequential`` a Keras ``Sequential`` config describes (no weights yet).

    Returns
    -------
    (Sequential, input_shape (C, H, W), {BatchNorm layer name: (scale, center)})

    Raises
    ------
    ValueError
        A layer type or setting ece662 has no equivalent for, naming the layer.
    """
    from collections import OrderedDict
    layers, bn_flags = OrderedDict(), {}
    budget = _ParameterBudget(path)
    if input_shape is None:
        input_shape = _config_input_shape(config_layers, build, path)
    shape = (1,) + tuple(input_shape)
    kept = [l for l in config_layers if l["class_name"] != "InputLayer"]
    for i, layer in enumerate(config_layers):
        cls, cfg = layer["class_name"], layer["config"]
        name = (cfg.get("name") or f"layer{i}").replace(".", "_")
        if cls == "InputLayer":
            continue
        if cfg.get("data_format", "channels_last") != "channels_last":
            raise _error(path, f"Keras layer {name!r}: data_format {cfg.get('data_format')!r}; "
                               f"only channels_last is read")
        last = layer is kept[-1]
        new = []
        if cls == "Conv2D":
            if len(shape) != 4:
                raise _error(path, f"Keras layer {name!r}: a Conv2D after a layer with output {shape[1:]}")
            filters = cfg.get("filters")
            if not (isinstance(filters, int) and 0 < filters <= 65536):
                raise _error(path, f"Keras layer {name!r}: filters must be a positive int, got {filters!r}")
            kh, kw = _pair(cfg.get("kernel_size"), "kernel_size", name, path)
            sh, sw = _pair(cfg.get("strides", 1), "strides", name, path)
            if sh != sw:
                raise _error(path, f"Keras layer {name!r}: strides {sh, sw}; ece662 convs use one stride")
            if _pair(cfg.get("dilation_rate", 1), "dilation_rate", name, path) != (1, 1) \
                    or cfg.get("groups", 1) != 1:
                raise _error(path, f"Keras layer {name!r}: dilated or grouped convolutions are not supported")
            padding = cfg.get("padding", "valid")
            if padding == "valid":
                pad = 0
            elif padding == "same":
                pad = _same_padding(shape[2], kh, sh, name, path)
                if _same_padding(shape[3], kw, sw, name, path) != pad:
                    raise _error(path, f"Keras layer {name!r}: 'same' padding differs between height "
                                       f"and width; ece662 pads both alike")
            else:
                raise _error(path, f"Keras layer {name!r}: padding {padding!r} (valid or same)")
            bias = bool(cfg.get("use_bias", True))
            budget.take(shape[1] * filters * kh * kw + (filters if bias else 0), name)
            new = [(name, L.Conv2d(shape[1], filters, (kh, kw), stride=sh, padding=pad,
                                   bias=bias, rng=_NO_INIT))]
            new += _activation_layers(cfg.get("activation"), name, path, last)
        elif cls in ("MaxPooling2D", "AveragePooling2D"):
            k = _pair(cfg.get("pool_size", 2), "pool_size", name, path)
            s = _pair(cfg.get("strides") or k, "strides", name, path)
            if k[0] != k[1] or s[0] != s[1]:
                raise _error(path, f"Keras layer {name!r}: pool_size {k} / strides {s}; "
                                   f"ece662 pools are square")
            padding = cfg.get("padding", "valid")
            if padding == "same" and not (k == s and shape[2] % k[0] == 0 and shape[3] % k[0] == 0):
                raise _error(path, f"Keras layer {name!r}: padding='same' that pads is not supported")
            if padding not in ("valid", "same"):
                raise _error(path, f"Keras layer {name!r}: padding {padding!r} (valid or same)")
            if cls == "MaxPooling2D":
                new = [(name, L.MaxPool2d(k[0], stride=s[0]))]
            else:
                new = [(name, _optional_layer(L, "AvgPool2d", name, cls, path)(k[0], stride=s[0]))]
        elif cls == "GlobalAveragePooling2D":
            pool = _optional_layer(L, "AdaptiveAvgPool2d", name, cls, path)(1)    # (N, C, 1, 1)
            new = [(name, pool)] if cfg.get("keepdims") else [(name, pool), (f"{name}_flatten", L.Flatten())]
        elif cls == "BatchNormalization":
            axis = cfg.get("axis", -1)
            if axis not in (-1, [-1], len(shape) - 1, [len(shape) - 1]):
                raise _error(path, f"Keras layer {name!r}: BatchNormalization over axis {axis!r}; "
                                   f"only the channel axis (-1) is read")
            cls_name = "BatchNorm2d" if len(shape) == 4 else "BatchNorm1d"
            budget.take(4 * shape[1], name)
            eps = cfg.get("epsilon", 1e-3)
            if not (isinstance(eps, (int, float)) and 0 < eps < 1):
                raise _error(path, f"Keras layer {name!r}: epsilon must be a small positive number, "
                                   f"got {eps!r}")
            momentum = cfg.get("momentum", 0.99)     # Keras keeps this much of the old average,
            if not (isinstance(momentum, (int, float)) and 0 <= momentum <= 1):   # torch says 1 - that
                raise _error(path, f"Keras layer {name!r}: momentum must be in [0, 1], got {momentum!r}")
            new = [(name, _optional_layer(L, cls_name, name, cls, path)(
                shape[1], eps=float(eps), momentum=round(1.0 - float(momentum), 12)))]
            bn_flags[name] = (bool(cfg.get("scale", True)), bool(cfg.get("center", True)))
        elif cls == "Dense":
            units = cfg.get("units")
            if not (isinstance(units, int) and 0 < units <= 1_000_000):
                raise _error(path, f"Keras layer {name!r}: units must be a positive int, got {units!r}")
            if len(shape) != 2:
                raise _error(path, f"Keras layer {name!r}: a Dense layer on a {len(shape) - 1}-D input "
                                   f"(ece662 needs a Flatten first)")
            bias = bool(cfg.get("use_bias", True))
            budget.take(shape[1] * units + (units if bias else 0), name)
            new = [(name, L.Linear(shape[1], units, bias=bias, rng=_NO_INIT))]
            new += _activation_layers(cfg.get("activation"), name, path, last)
        elif cls == "Flatten":
            new = [(name, L.Flatten())]
        elif cls == "Dropout":
            rate = cfg.get("rate", 0.5)
            if not (isinstance(rate, (int, float)) and 0 <= rate < 1):
                raise _error(path, f"Keras layer {name!r}: rate must be in [0, 1), got {rate!r}")
            new = [(name, L.Dropout(float(rate)))]
        elif cls == "Activation":
            new = _activation_layers(cfg.get("activation"), name, path, last)
            new = [(name, m) for _, m in new]
        elif cls == "ReLU":
            slope = cfg.get("negative_slope", 0.0) or 0.0
            if cfg.get("max_value") is not None or cfg.get("threshold", 0) not in (0, 0.0):
                raise _error(path, f"Keras layer {name!r}: ReLU with max_value or threshold is not supported")
            new = [(name, L.ReLU() if slope == 0 else _leaky_relu(slope, name, path))]
        elif cls == "LeakyReLU":           # Keras 3 says negative_slope, Keras 2 said alpha
            slope = cfg.get("negative_slope", cfg.get("alpha", 0.3))
            new = [(name, _leaky_relu(slope, name, path))]
        else:
            raise _error(path, f"Keras layer {name!r} is a {cls}, which ece662 cannot build; "
                               f"supported: {', '.join(_SUPPORTED)}")
        for n, m in new:
            if n in layers:
                raise _error(path, f"two layers would be named {n!r}")
            layers[n] = m
            shape = m.output_shape(shape)
    if not layers:
        raise _error(path, "the config holds no layers")
    return L.Sequential(layers), tuple(input_shape), bn_flags


def _config_input_shape(config_layers, build, path):
    """One image's (C, H, W) from a Keras config: the input layer's ``batch_shape`` (Keras 3),
    a first layer's ``batch_input_shape`` (Keras 2), or the model's build shape."""
    candidates = [l["config"].get("batch_shape") or l["config"].get("batch_input_shape")
                  for l in config_layers]
    candidates.append(build.get("input_shape") if isinstance(build, dict) else build)
    for shape in candidates:
        if shape is None:
            continue
        if not (isinstance(shape, list) and len(shape) == 4
                and all(isinstance(x, int) and not isinstance(x, bool) and 0 < x <= 4096
                        for x in shape[1:])):
            raise _error(path, f"the config's input shape {str(shape)[:80]} is not "
                               f"[batch, height, width, channels]")
        H, W, C = shape[1:]
        return (C, H, W)
    raise _error(path, "the config does not say the input's shape; pass input_shape=(C, H, W)")


def _optional_layer(L, cls_name, name, keras_cls, path):
    layer = getattr(L, cls_name, None)
    if layer is None:
        raise _error(path, f"Keras layer {name!r} is a {keras_cls}, which needs ece662.layers.{cls_name}; "
                           f"this version of ece662 does not have it yet")
    return layer


# ---------------------------------------------------------------- Keras weights -> ece662 arrays
def _weight_targets(model, input_shape):
    """``[(module name, module, flat_from)]`` for every layer with weights, in order; ``flat_from``
    is the (C, H, W) that a Flatten made into the features of the Linear that follows it."""
    targets, shape, flat_from = [], (1,) + tuple(input_shape), None
    for name, m in model.named_children():
        if isinstance(m, Flatten):
            flat_from = shape[1:]
        elif isinstance(m, Linear):
            targets.append((name, m, flat_from))
            flat_from = None
        elif m._parameters or m._buffers:          # Conv2d, BatchNorm
            if flat_from is not None and flat_from[1] * flat_from[2] > 1:
                raise ValueError(f"layer {name!r} ({type(m).__name__}) works on the features of a Flatten "
                                 f"over {flat_from[1]}x{flat_from[2]} pixels, which Keras orders (h, w, c) "
                                 f"and ece662 (c, h, w): not supported")
            targets.append((name, m, None))
        shape = m.output_shape(shape)
    return targets


def _convert(path, kname, datasets, name, m, flat, bn_flags):
    """Check a Keras layer's datasets against ece662 module ``m``, read them, return its state dict."""
    if isinstance(m, Conv2d):
        HH, WW = m.kernel_size
        expected = [(HH, WW, m.in_channels, m.out_channels)]
        expected += [(m.out_channels,)] if m.bias is not None else []
    elif isinstance(m, Linear):
        expected = [(m.in_features, m.out_features)] + ([(m.out_features,)] if m.bias is not None else [])
    elif type(m).__name__.startswith("BatchNorm"):
        scale, center = bn_flags.get(name, (True, True))
        C = m.running_mean.shape[0]
        expected = [(C,)] * (int(scale) + int(center) + 2)
    else:
        raise _error(path, f"Keras layer {kname!r} has weights, but ece662 layer {name!r} is a "
                           f"{type(m).__name__}")
    if len(datasets) != len(expected):
        raise _error(path, f"Keras layer {kname!r} holds {len(datasets)} weights, ece662 layer "
                           f"{name!r} ({type(m).__name__}) needs {len(expected)} "
                           f"(shapes {expected}); pass a matching model=")
    arrays = [_read_checked(ds, shape, path, kname, f"weight {i}")
              for i, (ds, shape) in enumerate(zip(datasets, expected))]
    sd = {}
    if isinstance(m, Conv2d):
        sd["weight"] = arrays[0].transpose(3, 2, 0, 1)
    elif isinstance(m, Linear):
        kernel = arrays[0]
        if flat is not None and kernel.shape[0] == int(np.prod(flat)):
            C, H, W = flat             # Keras flattened (h, w, c); ece662 flattens (c, h, w)
            sd["weight"] = kernel.reshape(H, W, C, -1).transpose(3, 2, 0, 1).reshape(kernel.shape[1], -1)
        else:
            sd["weight"] = kernel.T
    else:
        it = iter(arrays)
        sd["weight"] = next(it) if scale else np.ones(C, np.float32)
        sd["bias"] = next(it) if center else np.zeros(C, np.float32)
        sd["running_mean"], sd["running_var"] = next(it), next(it)
        return {k: v for k, v in sd.items() if k in m._parameters or k in m._buffers}
    if len(arrays) > 1:
        sd["bias"] = arrays[1]
    return sd


def model_from_keras(path, model=None, input_shape=None, default=None):
    """Load a Keras model file into an ece662 ``Sequential``.

    Parameters
    ----------
    path : str or os.PathLike
        A ``.keras`` (Keras 3) or ``.h5`` (legacy) file.
    model : ece662.layers.Sequential, optional
        The architecture to load into.  By default it is built from the file's config
        (see :func:`model_from_keras_config`); a legacy ``.h5`` with no config is read into
        ``default()`` (``ece662.io`` passes the course's ``default_convnet``).
    input_shape : (C, H, W), optional
        One image's shape, when the file does not record it (default ``(3, 32, 32)``).
    default : callable, optional
        Builds the network to assume for a legacy ``.h5`` without a config, when ``model`` is None.

    Raises
    ------
    ValueError
        Anything in the file that does not fit, naming the layer: see the module docstring.
    """
    path = os.fspath(path)
    with _keras_file(path) as (config_layers, build, weights):
        _check_budget(weights, path, common.MAX_PARAMETERS)
        bn_flags = {}
        if model is None and config_layers is not None:
            model, input_shape, bn_flags = model_from_keras_config(config_layers, path, build, input_shape)
        elif model is None:
            if default is None:
                raise ValueError(f"{path} holds Keras weights without a model config: pass model= (the "
                                 f"ece662 Sequential they belong to)")
            model = default()
        input_shape = tuple(input_shape or (3, 32, 32))
        order = ([l["config"].get("name") for l in config_layers] if config_layers is not None
                 else list(weights))
        keras_layers = [(n, weights[n]) for n in order if n in weights]
        targets = _weight_targets(model, input_shape)
        if len(targets) != len(keras_layers):
            raise ValueError(f"{path} has {len(keras_layers)} layers with weights "
                             f"({[n for n, _ in keras_layers]}), the model has {len(targets)} "
                             f"({[n for n, _, _ in targets]}); pass a matching model=")
        sd = {}
        for (kname, datasets), (name, m, flat) in zip(keras_layers, targets):
            for k, v in _convert(path, kname, datasets, name, m, flat, bn_flags).items():
                sd[f"{name}.{k}"] = np.ascontiguousarray(v, dtype=np.float32)
    own = model.state_dict()
    for key, value in own.items():      # buffers Keras does not have (e.g. num_batches_tracked)
        if key not in sd and not key.endswith(("weight", "bias", "_orig", "_mask")):
            sd[key] = value
    try:
        model.load_state_dict(sd, strict=not any(k.endswith("_orig") for k in own))
    except (KeyError, ValueError) as e:
        raise ValueError(f"{path}: the Keras weights do not fit the model: {e}") from None
    check_finite_computation(model.eval(), path)         # finite as computed: casts, folds, running_var >= 0
    return model


# ============================================================================ Keras format: writing
# ``save_keras`` writes a Keras 3 ``.keras`` file (what ``model.save("x.keras")`` writes) without Keras:
#
#   metadata.json     {"keras_version": ..., "date_saved": ...}
#   config.json       the Sequential's architecture: one {"class_name", "config"} per layer
#   model.weights.h5  per layer, an HDF5 group ``layers/<snake_case class>[_<n>]/vars`` whose
#                     datasets "0", "1", ... are its variables (Conv2D: kernel (HH, WW, C, F), bias;
#                     Dense: kernel (in, out), bias) and whose attribute ``name`` is the layer's name
#
# Keras keeps images NHWC, ece662 NCHW (see ``model_from_keras``): a conv kernel is transposed
# (F, C, HH, WW) -> (HH, WW, C, F), and a Dense kernel after a Flatten has its rows reordered
# from ece662's (c, h, w) feature order to Keras' (h, w, c).
_KERAS_VERSION = "3.15.1"          # the version whose files the layout above was checked against


def _keras_layer(class_name, name, **config):
    dtype = {"module": "keras", "class_name": "DTypePolicy", "config": {"name": "float32"},
             "registered_name": None}
    return {"module": "keras.layers", "class_name": class_name,
            "config": {"name": name, "trainable": True, "dtype": dtype, **config},
            "registered_name": None}


def _keras_initializer(class_name):
    return {"module": "keras.initializers", "class_name": class_name, "config": {},
            "registered_name": None}


def _snake_case(class_name):
    """Keras' group name for a layer class: ``Conv2D`` -> ``conv2d``, ``ReLU`` -> ``re_lu``."""
    import re
    s = re.sub(r"(.)([A-Z][a-z]+)", r"\1_\2", class_name)
    return re.sub(r"([a-z])([A-Z])", r"\1_\2", s).lower()


def keras_layers_of(model, input_shape=(3, 32, 32)):
    """The Keras layers (configs and NHWC variables) that compute what ``model`` computes.

    Returns
    -------
    list of (config dict, [ndarray, ...])
        The first is Keras' ``InputLayer``; every ece662 layer becomes one Keras layer of the
        same name (Conv2d -> Conv2D, Linear -> Dense, ReLU, LeakyReLU, MaxPool2d -> MaxPooling2D,
        AvgPool2d -> AveragePooling2D, AdaptiveAvgPool2d(1) -> GlobalAveragePooling2D(keepdims=True),
        BatchNorm2d/1d -> BatchNormalization, Flatten, Dropout).

    Raises
    ------
    ValueError
        A layer Keras cannot express this way (e.g. a conv whose padding is neither 0 nor
        Keras' stride-1 ``'same'``), named.
    """
    optional = {n: getattr(L, n, None) for n in ("AvgPool2d", "AdaptiveAvgPool2d", "LeakyReLU")}
    C, H, W = input_shape
    out = [({"module": "keras.layers", "class_name": "InputLayer",
             "config": {"batch_shape": [None, H, W, C], "dtype": "float32", "sparse": False,
                        "ragged": False, "name": "input_layer", "optional": False},
             "registered_name": None}, [])]
    shape, flat_from = (1,) + tuple(input_shape), None
    for name, m in model.named_children():
        if isinstance(m, Conv2d):
            HH, WW = m.kernel_size
            if m.padding == 0:
                padding = "valid"
            elif m.stride == 1 and 2 * m.padding == HH - 1 and HH == WW:
                padding = "same"           # stride 1, odd kernel: Keras pads (k - 1) / 2 on each side
            else:
                raise ValueError(f"save_keras: layer {name!r} ({m!r}) has padding {m.padding}, which "
                                 f"Keras' Conv2D cannot express ('valid' is 0, 'same' is (k-1)/2 at stride 1)")
            w, b = effective(m, "weight"), effective(m, "bias")
            cfg = _keras_layer("Conv2D", name, filters=m.out_channels, kernel_size=[HH, WW],
                               strides=[m.stride, m.stride], padding=padding,
                               data_format="channels_last", dilation_rate=[1, 1], groups=1,
                               activation="linear", use_bias=b is not None,
                               kernel_initializer=_keras_initializer("GlorotUniform"),
                               bias_initializer=_keras_initializer("Zeros"))
            variables = [w.transpose(2, 3, 1, 0)] + ([b] if b is not None else [])
        elif isinstance(m, Linear):
            w, b = effective(m, "weight"), effective(m, "bias")
            kernel = w.T
            if flat_from is not None:      # rows in ece662's (c, h, w) order -> Keras' (h, w, c)
                c, h, ww = flat_from
                kernel = w.reshape(-1, c, h, ww).transpose(0, 2, 3, 1).reshape(w.shape[0], -1).T
                flat_from = None
            cfg = _keras_layer("Dense", name, units=m.out_features, activation="linear",
                               use_bias=b is not None,
                               kernel_initializer=_keras_initializer("GlorotUniform"),
                               bias_initializer=_keras_initializer("Zeros"))
            variables = [kernel] + ([b] if b is not None else [])
        elif isinstance(m, ReLU):
            cfg, variables = _keras_layer("ReLU", name, max_value=None, negative_slope=0.0,
                                          threshold=0.0), []
        elif isinstance(m, MaxPool2d):
            k, s = m.kernel_size, m.stride
            cfg, variables = _keras_layer("MaxPooling2D", name, pool_size=[k, k], padding="valid",
                                          strides=[s, s], data_format="channels_last"), []
        elif isinstance(m, Flatten):
            flat_from = shape[1:]
            cfg, variables = _keras_layer("Flatten", name, data_format="channels_last"), []
        elif isinstance(m, Dropout):
            cfg, variables = _keras_layer("Dropout", name, rate=m.p, seed=None, noise_shape=None), []
        elif optional["LeakyReLU"] and isinstance(m, optional["LeakyReLU"]):
            cfg, variables = _keras_layer("LeakyReLU", name, negative_slope=m.negative_slope), []
        elif optional["AvgPool2d"] and isinstance(m, optional["AvgPool2d"]):
            k, s = m.kernel_size, m.stride
            cfg, variables = _keras_layer("AveragePooling2D", name, pool_size=[k, k], padding="valid",
                                          strides=[s, s], data_format="channels_last"), []
        elif optional["AdaptiveAvgPool2d"] and isinstance(m, optional["AdaptiveAvgPool2d"]):
            cfg, variables = _keras_layer("GlobalAveragePooling2D", name, data_format="channels_last",
                                          keepdims=True), []
        elif type(m).__name__ in ("BatchNorm2d", "BatchNorm1d") and len(shape) in (2, 4):
            if flat_from is not None and flat_from[1] * flat_from[2] > 1:
                raise ValueError(f"save_keras: layer {name!r} normalises the features of a Flatten "
                                 f"over {flat_from[1]}x{flat_from[2]} pixels, which Keras orders differently")
            C_ = m.running_mean.shape[0]
            gamma = m.weight if m.weight is not None else np.ones(C_, np.float32)
            beta = m.bias if m.bias is not None else np.zeros(C_, np.float32)
            cfg = _keras_layer("BatchNormalization", name, axis=-1, momentum=round(1.0 - m.momentum, 12),
                               epsilon=m.eps, center=True, scale=True)
            variables = [gamma, beta, m.running_mean, m.running_var]
        else:
            raise ValueError(f"save_keras: layer {name!r} is a {type(m).__name__}, which save_keras "
                             f"does not write (Conv2d, Linear, ReLU, LeakyReLU, MaxPool2d, AvgPool2d, "
                             f"AdaptiveAvgPool2d, BatchNorm2d/1d, Flatten, Dropout)")
        out.append((cfg, [np.ascontiguousarray(v, dtype=np.float32) for v in variables]))
        shape = m.output_shape(shape)
    return out


def save_keras(model, path, input_shape=(3, 32, 32)):
    """Write ``model`` as a Keras 3 ``.keras`` file, without Keras (needs h5py).

    ``keras.saving.load_model(path)`` gives a Keras model with the same logits (on NHWC
    images), and ``load_model(path, mode='tensorflow')`` reads it back.  The file is written
    to a temporary name beside ``path`` and renamed into place; the same model always gives
    the same bytes.

    Parameters
    ----------
    model : ece662.layers.Sequential
        Of the layers :func:`keras_layers_of` lists.
    path : str or os.PathLike
        Must end in ``.keras``: Keras picks the format by the extension, and reads ``.h5`` as
        its legacy HDF5 layout, which this file is not.
    input_shape : (C, H, W)
        One image's shape, which a Keras file records.

    Raises
    ------
    ValueError
        ``path`` does not end in ``.keras``; nothing is written.
    """
    _check_keras_extension(path)
    h5py = _import_h5py()
    layers = keras_layers_of(model, input_shape)
    C, H, W = input_shape
    config = {"module": "keras", "class_name": "Sequential",
              "config": {"name": "sequential", "trainable": True,
                         "dtype": layers[1][0]["config"]["dtype"] if len(layers) > 1 else "float32",
                         "layers": [cfg for cfg, _ in layers]},
              "registered_name": None, "build_config": {"input_shape": [None, H, W, C]},
              "compile_config": None}
    buf = _io.BytesIO()
    with h5py.File(buf, "w", track_order=False) as f:
        seen = {}
        for cfg, variables in layers[1:]:
            group = _snake_case(cfg["class_name"])
            n = seen.get(group, 0)
            seen[group] = n + 1
            vars_ = f.create_group(f"layers/{group}{'_' + str(n) if n else ''}/vars")
            vars_.attrs["name"] = cfg["config"]["name"]
            for i, v in enumerate(variables):
                vars_.create_dataset(str(i), data=v)
        f.create_group("vars").attrs["name"] = "sequential"
    metadata = {"keras_version": _KERAS_VERSION, "date_saved": "written by ece662.save_keras"}
    with atomic_write(path, "save_keras") as f, zipfile.ZipFile(f, "w", zipfile.ZIP_STORED) as zf:
        for name, data in (("metadata.json", json.dumps(metadata).encode()),
                           ("config.json", json.dumps(config).encode()),
                           ("model.weights.h5", buf.getvalue())):
            zf.writestr(zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0)), data)


def _check_keras_extension(path):
    """Refuse a name real Keras would not read as a ``.keras`` zip (it goes by the extension)."""
    path = os.fspath(path)
    if not path.endswith(".keras"):             # Keras compares the name case-sensitively
        ext = os.path.splitext(path)[1]
        why = ("Keras reads .h5 as its legacy HDF5 layout and would fail on this file"
               if ext.lower() in (".h5", ".hdf5") else
               "keras.saving.load_model reads a .keras zip only under a name ending in .keras "
               "(lower case)")
        raise ValueError(f"save_keras: expected a path ending in .keras, got {path!r}; save_keras writes "
                         f"the Keras 3 .keras format and {why}. Use "
                         f"{os.path.splitext(path)[0] + '.keras'!r}")


def _import_h5py():
    try:
        import h5py
    except ImportError:
        raise ImportError("Keras files need h5py: pip install h5py "
                          "(or pip install -e \".[tensorflow]\")") from None
    return h5py
