"""Small named input checks that raise errors a student can act on.

Each says what was expected, what arrived, and how to fix it.  ``where``
names the caller (a layer such as ``"conv1 (Conv2d)"`` or a function) so the
message points at the right line of a model.
"""
import numpy as np

from ece662.layers.kernels import count_nonfinite


def check_array(x, name, where):
    """Require a numpy array; return it."""
    if not isinstance(x, np.ndarray):
        raise TypeError(
            f"{where}: expected {name} to be a numpy.ndarray, got {type(x).__name__}; "
            f"convert it with np.asarray({name}, dtype=np.float32)"
        )
    return x


def check_float32(x, name, where):
    """Require a float32 array (the only dtype the kernels take); return it contiguous."""
    check_array(x, name, where)
    if x.dtype != np.float32:
        if np.issubdtype(x.dtype, np.integer) or x.dtype == np.bool_:
            hint = ("integer images must be normalised first, e.g. with "
                    "ece662.data_utils.normalize_images(images)" if x.dtype == np.uint8 else
                    f"use {name}.astype(np.float32)")
        else:
            hint = f"use {name}.astype(np.float32)"
        raise TypeError(f"{where}: expected {name} of dtype float32, got {x.dtype}; {hint}")
    return np.ascontiguousarray(x)


def check_finite(x, name, where):
    """Reject NaN and infinity, which would silently poison every later layer."""
    if x.dtype == np.float32:
        bad = int(count_nonfinite(np.ascontiguousarray(x).reshape(-1)))
    else:
        bad = int(np.size(x) - np.count_nonzero(np.isfinite(x)))
    if bad:
        raise ValueError(
            f"{where}: {name} holds {bad} NaN or infinite value(s) out of {x.size}; "
            f"check the data loading and normalisation (np.isfinite({name}).all() should be True)"
        )


def check_nchw(x, where, channels=None):
    """Require a (N, C, H, W) batch, optionally with ``channels`` channels.

    A batch that looks like NHWC (last axis equal to ``channels``) gets a
    transpose hint; a single image gets a hint to add the batch axis.
    """
    if x.ndim != 4:
        hint = ("add the batch axis with x[None]" if x.ndim == 3 else
                "reshape it to (N, C, H, W)")
        raise ValueError(f"{where}: expected x of shape (N, C, H, W), got {x.shape} "
                         f"({x.ndim}-D); {hint}")
    if channels is not None and x.shape[1] != channels:
        if x.shape[3] == channels:
            raise ValueError(
                f"{where}: expected x of shape (N, {channels}, H, W), got {x.shape}, which looks "
                f"like NHWC images; use x.transpose(0, 3, 1, 2) to make them NCHW")
        hint = (f"; for grayscale images repeat the channel: x.repeat({channels}, axis=1)"
                if x.shape[1] == 1 else "")
        raise ValueError(f"{where}: expected x with {channels} channels, shape "
                         f"(N, {channels}, H, W), got {x.shape} ({x.shape[1]} channels){hint}")


def check_positive_int(v, name, where):
    """Require an int >= 1 (bools are refused); the one such check of the package."""
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)) or v < 1:
        raise ValueError(f"{where}: {name} must be a positive whole number, got {v!r}")
    return int(v)


def check_nonnegative_int(v, name, where):
    """Require an int >= 0 (bools are refused)."""
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)) or v < 0:
        raise ValueError(f"{where}: expected {name} to be a non-negative int, got {v!r}")
    return int(v)


def check_same_shape(a, b, name_a, name_b, where):
    """Require two arrays of one shape (e.g. an upstream gradient and the forward output)."""
    if a.shape != b.shape:
        raise ValueError(f"{where}: expected {name_a} of shape {b.shape} (the shape of "
                         f"{name_b}), got {a.shape}")
