"""CINIC-10 data: ``get_CINIC10_data()``, as the course notebook calls it.

Where the data is found (first hit wins):

1. the ``path`` argument,
2. the environment variable ``ECE662_DATA``,
3. ``datasets/`` in the repository (where ``datasets/get_datasets.sh`` puts it),
4. ``../shared/datasets`` beside the repository (the course machines' real data),
5. the same two places relative to the working directory (for a non-editable install).

``path`` may be a CINIC-10 folder (``train/ valid/ test/``, ten class folders of
32x32 PNGs each, as its authors ship it), an ``.npz`` archive with ``X_train, y_train,
X_val, y_val, X_test, y_test`` (uint8 NHWC images, integer labels), or a folder holding
one of these: ``cinic-10/`` (or ``CINIC-10/``), then ``cinic10.npz``, then
``cifar10_real.npz`` (the CIFAR-10 part of CINIC-10 shipped with the course machines).

Images stay uint8 NHWC in memory (or memory-mapped from a cache); with the
defaults every ``X_*`` is a :class:`NormalizedImages`, an array-like that turns a
slice into normalised float32 NCHW only when it is used, so the 90,000-image test
split never sits in memory as 1.1 GB of float32.  The first load of a PNG folder
decodes every image once (with a progress bar) into a uint8 cache of ``.npy``
files in ``$ECE662_CACHE`` (default ``~/.cache/ece662``; never inside the data folder,
which may be shared and read-only); later loads memory-map it.
"""
import hashlib
import json
import os
import re
import warnings

import numpy as np

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
# CINIC-10 normalisation, from its authors
MEAN = np.array([0.47889522, 0.47227842, 0.43047404], dtype=np.float32)
STD = np.array([0.24205776, 0.23828046, 0.25874835], dtype=np.float32)
# our split names -> the CINIC-10 folder names
SPLIT_FOLDERS = {"train": "train", "val": "valid", "test": "test"}
ORIGINS = ("cifar10", "imagenet", "unknown")
_CACHE_VERSION = 1

_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ============================================================================ normalisation
def normalize_images(images, channels_first=True):
    """uint8 images ``(N, H, W, 3)`` -> float32 ``(N, 3, H, W)`` with CINIC-10 mean/std.

    Examples
    --------
    >>> x = np.full((1, 2, 2, 3), 255, dtype=np.uint8)
    >>> normalize_images(x).shape
    (1, 3, 2, 2)
    >>> float(normalize_images(x)[0, 0, 0, 0])  # (1 - 0.4789) / 0.2421
    2.152...
    """
    x = (np.asarray(images, dtype=np.float32) / np.float32(255.0) - MEAN) / STD
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2)) if channels_first else x


class NormalizedImages:
    """uint8 NHWC images that look like a normalised float32 array.

    ``len``, ``shape``, ``dtype``, indexing (int, slice, index array) and ``np.asarray``
    work; only the part you index is converted.

    Examples
    --------
    >>> imgs = NormalizedImages(np.zeros((5, 32, 32, 3), dtype=np.uint8))
    >>> imgs.shape, imgs.dtype, len(imgs)
    ((5, 3, 32, 32), dtype('float32'), 5)
    >>> imgs[1:3].shape
    (2, 3, 32, 32)
    """

    def __init__(self, raw, channels_first=True, dtype=np.float32):
        self.raw = raw
        self.channels_first = channels_first
        self.dtype = np.dtype(dtype)

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
        return normalize_images(self.raw[idx], self.channels_first).astype(self.dtype, copy=False)

    def __array__(self, dtype=None, copy=None):
        out = self[:]
        return out if dtype is None else out.astype(dtype)

    def __repr__(self):
        return f"NormalizedImages(shape={self.shape}, dtype={self.dtype}, over uint8 {self.raw.shape})"


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
    """The data source inside ``folder``: ('tree', dir), ('npz', file) or None."""
    if os.path.isfile(folder):
        return ("npz", folder)
    if not os.path.isdir(folder):
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


def read_npz(path, splits=("train", "val", "test")):
    """Read ``X_<split>, y_<split>`` (uint8 NHWC, int labels) from an .npz, checked.

    Returns
    -------
    dict
        ``{split: (X uint8 (N, 32, 32, 3), y int64 (N,), origin <U8 (N,))}``
    """
    try:
        z = np.load(path, allow_pickle=False)
    except Exception as e:
        raise ValueError(f"{path}: not a readable .npz archive ({e})") from None
    out = {}
    with z:
        for split in splits:
            for key in (f"X_{split}", f"y_{split}"):
                if key not in z.files:
                    raise ValueError(f"{path}: missing array {key!r}; the archive holds {sorted(z.files)}, "
                                     f"expected X_train, y_train, X_val, y_val, X_test, y_test")
            X, y = z[f"X_{split}"], z[f"y_{split}"]
            origin = (z[f"origin_{split}"] if f"origin_{split}" in z.files
                      else np.full(len(y), "cifar10" if "cifar10" in os.path.basename(path) else "unknown"))
            _check_split(X, y, f"{path} [{split}]")
            out[split] = (X, y.astype(np.int64), np.asarray(origin).astype("<U8"))
    return out


def _check_split(X, y, where):
    if X.ndim != 4 or X.shape[1:] != (32, 32, 3):
        raise ValueError(f"{where}: expected images of shape (N, 32, 32, 3), got {X.shape}")
    if X.dtype != np.uint8:
        raise ValueError(f"{where}: expected uint8 images, got {X.dtype}")
    if y.ndim != 1 or len(y) != len(X):
        raise ValueError(f"{where}: expected {len(X)} labels of shape ({len(X)},), got {y.shape}")
    if len(y) == 0:
        raise ValueError(f"{where}: the split is empty")
    if y.min() < 0 or y.max() >= len(CLASSES):
        bad = int(np.flatnonzero((y < 0) | (y >= len(CLASSES)))[0])
        raise ValueError(f"{where}: label {int(y[bad])} at index {bad} is out of range 0..{len(CLASSES) - 1}")


def _decode_png(path):
    from PIL import Image
    try:
        with Image.open(path) as im:
            im.load()
            if im.size != (32, 32):
                raise ValueError(f"{path}: image is {im.size[0]}x{im.size[1]}, expected 32x32")
            if im.mode != "RGB":
                raise ValueError(f"{path}: image mode is {im.mode}, expected RGB")
            return np.asarray(im, dtype=np.uint8)
    except ValueError:
        raise
    except Exception as e:
        raise ValueError(f"{path}: cannot decode the PNG ({type(e).__name__}: {e}); "
                         f"the file is corrupt or truncated") from None


def _list_tree_split(root, split):
    folder = os.path.join(root, SPLIT_FOLDERS[split])
    files = []
    for label, cls in enumerate(CLASSES):
        cdir = os.path.join(folder, cls)
        if not os.path.isdir(cdir):
            raise ValueError(f"{folder}: class folder {cls!r} is missing; a CINIC-10 split has the "
                             f"ten folders {', '.join(CLASSES)}")
        names = sorted(n for n in os.listdir(cdir) if n.lower().endswith(".png"))
        files.extend((os.path.join(cdir, n), label) for n in names)
    if not files:
        raise ValueError(f"{folder}: the split holds no PNG images")
    return files


def _cache_dir(root):
    """``$ECE662_CACHE/<folder name>-<hash>``, default ``~/.cache/ece662/...``.

    The cache never goes inside the data folder: data folders may be shared and read-only.
    """
    base = os.environ.get("ECE662_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "ece662")
    digest = hashlib.sha1(os.path.abspath(root).encode()).hexdigest()[:12]
    return os.path.join(base, f"{os.path.basename(os.path.abspath(root))}-{digest}")


def read_tree(root, splits=("train", "val", "test"), on_bad_image="raise", progress=True):
    """Read the CINIC-10 folder layout, through a uint8 cache built on first use.

    Parameters
    ----------
    root : str
        The folder holding ``train/ valid/ test/``.
    on_bad_image : {'raise', 'skip'}
        A corrupt image, or one that is not 32x32 RGB, raises ``ValueError`` naming the
        file; with ``'skip'`` it is left out with a warning that counts the skipped files.
    progress : bool
        Show a progress bar while decoding.

    Returns
    -------
    dict
        ``{split: (X uint8 (N, 32, 32, 3) memory-mapped, y int64 (N,), origin <U8 (N,))}``
    """
    if on_bad_image not in ("raise", "skip"):
        raise ValueError(f"on_bad_image must be 'raise' or 'skip', got {on_bad_image!r}")
    out = {}
    cache = None
    for split in splits:
        files = _list_tree_split(root, split)
        signature = {"version": _CACHE_VERSION, "count": len(files),
                     "names": hashlib.sha1("\n".join(os.path.relpath(f, root) for f, _ in files)
                                           .encode()).hexdigest()}
        cache = cache or _cache_dir(root)
        manifest = os.path.join(cache, f"{split}.json")
        paths = {k: os.path.join(cache, f"{split}_{k}.npy") for k in ("X", "y", "origin")}
        if os.path.isfile(manifest):
            with open(manifest) as f:
                if json.load(f) == signature and all(os.path.isfile(p) for p in paths.values()):
                    out[split] = (np.load(paths["X"], mmap_mode="r"), np.load(paths["y"]),
                                  np.load(paths["origin"]))
                    continue
        X, y, origin = _decode_files(files, split, on_bad_image, progress)
        os.makedirs(cache, exist_ok=True)
        if os.path.exists(manifest):
            os.remove(manifest)        # the manifest is written last: no manifest, no valid cache
        for key, arr in (("X", X), ("y", y), ("origin", origin)):
            tmp = paths[key] + ".tmp.npy"
            np.save(tmp, arr)
            os.replace(tmp, paths[key])
        tmp = manifest + ".tmp"
        with open(tmp, "w") as f:
            json.dump(signature, f)
        os.replace(tmp, manifest)
        out[split] = (np.load(paths["X"], mmap_mode="r"), y, origin)
    return out


def _decode_files(files, split, on_bad_image, progress):
    from tqdm.auto import tqdm
    X = np.empty((len(files), 32, 32, 3), dtype=np.uint8)
    keep = np.ones(len(files), dtype=bool)
    bad = []
    for i, (path, _) in enumerate(tqdm(files, desc=f"decoding {split}", unit="img",
                                       disable=not progress, leave=False)):
        try:
            X[i] = _decode_png(path)
        except ValueError as e:
            if on_bad_image == "raise":
                raise
            keep[i] = False
            bad.append(str(e))
    if bad:
        warnings.warn(f"skipped {len(bad)} bad image(s) in {split}; first: {bad[0]}")
    y = np.array([label for _, label in files], dtype=np.int64)
    origin = np.array([origin_of(os.path.basename(p)) for p, _ in files], dtype="<U8")
    X, y, origin = X[keep], y[keep], origin[keep]
    if len(y) == 0:
        raise ValueError(f"{split}: no readable images left")
    return X, y, origin


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
                     dtype=np.float32, lazy=True, seed=0, on_bad_image="raise", progress=True):
    """Load CINIC-10 (or its CIFAR-10 part) for the course notebook.

    Parameters
    ----------
    path : str, optional
        A CINIC-10 folder, an .npz archive, or a folder holding one (see the module
        docstring for where it looks when ``path`` is None).
    splits : sequence of {'train', 'val', 'test'}
    num_training, num_validation, num_test : int, optional
        Take a seeded, class-balanced subset of that many images.
    normalize : bool
        CINIC-10 mean/std normalisation to float32 (else raw uint8 images).
    channels_first : bool
        NCHW (ready for ece662 models) rather than NHWC.
    lazy : bool
        With ``normalize``: ``X_*`` are :class:`NormalizedImages` that convert per slice.
        ``False`` gives plain float arrays (the whole split in memory).
    seed : int
        For the subsets.
    on_bad_image : {'raise', 'skip'}
        For PNG folders: fail on a bad image, or skip it with a warning.

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
    for s in splits:
        if s not in SPLIT_FOLDERS:
            raise ValueError(f"unknown split {s!r}; expected some of {tuple(SPLIT_FOLDERS)}")
    for name, n in (("num_training", num_training), ("num_validation", num_validation),
                    ("num_test", num_test)):
        if n is not None and (not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 1):
            raise ValueError(f"{name} must be a positive int or None, got {n!r}")
    kind, location = find_data(path)
    parts = (read_tree(location, splits, on_bad_image, progress) if kind == "tree"
             else read_npz(location, splits))
    rng = np.random.default_rng(seed)
    sizes = {"train": num_training, "val": num_validation, "test": num_test}
    data = {"class_names": list(CLASSES), "source": location}
    for split in splits:
        X, y, origin = parts[split]
        idx = _balanced_subset(y, sizes[split], rng)
        if idx is not None:
            X, y, origin = X[idx], y[idx], origin[idx]
        if normalize:
            X = NormalizedImages(X, channels_first, dtype) if lazy else \
                normalize_images(X, channels_first).astype(dtype, copy=False)
        elif channels_first:
            X = X.transpose(0, 3, 1, 2)
        data[f"X_{split}"], data[f"y_{split}"], data[f"origin_{split}"] = X, y, origin
    return data
