"""Keras model files (``.keras`` zip or legacy ``.h5``), read with h5py and without Keras."""
import io as _io
import json
import os
import zipfile

import numpy as np

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
