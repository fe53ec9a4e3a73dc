"""The course-facing helpers: ``load_model`` and ``test_model``, at the import path the course uses.

``load_model`` is :func:`ece662.io.load_model` (ece662, PyTorch, Keras and ONNX files, and the shipped models by
name); ``test_model`` evaluates with :func:`ece662.training.evaluate.predict_logits` and prints the accuracy.

Course code uses them exactly as the assignment notebook does::

    from ece662.pruning_helper import test_model, load_model
    from ece662.data_utils import get_CINIC10_data
    data = get_CINIC10_data(); mode = 'torch'  # torch or tensorflow
    test_data = [data['X_test'], data['y_test']]
    path = os.path.join('ece662', 'models', f'{mode}.model')   # the course's file names
    model = load_model(path, mode=mode)         # a PyTorch state_dict (or Keras file), read without either
    test_model(model, test_data, mode=mode)     # prints "Test Acc: 0.7620"
"""
import warnings

import numpy as np

from ece662.io import check_mode, load_model
from ece662.models import shipped_model_path
from ece662.pruning import is_pruned
from ece662.training.evaluate import predict_logits

__all__ = ["NearChanceWarning", "load_model", "near_chance_message", "predict_logits", "shipped_model_path",
           "test_model"]


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


def test_model(model, test_data, mode="numpy", batch_size=1000, verbose=True):
    """Accuracy of ``model`` on ``test_data = [X, y]``; prints ``Test Acc: 0.xxxx``.

    Evaluation is deterministic: the same model and data always give the same number.

    Parameters
    ----------
    model : ece662.layers.Sequential
    test_data : (X, y)
        ``X`` (N, 3, 32, 32) float32 (or an array-like of it), ``y`` (N,) integer labels
        in ``0 .. num_classes - 1``.
    mode : {'numpy', 'torch', 'tensorflow', 'onnx'}
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
    check_mode(mode, "test_model")
    if not isinstance(test_data, (list, tuple)) or len(test_data) != 2:
        raise ValueError("test_model: expected test_data = [X, y] (a list or tuple of two), got "
                         f"{type(test_data).__name__}")
    X, y = test_data
    y = _check_labels(y, len(X))
    if len(y) == 0:
        raise ValueError("test_model: test_data holds no images, so there is no accuracy to compute")
    logits = predict_logits(model, X, batch_size, caller="test_model")
    if y.max() >= logits.shape[1]:
        raise ValueError(f"test_model: label {int(y.max())} (at index {int(np.argmax(y))}) is out of "
                         f"range: the model has {logits.shape[1]} classes (0 .. {logits.shape[1] - 1})")
    acc = float(np.mean(logits.argmax(axis=1) == y))
    if verbose:
        print(f"Test Acc: {acc:.4f}")
    # a pruned model may be near chance because of its pruning; an unpruned one should not be
    message = None if is_pruned(model) else near_chance_message(acc, logits.shape[1], len(y))
    if message:
        warnings.warn(message, NearChanceWarning, stacklevel=2)
    return acc


test_model.__test__ = False  # not a pytest test, whatever its name says
