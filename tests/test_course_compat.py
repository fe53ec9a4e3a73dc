"""The course notebook's own calls, as written: test_model's modes, labels it refuses, empty batches."""
import numpy as np
import pytest

from ece662.models import default_convnet
from ece662.pruning_helper import predict_logits, test_model


def _images(n, seed=0):
    return np.random.default_rng(seed).standard_normal((n, 3, 32, 32)).astype(np.float32)


@pytest.mark.parametrize("mode", ["torch", "tensorflow", "numpy"])
def test_test_model_takes_the_course_modes(mode, capsys):
    """test_model(model, test_data, mode=...) runs for every mode the course uses, same number."""
    X, y = _images(20), np.random.default_rng(1).integers(0, 10, 20)
    net = default_convnet(seed=3)
    acc = test_model(net, [X, y], mode=mode)
    assert acc == float(np.mean(net.eval()(X).argmax(1) == y))
    assert capsys.readouterr().out == f"Test Acc: {acc:.4f}\n"


def test_test_model_refuses_an_unknown_mode():
    """A typo in mode is an error that lists the modes, not silently ignored."""
    with pytest.raises(ValueError, match=r"unknown mode 'pytorch'.*'numpy', 'torch', 'tensorflow'"):
        test_model(default_convnet(), [_images(2), np.zeros(2, int)], mode="pytorch")
    with pytest.raises(TypeError, match="batch_size=50"):
        test_model(default_convnet(), [_images(2), np.zeros(2, int)], 50)


def test_test_model_refuses_a_foreign_model():
    """Something that is not an ece662 model gets a pointer to load_model."""
    with pytest.raises(TypeError, match="load_model"):
        test_model(object(), [_images(2), np.zeros(2, int)], mode="torch")


@pytest.mark.parametrize("labels, message", [
    (np.array([0.0, 1.0, 2.0, 3.0]), "integer class labels.*float64.*astype"),
    (np.array([0.0, np.nan, 2.0, 3.0]), "1 of them NaN"),
    (np.array([0, -1, 2, 3]), ">= 0, got -1 .at index 1"),
    (np.array([0, 1, 10, 3]), "label 10 .at index 2. is out of range.*10 classes"),
    (np.array([0, 1, 2]), r"shape \(4,\)"),
    (np.array([True, False, True, False]), "integer class labels.*bool"),
    (np.array([[0], [1], [2], [3]]), r"shape \(4,\)"),
])
def test_test_model_refuses_labels_it_cannot_compare(labels, message):
    """Float, NaN, negative, out-of-range or mis-sized labels are an error, never an accuracy of 0.0."""
    with pytest.raises(ValueError, match=message):
        test_model(default_convnet(), [_images(4), labels], verbose=False)


def test_empty_batch_gives_an_empty_result():
    """predict_logits on zero images is an empty (0, 10) array; test_model says there is nothing to score."""
    net = default_convnet()
    out = predict_logits(net, _images(0))
    assert out.shape == (0, 10) and out.dtype == np.float32
    from ece662 import pruning
    pruning.ln_structured(net.conv1, "weight", amount=8, n=2, dim=0)   # the live-only path too
    assert predict_logits(net, _images(0)).shape == (0, 10)
    with pytest.raises(ValueError, match="no images"):
        test_model(net, [_images(0), np.zeros(0, int)])
