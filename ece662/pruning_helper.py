"""The course-facing helpers: ``load_model`` and ``test_model``.

Course code uses them exactly as the assignment notebook does::

    from ece662.pruning_helper import test_model, load_model
    from ece662.data_utils import get_CINIC10_data
    data = get_CINIC10_data(); mode = 'torch'  # torch or tensorflow
    test_data = [data['X_test'], data['y_test']]
    path = os.path.join('ece662', 'models', f'{mode}.model')   # the course's file names
    model = load_model(path, mode=mode)         # a PyTorch state_dict (or Keras file), read without either
    test_model(model, test_data, mode=mode)     # prints "Test Acc: 0.7620"
"""
import os
import warnings

import numpy as np

from ece662 import io as _io
from ece662.models import SHIPPED, load_named

_MODES = ("numpy", "torch", "tensorflow", "onnx")
# the folder that holds the ece662 package: the repository root, or site-packages when installed
_PACKAGE_PARENT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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


def load_model(path=None, mode="numpy", model=None):
    """Load a model file.

    Parameters
    ----------
    path : str or os.PathLike, optional
        The file.  A relative ``ece662/...`` path (the course's ``ece662/models/torch.model``)
        that is not in the working directory is looked up in the installed package, so the
        course's cell runs from ``notebooks/`` too.  ``None`` loads the pretrained model that ships with ece662, from its file in
        the format ``mode`` names (``ece662/models/default_convnet.npz``, ``torch.model`` or
        ``tensorflow.model``; see :func:`shipped_model_path`).
    mode : {'numpy', 'torch', 'tensorflow', 'onnx'}
        ``'numpy'``: ece662's own ``.npz`` format (``ece662.io.save_model``), or the name of a
        shipped model (``'dense'``, ``'pruned-80'``, ``'pruned-90'``, ``'filters-50'``; see
        ``ece662/models/PRUNED_MODELS.md``).
        ``'torch'``: a PyTorch ``state_dict`` written by ``torch.save`` (zip format),
        read without importing torch and without unpickling arbitrary objects.
        ``'tensorflow'``: a Keras model file (``.keras`` or ``.h5``), read with h5py
        (``pip install h5py``) without Keras; the architecture is built from the file's
        config (see ``ece662.keras_format``) and NHWC layouts are converted.
        ``'onnx'``: an ONNX graph (e.g. from ``torch.onnx.export``), architecture included
        (``pip install onnx``; see ``ece662.onnx_format``).
    model : ece662.layers.Sequential, optional
        For ``mode='torch'`` / ``'tensorflow'``: the architecture to load into, when it is not
        the course's default network (torch) or not the file's own config (Keras).  Its keys
        and shapes must match the file's.

    Returns
    -------
    ece662.layers.Sequential, in eval mode

    Raises
    ------
    ValueError
        Unknown mode, a file that is not a model, or arrays that do not fit.
    FileNotFoundError
        No file at ``path``.
    """
    _check_mode(mode, "load_model")
    if path is None:
        path = shipped_model_path(mode)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"load_model: the shipped pretrained model {path} is missing; "
                                    f"reinstall ece662 or pass a path")
    path = _resolve_package_path(path)
    if mode == "numpy" and path in SHIPPED and not os.path.exists(path):
        return load_named(path)            # a shipped model by name, e.g. load_model('pruned-80')
    if isinstance(path, str) and not os.path.exists(path) and os.sep not in path and "." not in path:
        raise FileNotFoundError(f"load_model: no file at {path!r}, and no shipped model has that name; "
                                f"the shipped models are {sorted(SHIPPED)}")
    if mode == "numpy" or mode == "onnx":
        if model is not None:
            raise ValueError("load_model: model= is only used with mode='torch' or 'tensorflow'; "
                             "ece662 and ONNX files carry their own architecture")
        return _io.read_onnx(path) if mode == "onnx" else _io.load_model(path)
    if mode == "tensorflow":
        return _io.model_from_keras(path, model=model)
    return _io.model_from_state_dict(_io.read_torch_state_dict(path), model=model, source=os.fspath(path))


def shipped_model_path(mode="numpy"):
    """Where the pretrained weights that ship with ece662 live, in the format ``mode`` reads.

    The same weights ship as ece662's ``.npz`` (``'numpy'``) and as the course's two files,
    ``torch.model`` (a PyTorch state_dict) and ``tensorflow.model`` (a Keras file); no ONNX
    file ships (``ece662.io.save_model(load_model(), 'm.onnx')`` writes one).
    """
    names = {"numpy": "default_convnet.npz", "torch": "torch.model", "tensorflow": "tensorflow.model"}
    if mode not in names:
        raise ValueError(f"load_model: no pretrained model ships as a {mode!r} file (shipped formats: "
                         f"{sorted(names)}); pass a path, e.g. write one with "
                         f"ece662.io.save_model(load_model(), 'model.onnx')")
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "models", names[mode])


def _to_float_batch(X, sl):
    batch = np.asarray(X[sl])
    if batch.dtype != np.float32:
        if batch.dtype == np.uint8:
            raise TypeError(f"test_model: expected normalised float32 images of shape (N, 3, 32, 32), "
                            f"got uint8 images of shape {batch.shape}; load them with "
                            f"get_CINIC10_data() (normalize=True, channels_first=True)")
        batch = batch.astype(np.float32)
    return batch


def predict_logits(model, X, batch_size=1000):
    """Logits for every image of ``X``, computed in eval mode, ``batch_size`` at a time.

    Parameters
    ----------
    X : ndarray or array-like, (N, C, H, W) float32
        Anything with ``len`` and slicing (e.g. ``data['X_test']``).  ``N = 0`` gives an
        empty ``(0, num_classes)`` result.

    Returns
    -------
    ndarray, (N, num_classes) float32
    """
    if not isinstance(batch_size, (int, np.integer)) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"predict_logits: expected batch_size to be a positive int, got {batch_size!r}")
    _check_model(model, "predict_logits")
    if len(X) == 0:
        # no images: the answer is an empty (0, num_classes), whose width the layers' shapes give
        empty = _to_float_batch(X, slice(0, 0))
        return np.zeros((0,) + tuple(model.output_shape(empty.shape)[1:]), dtype=np.float32)
    was_training = model.training
    model.eval()
    try:
        chunks = [model(_to_float_batch(X, slice(s, s + batch_size)))
                  for s in range(0, len(X), batch_size)]
    finally:
        model.train(was_training)
    return np.concatenate(chunks)


def _check_model(model, caller):
    from ece662.layers import Module
    if not isinstance(model, Module):
        raise TypeError(f"{caller}: expected an ece662 model (ece662.layers.Sequential), got "
                        f"{type(model).__module__}.{type(model).__name__}; read a torch or Keras file "
                        f"into one with load_model(path, mode='torch') or mode='tensorflow'")


def _check_mode(mode, caller):
    if isinstance(mode, (int, np.integer)) and not isinstance(mode, bool):
        hint = f"; pass a batch size by name: batch_size={mode!r}" if caller == "test_model" else ""
        raise TypeError(f"{caller}: expected mode to be one of {_MODES}, got the number {mode!r}{hint}")
    if mode not in _MODES:
        raise ValueError(f"{caller}: unknown mode {mode!r}; expected one of {_MODES}")


def _check_labels(y, n_images):
    """``y`` as an integer array of ``n_images`` class indices, or a ValueError saying what is wrong."""
    y = np.asarray(y)
    if y.ndim != 1 or len(y) != n_images:
        raise ValueError(f"test_model: expected y of shape ({n_images},) to match X, got {y.shape}")
    if y.dtype == bool or not np.issubdtype(y.dtype, np.integer):
        hint = ""
        if np.issubdtype(y.dtype, np.floating):
            bad = int(np.count_nonzero(~np.isfinite(y)))
            hint = (f" ({bad} of them NaN or infinite)" if bad else
                    "; if they are whole numbers, pass y.astype(np.int64)")
        raise ValueError(f"test_model: expected integer class labels, got dtype {y.dtype}{hint}")
    if len(y) and y.min() < 0:
        raise ValueError(f"test_model: labels must be class indices >= 0, got {int(y.min())} "
                         f"(at index {int(np.argmin(y))})")
    return y


class NearChanceWarning(UserWarning):
    """A loaded model scores close to guessing: its input scaling, its architecture or its
    weights are probably not what it was trained with."""


# what a student can change, in Python and at the command line
_SCALING_FIX = {"python": "load the data with get_CINIC10_data(normalize='unit') for pixels/255, "
                          "normalize='none' for raw 0-255",
                "cli": "try --normalize unit (pixels/255) or --normalize none (raw 0-255)"}


def near_chance_message(accuracy, num_classes, n_images, where="python", who="test_model"):
    """A warning text when ``accuracy`` is below twice chance (``2 / num_classes``), else None.

    Why twice chance and not a binomial margin around ``1 / num_classes``: a model fed input
    scaled unlike its training data is badly off rather than exactly at chance (a CNN trained
    on pixels/255 scored 0.41 in torch and 0.1989 on CINIC-10-normalised images), and on 10,000
    test images three binomial standard deviations around 0.1 reach only 0.109.  Any trained
    CINIC-10 model worth pruning scores far above 0.2 (the shipped one 0.76), so below it the
    cause is almost surely the model or its input, not the network's skill.

    Parameters
    ----------
    where : {'python', 'cli'}
        Which fix to suggest for the input scaling: a keyword or a command-line option.

    Examples
    --------
    >>> near_chance_message(0.76, 10, 10000) is None
    True
    >>> print(near_chance_message(0.1989, 10, 10000))
    test_model: accuracy 0.1989 on 10000 images is near chance (1/10 = 0.100; warned below twice that). ...
    """
    if num_classes < 2 or accuracy >= 2 / num_classes:
        return None
    return (f"{who}: accuracy {accuracy:.4f} on {n_images} images is near chance (1/{num_classes} = "
            f"{1 / num_classes:.3f}; warned below twice that). Likely causes: the model was trained on "
            f"other input scaling than CINIC-10's mean/std, which ece662's data use by default "
            f"({_SCALING_FIX[where]}); the architecture or the order of the weights does not match the "
            f"file's (e.g. a Flatten over NHWC rather than NCHW features); or the model is untrained")


def _is_pruned(model):
    """Whether any parameter carries a pruning mask (``weight_orig`` + ``weight_mask``)."""
    return any(key.endswith("_mask") for key in model.state_dict())


def test_model(model, test_data, mode="numpy", batch_size=1000, verbose=True):
    """Accuracy of ``model`` on ``test_data = [X, y]``; prints ``Test Acc: 0.xxxx``.

    Evaluation is deterministic: the same model and data always give the same number.

    Parameters
    ----------
    model : ece662.layers.Sequential
    test_data : (X, y)
        ``X`` (N, 3, 32, 32) float32 (or an array-like of it), ``y`` (N,) integer labels
        in ``0 .. num_classes - 1``.
    mode : {'numpy', 'torch', 'tensorflow'}
        Where the model came from, as the course notebook passes it.  A loaded model is an
        ece662 model whatever file it was read from, so every mode evaluates the same way;
        the argument is checked so that a typo is not silently ignored.
    batch_size : int
    verbose : bool
        Print the accuracy.

    Returns
    -------
    float
        The fraction of correctly classified images.

    Warns
    -----
    NearChanceWarning
        An unpruned model scores below twice chance (0.2 for 10 classes): its input scaling,
        architecture or weights are probably wrong (see :func:`near_chance_message`).

    Raises
    ------
    ValueError
        An unknown mode, no images, or labels that cannot be compared with predictions
        (not integers, negative, NaN, out of the model's class range, or a length that is not X's).
    """
    _check_mode(mode, "test_model")
    if not isinstance(test_data, (list, tuple)) or len(test_data) != 2:
        raise ValueError("test_model: expected test_data = [X, y] (a list or tuple of two), got "
                         f"{type(test_data).__name__}")
    X, y = test_data
    y = _check_labels(y, len(X))
    if len(y) == 0:
        raise ValueError("test_model: test_data holds no images, so there is no accuracy to compute")
    logits = predict_logits(model, X, batch_size)
    if y.max() >= logits.shape[1]:
        raise ValueError(f"test_model: label {int(y.max())} (at index {int(np.argmax(y))}) is out of "
                         f"range: the model has {logits.shape[1]} classes (0 .. {logits.shape[1] - 1})")
    acc = float(np.mean(logits.argmax(axis=1) == y))
    if verbose:
        print(f"Test Acc: {acc:.4f}")
    # a pruned model may be near chance because of its pruning; an unpruned one should not be
    message = None if _is_pruned(model) else near_chance_message(acc, logits.shape[1], len(y))
    if message:
        warnings.warn(message, NearChanceWarning, stacklevel=2)
    return acc


test_model.__test__ = False  # not a pytest test, whatever its name says
