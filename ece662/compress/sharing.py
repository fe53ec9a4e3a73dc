"""Trained quantization by weight sharing: the second stage of Deep Compression.

Han, Mao & Dally (ICLR 2016, "Deep Compression", section 3): the surviving weights of each layer are
clustered into ``2**bits`` centroids (:func:`ece662.compress.kmeans.kmeans_1d`, linear initialisation), and
every weight becomes its centroid, stored as a ``bits``-bit index.  Then the centroids are *fine-tuned*:
in a training step every weight gets its gradient as usual, and the gradient of a centroid is the sum of
the gradients of the weights that share it (the paper's eq. 3 and Fig. 3)::

    dL/dC_k = sum_i dL/dW_i * [I_i == k]

The centroid moves by that summed gradient and every weight that shares it moves with it, so after every
step each layer's weights are again exactly ``centroids[indices]``; pruned weights stay 0 (the masks are
held) and no weight ever changes cluster.

In ece662 the rule is an optimiser, :class:`CentroidSGD`, handed to :class:`ece662.training.Trainer`
(``optimizer=``): the Trainer runs forward, backward and its schedule as for any fine-tuning, and the
optimiser's step is where the gradients of shared weights become steps of their centroids.  (The Trainer's
``pruning=`` hook runs *before* each step, so it would leave the weights off their centroids during the
validation after each epoch and in the weights it keeps as best; the step itself is the place.)

Examples
--------
>>> from ece662.models import load_named
>>> net = load_named("pruned-90")
>>> shared = share_weights(net, bits=4)
>>> [len(np.unique(net.conv2.weight[net.conv2.weight_mask])) <= 16 for _ in range(1)]
[True]
>>> bool((net.conv2.weight[~net.conv2.weight_mask] == 0).all())     # the pruned weights stay pruned
True
"""
import numpy as np

from ece662.compress.kmeans import kmeans_1d
from ece662.layers import Conv2d, Linear
from ece662.pruning import methods as prune
from ece662.training.optim import SGD


class SharedLayer:
    """One layer's shared weights.

    Attributes
    ----------
    name : str
        The layer's name in the model (``'conv2'``).
    module : Conv2d or Linear
    param : str
        The trainable array that holds the weights: ``'weight_orig'`` when the layer is pruned, else ``'weight'``.
    mask : ndarray of bool, the weight's shape
        The surviving weights (all True for a layer that is not pruned).
    centroids : ndarray of float32, (2**bits,)
    index : ndarray of int64, (survivors,)
        The centroid of each surviving weight, in C order of ``mask``.
    """

    def __init__(self, name, module, bits, max_iter=100):
        self.name, self.module = name, module
        self.param = "weight_orig" if "weight_mask" in module._buffers else "weight"
        self.mask = (module._buffers["weight_mask"].astype(bool) if self.param == "weight_orig"
                     else np.ones(module._parameters["weight"].shape, dtype=bool))
        weights = module._parameters[self.param][self.mask]
        if weights.size == 0:
            raise ValueError(f"share_weights: every weight of {name} is pruned, so there is nothing to share; "
                             f"leave such a layer out (layers=[...])")
        self.centroids, self.index = kmeans_1d(weights, 2 ** bits, max_iter=max_iter)
        self.velocity = np.zeros(len(self.centroids), dtype=np.float64)

    def write(self):
        """Set the layer's weights to ``centroids[index]`` where the mask is True and 0 elsewhere."""
        w = np.zeros(self.mask.shape, dtype=np.float32)
        w[self.mask] = self.centroids[self.index]
        self.module._parameters[self.param] = w
        prune.refresh(self.module)


def centroid_gradients(weight_grad, mask, index, k):
    """The paper's eq. 3: each centroid's gradient is the sum of the gradients of the weights that share it.

    Parameters
    ----------
    weight_grad : ndarray, the weight's shape
        dL/dW for every weight of the layer.
    mask : ndarray of bool, the weight's shape
        Which weights survive (only they share centroids).
    index : ndarray of int, (survivors,)
        The centroid of each surviving weight, in C order.
    k : int
        Number of centroids.

    Returns
    -------
    ndarray of float64, (k,)

    Examples
    --------
    >>> g = np.array([[0.5, 9.0], [0.25, -1.0]])
    >>> centroid_gradients(g, np.array([[True, False], [True, True]]), np.array([1, 1, 0]), 2).tolist()
    [-1.0, 0.75]
    """
    return np.bincount(index, weights=np.asarray(weight_grad, dtype=np.float64)[mask], minlength=k)


class SharedWeights:
    """The shared weights of a model: one :class:`SharedLayer` per Conv2d and Linear layer.

    Build it with :func:`share_weights`.
    """

    def __init__(self, layers, bits):
        self.layers, self.bits = list(layers), bits

    def write(self):
        for layer in self.layers:
            layer.write()


def share_weights(model, bits, layers=None, max_iter=100):
    """Replace the surviving weights of every Conv2d and Linear layer by ``2**bits`` shared values, in place.

    Parameters
    ----------
    model : Sequential
        Pruned (``weight_mask``) or not; the masks are kept.
    bits : int in 1..8, or dict
        Bits per weight index: ``2**bits`` centroids per layer (the paper: 8 for conv, 5 for fc on AlexNet;
        4 bits lost no accuracy on LeNet); ``{'conv': 5, 'fc': 4}`` gives each layer its own.
    layers : list of str, optional
        The layer names to share (default: every Conv2d and Linear).  Biases are never shared.

    Returns
    -------
    SharedWeights
        For fine-tuning the centroids (:class:`CentroidSGD`).

    Raises
    ------
    ValueError
        ``bits`` outside 1..8, a name that is no Conv2d or Linear of the model, or a layer with every weight pruned.
    """
    candidates = prune.prunable(model, (Conv2d, Linear))
    per_layer = bits if isinstance(bits, dict) else {name: bits for name, _ in candidates}
    for b in per_layer.values():
        if isinstance(b, bool) or not isinstance(b, (int, np.integer)) or not 1 <= b <= 8:
            raise ValueError(f"share_weights: expected bits, the index width, to be a whole number in 1..8 "
                             f"(2 to 256 shared values per layer), or a dict of them per layer; got {bits!r}")
    if layers is None and isinstance(bits, dict):
        layers = list(bits)
    if layers is not None:
        known = dict(candidates)
        unknown = [n for n in layers if n not in known]
        if unknown:
            raise ValueError(f"share_weights: {unknown} are not Conv2d or Linear layers of the model; "
                             f"its are {list(known)}")
        candidates = [(n, known[n]) for n in layers]
    shared = SharedWeights([SharedLayer(name, m, int(per_layer[name]), max_iter) for name, m in candidates],
                           bits)
    shared.write()
    return shared


class CentroidSGD:
    """An optimiser for :class:`ece662.training.Trainer` that fine-tunes shared weights through their centroids.

    Each step: the gradients of a shared layer's weights are summed per centroid (:func:`centroid_gradients`,
    the paper's eq. 3), the centroids take an SGD step with momentum, and the weights are written back as
    ``centroids[index]``; every other parameter (biases) takes an ordinary SGD step.  The Trainer sets
    ``lr`` before every step (its one-cycle or constant schedule).

    Parameters
    ----------
    shared : SharedWeights
    lr : float
        Applies to the centroids' summed gradients and to the biases alike.  A centroid's gradient is a sum
        over tens to hundreds of weights, so rates far below ordinary fine-tuning's suit it.
    momentum : float
    weight_decay : float
        For the ordinary parameters only: decaying a centroid by the decay of each of its weights would pull
        it n times harder than one weight.
    """

    def __init__(self, shared, lr=1e-4, momentum=0.9, weight_decay=0.0):
        self.shared, self.lr, self.momentum = shared, float(lr), float(momentum)
        self.others = SGD(lr, momentum=momentum, weight_decay=weight_decay)

    def step(self, model):
        for layer in self.shared.layers:
            # the weights are not stepped one by one: their gradients go to their centroids
            grad = layer.module.grads.pop(layer.param, None)
            if grad is None:
                continue
            g = centroid_gradients(grad, layer.mask, layer.index, len(layer.centroids))
            layer.velocity = self.momentum * layer.velocity + g
            layer.centroids = (layer.centroids - self.lr * layer.velocity).astype(np.float32)
        self.others.lr = self.lr
        self.others.step(model)
        self.shared.write()


def finetune_centroids(model, shared, X_train, y_train, epochs=1, lr=1e-4, batch_size=128, schedule="onecycle",
                       seed=0, progress=False):
    """Fine-tune the shared centroids (and the biases) with :class:`ece662.training.Trainer` and :class:`CentroidSGD`.

    Parameters
    ----------
    model : Sequential
        Its weights shared by :func:`share_weights` into ``shared``.
    X_train, y_train : uint8 (N, H, W, 3), int (N,)
        Training images, augmented as for any fine-tuning (crops and flips).
    epochs, lr, batch_size, schedule, seed, progress
        As for the Trainer; ``lr`` is the peak rate of the centroids' summed gradients.

    Returns
    -------
    dict
        The Trainer's history.  Afterwards every shared layer again holds exactly ``centroids[index]``.
    """
    from ece662.training.trainer import Trainer
    trainer = Trainer(model, X_train, y_train, epochs=epochs, batch_size=batch_size, max_lr=lr, schedule=schedule,
                      optimizer=CentroidSGD(shared, lr), seed=seed, progress=progress)
    return trainer.fit()
