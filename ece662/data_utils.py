"""CINIC-10 data: ``get_CINIC10_data()``, as the course notebook calls it.

Where the data is found (first hit wins):

1. the ``path`` argument,
2. the environment variable ``ECE662_DATA``,
3. ``datasets/`` in the repository (where ``datasets/get_datasets.sh`` puts it),
4. ``../shared/datasets`` beside the repository (the course machines' real data),
5. the same two places relative to the working directory (for a non-editable install).

``path`` may be a CINIC-10 folder (``train/ valid/ test/``, ten class folders of
32x32 PNGs each, as its authors ship it), an ``.npz`` archive with ``X_train, y_train,
X_val, y_val, X_test, y_test`` (uint8 NHWC images or float in [0, 1], integer labels
0..9; see :func:`read_npz`), or a folder holding
one of these: ``cinic-10/`` (or ``CINIC-10/``), then ``cinic10.npz``, then
``cifar10_real.npz`` (the CIFAR-10 part of CINIC-10 shipped with the course machines).

Images stay uint8 NHWC in memory (or memory-mapped from a cache); with the
defaults every ``X_*`` is a :class:`NormalizedImages`, an array-like that turns a
slice into normalised float32 NCHW only when it is used, so the 90,000-image test
split never sits in memory as 1.1 GB of float32.

This module is the course's import path, kept thin: the work lives in :mod:`ece662.data`
(``images`` the classes and the normalisation, ``find`` where the data is, ``npz`` and ``tree`` the
two readers with the PNG cache, ``download`` the official archive).
"""
import numpy as np

from ece662.data.find import SPLIT_FOLDERS, find_data
from ece662.data.images import (CLASSES, MEAN, SCALINGS, STD, NormalizedImages, check_scaling,
                                normalize_images)
from ece662.data.npz import ORIGINS, origin_of, read_npz
from ece662.data.tree import read_tree

__all__ = ["CLASSES", "MEAN", "ORIGINS", "SCALINGS", "SPLIT_FOLDERS", "STD", "NormalizedImages", "check_scaling",
           "find_data", "get_CINIC10_data", "normalize_images", "origin_of", "read_npz", "read_tree"]


def _balanced_subset(y, n, rng):
    """Indices of ``n`` images, as equal a share per class as the data allows, in data order."""
    if n is None or n >= len(y):
        return None
    classes = np.unique(y)
    per = np.full(len(classes), n // len(classes))
    per[: n % len(classes)] += 1
    picked = []
    for c, k in zip(classes, per):
        idx = np.flatnonzero(y == c)
        picked.append(rng.choice(idx, size=min(k, len(idx)), replace=False))
    return np.sort(np.concatenate(picked))


def get_CINIC10_data(path=None, splits=("train", "val", "test"), num_training=None,
                     num_validation=None, num_test=None, normalize=True, channels_first=True,
                     dtype=np.float32, lazy=True, seed=0, on_bad_image="raise", progress=True,
                     verify=False):
    """Load CINIC-10 (or its CIFAR-10 part) for the course notebook.

    Parameters
    ----------
    path : str, optional
        A CINIC-10 folder, an .npz archive, or a folder holding one (see the module
        docstring for where it looks when ``path`` is None).
    splits : sequence of {'train', 'val', 'test'}
    num_training, num_validation, num_test : int, optional
        Take a seeded, class-balanced subset of that many images.
    normalize : {True, 'cinic', 'unit', 'none', False}
        The scaling the model was trained with, to float32: ``True`` or ``'cinic'`` CINIC-10
        mean/std (ece662's models), ``'unit'`` pixels / 255 in [0, 1], ``'none'`` raw 0 .. 255
        floats (see :data:`SCALINGS`).  ``False``: the raw uint8 images, unconverted.
    channels_first : bool
        NCHW (ready for ece662 models) rather than NHWC.
    lazy : bool
        Unless ``normalize=False``: ``X_*`` are :class:`NormalizedImages` that convert per slice.
        ``False`` gives plain float arrays (the whole split in memory).
    seed : int
        For the subsets.
    on_bad_image : {'raise', 'skip'}
        For PNG folders: fail on a bad image, or skip it with a warning.
    progress : bool
        For PNG folders: a progress bar while decoding.
    verify : bool
        For PNG folders: re-hash every PNG and the cached arrays instead of trusting file
        sizes and times (a full read of the data, no decoding; see :func:`read_tree`).

    Returns
    -------
    dict
        ``X_train, y_train, X_val, y_val, X_test, y_test`` (for the splits asked for),
        ``origin_<split>`` ('cifar10' / 'imagenet' / 'unknown' per image),
        ``class_names`` and ``source`` (the file or folder read).

    Examples
    --------
    >>> import os, tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "tiny.npz")
    >>> np.savez(path, X_test=np.zeros((20, 32, 32, 3), np.uint8), y_test=np.arange(20) % 10)
    >>> data = get_CINIC10_data(path, splits=("test",), num_test=10)
    >>> data["X_test"].shape, sorted(data["y_test"].tolist())   # one image per class
    ((10, 3, 32, 32), [0, 1, 2, 3, 4, 5, 6, 7, 8, 9])
    """
    splits = tuple(splits)
    raw = isinstance(normalize, (bool, np.bool_)) and not normalize     # normalize=False: uint8 as stored
    scaling = None if raw else check_scaling(normalize)
    for s in splits:
        if s not in SPLIT_FOLDERS:
            raise ValueError(f"unknown split {s!r}; expected some of {tuple(SPLIT_FOLDERS)}")
    for name, n in (("num_training", num_training), ("num_validation", num_validation),
                    ("num_test", num_test)):
        if n is not None and (not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 1):
            raise ValueError(f"{name} must be a positive int or None, got {n!r}")
    kind, location = find_data(path)
    parts = (read_tree(location, splits, on_bad_image, progress, verify) if kind == "tree"
             else read_npz(location, splits))
    rng = np.random.default_rng(seed)
    sizes = {"train": num_training, "val": num_validation, "test": num_test}
    data = {"class_names": list(CLASSES), "source": location}
    for split in splits:
        X, y, origin = parts[split]
        idx = _balanced_subset(y, sizes[split], rng)
        if idx is not None:
            X, y, origin = X[idx], y[idx], origin[idx]
        if scaling is not None:
            X = NormalizedImages(X, channels_first, dtype, scaling) if lazy else \
                normalize_images(X, channels_first, scaling).astype(dtype, copy=False)
        elif channels_first:
            X = X.transpose(0, 3, 1, 2)
        data[f"X_{split}"], data[f"y_{split}"], data[f"origin_{split}"] = X, y, origin
    return data
