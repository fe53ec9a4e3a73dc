"""Evaluation: a model's logits over a whole image set, batch by batch, in eval mode.

Below the trainer (which checks validation accuracy each epoch) and below the course's ``test_model``
(which prints ``Test Acc``), so that both use one implementation.
"""
import numpy as np

from ece662.layers import Module
from ece662.layers.checks import check_positive_int


def check_model(model, caller):
    """A TypeError that names the fix when ``model`` is not an ece662 model (a torch module, say)."""
    if not isinstance(model, Module):
        raise TypeError(f"{caller}: expected an ece662 model (ece662.layers.Sequential), got "
                        f"{type(model).__module__}.{type(model).__name__}; read a torch or Keras file "
                        f"into one with load_model(path, mode='torch') or mode='tensorflow'")


def float_batch(X, sl, caller="predict_logits"):
    """``X[sl]`` as a float32 array (the images of a ``NormalizedImages`` are converted here, one batch at a time)."""
    batch = np.asarray(X[sl])
    if batch.dtype != np.float32:
        if batch.dtype == np.uint8:
            raise TypeError(f"{caller}: expected normalised float32 images of shape (N, 3, 32, 32), "
                            f"got uint8 images of shape {batch.shape}; load them with "
                            f"get_CINIC10_data() (normalize=True, channels_first=True)")
        batch = batch.astype(np.float32)
    return batch


def predict_logits(model, X, batch_size=1000, caller="predict_logits"):
    """Logits for every image of ``X``, computed in eval mode, ``batch_size`` at a time.

    Parameters
    ----------
    X : ndarray or array-like, (N, C, H, W) float32
        Anything with ``len`` and slicing (e.g. ``data['X_test']``).  ``N = 0`` gives an
        empty ``(0, num_classes)`` result.

    Returns
    -------
    ndarray, (N, num_classes) float32
        The model is left in the mode (train or eval) it was in.

    Examples
    --------
    >>> from ece662.models import default_convnet
    >>> predict_logits(default_convnet(seed=0), np.zeros((3, 3, 32, 32), np.float32), batch_size=2).shape
    (3, 10)
    """
    check_positive_int(batch_size, "batch_size", caller)
    check_model(model, caller)
    if len(X) == 0:
        # no images: the answer is an empty (0, num_classes), whose width the layers' shapes give
        empty = float_batch(X, slice(0, 0), caller)
        return np.zeros((0,) + tuple(model.output_shape(empty.shape)[1:]), dtype=np.float32)
    was_training = model.training
    model.eval()
    try:
        chunks = [model(float_batch(X, slice(s, s + batch_size), caller))
                  for s in range(0, len(X), batch_size)]
    finally:
        model.train(was_training)
    return np.concatenate(chunks)
