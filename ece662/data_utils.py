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

The PNG cache
-------------
The first load of a PNG folder decodes every image once (with a progress bar) into
uint8 ``.npy`` files in ``$ECE662_CACHE`` (default ``~/.cache/ece662``; never inside the
data folder, which may be shared and read-only); later loads memory-map them.  The
cache must never serve other pixels than the PNGs hold, never be seen half-built, and
never fail for good:

- **Key.** Each split's entry is the folder ``<split>-<key>``, where the key hashes the
  cache version, the class order and, per file, its relative path, size, mtime_ns and
  inode: one ``os.scandir`` and one ``stat`` per file, no reads.  An image replaced in
  place, added, removed or renamed gives another key, hence a rebuild.  A file modified
  less than 2 s before the build read it could change again within one timestamp tick
  keeping size and mtime, so its bytes' SHA-256 goes in the manifest and is re-checked
  on every hit (git's rule for "racily clean" files).  The manifest
  lists the files left out by ``on_bad_image='skip'``: a strict load refuses such an
  entry (raising the recorded error), a skipping load reuses a strict one (same arrays).
  ``verify=True`` also re-hashes every PNG's bytes and the cached arrays (SHA-256),
  for file systems whose times cannot be trusted.
- **Lock and atomic publish.** A missing entry is built while holding the split's
  file lock (``<split>.lock``, with ``filelock``), in a private ``.tmp-<split>-*``
  folder: arrays first, ``manifest.json`` last, then one ``os.replace`` of the folder
  publishes it.  Readers take no lock: they see a whole entry or none.  Processes that
  find no entry wait for the lock and then use what the first one built.  A killed
  builder's temp folder is removed by the next builder (who holds the lock, so it is
  nobody's), with entries of older keys.
- **Self-repair.** Every hit checks the manifest (valid JSON, this key and version) and
  the arrays (whole files, shapes, dtypes, labels 0..9); a damaged entry is reported
  with a warning naming its path and rebuilt.  A cache folder that cannot be written
  (read-only, ``ECE662_CACHE`` under a file, disk full) gives a warning and the images
  are decoded in memory instead.
"""
import errno
import hashlib
import io
import json
import operator
import os
import re
import stat
import sys
import tempfile
import time
import uuid
import warnings
from typing import NamedTuple

import numpy as np

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
# CINIC-10 normalisation, from its authors
MEAN = np.array([0.47889522, 0.47227842, 0.43047404], dtype=np.float32)
STD = np.array([0.24205776, 0.23828046, 0.25874835], dtype=np.float32)
# our split names -> the CINIC-10 folder names
SPLIT_FOLDERS = {"train": "train", "val": "valid", "test": "test"}
ORIGINS = ("cifar10", "imagenet", "unknown")
_CACHE_VERSION = 2        # bump whenever decoding changes what the cache holds

_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ============================================================================ normalisation
# the input scalings a model may have been trained with; a pixel p in 0 .. 255 becomes
SCALINGS = {"cinic": "(p / 255 - MEAN) / STD per channel, CINIC-10's mean and std (ece662's models)",
            "unit": "p / 255, in [0, 1] (e.g. torchvision's ToTensor() without Normalize)",
            "none": "p itself as a float, in [0, 255]"}


def check_scaling(normalize, caller="get_CINIC10_data"):
    """The name of a scaling in :data:`SCALINGS`; ``True`` is ``'cinic'`` (the course's default).

    Raises
    ------
    ValueError
        Anything else, with the names to choose from.
    """
    if isinstance(normalize, (bool, np.bool_)) and normalize:
        return "cinic"
    if isinstance(normalize, str) and normalize in SCALINGS:
        return normalize
    raise ValueError(f"{caller}: expected normalize to be one of {sorted(SCALINGS)} (or True for 'cinic'), "
                     f"got {normalize!r}; it names the input scaling the model was trained with: "
                     + "; ".join(f"{k}: {v}" for k, v in SCALINGS.items()))


def normalize_images(images, channels_first=True, normalize="cinic"):
    """uint8 images ``(N, H, W, 3)`` -> float32 ``(N, 3, H, W)``, scaled as the model was trained.

    ``normalize`` names the scaling (:data:`SCALINGS`): ``'cinic'`` CINIC-10 mean/std (the
    default, what ece662's models expect), ``'unit'`` pixels / 255 in [0, 1], ``'none'`` raw
    0 .. 255 floats.  A model trained on one scaling scores near chance on another.

    Examples
    --------
    >>> x = np.full((1, 2, 2, 3), 255, dtype=np.uint8)
    >>> normalize_images(x).shape
    (1, 3, 2, 2)
    >>> float(normalize_images(x)[0, 0, 0, 0])  # (1 - 0.4789) / 0.2421
    2.152...
    >>> [float(normalize_images(x, normalize=s)[0, 0, 0, 0]) for s in ("unit", "none")]
    [1.0, 255.0]
    """
    x = np.asarray(images, dtype=np.float32)
    scaling = check_scaling(normalize, "normalize_images")
    if scaling == "cinic":
        x = (x / np.float32(255.0) - MEAN) / STD
    elif scaling == "unit":
        x = x / np.float32(255.0)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2)) if channels_first else x


class NormalizedImages:
    """uint8 NHWC images that look like a normalised float32 array.

    ``len``, ``shape``, ``dtype``, indexing (int, slice, index array) and ``np.asarray``
    work; only the part you index is converted, with :func:`normalize_images` and the
    scaling ``normalize`` names (default ``'cinic'``).

    Examples
    --------
    >>> imgs = NormalizedImages(np.zeros((5, 32, 32, 3), dtype=np.uint8))
    >>> imgs.shape, imgs.dtype, len(imgs)
    ((5, 3, 32, 32), dtype('float32'), 5)
    >>> imgs[1:3].shape
    (2, 3, 32, 32)
    """

    def __init__(self, raw, channels_first=True, dtype=np.float32, normalize="cinic"):
        self.raw = raw
        self.channels_first = channels_first
        self.dtype = np.dtype(dtype)
        self.normalize = check_scaling(normalize, "NormalizedImages")

    @property
    def shape(self):
        N, H, W, C = self.raw.shape
        return (N, C, H, W) if self.channels_first else (N, H, W, C)

    @property
    def ndim(self):
        return 4

    def __len__(self):
        return self.raw.shape[0]

    def __getitem__(self, idx):
        if isinstance(idx, (int, np.integer)):          # one image: (C, H, W)
            return self[[idx]][0]
        return normalize_images(self.raw[idx], self.channels_first, self.normalize).astype(self.dtype, copy=False)

    def __array__(self, dtype=None, copy=None):
        out = self[:]
        return out if dtype is None else out.astype(dtype)

    def __repr__(self):
        scaling = "" if self.normalize == "cinic" else f", normalize={self.normalize!r}"
        return f"NormalizedImages(shape={self.shape}, dtype={self.dtype}{scaling}, over uint8 {self.raw.shape})"


# ============================================================================ finding data
def _candidates(path):
    if path is not None:
        return [("the path argument", os.fspath(path))]
    found = []
    if os.environ.get("ECE662_DATA"):
        found.append(("$ECE662_DATA", os.environ["ECE662_DATA"]))
    found.append(("the repository's datasets/", os.path.join(_REPO_ROOT, "datasets")))
    found.append(("../shared/datasets beside the repository",
                  os.path.join(os.path.dirname(_REPO_ROOT), "shared", "datasets")))
    # the same two places seen from the working directory (for a non-editable install)
    for label, folder in (("datasets/ in the working directory", os.path.abspath("datasets")),
                          ("../shared/datasets from the working directory",
                           os.path.abspath(os.path.join("..", "shared", "datasets")))):
        if all(os.path.abspath(f) != folder for _, f in found):
            found.append((label, folder))
    return found


def _is_tree(folder):
    return all(os.path.isdir(os.path.join(folder, f)) for f in SPLIT_FOLDERS.values())


def _resolve(folder):
    """The data source inside ``folder``: ('tree', dir), ('npz', file) or None.

    A folder we may not look into is a PermissionError, never "no data found".
    """
    try:
        st = os.stat(folder)
        if stat.S_ISDIR(st.st_mode):
            os.listdir(folder)                  # may we look inside?
    except PermissionError:
        raise _permission_denied(folder, "opening") from None
    except OSError:                             # missing, or a path through a file
        return None
    if stat.S_ISREG(st.st_mode):
        return ("npz", folder)
    if not stat.S_ISDIR(st.st_mode):
        return None
    if _is_tree(folder):
        return ("tree", folder)
    for name in ("cinic-10", "CINIC-10"):
        if _is_tree(os.path.join(folder, name)):
            return ("tree", os.path.join(folder, name))
    for name in ("cinic10.npz", "cifar10_real.npz"):
        if os.path.isfile(os.path.join(folder, name)):
            return ("npz", os.path.join(folder, name))
    return None


def find_data(path=None):
    """Return ``(kind, location)`` of the data ``get_CINIC10_data`` would load.

    Raises
    ------
    FileNotFoundError
        Listing every place it looked and how to get the data.
    """
    looked = []
    for label, folder in _candidates(path):
        hit = _resolve(folder)
        if hit is not None:
            return hit
        looked.append(f"  {label}: {os.path.abspath(folder)}")
    raise FileNotFoundError(
        "no CINIC-10 data found. Looked in:\n" + "\n".join(looked) +
        "\nExpected a CINIC-10 folder (train/ valid/ test/ with ten class folders of PNGs), "
        "a folder holding cinic-10/, cinic10.npz or cifar10_real.npz, or an .npz archive with "
        "X_train, y_train, X_val, y_val, X_test, y_test. Get CINIC-10 with "
        "`bash datasets/get_datasets.sh` (or `python -m ece662.download`), or point ECE662_DATA "
        "(or path=) at data you have.")


# ============================================================================ readers
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


def _permission_denied(path, doing):
    """The PermissionError every reader raises: what could not be done, to what, and the fix."""
    return PermissionError(errno.EACCES, f"permission denied {doing} {path}; make it readable "
                           f"(e.g. chmod -R a+rX on the data folder) or point ECE662_DATA (or path=) at a "
                           f"copy you can read", path)


# ---------------------------------------------------------------------------- .npz archives
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
        z = np.load(path, allow_pickle=False)
    except PermissionError:
        raise _permission_denied(path, "reading") from None
    except Exception as e:
        raise ValueError(f"{path}: not a readable .npz archive ({type(e).__name__}: {e})") from None
    if not isinstance(z, np.lib.npyio.NpzFile):
        raise ValueError(f"{path}: holds a single array (.npy), not an .npz archive with X_train, y_train, "
                         f"X_val, y_val, X_test, y_test; write one with np.savez")
    out = {}
    with z:
        for split in splits:
            for key in (f"X_{split}", f"y_{split}"):
                if key not in z.files:
                    raise ValueError(f"{path}: missing array {key!r}; the archive holds {sorted(z.files)}, "
                                     f"expected X_train, y_train, X_val, y_val, X_test, y_test")
            X = _check_images(_npz_array(z, path, f"X_{split}"), f"{path}: X_{split}")
            y = _check_labels(_npz_array(z, path, f"y_{split}"), len(X), f"{path}: y_{split}")
            if f"origin_{split}" in z.files:
                origin = _check_origin(_npz_array(z, path, f"origin_{split}"), len(X), f"{path}: origin_{split}")
            else:
                origin = np.full(len(y), "cifar10" if "cifar10" in os.path.basename(path) else "unknown", "<U8")
            if len(y) == 0:
                raise ValueError(f"{path}: X_{split}, y_{split}: the split is empty")
            out[split] = (X, y, origin)
    return out


# The largest array read from an .npz: CINIC-10's 90,000-image train split is 0.28 GB as uint8
# and 1.1 GB as float32, so anything above this is a hostile or mistaken header, refused before
# it is allocated.  Photos deflate by 2x at best; a big member deflated by more than
# _MAX_DEFLATE_RATIO is a "zip bomb" (a few MB on disk, gigabytes once read).
_MAX_ARRAY_BYTES = 4 << 30
_MAX_DEFLATE_RATIO = 100


def _npz_array(z, path, key):
    """``z[key]``, after checking its .npy header against what the archive really holds."""
    where = f"{path}: {key}"
    try:
        info = z.zip.getinfo(key + ".npy")
        with z.zip.open(info) as f:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
            elif version == (2, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
            else:
                raise ValueError(f".npy format version {version} is not supported (expected 1.0 or 2.0)")
            header_bytes = f.tell()
    except PermissionError:
        raise _permission_denied(path, "reading") from None
    except Exception as e:
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
    if header_bytes + nbytes > info.file_size:
        raise ValueError(f"{where}: declares shape {shape} of {dtype} ({nbytes} bytes) but the archive "
                         f"holds only {info.file_size - header_bytes} bytes for it; the file is truncated "
                         f"or corrupt")
    try:
        return z[key]
    except PermissionError:
        raise _permission_denied(path, "reading") from None
    except Exception as e:
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


# ---------------------------------------------------------------------------- PNG trees
# A CINIC-10 PNG is about 2.5 KB; a file this big is not a 32x32 image and is never read whole.
_MAX_PNG_BYTES = 1 << 20


class _PngFile(NamedTuple):
    """One listed file and the stat fields that key the cache."""
    path: str          # as opened
    rel: str           # relative to the data root, e.g. 'test/cat/cifar10-test-7.png'
    label: int
    size: int
    mtime_ns: int
    inode: int
    problem: str       # why it cannot be an image (not a regular file, too big), or ''


def _list_tree_split(root, split):
    """Every ``*.png`` of one split in label then name order, with its stat, from ``os.scandir``.

    One ``stat`` per file and no reads: this is what a cache hit pays (about a second for
    270,000 files on a local disk).
    """
    folder = os.path.join(root, SPLIT_FOLDERS[split])
    files = []
    for label, cls in enumerate(CLASSES):
        cdir = os.path.join(folder, cls)
        try:
            is_dir = stat.S_ISDIR(os.stat(cdir).st_mode)
        except PermissionError:
            raise _permission_denied(cdir, "opening") from None
        except OSError:
            is_dir = False
        if not is_dir:
            raise ValueError(f"{folder}: class folder {cls!r} is missing; a CINIC-10 split has the "
                             f"ten folders {', '.join(CLASSES)}")
        prefix = f"{SPLIT_FOLDERS[split]}/{cls}/"
        try:
            with os.scandir(cdir) as it:
                entries = sorted((e for e in it if e.name.lower().endswith(".png")), key=_by_name)
            files.extend(_stat_png(e, prefix + e.name, label) for e in entries)
        except PermissionError as err:
            raise _permission_denied(err.filename or cdir, "listing or reading") from None
    if not files:
        raise ValueError(f"{folder}: the split holds no PNG images")
    return files


_by_name = operator.attrgetter("name")


def _stat_png(entry, rel, label):
    try:
        st = entry.stat()                       # follows a symlink to its target
    except FileNotFoundError:
        return _PngFile(entry.path, rel, label, -1, -1, -1, "a broken symbolic link")
    if not stat.S_ISREG(st.st_mode):
        return _PngFile(entry.path, rel, label, -1, -1, -1, "not a regular file")
    problem = (f"{st.st_size} bytes, too big for a 32x32 PNG" if st.st_size > _MAX_PNG_BYTES else "")
    return _PngFile(entry.path, rel, label, st.st_size, st.st_mtime_ns, st.st_ino, problem)


def _read_png_bytes(f):
    """``(bytes, '')`` of a listed file, or ``(None, why)`` when it cannot be an image."""
    if f.problem:
        return None, f.problem
    try:
        with open(f.path, "rb") as fh:
            return fh.read(_MAX_PNG_BYTES + 1), ""
    except PermissionError:
        raise _permission_denied(f.path, "reading") from None
    except OSError as e:                        # vanished or unreadable since it was listed
        return None, f"cannot read the file ({e.strerror})"


def _decode_png(data, path):
    """PNG bytes -> ``(32, 32, 3)`` uint8; size and mode are checked before any pixel is decoded."""
    from PIL import Image
    try:
        with Image.open(io.BytesIO(data), formats=["PNG"]) as im:
            if im.size != (32, 32):             # before load(): a PNG may claim 100000x100000
                raise ValueError(f"{path}: image is {im.size[0]}x{im.size[1]}, expected 32x32")
            if im.mode != "RGB":
                raise ValueError(f"{path}: image mode is {im.mode}, expected RGB")
            im.load()
            return np.asarray(im, dtype=np.uint8)
    except ValueError:
        raise
    except Exception as e:
        raise ValueError(f"{path}: cannot decode the PNG ({type(e).__name__}: {e}); "
                         f"the file is corrupt or truncated") from None


def _hash_file_into(h, f, data, why):
    """Feed one file's name and content (or why it has none) to the content hash ``h``."""
    h.update(os.fsencode(f.rel) + b"\0")
    h.update(b"B%d\0" % len(data) + data if data is not None else b"P" + why.encode() + b"\0")


def _decode_files(files, split, on_bad_image, progress):
    """Decode every listed PNG.

    Returns
    -------
    X : uint8 (N, 32, 32, 3)
    y : int64 (N,)
    origin : uint8 (N,), an index into ORIGINS
    skipped : list of [rel, message] for the files left out (only with on_bad_image='skip')
    png_sha256 : str, the hash of every file's name and bytes (see ``verify``)
    racy : dict {rel: sha256 of its bytes} for the files modified within ``_RACY_NS`` of this read
    """
    from tqdm.auto import tqdm
    X = np.empty((len(files), 32, 32, 3), dtype=np.uint8)
    keep = np.ones(len(files), dtype=bool)
    skipped = []
    h = hashlib.sha256()
    recent = time.time_ns() - _RACY_NS          # every read below happens after this instant
    racy = {}
    for i, f in enumerate(tqdm(files, desc=f"decoding {split}", unit="img", disable=not progress, leave=False)):
        data, why = _read_png_bytes(f)
        _hash_file_into(h, f, data, why)
        if f.mtime_ns >= recent:
            racy[f.rel] = _sha256_bytes(data)
        try:
            if data is None:
                raise ValueError(f"{f.path}: {why}")
            X[i] = _decode_png(data, f.path)
        except ValueError as e:
            if on_bad_image == "raise":
                raise
            keep[i] = False
            skipped.append([f.rel, str(e)])
    y = np.array([f.label for f in files], dtype=np.int64)
    origin = np.array([ORIGINS.index(origin_of(os.path.basename(f.rel))) for f in files], dtype=np.uint8)
    if not keep.all():
        X, y, origin = X[keep], y[keep], origin[keep]
    if len(y) == 0:
        raise ValueError(f"{split}: no readable images left")
    return X, y, origin, skipped, h.hexdigest(), racy


# A file modified this close to when the cache read it could be modified again within the same
# timestamp tick (1-4 ms on Linux, 2 s on FAT), keeping its size and mtime: its bytes are hashed
# into the manifest and re-checked on every hit.  The same rule as git's "racily clean" entries.
_RACY_NS = 2_000_000_000


def _sha256_bytes(data):
    return hashlib.sha256(data).hexdigest() if data is not None else ""


def _png_digest(files):
    """The content hash ``_decode_files`` records, re-read from disk (what ``verify=True`` costs)."""
    h = hashlib.sha256()
    for f in files:
        data, why = _read_png_bytes(f)
        _hash_file_into(h, f, data, why)
    return h.hexdigest()


# ---------------------------------------------------------------------------- the PNG cache
def _cache_dir(root):
    """``$ECE662_CACHE/<folder name>-<hash>``, default ``~/.cache/ece662/...``.

    The cache never goes inside the data folder: data folders may be shared and read-only.
    """
    base = os.environ.get("ECE662_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "ece662")
    digest = hashlib.sha1(os.path.abspath(root).encode("utf-8", "surrogateescape")).hexdigest()[:12]
    return os.path.join(os.path.abspath(base), f"{os.path.basename(os.path.abspath(root))}-{digest}")


def _tree_key(split, files):
    """SHA-256 of everything that decides a split's arrays, except the pixels themselves.

    The cache version (bumped whenever decoding changes), the class order, and per file its
    relative path, size, mtime_ns and inode (an image replaced in place, or renamed, changes the
    key).  ``on_bad_image`` is not part of it: the manifest lists the skipped files instead,
    and a strict load refuses an entry that skipped any.
    """
    lines = [f"ece662 PNG cache v{_CACHE_VERSION} {split} {','.join(CLASSES)} {_MAX_PNG_BYTES}"]
    lines += [f"{f.rel}\t{f.size}\t{f.mtime_ns}\t{f.inode}" for f in files]
    return hashlib.sha256("\n".join(lines).encode("utf-8", "surrogateescape")).hexdigest()


class _Unusable(Exception):
    """A published cache entry that must not be used (damaged, or stale on ``verify``); says why."""


_ENTRY_FILES = ("X.npy", "y.npy", "origin.npy")


def _sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def _open_entry(entry, key, files, verify):
    """The checked arrays of a published cache entry, or None when there is none.

    Returns
    -------
    (X uint8 (N, 32, 32, 3) memory-mapped, y int64 (N,), origin <U8 (N,), manifest dict) or None

    Raises
    ------
    _Unusable
        A damaged entry (unreadable or corrupt manifest, truncated arrays, wrong
        shapes/dtypes, labels out of range), or with ``verify`` one whose arrays or PNGs
        no longer hash to what the manifest recorded.
    """
    try:
        with open(os.path.join(entry, "manifest.json"), "rb") as fh:
            raw = fh.read()
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as e:
        raise _Unusable(f"its manifest cannot be read ({e.strerror})") from None
    try:
        m = json.loads(raw)
        n, skipped, sums = m["count"], m["skipped"], m["sha256"]
        ok = (m["version"] == _CACHE_VERSION and m["key"] == key and isinstance(n, int) and n > 0
              and isinstance(skipped, list)
              and all(isinstance(s, list) and len(s) == 2 and all(isinstance(t, str) for t in s) for s in skipped)
              and isinstance(sums, dict) and isinstance(m["png_sha256"], str) and isinstance(m["racy"], dict))
    except (ValueError, TypeError, KeyError) as e:     # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise _Unusable(f"its manifest is not valid ({type(e).__name__}: {e})") from None
    if not ok:
        raise _Unusable("its manifest does not describe this data")
    try:
        X = np.load(os.path.join(entry, "X.npy"), mmap_mode="r")
        y = np.load(os.path.join(entry, "y.npy"))
        origin = np.load(os.path.join(entry, "origin.npy"))
    except (OSError, ValueError, EOFError) as e:
        raise _Unusable(f"an array is missing, truncated or corrupt ({type(e).__name__}: {e})") from None
    for name, arr, shape, dtype in (("X.npy", X, (n, 32, 32, 3), np.uint8), ("y.npy", y, (n,), np.int64),
                                    ("origin.npy", origin, (n,), np.uint8)):
        if arr.shape != shape or arr.dtype != dtype:
            raise _Unusable(f"{name} holds {arr.dtype} {arr.shape}, expected {np.dtype(dtype)} {shape}")
    if y.min() < 0 or y.max() >= len(CLASSES) or origin.max() >= len(ORIGINS):
        raise _Unusable("its labels or origins are out of range")
    if m["racy"]:                               # files written just before the build: compare their bytes
        by_rel = {f.rel: f for f in files}
        for rel, digest in m["racy"].items():
            if rel not in by_rel or _sha256_bytes(_read_png_bytes(by_rel[rel])[0]) != digest:
                raise _Unusable(f"{rel} changed within its file system's timestamp resolution")
    if verify:
        for name in _ENTRY_FILES:
            if _sha256_file(os.path.join(entry, name)) != sums.get(name):
                raise _Unusable(f"{name} does not match the hash in its manifest")
        if _png_digest(files) != m["png_sha256"]:
            raise _Unusable("the PNG files changed since it was built (same sizes and times, other bytes)")
    return X, y, np.array(ORIGINS, dtype="<U8")[origin], m


def _write_entry(tmp, key, X, y, origin, skipped, png_sha256, racy):
    """Write the arrays, then the manifest last, into the private folder ``tmp``."""
    sums = {}
    for name, arr in zip(_ENTRY_FILES, (X, y, origin)):
        path = os.path.join(tmp, name)
        with open(path, "wb") as fh:
            np.save(fh, arr)
            fh.flush()
            os.fsync(fh.fileno())
        sums[name] = _sha256_file(path)
    manifest = {"version": _CACHE_VERSION, "key": key, "count": len(y), "skipped": skipped,
                "sha256": sums, "png_sha256": png_sha256, "racy": racy}
    with open(os.path.join(tmp, "manifest.json"), "w") as fh:
        json.dump(manifest, fh)
        fh.flush()
        os.fsync(fh.fileno())


def _why(e):
    return f"{e.strerror or e}: {e.filename}" if isinstance(e, OSError) and e.filename else str(e)


def _load_split(root, split, cache, on_bad_image, verify, progress):
    """One split of a PNG tree: from its cache entry, or decoded and published under the lock."""
    files = _list_tree_split(root, split)
    key = _tree_key(split, files)
    entry = os.path.join(cache, f"{split}-{key[:16]}")
    try:
        hit = _open_entry(entry, key, files, verify)
    except _Unusable as e:
        warnings.warn(f"the PNG cache {entry} cannot be used: {e}; rebuilding it")
        hit = None
    if hit is not None:
        return hit

    # No usable entry: build one under the split's lock, in a private temp folder, and publish it
    # with one rename.  A cache folder we cannot write falls back to decoding in memory.
    try:
        from filelock import FileLock, Timeout
    except ImportError:
        raise ImportError("building the PNG cache needs the filelock package: pip install filelock "
                          "(or pip install -e . again, which installs it)") from None
    try:
        os.makedirs(cache, exist_ok=True)
        lock = FileLock(os.path.join(cache, f"{split}.lock"))
        try:
            lock.acquire(timeout=0)
        except Timeout:
            if progress:
                print(f"waiting for another process to finish the cache {entry} ...", file=sys.stderr)
            lock.acquire()
    except OSError as e:
        return _in_memory(_decode_files(files, split, on_bad_image, progress), cache, e)
    try:
        try:                                    # another process may have built it while we waited
            hit = _open_entry(entry, key, files, verify)
        except _Unusable:
            hit = None
        return hit if hit is not None else _build_entry(cache, entry, split, key, files, on_bad_image, progress)
    finally:
        lock.release()


def _build_entry(cache, entry, split, key, files, on_bad_image, progress):
    """Holding the split's lock: decode into a private temp folder, then publish it with one rename."""
    import shutil
    _clean(cache, split)                        # dead builders' temp folders, entries of older keys
    try:
        tmp = tempfile.mkdtemp(prefix=f".tmp-{split}-", dir=cache)
    except OSError as e:
        return _in_memory(_decode_files(files, split, on_bad_image, progress), cache, e)
    try:
        decoded = _decode_files(files, split, on_bad_image, progress)    # bad data raises here
        try:
            _write_entry(tmp, key, *decoded)
            if os.path.lexists(entry):          # left by a failed clean-up: move it aside first
                os.replace(entry, os.path.join(cache, f".old-{split}-{uuid.uuid4().hex}"))
            os.replace(tmp, entry)
        except OSError as e:                    # disk full, folder made read-only meanwhile, ...
            return _in_memory(decoded, cache, e)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # nothing left once it is published
    return _open_entry(entry, key, files, verify=False) or _in_memory(decoded)


def _clean(cache, split):
    """Under the split's lock: remove every temp folder and entry of ``split`` (none is in use)."""
    import shutil
    for name in os.listdir(cache):
        if name.startswith((f".tmp-{split}-", f".old-{split}-")) or re.fullmatch(rf"{split}-[0-9a-f]{{16}}", name):
            shutil.rmtree(os.path.join(cache, name), ignore_errors=True)   # a reader's memory map survives


def _in_memory(decoded, cache=None, error=None):
    """Decoded arrays as ``_open_entry`` returns them, with a warning when the cache was not writable."""
    X, y, origin, skipped, _, _ = decoded
    if error is not None:
        warnings.warn(f"cannot write the PNG cache in {cache} ({_why(error)}); the images were decoded in "
                      f"memory and will be decoded again on every load. Set ECE662_CACHE to a folder "
                      f"you can write to keep a cache.")
    return X, y, np.array(ORIGINS, dtype="<U8")[origin], {"skipped": skipped}


def read_tree(root, splits=("train", "val", "test"), on_bad_image="raise", progress=True, verify=False):
    """Read the CINIC-10 folder layout, through the uint8 cache (see the module docstring).

    Parameters
    ----------
    root : str
        The folder holding ``train/ valid/ test/``.
    on_bad_image : {'raise', 'skip'}
        A corrupt image, or one that is not 32x32 RGB, raises ``ValueError`` naming the
        file; with ``'skip'`` it is left out with a warning that counts the skipped files.
    progress : bool
        Show a progress bar while decoding.
    verify : bool
        Also re-read every PNG and the cached arrays and compare their SHA-256 with the
        cache's manifest, instead of trusting each file's size, mtime and inode.  Costs a
        full read of the data (about 700 MB for CINIC-10: seconds from the page cache, a
        minute or more from a cold disk) but no decoding; a mismatch rebuilds the cache.

    Returns
    -------
    dict
        ``{split: (X uint8 (N, 32, 32, 3) memory-mapped, y int64 (N,), origin <U8 (N,))}``

    Raises
    ------
    ValueError
        A missing class folder, an empty split, or (with ``on_bad_image='raise'``) a bad image.
    PermissionError
        A folder or file of the data that may not be read ("permission denied" and its path).
    """
    if on_bad_image not in ("raise", "skip"):
        raise ValueError(f"on_bad_image must be 'raise' or 'skip', got {on_bad_image!r}")
    cache = _cache_dir(root)
    out = {}
    for split in splits:
        X, y, origin, manifest = _load_split(root, split, cache, on_bad_image, verify, progress)
        skipped = manifest["skipped"]
        if skipped and on_bad_image == "raise":     # an entry built with 'skip' never serves a strict load
            raise ValueError(skipped[0][1])
        if skipped:
            warnings.warn(f"skipped {len(skipped)} bad image(s) in {split}; first: {skipped[0][1]}")
        out[split] = (X, y, origin)
    return out


# ============================================================================ the course entry point
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
