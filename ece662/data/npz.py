"""CINIC-10 splits from an ``.npz`` archive, every header checked before its data is read."""
import os
import re

import numpy as np

from ece662.data.find import permission_denied
from ece662.data.images import CLASSES
from ece662.safezip import ZipReader

ORIGINS = ("cifar10", "imagenet", "unknown")


def origin_of(filename):
    """'cifar10' for ``cifar10-*.png``, 'imagenet' for ``nXXXXXXXX_*.png``, else 'unknown'.

    Examples
    --------
    >>> origin_of("cifar10-train-123.png"), origin_of("n02690373_3435.png"), origin_of("x.png")
    ('cifar10', 'imagenet', 'unknown')
    """
    if filename.startswith("cifar10-"):
        return "cifar10"
    if re.match(r"n\d{8}_\d+\.png$", filename):
        return "imagenet"
    return "unknown"



def read_npz(path, splits=("train", "val", "test")):
    """Read ``X_<split>, y_<split>`` from an .npz, checked before and after reading.

    Each array's ``.npy`` header is checked before its data is read (shape, dtype, and
    that the archive really holds that many bytes), so a small hostile file cannot make
    the process allocate gigabytes.  Accepted values:

    - ``X_<split>``: ``(N, 32, 32, 3)`` RGB pixels, either an integer type with values
      0..255 (uint8 is kept as is) or float with values in [0, 1] (turned into uint8 as
      ``round(255 * x)``).
    - ``y_<split>``: ``(N,)`` integer class indices 0..9 (float labels are refused).
    - ``origin_<split>`` (optional): ``(N,)`` strings among 'cifar10', 'imagenet', 'unknown'.

    Returns
    -------
    dict
        ``{split: (X uint8 (N, 32, 32, 3), y int64 (N,), origin <U8 (N,))}``

    Raises
    ------
    ValueError
        Naming the file and the key: a missing key, an object array, a truncated or
        corrupt archive, wrong shapes, dtypes or values.
    PermissionError
        When the file cannot be read; says "permission denied" and the path.
    """
    try:
        z = ZipReader(path)
    except PermissionError:
        raise permission_denied(path, "reading") from None
    except Exception as e:
        if _starts_with(path, b"\x93NUMPY"):
            raise ValueError(f"{path}: holds a single array (.npy), not an .npz archive with X_train, y_train, "
                             f"X_val, y_val, X_test, y_test; write one with np.savez") from None
        raise ValueError(f"{path}: not a readable .npz archive ({type(e).__name__}: {e})") from None
    out = {}
    with z:
        files = [n[:-len(".npy")] if n.endswith(".npy") else n for n in z.namelist()]   # refuses a name twice
        for split in splits:
            for key in (f"X_{split}", f"y_{split}"):
                if key not in files:
                    raise ValueError(f"{path}: missing array {key!r}; the archive holds {sorted(files)}, "
                                     f"expected X_train, y_train, X_val, y_val, X_test, y_test")
            X = _check_images(_npz_array(z, path, f"X_{split}"), f"{path}: X_{split}")
            y = _check_labels(_npz_array(z, path, f"y_{split}"), len(X), f"{path}: y_{split}")
            if f"origin_{split}" in files:
                origin = _check_origin(_npz_array(z, path, f"origin_{split}"), len(X), f"{path}: origin_{split}")
            else:
                origin = np.full(len(y), "cifar10" if "cifar10" in os.path.basename(path) else "unknown", "<U8")
            if len(y) == 0:
                raise ValueError(f"{path}: X_{split}, y_{split}: the split is empty")
            out[split] = (X, y, origin)
    return out


def _starts_with(path, magic):
    """Whether the file at ``path`` begins with the bytes ``magic`` (for a message only: False if unreadable)."""
    try:
        with open(path, "rb") as f:
            return f.read(len(magic)) == magic
    except OSError:
        return False


# The largest array read from an .npz: CINIC-10's 90,000-image train split is 0.28 GB as uint8
# and 1.1 GB as float32, so anything above this is a hostile or mistaken header, refused before
# it is allocated.  Photos deflate by 2x at best; a big member deflated by more than
# _MAX_DEFLATE_RATIO is a "zip bomb" (a few MB on disk, gigabytes once read).
_MAX_ARRAY_BYTES = 4 << 30
_MAX_HEADER_BYTES = 1 << 16          # numpy writes .npy headers of a few hundred bytes
_MAX_DEFLATE_RATIO = 100


def _npz_array(z, path, key):
    """The array ``key`` of the open archive ``z`` (an ``ece662.safezip.ZipReader``), after checking its
    .npy header against what the archive really holds.  The member is read through ``safezip``, so it
    never yields more bytes than it declares (bzip2 and lzma members are refused)."""
    where = f"{path}: {key}"
    info = z.getinfo(key + ".npy" if key + ".npy" in z.namelist() else key)
    max_bytes = _MAX_ARRAY_BYTES + _MAX_HEADER_BYTES
    try:
        with z.open(info, max_bytes) as f:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
            elif version == (2, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
            else:
                raise ValueError(f".npy format version {version} is not supported (expected 1.0 or 2.0)")
            header_bytes = f.tell()
    except PermissionError:
        raise permission_denied(path, "reading") from None
    except Exception as e:
        if isinstance(e, ValueError) and str(e).startswith(path):     # safezip's refusals name file and member
            raise
        raise ValueError(f"{where}: unreadable array header ({type(e).__name__}: {e}); the archive "
                         f"is corrupt or was not written by np.savez") from None
    if dtype.hasobject:
        raise ValueError(f"{where}: an object array (it would need pickle, which is never loaded); "
                         f"store numbers and strings as plain numpy arrays")
    nbytes = int(np.prod(shape, dtype=np.float64)) * dtype.itemsize
    if nbytes > _MAX_ARRAY_BYTES:
        raise ValueError(f"{where}: declares shape {shape} of {dtype} ({nbytes / 2 ** 30:.1f} GB), more than "
                         f"the {_MAX_ARRAY_BYTES >> 30} GB any CINIC-10 split needs")
    if nbytes > 64 << 20 and nbytes > _MAX_DEFLATE_RATIO * info.compress_size:
        raise ValueError(f"{where}: {nbytes / 2 ** 20:.0f} MB of {dtype} deflated into "
                         f"{info.compress_size / 2 ** 20:.1f} MB, far more than images compress: refused "
                         f"as a compression bomb")
    if header_bytes + nbytes != info.file_size:
        only = "only " if header_bytes + nbytes > info.file_size else ""
        raise ValueError(f"{where}: declares shape {shape} of {dtype} ({nbytes} bytes) but the archive "
                         f"holds {only}{info.file_size - header_bytes} bytes for it; the file is truncated "
                         f"or corrupt")
    try:
        with z.open(info, max_bytes) as f:
            return np.lib.format.read_array(f, allow_pickle=False)
    except PermissionError:
        raise permission_denied(path, "reading") from None
    except Exception as e:
        if isinstance(e, ValueError) and str(e).startswith(path):
            raise
        raise ValueError(f"{where}: cannot read the array ({type(e).__name__}: {e}); the archive is "
                         f"corrupt or truncated") from None


def _check_images(X, where):
    """``(N, 32, 32, 3)`` pixels as uint8: integer 0..255 kept, float in [0, 1] rounded from 255 * x."""
    if X.ndim == 4 and X.shape[1:] == (3, 32, 32):
        raise ValueError(f"{where}: expected images of shape (N, 32, 32, 3), got {X.shape} (channels "
                         f"first); save X.transpose(0, 2, 3, 1)")
    if X.ndim != 4 or X.shape[1:] != (32, 32, 3):
        raise ValueError(f"{where}: expected images of shape (N, 32, 32, 3), got {X.shape}")
    if X.dtype == np.uint8:
        return X
    if X.dtype.kind in "iu":
        if X.size and (X.min() < 0 or X.max() > 255):
            raise ValueError(f"{where}: {X.dtype} pixels must lie in 0..255, found {X.min()}..{X.max()}")
        return X.astype(np.uint8)
    if X.dtype.kind == "f":
        if not np.isfinite(X).all():
            raise ValueError(f"{where}: the images hold NaN or infinite values")
        if X.size and (X.min() < 0 or X.max() > 1):
            hint = ("; 0..255 pixel values belong in a uint8 array" if X.max() <= 255 and X.min() >= 0 else "")
            raise ValueError(f"{where}: float pixels must lie in [0, 1], found {X.min():.4g}..{X.max():.4g}"
                             f"{hint}")
        return np.rint(X * 255).astype(np.uint8)
    raise ValueError(f"{where}: expected uint8 images (or float in [0, 1]), got {X.dtype}")


def _check_labels(y, n, where):
    """``(n,)`` integer labels 0..9 as int64."""
    if y.ndim == 2 and y.shape == (n, len(CLASSES)):
        raise ValueError(f"{where}: expected {n} class indices of shape ({n},), got {y.shape} "
                         f"(one-hot?); save y.argmax(axis=1)")
    if y.ndim != 1 or len(y) != n:
        raise ValueError(f"{where}: expected {n} labels of shape ({n},) to match the images, got {y.shape}")
    if y.dtype.kind == "f":
        what = "with NaN or infinite values" if not np.isfinite(y).all() else "values"
        raise ValueError(f"{where}: labels must be integer class indices 0..{len(CLASSES) - 1}, got {y.dtype} "
                         f"{what}; if they are whole numbers, save y.astype(np.int64)")
    if y.dtype.kind not in "iu":
        raise ValueError(f"{where}: labels must be integer class indices 0..{len(CLASSES) - 1}, got {y.dtype}")
    bad = np.flatnonzero((y < 0) | (y >= len(CLASSES)))
    if len(bad):
        raise ValueError(f"{where}: label {int(y[bad[0]])} at index {int(bad[0])} is out of range "
                         f"0..{len(CLASSES) - 1} ({len(bad)} such labels)")
    return y.astype(np.int64)


def _check_origin(origin, n, where):
    if origin.dtype.kind not in "US" or origin.shape != (n,):
        raise ValueError(f"{where}: expected {n} strings of shape ({n},), got {origin.dtype} {origin.shape}")
    origin = origin.astype("<U8") if origin.dtype.kind == "U" else np.char.decode(origin, "ascii", "replace")
    odd = sorted(set(np.unique(origin)) - set(ORIGINS))
    if odd:
        raise ValueError(f"{where}: unknown origin {odd[0]!r}; expected one of {ORIGINS}")
    return origin.astype("<U8")
