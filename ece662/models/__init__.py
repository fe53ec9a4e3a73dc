"""Model architectures, and the weights ece662 ships.

``default_convnet()`` is the course notebook's network::

    conv1 Conv2d(3, 32, 5) -> relu1 -> pool1 MaxPool2d(2)
    -> conv2 Conv2d(32, 32, 3) -> relu2 -> pool2 MaxPool2d(2)
    -> flatten -> fc Linear(1152, 10)

for 32x32 RGB inputs: (N, 3, 32, 32) -> (N, 32, 28, 28) -> (N, 32, 14, 14)
-> (N, 32, 12, 12) -> (N, 32, 6, 6) -> (N, 1152) -> (N, 10).  Its state-dict keys
(``conv1.weight``, ``conv1.bias``, ``conv2.weight``, ``conv2.bias``, ``fc.weight``,
``fc.bias``) are those of the course's PyTorch model, so its files load directly.
"""
from collections import OrderedDict

from ece662.layers import Conv2d, Flatten, Linear, MaxPool2d, ReLU, Sequential


def default_convnet(seed=0, num_classes=10):
    """The course notebook's CNN, freshly initialised with ``seed``.

    Examples
    --------
    >>> import numpy as np
    >>> net = default_convnet(seed=0).eval()
    >>> net(np.zeros((2, 3, 32, 32), dtype=np.float32)).shape
    (2, 10)
    """
    import numpy as np
    rng = np.random.default_rng(seed)
    return Sequential(OrderedDict([
        ("conv1", Conv2d(3, 32, 5, rng=rng)),
        ("relu1", ReLU()),
        ("pool1", MaxPool2d(2)),
        ("conv2", Conv2d(32, 32, 3, rng=rng)),
        ("relu2", ReLU()),
        ("pool2", MaxPool2d(2)),
        ("flatten", Flatten()),
        ("fc", Linear(32 * 6 * 6, num_classes, rng=rng)),
    ]))
