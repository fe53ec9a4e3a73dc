"""Training: losses, masks held through SGD and Adam, divergence, and the shipped model."""
import json
import os

import numpy as np
import pytest

import ece662.pruning as prune
from ece662.data_utils import get_CINIC10_data
from ece662.layers import Conv2d, Linear
from ece662.models import default_convnet
from ece662.training.optim import SGD, Adam, softmax_cross_entropy
from ece662.pruning_helper import load_model, shipped_model_path, test_model
from ece662.training.trainer import Trainer, TrainingDiverged


def _tiny_data(n=64, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, n)


def test_cross_entropy_is_stable_and_its_gradient_is_right():
    """Huge logits give a finite loss; the gradient equals finite differences."""
    loss, d = softmax_cross_entropy(np.array([[1000.0, 0.0]], np.float32), np.array([1]))
    assert np.isfinite(loss) and abs(loss - 1000) < 1e-3
    rng = np.random.default_rng(0)
    z = rng.standard_normal((3, 4))
    y = np.array([0, 3, 1])
    _, g = softmax_cross_entropy(z, y)
    eps = 1e-5
    for i in range(3):
        for j in range(4):
            zp, zm = z.copy(), z.copy()
            zp[i, j] += eps
            zm[i, j] -= eps
            num = (softmax_cross_entropy(zp, y)[0] - softmax_cross_entropy(zm, y)[0]) / (2 * eps)
            assert abs(num - g[i, j]) < 1e-4


@pytest.mark.parametrize("make_opt", [lambda: SGD(0.1, momentum=0.9, nesterov=True, weight_decay=5e-4),
                                      lambda: Adam(1e-2, weight_decay=1e-4)])
def test_masked_weights_stay_zero_through_training(make_opt):
    """After pruning, training steps never revive a pruned weight nor change a mask."""
    net = default_convnet(seed=0)
    params = [(m, "weight") for _, m in net.named_modules() if isinstance(m, (Conv2d, Linear))]
    prune.global_unstructured(params, pruning_method=prune.L1Unstructured, amount=0.7)
    prune.ln_structured(net.conv2, "weight", amount=8, n=2, dim=0)
    masks = [m.weight_mask.copy() for m, _ in params]
    X, y = _tiny_data()
    Trainer(net, X, y, epochs=2, batch_size=16, max_lr=0.1, schedule="constant", optimizer=make_opt(),
            progress=False).fit()
    net.eval()(np.zeros((1, 3, 32, 32), np.float32))
    for (m, _), mask in zip(params, masks):
        np.testing.assert_array_equal(m.weight_mask, mask)
        assert (m.weight[~mask] == 0).all()
        assert m.grads["weight_orig"][~mask].max(initial=0) == 0


def test_training_learns_and_is_deterministic():
    """Two runs with one seed give identical weights, and the loss goes down."""
    X, y = _tiny_data(96)
    runs = []
    for _ in range(2):
        net = default_convnet(seed=0)
        h = Trainer(net, X, y, epochs=6, batch_size=32, max_lr=0.02, seed=5, progress=False).fit()
        runs.append((net.state_dict(), h))
    for k in runs[0][0]:
        np.testing.assert_array_equal(runs[0][0][k], runs[1][0][k])
    losses = runs[0][1]["train_loss"]
    assert losses[-1] < losses[0]


def test_nan_loss_stops_with_epoch_and_step_and_keeps_weights():
    """A diverging run stops naming epoch and step, with the last good weights in place."""
    net = default_convnet(seed=0)
    X, y = _tiny_data(32)
    with pytest.raises(TrainingDiverged, match=r"epoch \d+, step \d+"):
        Trainer(net, X, y, epochs=5, batch_size=8, max_lr=1e6, schedule="constant", progress=False).fit()
    assert all(np.isfinite(v).all() for v in net.state_dict().values())


@pytest.mark.parametrize("kwargs, match", [(dict(max_lr=-1), "positive"), (dict(max_lr=float("nan")), "positive")])
def test_bad_learning_rate(kwargs, match):
    """A learning rate that is not a positive number is refused."""
    X, y = _tiny_data(8)
    with pytest.raises(ValueError, match=match):
        Trainer(default_convnet(), X, y, **kwargs)


def test_bad_training_data():
    """Mismatched lengths and labels out of range are refused."""
    X, y = _tiny_data(8)
    with pytest.raises(ValueError, match="8 images but y holds 7"):
        Trainer(default_convnet(), X, y[:7])
    with pytest.raises(ValueError, match="0..9"):
        Trainer(default_convnet(), X, y + 10)


def test_shipped_model_reproduces_its_model_card(real_data):
    """load_model() with no path gives the recorded test accuracy on the 10,000-image split."""
    with open(os.path.splitext(shipped_model_path())[0] + "_training.json") as f:
        card = json.load(f)
    data = get_CINIC10_data(os.path.join(real_data, "cifar10_real.npz"), splits=("test",))
    acc = test_model(load_model(), [data["X_test"], data["y_test"]], verbose=False)
    assert acc == card["test_accuracy"]
    assert acc >= 0.72


def test_early_stopping_keeps_the_best_validation_weights():
    """With patience 1, training stops once validation accuracy stalls and restores the best epoch."""
    X, y = _tiny_data(64)
    Xv, yv = _tiny_data(32, seed=1)
    net = default_convnet(seed=0)
    trainer = Trainer(net, X, y, Xv, yv, epochs=10, batch_size=32, max_lr=1e-9, schedule="constant",
                      patience=1, progress=False)
    history = trainer.fit()
    assert len(history["epoch"]) == 2                    # epoch 2 did not beat epoch 1: stop
    assert history["val_acc"][0] == trainer.best_val_acc
    for k, v in trainer.best_state.items():
        np.testing.assert_array_equal(net.state_dict()[k], v)


@pytest.mark.parametrize("kwargs, match", [
    (dict(batch_size=0), "batch_size must be a positive whole number, got 0"), (dict(batch_size=-3), "batch_size"),
    (dict(batch_size=2.5), "batch_size"), (dict(batch_size=True), "batch_size"), (dict(epochs=0), "epochs"),
    (dict(cutout=-4), "cutout"), (dict(label_smoothing=1.0), "label_smoothing")])
def test_bad_batch_size_or_epochs_is_a_clear_error(kwargs, match):
    """batch_size <= 0 (or not a whole number) and epochs < 1 are refused when the Trainer is made."""
    X, y = _tiny_data(8)
    with pytest.raises(ValueError, match=match):
        Trainer(default_convnet(), X, y, **kwargs)


def test_empty_training_set_is_a_clear_error():
    """A training set with no image is refused up front (not a ZeroDivisionError mid-epoch)."""
    X, y = _tiny_data(8)
    with pytest.raises(ValueError, match="training set is empty"):
        Trainer(default_convnet(), X[:0], y[:0])


class _PoisonConv2:
    """An 'optimizer' whose third step writes a NaN into conv2's weight (finite loss before it)."""

    lr = 0.01

    def __init__(self):
        self.calls = 0

    def step(self, model):
        self.calls += 1
        if self.calls == 3:
            model.conv2.weight[0, 0, 0, 0] = np.nan


def test_nonfinite_weights_name_the_layer_and_keep_the_last_good_weights():
    """Weights made NaN by a step raise TrainingDiverged naming conv2.weight; the model is rolled back."""
    net = default_convnet(seed=0)
    X, y = _tiny_data(32)
    with pytest.raises(TrainingDiverged, match=r"conv2\.weight became NaN or infinite at epoch 1, step 3"):
        Trainer(net, X, y, epochs=2, batch_size=8, optimizer=_PoisonConv2(), progress=False).fit()
    assert all(np.isfinite(v).all() for v in net.state_dict().values())


def test_nonfinite_weights_warn_when_asked_and_stop():
    """on_nonfinite='warn' warns (naming the layer), stops, and leaves finite weights and a history."""
    net = default_convnet(seed=0)
    X, y = _tiny_data(32)
    with pytest.warns(RuntimeWarning, match=r"conv2\.weight became NaN"):
        h = Trainer(net, X, y, epochs=3, batch_size=8, optimizer=_PoisonConv2(), on_nonfinite="warn",
                    progress=False).fit()
    assert h["epoch"] == [1] and np.isfinite(h["train_loss"][0])
    assert all(np.isfinite(v).all() for v in net.state_dict().values())
    with pytest.raises(ValueError, match="on_nonfinite"):
        Trainer(net, X, y, on_nonfinite="ignore")


def test_cutout_paints_a_mean_square_and_costs_no_randomness_when_off():
    """cutout=k paints one k x k mean-colour square per image; cutout=0 draws exactly what crop+flip draw."""
    from ece662.training.trainer import augment_batch
    X, _ = _tiny_data(6)
    a = augment_batch(X, np.random.default_rng(3))
    b = augment_batch(X, np.random.default_rng(3), cutout=0)
    np.testing.assert_array_equal(a, b)
    X = np.zeros((4, 32, 32, 3), np.uint8)
    out = augment_batch(X, np.random.default_rng(0), pad=0, flip=False, cutout=8)
    for img in out:
        painted = (img != 0).any(axis=2)
        assert 16 <= painted.sum() <= 64          # clipped at the border, at least a quarter remains
        assert (img[painted] == [122, 120, 110]).all()


@pytest.mark.parametrize("labels, match", [
    (lambda y: np.where(np.arange(len(y)) == 3, np.nan, y.astype(float)), r"whole numbers 0..9, got nan at index 3"),
    (lambda y: y + 0.5, r"whole numbers 0..9, got \d\.5 at index 0"),
    (lambda y: np.eye(10)[y], r"shape \(N,\), got shape \(\d+, 10\).*argmax"),
    (lambda y: y.astype(str), r"integers 0..9, got dtype <U"),
])
def test_labels_that_a_cast_would_change_are_refused(labels, match):
    """NaN (which int64 makes -9223372036854775808), fractions, one-hot rows and strings are refused,
    naming the first bad label, in training and in validation data."""
    X, y = _tiny_data(16)
    with pytest.raises(ValueError, match=r"Trainer \(train\): .*" + match):
        Trainer(default_convnet(), X, labels(y))
    with pytest.raises(ValueError, match=r"Trainer \(val\): .*" + match):
        Trainer(default_convnet(), X, y, X, labels(y))


def test_validation_images_without_labels_are_a_clear_error():
    """X_val without y_val (or the reverse) says what is missing instead of 'len() of unsized object'."""
    X, y = _tiny_data(16)
    with pytest.raises(ValueError, match="got X_val without y_val; pass both"):
        Trainer(default_convnet(), X, y, X_val=X)
    with pytest.raises(ValueError, match="got y_val without X_val; pass both"):
        Trainer(default_convnet(), X, y, y_val=y)
