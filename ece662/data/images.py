"""The ten classes, and how uint8 images become a model's float32 input.

CINIC-10's normalisation (from its authors) is what ece662's models were trained with; a model trained on
other input scaling needs that scaling (:data:`SCALINGS`), or it scores near chance.
"""
import numpy as np

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
# CINIC-10 normalisation, from its authors
MEAN = np.array([0.47889522, 0.47227842, 0.43047404], dtype=np.float32)
STD = np.array([0.24205776, 0.23828046, 0.25874835], dtype=np.float32)


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
