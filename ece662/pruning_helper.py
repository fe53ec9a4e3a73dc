"""The course-facing helpers: ``load_model`` and ``test_model``.

Course code uses them exactly as the assignment notebook does::

    from ece662.pruning_helper import test_model, load_model
    from ece662.data_utils import get_CINIC10_data
    data = get_CINIC10_data()
    model = load_model(path, mode='torch')      # a PyTorch state_dict, read without torch
    test_model(model, [data['X_test'], data['y_test']])   # prints "Test Acc: 0.7231"
"""
import os

import numpy as np

from ece662 import io as _io

_MODES = ("numpy", "torch", "tensorflow")


def load_model(path=None, mode="numpy", model=None):
    """Load a model file.

    Parameters
    ----------
    path : str or os.PathLike, optional
        The file.  ``None`` loads the pretrained model that ships with ece662
        (``ece662/models/default_convnet.npz``).
    mode : {'numpy', 'torch'}
        ``'numpy'``: ece662's own ``.npz`` format (``ece662.io.save_model``).
        ``'torch'``: a PyTorch ``state_dict`` written by ``torch.save`` (zip format),
        read without importing torch and without unpickling arbitrary objects.
        ``'tensorflow'``: a Keras model file (``.keras`` or ``.h5``), read with h5py
        (``pip install h5py``) without Keras; NHWC layouts are converted.
    model : ece662.layers.Sequential, optional
        For ``mode='torch'`` / ``'tensorflow'``: the architecture to load into, when it is not
        the course's default network.  Its keys and shapes must match the file's.

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
    if mode not in _MODES:
        raise ValueError(f"load_model: unknown mode {mode!r}; expected one of {_MODES}")
    if path is None:
        path = shipped_model_path()
        if not os.path.isfile(path):
            raise FileNotFoundError(f"load_model: the shipped pretrained model {path} is missing; "
                                    f"reinstall ece662 or pass a path")
        mode = "numpy"
    if mode == "numpy":
        if model is not None:
            raise ValueError("load_model: model= is only used with mode='torch' or 'tensorflow'; "
                             "ece662 files carry their own architecture")
        return _io.load_model(path)
    if mode == "tensorflow":
        return _io.model_from_keras(path, model=model)
    return _io.model_from_state_dict(_io.read_torch_state_dict(path), model=model, source=os.fspath(path))


def shipped_model_path():
    """Where the pretrained weights that ship with ece662 live."""
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "models", "default_convnet.npz")


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
        Anything with ``len`` and slicing (e.g. ``data['X_test']``).

    Returns
    -------
    ndarray, (N, num_classes) float32
    """
    if not isinstance(batch_size, (int, np.integer)) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"predict_logits: expected batch_size to be a positive int, got {batch_size!r}")
    was_training = model.training
    model.eval()
    try:
        chunks = [model(_to_float_batch(X, slice(s, s + batch_size)))
                  for s in range(0, len(X), batch_size)]
    finally:
        model.train(was_training)
    if not chunks:
        raise ValueError("predict_logits: X holds no images")
    return np.concatenate(chunks)


def test_model(model, test_data, batch_size=1000, verbose=True):
    """Accuracy of ``model`` on ``test_data = [X, y]``; prints ``Test Acc: 0.xxxx``.

    Evaluation is deterministic: the same model and data always give the same number.

    Parameters
    ----------
    model : ece662.layers.Sequential
    test_data : (X, y)
        ``X`` (N, 3, 32, 32) float32 (or an array-like of it), ``y`` (N,) integer labels.
    batch_size : int
    verbose : bool
        Print the accuracy.

    Returns
    -------
    float
        The fraction of correctly classified images.
    """
    if not isinstance(test_data, (list, tuple)) or len(test_data) != 2:
        raise ValueError("test_model: expected test_data = [X, y] (a list or tuple of two), got "
                         f"{type(test_data).__name__}")
    X, y = test_data
    y = np.asarray(y)
    if y.ndim != 1 or len(y) != len(X):
        raise ValueError(f"test_model: expected y of shape ({len(X)},) to match X, got {y.shape}")
    pred = predict_logits(model, X, batch_size).argmax(axis=1)
    acc = float(np.mean(pred == y))
    if verbose:
        print(f"Test Acc: {acc:.4f}")
    return acc


test_model.__test__ = False  # not a pytest test, whatever its name says
