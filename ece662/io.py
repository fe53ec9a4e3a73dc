"""Model files in and out: ``load_model`` / ``save_model`` pick a format and hand the work down.

The formats live in :mod:`ece662.formats` (each reader treats its file as hostile; ``SECURITY.md``):

* ece662's own ``.npz`` (architecture, weights and pruning masks): ``formats/npz_format.py``;
* PyTorch ``state_dict`` files, read and written without torch: ``formats/torch_format.py``;
* Keras ``.keras`` / ``.h5`` files, read with h5py and written without Keras: ``formats/keras_format.py``;
* ONNX graphs in and out (the optional ``onnx`` package): ``formats/onnx_format.py``;
* Deep Compression files (pruned, shared and Huffman-coded weights; an ``.npz`` of its own format):
  ``compress/file.py``.

This module adds the two choices a reader never makes for itself: the course's network as the
architecture of a file that holds only weights (a PyTorch ``state_dict``, a legacy Keras ``.h5``), and
the shipped models by name (``load_model('pruned-80')``).  It is ``ece662.io``, not the standard
library's ``io``: always reach it by its full name.
"""
import os

import numpy as np

from ece662.compress.file import is_compressed_file, load_compressed, save_compressed
from ece662.formats.keras_format import model_from_keras as _keras_into
from ece662.formats.keras_format import read_keras_weights, save_keras
from ece662.formats.npz_format import load_npz_model, save_npz_model
from ece662.formats.onnx_format import read_onnx, save_onnx
from ece662.formats.spec import read_architecture
from ece662.formats.torch_format import model_from_state_dict as _state_dict_into
from ece662.formats.torch_format import read_torch_state_dict, save_torch_state_dict
from ece662.models import SHIPPED, default_convnet, load_named, shipped_model_path

MODES = ("numpy", "torch", "tensorflow", "onnx")
# the folder that holds the ece662 package: the repository root, or site-packages when installed
_PACKAGE_PARENT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

__all__ = ["MODES", "load_model", "save_model", "model_from_keras", "model_from_state_dict", "read_architecture",
           "read_keras_weights", "read_onnx", "read_torch_state_dict", "save_keras", "save_onnx",
           "save_torch_state_dict"]


def save_model(model, path, compress=False):
    """Write ``model`` (architecture, weights, pruning masks) to ``path`` atomically.

    A name ending in ``.onnx`` writes an ONNX graph (:func:`ece662.formats.onnx_format.save_onnx`; needs the
    ``onnx`` package); any other name an ece662 ``.npz`` (:func:`ece662.formats.npz_format.save_npz_model`),
    used exactly as given.  ``compress=True`` writes a Deep Compression file instead
    (:func:`ece662.compress.file.save_compressed`: only the surviving weights, as Huffman-coded indices into
    each layer's codebook, and their Huffman-coded positions); the model's layers must hold shared weights
    (:func:`ece662.compress.share_weights`).  :func:`load_model` reads either.  A failed save leaves the
    old file as it was.

    Examples
    --------
    >>> import os, tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "net.npz")
    >>> save_model(default_convnet(seed=1), path)
    >>> load_model(path).state_dict()["fc.bias"].shape
    (10,)
    """
    if compress:
        save_compressed(model, path)
        return None
    if os.fspath(path).lower().endswith(".onnx"):      # the format every runtime reads (pip install onnx)
        return save_onnx(model, path)
    return save_npz_model(model, path)


def load_model(path=None, mode="numpy", model=None):
    """Load a model file, or a shipped model by name.

    Parameters
    ----------
    path : str or os.PathLike, optional
        The file, or the name of a shipped model (``'dense'``, ``'pruned-80'``, ``'pruned-90'``,
        ``'filters-50'``; ``ece662/models/PRUNED_MODELS.md``).  A relative ``ece662/...`` path (the
        course's ``ece662/models/torch.model``) that is not in the working directory is looked up in the
        installed package, so the course's cell runs from ``notebooks/`` too.  ``None`` loads the
        pretrained model that ships with ece662, from its file in the format ``mode`` names.
    mode : {'numpy', 'torch', 'tensorflow', 'onnx'}
        ``'numpy'``: ece662's own ``.npz`` (:func:`save_model`), also a Deep Compression file
        (``save_model(..., compress=True)``), recognised by its format.
        ``'torch'``: a PyTorch ``state_dict`` written by ``torch.save`` (zip format), read without
        importing torch and without unpickling arbitrary objects.
        ``'tensorflow'``: a Keras model file (``.keras`` or ``.h5``), read with h5py without Keras; the
        architecture is built from the file's config and NHWC layouts are converted.
        ``'onnx'``: an ONNX graph (e.g. from ``torch.onnx.export``), architecture included (``pip install onnx``).
    model : ece662.layers.Sequential, optional
        For ``mode='torch'`` / ``'tensorflow'``: the architecture to load into, when it is not the course's
        network (torch) or not the file's own config (Keras).  Its keys and shapes must match the file's.

    Returns
    -------
    ece662.layers.Sequential, in eval mode

    Raises
    ------
    ValueError
        Unknown mode, a file that is not a model, or arrays that do not fit.
    FileNotFoundError
        No file at ``path``, and no shipped model of that name.

    Examples
    --------
    >>> net = load_model("pruned-80")
    >>> round(float((net.conv2.weight == 0).mean()), 2) > 0.5
    True
    """
    check_mode(mode, "load_model")
    if path is None:
        path = shipped_model_path(mode)
    path = _resolve_package_path(path)
    if mode == "numpy" and path in SHIPPED and not os.path.exists(path):
        return load_named(path)                             # a shipped model by name
    if isinstance(path, str) and not os.path.exists(path) and os.sep not in path and "." not in path:
        raise FileNotFoundError(f"load_model: no file at {path!r}, and no shipped model has that name; "
                                f"the shipped models are {sorted(SHIPPED)}")
    if mode in ("numpy", "onnx"):
        if model is not None:
            raise ValueError("load_model: model= is only used with mode='torch' or 'tensorflow'; "
                             "ece662 and ONNX files carry their own architecture")
        if mode == "numpy" and is_compressed_file(path):
            return load_compressed(path)
        return read_onnx(path) if mode == "onnx" else load_npz_model(path)
    if mode == "tensorflow":
        return model_from_keras(path, model=model)
    return model_from_state_dict(read_torch_state_dict(path), model=model, source=os.fspath(path))


def model_from_state_dict(state_dict, model=None, source="state_dict"):
    """A state dict's arrays in ``model``, by default the course's network (``default_convnet()``).

    See :func:`ece662.formats.torch_format.model_from_state_dict` for the matching rules.
    """
    return _state_dict_into(state_dict, model=model, source=source, default=default_convnet)


def model_from_keras(path, model=None, input_shape=None):
    """A Keras file as an ece662 model: its own config's architecture, else ``model``, else (a legacy ``.h5``
    with weights only) the course's network.  See :func:`ece662.formats.keras_format.model_from_keras`."""
    return _keras_into(path, model=model, input_shape=input_shape, default=default_convnet)


def check_mode(mode, caller):
    """One of :data:`MODES`, or an error that says which exist (and that a number is a batch size)."""
    if isinstance(mode, (int, np.integer)) and not isinstance(mode, bool):
        hint = f"; pass a batch size by name: batch_size={mode!r}" if caller == "test_model" else ""
        raise TypeError(f"{caller}: expected mode to be one of {MODES}, got the number {mode!r}{hint}")
    if mode not in MODES:
        raise ValueError(f"{caller}: unknown mode {mode!r}; expected one of {MODES}")


def _resolve_package_path(path, caller="load_model"):
    """A relative ``ece662/...`` path (the course's ``ece662/models/torch.model``) that is not in the
    working directory: the installed package's own file, so that the course cell also runs from
    ``notebooks/``.  Any other path is returned as given.

    Raises
    ------
    FileNotFoundError
        An ``ece662/...`` path that is neither in the working directory nor in the package.
    """
    if not isinstance(path, (str, os.PathLike)):
        return path
    text = os.fspath(path)
    if isinstance(text, bytes) or os.path.isabs(text) or os.path.exists(text):
        return path
    parts = os.path.normpath(text).replace("\\", "/").split("/")
    if parts[0] != "ece662" or ".." in parts:          # only files inside the package itself
        return path
    inside = os.path.join(_PACKAGE_PARENT, *parts)
    if os.path.isfile(inside):
        return inside
    raise FileNotFoundError(f"{caller}: no file at {text!r}, neither in the working directory {os.getcwd()} "
                            f"nor in the installed ece662 ({inside}); paths such as "
                            f"ece662/models/torch.model are relative to the repository root: run from "
                            f"there (cd to the folder that holds ece662/), or pass an absolute path")
