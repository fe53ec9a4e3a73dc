"""Weight sharing and the centroids' fine-tuning (Han, Mao & Dally, ICLR 2016, section 3 and Fig. 3)."""
from collections import OrderedDict

import numpy as np
import pytest

import ece662.pruning as prune
from ece662.compress import CentroidSGD, centroid_gradients, share_weights
from ece662.compress.sharing import finetune_centroids
from ece662.layers import Conv2d, Flatten, Linear, Sequential
from ece662.training.optim import softmax_cross_entropy


def _tiny_net():
    """conv -> flatten -> linear, no ReLU, so the loss is smooth in every weight (finite differences hold)."""
    net = Sequential(OrderedDict([("conv", Conv2d(3, 3, 3, seed=0)), ("flat", Flatten()),
                                  ("fc", Linear(3 * 4 * 4, 4, seed=1))]))
    prune.l1_unstructured(net.conv, "weight", amount=0.5)
    prune.l1_unstructured(net.fc, "weight", amount=0.7)
    return net


def _loss(net, x, y):
    return softmax_cross_entropy(net(x).astype(np.float64), y)


def test_centroid_gradient_is_the_finite_difference_of_the_loss(rng):
    """dL/dC_k (the summed gradients of the weights sharing C_k) matches (L(C_k + h) - L(C_k - h)) / 2h."""
    net = _tiny_net().train()
    net.kernels = "reference"
    x = rng.normal(size=(5, 3, 6, 6)).astype(np.float32)
    y = np.array([0, 1, 2, 3, 1])
    shared = share_weights(net, bits=2)
    net.zero_grad()
    _, dlogits = _loss(net, x, y)
    net.backward(dlogits, need_input_grad=False)
    h = 1e-2
    for layer in shared.layers:
        grads = centroid_gradients(layer.module.grads[layer.param], layer.mask, layer.index, len(layer.centroids))
        for k in range(len(layer.centroids)):
            c = layer.centroids.copy()
            losses = []
            for sign in (1, -1):
                layer.centroids = c.copy()
                layer.centroids[k] += sign * h
                layer.write()
                losses.append(_loss(net, x, y)[0])
            layer.centroids = c
            layer.write()
            numeric = (losses[0] - losses[1]) / (2 * h)
            assert abs(grads[k] - numeric) <= 2e-3 + 2e-2 * abs(numeric), (layer.name, k, grads[k], numeric)


def test_after_every_step_the_weights_are_their_centroids_and_the_masks_hold(rng):
    """Fine-tuning through the Trainer: each layer keeps at most 2**bits values, pruned weights stay 0,
    and no weight changes cluster."""
    net = _tiny_net()
    masks = {n: m.weight_mask.copy() for n, m in prune.prunable(net)}
    shared = share_weights(net, bits=2)
    before = [layer.centroids.copy() for layer in shared.layers]
    X = rng.integers(0, 256, size=(64, 6, 6, 3), dtype=np.uint8)
    y = rng.integers(0, 4, size=64)
    finetune_centroids(net, shared, X, y, epochs=2, lr=1e-2, batch_size=16)
    for layer, c0 in zip(shared.layers, before):
        m = layer.module
        assert np.array_equal(m.weight_mask, masks[layer.name])
        assert (m.weight[~m.weight_mask] == 0).all()
        assert np.array_equal(m.weight[m.weight_mask], layer.centroids[layer.index])
        assert not np.array_equal(layer.centroids, c0), "the centroids did not move"


def test_one_step_moves_each_centroid_by_its_summed_gradient(rng):
    """Without momentum, C_k -> C_k - lr * sum of its weights' gradients (the paper's eq. 3), exactly."""
    net = _tiny_net().train()
    shared = share_weights(net, bits=2)
    x = rng.normal(size=(4, 3, 6, 6)).astype(np.float32)
    y = np.array([0, 1, 2, 3])
    net.zero_grad()
    net.backward(_loss(net, x, y)[1], need_input_grad=False)
    expected = [(layer.centroids - 0.1 * centroid_gradients(layer.module.grads[layer.param], layer.mask,
                                                            layer.index, len(layer.centroids))).astype(np.float32)
                for layer in shared.layers]
    CentroidSGD(shared, lr=0.1, momentum=0.0).step(net)
    for layer, c in zip(shared.layers, expected):
        assert np.array_equal(layer.centroids, c)


def test_an_unpruned_layer_is_shared_whole():
    net = Sequential(OrderedDict([("fc", Linear(8, 4, seed=0))]))
    share_weights(net, bits=3)
    assert len(np.unique(net.fc.weight)) <= 8


@pytest.mark.parametrize("bits", [0, 9, 2.5, True])
def test_bad_widths_are_refused(bits):
    with pytest.raises(ValueError, match="1..8"):
        share_weights(_tiny_net(), bits=bits)


def test_unknown_layer_names_are_refused():
    with pytest.raises(ValueError, match="not Conv2d or Linear"):
        share_weights(_tiny_net(), bits=2, layers=["flat"])
