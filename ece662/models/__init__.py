"""Model architectures, and the weights ece662 ships.

``default_convnet()`` is the course notebook's network::

    conv1 Conv2d(3, 32, 5) -> relu1 -> pool1 MaxPool2d(2)
    -> conv2 Conv2d(32, 32, 3) -> relu2 -> pool2 MaxPool2d(2)
    -> flatten -> fc Linear(1152, 10)

for 32x32 RGB inputs: (N, 3, 32, 32) -> (N, 32, 28, 28) -> (N, 32, 14, 14)
-> (N, 32, 12, 12) -> (N, 32, 6, 6) -> (N, 1152) -> (N, 10).  Its state-dict keys
(``conv1.weight``, ``conv1.bias``, ``conv2.weight``, ``conv2.bias``, ``fc.weight``,
``fc.bias``) are those of the course's PyTorch model, so its files load directly.

Shipped weights, by name (:func:`load_named`; how each was made: ``MODEL_CARD.md`` and
``PRUNED_MODELS.md`` here, and ``<file>_training.json`` beside each file):

``'dense'``       the trained course CNN (``default_convnet.npz``);
``'pruned-80'``   80% of the conv + linear weights pruned (masks kept: fine-tuning keeps it sparse);
``'pruned-90'``   90% pruned;
``'filters-50'``  half of each conv layer's filters removed: a physically smaller network.
"""
import os
from collections import OrderedDict

import numpy as np

from ece662.formats.npz_format import load_npz_model
from ece662.layers import Conv2d, Flatten, Linear, MaxPool2d, ReLU, Sequential


def default_convnet(seed=0, num_classes=10, filters=(32, 32)):
    """The course notebook's CNN, freshly initialised with ``seed``.

    ``filters``: the two conv layers' filter counts.  The course's network has 32 and 32;
    a wider one (e.g. ``(64, 64)``) is a stronger teacher for distillation
    (``scripts/train_shipped_model.py --filters 64 64``).

    Examples
    --------
    >>> import numpy as np
    >>> net = default_convnet(seed=0).eval()
    >>> net(np.zeros((2, 3, 32, 32), dtype=np.float32)).shape
    (2, 10)
    """
    if len(filters) != 2 or min(int(f) for f in filters) < 1:
        raise ValueError(f"default_convnet: filters must be two counts >= 1 (conv1's and conv2's, e.g. "
                         f"(32, 32)), got {filters!r}")
    f1, f2 = (int(f) for f in filters)
    rng = np.random.default_rng(seed)
    return Sequential(OrderedDict([
        ("conv1", Conv2d(3, f1, 5, rng=rng)),
        ("relu1", ReLU()),
        ("pool1", MaxPool2d(2)),
        ("conv2", Conv2d(f1, f2, 3, rng=rng)),
        ("relu2", ReLU()),
        ("pool2", MaxPool2d(2)),
        ("flatten", Flatten()),
        ("fc", Linear(f2 * 6 * 6, num_classes, rng=rng)),
    ]))


SHIPPED = {"dense": "default_convnet.npz", "pruned-80": "pruned_80.npz", "pruned-90": "pruned_90.npz",
           "filters-50": "filters_50.npz"}


def models_dir():
    """The folder that holds the shipped weights."""
    return os.path.dirname(os.path.abspath(__file__))


def named_model_path(name):
    """The file of the shipped model called ``name`` (a key of ``SHIPPED``).

    Raises
    ------
    ValueError
        An unknown name (the message lists the known ones).
    FileNotFoundError
        A known name whose file is missing from this installation.
    """
    if not isinstance(name, str) or name not in SHIPPED:
        raise ValueError(f"unknown shipped model {name!r}; the shipped models are {sorted(SHIPPED)}")
    path = os.path.join(models_dir(), SHIPPED[name])
    if not os.path.isfile(path):
        raise FileNotFoundError(f"the shipped model {name!r} should be at {path}, but the file is missing; "
                                f"reinstall ece662 or make it with scripts/train_pruned_models.py")
    return path


def load_named(name):
    """Load a shipped model by name, e.g. ``load_named('pruned-80')``; in eval mode.

    Examples
    --------
    >>> net = load_named("dense")
    >>> [n for n, _ in net.named_modules()][1:3]
    ['conv1', 'relu1']
    """
    return load_npz_model(named_model_path(name))


# the same pretrained weights, in each format the course's load_model(path=None, mode=...) reads
SHIPPED_FORMATS = {"numpy": "default_convnet.npz", "torch": "torch.model", "tensorflow": "tensorflow.model"}


def shipped_model_path(mode="numpy"):
    """Where the pretrained weights that ship with ece662 live, in the format ``mode`` reads.

    The same weights ship as ece662's ``.npz`` (``'numpy'``) and as the course's two files,
    ``torch.model`` (a PyTorch state_dict) and ``tensorflow.model`` (a Keras file); no ONNX
    file ships (``ece662.io.save_model(load_model(), 'm.onnx')`` writes one).

    Raises
    ------
    ValueError
        A mode with no shipped file.
    FileNotFoundError
        The file is missing from this installation.
    """
    if mode not in SHIPPED_FORMATS:
        raise ValueError(f"load_model: no pretrained model ships as a {mode!r} file (shipped formats: "
                         f"{sorted(SHIPPED_FORMATS)}); pass a path, e.g. write one with "
                         f"ece662.io.save_model(load_model(), 'model.onnx')")
    path = os.path.join(models_dir(), SHIPPED_FORMATS[mode])
    if not os.path.isfile(path):
        raise FileNotFoundError(f"load_model: the shipped pretrained model {path} is missing; "
                                f"reinstall ece662 or pass a path")
    return path
