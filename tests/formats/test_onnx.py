"""ONNX in and out: torch-exported files read with torch's logits, ece662 exports run in
onnxruntime with ece662's logits, and hostile files refused with a clear ValueError."""
import os
import re

import numpy as np
import pytest

pytestmark = pytest.mark.oracle   # needs the optional onnx (and onnxruntime) packages
onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

import ece662.io  # noqa: E402
import ece662.layers as L  # noqa: E402
import ece662.pruning as prune  # noqa: E402
from helpers import FIXTURES, assert_close  # noqa: E402
from ece662.layers import Conv2d, Dropout, Flatten, Linear, MaxPool2d, ReLU, Sequential  # noqa: E402
from ece662.models import default_convnet  # noqa: E402
from ece662.formats.onnx_format import read_onnx, save_onnx  # noqa: E402
from ece662.pruning_helper import load_model  # noqa: E402

ONNX_FIXTURES = os.path.join(FIXTURES, "onnx")


def images(n=4, seed=0):
    return np.random.default_rng(seed).standard_normal((n, 3, 32, 32)).astype(np.float32)


def ort_logits(path, x):
    ort = pytest.importorskip("onnxruntime")
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


# ============================================================================ torch's files
@pytest.mark.parametrize("exporter", ["dynamo", "legacy"])
def test_torch_course_cnn_reads_with_torch_names_and_logits(exporter):
    """The course CNN exported by torch 2.13.0 (either exporter) loads with its architecture,
    the torch state-dict names, torch's logits and onnxruntime's logits."""
    path = os.path.join(ONNX_FIXTURES, f"course_cnn_{exporter}.onnx")
    io = np.load(os.path.join(ONNX_FIXTURES, "io.npz"))
    net = read_onnx(path)
    assert [type(m).__name__ for m in net] == ["Conv2d", "ReLU", "MaxPool2d", "Conv2d", "ReLU",
                                                "MaxPool2d", "Flatten", "Linear"]
    assert list(net.state_dict()) == ["conv1.weight", "conv1.bias", "conv2.weight", "conv2.bias",
                                      "fc.weight", "fc.bias"]
    assert not net.training
    assert_close(net(io["x"]), io["course_cnn"], f"course CNN, {exporter}", rtol=1e-4, atol=1e-5)
    assert_close(net(io["x"]), ort_logits(path, io["x"]), f"course CNN vs onnxruntime, {exporter}",
                 rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("exporter", ["dynamo", "legacy"])
def test_torch_pooling_cnn_reads_with_torch_logits(exporter):
    """A small CNN with LeakyReLU, AvgPool2d, Dropout2d, AdaptiveAvgPool2d(1) (written as
    GlobalAveragePool, or ReduceMean by the dynamo exporter), Dropout and Linear gives torch's
    logits and onnxruntime's."""
    path = os.path.join(ONNX_FIXTURES, f"pool_cnn_{exporter}.onnx")
    io = np.load(os.path.join(ONNX_FIXTURES, "io.npz"))
    net = read_onnx(path)
    assert [type(m).__name__ for m in net] == ["Conv2d", "LeakyReLU", "AvgPool2d", "Conv2d", "ReLU",
                                                "AdaptiveAvgPool2d", "Flatten", "Linear"]
    assert net[1].negative_slope == pytest.approx(0.2)
    assert_close(net(io["x"]), io["pool_cnn"], f"pooling CNN, {exporter}", rtol=1e-4, atol=1e-5)
    assert_close(net(io["x"]), ort_logits(path, io["x"]), f"pooling CNN vs onnxruntime, {exporter}",
                 rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("exporter", ["dynamo", "legacy"])
def test_torch_view_flatten_reads_as_flatten(exporter):
    """x.view(x.size(0), -1), which the legacy exporter writes as Shape -> Gather -> Unsqueeze ->
    Concat -> Reshape, reads as one Flatten with torch's logits."""
    path = os.path.join(ONNX_FIXTURES, f"view_cnn_{exporter}.onnx")
    io = np.load(os.path.join(ONNX_FIXTURES, "io.npz"))
    if exporter == "legacy":
        ops = [n.op_type for n in onnx.load(path).graph.node]
        assert "Shape" in ops and "Concat" in ops      # the fixture holds the shape arithmetic
    net = read_onnx(path)
    assert [type(m).__name__ for m in net] == ["Conv2d", "ReLU", "MaxPool2d", "Flatten", "Linear"]
    assert_close(net(io["x"]), io["view_cnn"], f"view CNN, {exporter}", rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("exporter", ["dynamo", "legacy"])
def test_torch_batchnorm_cnn_reads_with_torch_logits(exporter):
    """A student-style CNN (BatchNorm2d/1d, LeakyReLU, AvgPool2d, AdaptiveAvgPool2d(1), Dropout,
    Linear) exported by torch gives torch's logits and onnxruntime's."""
    path = os.path.join(ONNX_FIXTURES, f"bn_cnn_{exporter}.onnx")
    io = np.load(os.path.join(ONNX_FIXTURES, "io.npz"))
    net = read_onnx(path)
    kinds = [type(m).__name__ for m in net]
    assert "BatchNorm2d" in kinds and "LeakyReLU" in kinds and "AvgPool2d" in kinds
    assert "AdaptiveAvgPool2d" in kinds and kinds[-1] == "Linear"
    assert_close(net(io["x"]), io["bn_cnn"], f"BN CNN, {exporter}", rtol=1e-4, atol=1e-5)
    assert_close(net(io["x"]), ort_logits(path, io["x"]), f"BN CNN vs onnxruntime, {exporter}",
                 rtol=1e-4, atol=1e-5)


def test_batchnorm_model_round_trips_through_onnx(tmp_path):
    """A torch BatchNorm CNN read from ONNX, saved by ece662 and read again keeps its logits,
    and onnxruntime agrees with ece662 on ece662's export."""
    io = np.load(os.path.join(ONNX_FIXTURES, "io.npz"))
    net = read_onnx(os.path.join(ONNX_FIXTURES, "bn_cnn_legacy.onnx"))
    path = tmp_path / "bn.onnx"
    save_onnx(net, path)
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    again = read_onnx(path)
    assert [type(m).__name__ for m in again] == [type(m).__name__ for m in net]
    np.testing.assert_array_equal(again(io["x"]), net(io["x"]))
    assert_close(ort_logits(path, io["x"]), io["bn_cnn"], "BN CNN exported by ece662", rtol=1e-4, atol=1e-5)


def test_pruned_and_shrunk_batchnorm_model_exports_with_its_logits(tmp_path):
    """The torch BatchNorm CNN, read from ONNX, with half of its second conv's filters pruned and
    then shrunk, exports to ONNX with the pruned model's logits in onnxruntime; a BatchNorm2d
    with affine=False exports too."""
    io = np.load(os.path.join(ONNX_FIXTURES, "io.npz"))
    net = read_onnx(os.path.join(ONNX_FIXTURES, "bn_cnn_legacy.onnx"))
    prune.ln_structured(net["4"], "weight", amount=0.5, n=2, dim=0)
    small = prune.shrink(net)
    assert small["4"].weight.shape[0] == 8
    path = tmp_path / "small.onnx"
    save_onnx(small, path)
    assert_close(ort_logits(path, io["x"]), net(io["x"]), "pruned and shrunk BN CNN", rtol=1e-4, atol=1e-4)

    plain = Sequential(Conv2d(3, 4, 3, seed=0), L.BatchNorm2d(4, affine=False), ReLU(), Flatten(),
                       Linear(4 * 30 * 30, 3, seed=1)).eval()
    plain[1].running_mean = np.array([0.1, -0.2, 0.3, 0.0], np.float32)
    plain[1].running_var = np.array([0.5, 2.0, 1.0, 1.5], np.float32)
    save_onnx(plain, tmp_path / "plain.onnx")
    x = images(2)
    assert_close(ort_logits(tmp_path / "plain.onnx", x), plain(x), "affine=False BatchNorm", atol=1e-4)


# load_model(path, mode='onnx') and save_model(model, 'x.onnx') are wired in by the lead when merging
# (ece662/pruning_helper.py and ece662/io.py); until then this test is an expected failure (never a skip)
_WIRED = hasattr(ece662.io, "read_onnx")


@pytest.mark.xfail(not _WIRED, raises=ValueError, strict=True,
                   reason="load_model(mode='onnx') / save_model('x.onnx') not wired into ece662 yet")
def test_course_helpers_read_and_write_onnx(tmp_path):
    """load_model(path, mode='onnx') reads torch's export with torch's logits, and save_model
    writes ONNX for a name ending in .onnx (and ece662's .npz otherwise)."""
    io = np.load(os.path.join(ONNX_FIXTURES, "io.npz"))
    net = load_model(os.path.join(ONNX_FIXTURES, "course_cnn_dynamo.onnx"), mode="onnx")
    assert_close(net(io["x"]), io["course_cnn"], "load_model(mode='onnx')", rtol=1e-4, atol=1e-5)
    ece662.io.save_model(net, tmp_path / "net.onnx")
    assert [n.op_type for n in onnx.load(str(tmp_path / "net.onnx")).graph.node][0] == "Conv"
    np.testing.assert_array_equal(load_model(tmp_path / "net.onnx", mode="onnx")(io["x"]), net(io["x"]))
    ece662.io.save_model(net, tmp_path / "net.npz")
    np.testing.assert_array_equal(load_model(tmp_path / "net.npz")(io["x"]), net(io["x"]))


# ============================================================================ ece662's exports
def pruned_model():
    """The shipped model with half the filters of each conv and 40% of fc's weights pruned."""
    net = load_model()
    prune.ln_structured(net.conv1, "weight", amount=0.5, n=2, dim=0)
    prune.ln_structured(net.conv2, "weight", amount=0.5, n=2, dim=0)
    prune.l1_unstructured(net.fc, "weight", amount=0.4)
    return net.eval()


@pytest.mark.parametrize("which", ["shipped", "pruned", "pruned and shrunk"])
def test_export_runs_in_onnxruntime_with_ece662_logits(which, tmp_path):
    """save_onnx of the shipped, a pruned, and a pruned-and-shrunk model passes the ONNX checker,
    and onnxruntime gives ece662's logits for any batch size."""
    net = {"shipped": load_model, "pruned": pruned_model,
           "pruned and shrunk": lambda: prune.shrink(pruned_model())}[which]()
    path = tmp_path / "net.onnx"
    save_onnx(net, path)
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    for n in (1, 7):
        x = images(n, seed=n)
        assert_close(ort_logits(path, x), net(x), f"{which}, batch {n}", rtol=1e-4, atol=1e-4)


def test_pruned_export_holds_effective_weights_and_shrunk_export_is_smaller(tmp_path):
    """A pruned model is exported with weight_orig * weight_mask; after shrink() the ONNX
    weights have the surviving filters only."""
    net = pruned_model()
    save_onnx(net, tmp_path / "pruned.onnx")
    save_onnx(prune.shrink(net), tmp_path / "shrunk.onnx")
    pruned = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(tmp_path / "pruned.onnx")).graph.initializer}
    shrunk = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(tmp_path / "shrunk.onnx")).graph.initializer}
    np.testing.assert_array_equal(pruned["conv1.weight"], net.conv1.weight_orig * net.conv1.weight_mask)
    np.testing.assert_array_equal(pruned["fc.weight"], net.fc.weight_orig * net.fc.weight_mask)
    assert pruned["conv2.weight"].shape == (32, 32, 3, 3)
    assert shrunk["conv1.weight"].shape == (16, 3, 5, 5)
    assert shrunk["conv2.weight"].shape == (16, 16, 3, 3)
    assert shrunk["fc.weight"].shape == (10, 16 * 6 * 6)


def test_round_trip_gives_identical_logits_and_leaves_the_model_alone(tmp_path):
    """read_onnx(save_onnx(m)) has m's layers, names and bit-identical logits; m is not changed."""
    net = pruned_model().train()
    before = {k: v.copy() for k, v in net.state_dict().items()}
    path = tmp_path / "net.onnx"
    save_onnx(net, path)
    assert net.training and all(np.array_equal(v, before[k]) for k, v in net.state_dict().items())
    again = read_onnx(path)
    assert [(n, type(m).__name__) for n, m in again.named_children()] == \
        [(n, type(m).__name__) for n, m in net.named_children()]
    x = images(5)
    np.testing.assert_array_equal(again(x), net.eval()(x))


def test_pooling_layers_export_and_round_trip(tmp_path):
    """LeakyReLU, AvgPool2d, AdaptiveAvgPool2d(1) and Dropout2d export to ONNX with ece662's
    logits in onnxruntime, and read back with identical logits."""
    net = Sequential(Conv2d(3, 6, 3, padding=1, seed=0), L.LeakyReLU(0.1), L.AvgPool2d(2),
                     L.Dropout2d(0.2), Conv2d(6, 8, 3, stride=2, seed=1), ReLU(), L.AdaptiveAvgPool2d(1),
                     Flatten(), Linear(8, 4, seed=2)).eval()
    path = tmp_path / "pool.onnx"
    save_onnx(net, path)
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    x = images(3)
    assert_close(ort_logits(path, x), net(x), "pooling layers in onnxruntime", atol=1e-5)
    again = read_onnx(path)
    assert [type(m).__name__ for m in again] == ["Conv2d", "LeakyReLU", "AvgPool2d", "Dropout", "Conv2d",
                                                  "ReLU", "AdaptiveAvgPool2d", "Flatten", "Linear"]
    np.testing.assert_array_equal(again(x), net(x))


def test_dropout_and_a_linear_network_round_trip(tmp_path):
    """Dropout is exported (identity at inference) and read back; a linear-only network takes (N, F)."""
    net = Sequential(Linear(6, 5, seed=0), ReLU(), Dropout(0.25), Linear(5, 3, seed=1)).eval()
    path = tmp_path / "mlp.onnx"
    save_onnx(net, path, input_shape=(6,))
    again = read_onnx(path)
    assert [type(m).__name__ for m in again] == ["Linear", "ReLU", "Dropout", "Linear"]
    assert again[2].p == 0.25
    x = np.random.default_rng(0).standard_normal((4, 6)).astype(np.float32)
    np.testing.assert_array_equal(again(x), net(x))
    assert_close(ort_logits(path, x), net(x), "MLP in onnxruntime", atol=1e-5)


def test_matmul_add_reads_as_linear(tmp_path):
    """MatMul(x, W) + B, as Keras converters write a Dense layer, becomes one Linear."""
    rng = np.random.default_rng(0)
    W = rng.standard_normal((6, 4)).astype(np.float32)
    B = rng.standard_normal(4).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["h"], name="dense"),
         helper.make_node("Add", ["h", "B"], ["y"], name="dense_bias")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
        initializer=[numpy_helper.from_array(W, "W"), numpy_helper.from_array(B, "B")])
    path = write(tmp_path / "dense.onnx", helper.make_model(graph))
    net = read_onnx(path)
    assert [type(m).__name__ for m in net] == ["Linear"]
    x = rng.standard_normal((3, 6)).astype(np.float32)
    assert_close(net(x), x @ W + B, "MatMul + Add", atol=1e-5)


def test_failed_save_keeps_the_old_file(tmp_path):
    """Exporting a model with a layer ONNX export does not know raises, leaving the old file intact."""
    class Odd(L.Module):
        def forward(self, x):
            return x

    path = tmp_path / "net.onnx"
    save_onnx(default_convnet(seed=0), path)
    before = path.read_bytes()
    bad = Sequential(Conv2d(3, 4, 3, seed=0), Odd(), Flatten(), Linear(4 * 30 * 30, 2, seed=0))
    with pytest.raises(ValueError, match="Odd"):
        save_onnx(bad, path)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["net.onnx"]
    with pytest.raises(TypeError, match="Sequential"):
        save_onnx(Conv2d(3, 4, 3), path)
    with pytest.raises(ValueError, match="input_shape"):
        save_onnx(default_convnet(seed=0), path, input_shape=(3, 28, 28))


def test_onnx_accuracy_equals_ece662_accuracy(real_data, tmp_path):
    """On real test images, the shipped model in onnxruntime classifies like ece662 does."""
    from ece662.data_utils import get_CINIC10_data
    data = get_CINIC10_data(os.path.join(real_data, "cifar10_real_small.npz"), splits=("test",))
    X, y = np.asarray(data["X_test"][:500]), data["y_test"][:500]
    net = load_model()
    save_onnx(net, tmp_path / "net.onnx")
    ours, theirs = net(X).argmax(1), ort_logits(tmp_path / "net.onnx", X).argmax(1)
    assert np.mean(ours == y) == np.mean(theirs == y) > 0.4


# ============================================================================ hostile files
def write(path, proto):
    """Serialize a (possibly invalid) ModelProto as it is, without onnx's own checks."""
    with open(path, "wb") as f:
        f.write(proto.SerializeToString())
    return path


def small_proto(tmp_path):
    """A small valid graph, Conv -> Relu -> MaxPool -> Flatten -> Gemm, as a ModelProto to damage."""
    net = Sequential(Conv2d(3, 4, 3, seed=0), ReLU(), MaxPool2d(2), Flatten(), Linear(4 * 15 * 15, 2, seed=1))
    save_onnx(net, tmp_path / "small.onnx")
    return onnx.load(str(tmp_path / "small.onnx"))


def init(proto, name):
    return next(t for t in proto.graph.initializer if t.name == name)


def node(proto, name):
    return next(n for n in proto.graph.node if n.name == name)


def test_small_proto_is_valid(tmp_path):
    """The file the hostile tests damage reads fine before it is damaged."""
    net = read_onnx(write(tmp_path / "ok.onnx", small_proto(tmp_path)))
    assert [type(m).__name__ for m in net] == ["Conv2d", "ReLU", "MaxPool2d", "Flatten", "Linear"]


def test_huge_declared_tensor_is_refused_before_allocating(tmp_path):
    """An initializer declaring 2^40 floats with 16 bytes of data is refused, not allocated."""
    p = small_proto(tmp_path)
    t = init(p, "0.weight")
    del t.dims[:]
    t.dims.extend([1 << 20, 1 << 20, 1, 1])
    t.raw_data = b"\0" * 16
    with pytest.raises(ValueError, match=r"declares shape \[1048576, 1048576, 1, 1\]"):
        read_onnx(write(tmp_path / "huge.onnx", p))


@pytest.mark.parametrize("damage", ["short raw_data", "short float_data", "negative dims"])
def test_tensor_data_that_does_not_match_its_shape_is_refused(damage, tmp_path):
    """A tensor whose bytes do not fill its declared shape is refused with both sizes named."""
    p = small_proto(tmp_path)
    t = init(p, "4.weight")
    if damage == "short raw_data":
        t.raw_data = t.raw_data[:100]
        match = "holds 100 bytes"
    elif damage == "short float_data":
        t.ClearField("raw_data")
        t.float_data.extend([0.5] * 10)
        match = "holds 10"
    else:
        t.dims[0] = -2
        match = "negative"
    with pytest.raises(ValueError, match=match):
        read_onnx(write(tmp_path / "bad.onnx", p))


def make_external(t, location, offset=0, length=None):
    """Turn initializer ``t`` into an external-data reference."""
    n = len(t.raw_data)
    t.ClearField("raw_data")
    t.data_location = TensorProto.EXTERNAL
    del t.external_data[:]
    for key, value in (("location", location), ("offset", str(offset)), ("length", str(n if length is None else length))):
        entry = t.external_data.add()
        entry.key, entry.value = key, value
    return n


def test_external_data_inside_the_folder_is_read(tmp_path):
    """External data in a file beside the model is read, bounded by the declared length."""
    p = small_proto(tmp_path)
    t = init(p, "4.weight")
    raw = t.raw_data
    (tmp_path / "w.bin").write_bytes(b"\x07" * 12 + raw + b"tail")
    make_external(t, "w.bin", offset=12)
    net = read_onnx(write(tmp_path / "ext.onnx", p))
    np.testing.assert_array_equal(net[4].weight, np.frombuffer(raw, np.float32).reshape(2, 900))


@pytest.mark.parametrize("where", ["absolute", "dotdot", "symlink"])
def test_external_data_outside_the_folder_is_never_followed(where, tmp_path):
    """External-data locations outside the model's folder are refused, even when the outside
    file holds exactly the right bytes (so following it would have 'worked')."""
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    p = small_proto(tmp_path)
    t = init(p, "4.weight")
    secret = tmp_path / "secret.bin"
    secret.write_bytes(t.raw_data)
    if where == "absolute":
        location = str(secret)
    elif where == "dotdot":
        location = "../secret.bin"
    else:
        os.symlink(secret, model_dir / "link.bin")
        location = "link.bin"
    make_external(t, location)
    with pytest.raises(ValueError, match="outside the model's folder|inside the model's folder"):
        read_onnx(write(model_dir / "net.onnx", p))


@pytest.mark.parametrize("damage", ["past the end", "missing file", "wrong length"])
def test_external_data_reads_are_bounded(damage, tmp_path):
    """An external reference past the end of its file, to a missing file, or with a length that
    does not match the tensor's shape is refused."""
    p = small_proto(tmp_path)
    t = init(p, "4.weight")
    n = len(t.raw_data)
    (tmp_path / "w.bin").write_bytes(t.raw_data)
    if damage == "past the end":
        make_external(t, "w.bin", offset=8)
        match = "truncated"
    elif damage == "missing file":
        make_external(t, "nothere.bin")
        match = "missing"
    else:
        make_external(t, "w.bin", length=n * 1000)
        match = "needs"
    with pytest.raises(ValueError, match=match):
        read_onnx(write(tmp_path / "ext.onnx", p))


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty", "not a graph"])
def test_damaged_files_are_refused(damage, tmp_path):
    """Truncated protobufs, random bytes and empty files give a ValueError, never a crash."""
    good = (tmp_path / "g.onnx")
    write(good, small_proto(tmp_path))
    data = good.read_bytes()
    content = {"truncated": data[: len(data) // 2], "garbage": np.random.default_rng(0).bytes(5000),
               "empty": b"", "not a graph": b"PK\x03\x04 a zip file, say"}[damage]
    path = tmp_path / "bad.onnx"
    path.write_bytes(content)
    with pytest.raises(ValueError):
        read_onnx(path)
    with pytest.raises(FileNotFoundError):
        read_onnx(tmp_path / "nothere.onnx")


def test_non_finite_weight_is_refused_naming_the_node(tmp_path):
    """A NaN in a weight is refused with the node and tensor named."""
    p = small_proto(tmp_path)
    t = init(p, "0.weight")
    w = numpy_helper.to_array(t).copy()
    w[1, 2, 0, 0] = np.nan
    t.raw_data = w.tobytes()
    with pytest.raises(ValueError, match=r"node '0' \(Conv\).*'0.weight' holds 1 NaN"):
        read_onnx(write(tmp_path / "nan.onnx", p))


@pytest.mark.parametrize("dims", [[None, 3, 32], [None, 3, 32, 32, 1], [None, "C", 17, 17]])
def test_wrong_input_rank_or_symbolic_size_is_refused(dims, tmp_path):
    """A graph input that is not (N, C, H, W) with fixed C, H, W is refused."""
    p = small_proto(tmp_path)
    inp = p.graph.input[0]
    shape = inp.type.tensor_type.shape
    del shape.dim[:]
    for d in dims:
        dim = shape.dim.add()
        if isinstance(d, int):
            dim.dim_value = d
        elif d:
            dim.dim_param = d
    with pytest.raises(ValueError, match="graph input"):
        read_onnx(write(tmp_path / "rank.onnx", p))


def test_input_channels_that_do_not_fit_the_first_conv_are_refused(tmp_path):
    """A declared input of 1 channel feeding a 3-channel conv is refused, naming the node."""
    p = small_proto(tmp_path)
    p.graph.input[0].type.tensor_type.shape.dim[1].dim_value = 1
    with pytest.raises(ValueError, match=r"node '0' \(Conv\).*1 input channels"):
        read_onnx(write(tmp_path / "ch.onnx", p))


def test_unknown_op_is_refused_naming_node_and_op(tmp_path):
    """An op with no ece662 layer (Sigmoid here) is refused with its node name and op."""
    p = small_proto(tmp_path)
    node(p, "1").op_type = "Sigmoid"
    with pytest.raises(ValueError, match=r"node '1' \(Sigmoid\).*no ece662 layer"):
        read_onnx(write(tmp_path / "sigmoid.onnx", p))


def test_branching_graph_is_refused(tmp_path):
    """A residual connection (the pool output read twice) is refused: ece662 reads chains."""
    p = small_proto(tmp_path)
    n = node(p, "3")                     # Flatten(pool output)
    old_out = n.output[0]
    n.output[0] = "flat_a"
    p.graph.node.insert(4, helper.make_node("Add", ["flat_a", "flat_a"], [old_out], name="residual"))
    with pytest.raises(ValueError, match="residual.*branching|branching"):
        read_onnx(write(tmp_path / "branch.onnx", p))


@pytest.mark.parametrize("name, attr, value, match", [
    ("0", "dilations", [2, 2], "dilations"),
    ("0", "group", 3, "group=3"),
    ("0", "pads", [1, 0, 1, 0], "asymmetric pads"),
    ("0", "strides", [1, 2], "strides"),
    ("0", "strides", [0, 0], "stride"),
    ("2", "ceil_mode", 1, "ceil_mode"),
    ("2", "pads", [1, 1, 1, 1], "padding"),
    ("3", "axis", 2, "axis=2"),
    ("4", "transA", 1, "transA"),
])
def test_unsupported_attributes_are_refused(name, attr, value, match, tmp_path):
    """Attributes ece662's layers cannot express are refused, naming the node and op."""
    p = small_proto(tmp_path)
    n = node(p, name)
    kept = [a for a in n.attribute if a.name != attr]
    del n.attribute[:]
    n.attribute.extend(kept + [helper.make_attribute(attr, value)])
    with pytest.raises(ValueError, match=rf"node '{name}' \({n.op_type}\).*{match}"):
        read_onnx(write(tmp_path / "attr.onnx", p))


def test_reshape_that_is_not_a_flatten_is_refused(tmp_path):
    """Reshape reads as Flatten only for the target (N, C*H*W)."""
    p = small_proto(tmp_path)
    n = node(p, "3")
    n.op_type = "Reshape"
    del n.attribute[:]
    n.input.append("target")
    p.graph.initializer.append(numpy_helper.from_array(np.array([-1, 450], np.int64), "target"))
    for bad in ([-1, 450], [-1, -1], [5, -1], [900], [-1, 1, 900]):
        init(p, "target").CopyFrom(numpy_helper.from_array(np.array(bad, np.int64), "target"))
        with pytest.raises(ValueError, match=r"node '3' \(Reshape\).*flatten to \(N, 900\)"):
            read_onnx(write(tmp_path / "reshape.onnx", p))
    for good in ([-1, 900], [0, -1], [0, 900], [7, 900]):
        init(p, "target").CopyFrom(numpy_helper.from_array(np.array(good, np.int64), "target"))
        assert isinstance(read_onnx(write(tmp_path / "reshape.onnx", p))[3], Flatten), good
    p.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 5      # a fixed batch of 5
    init(p, "target").CopyFrom(numpy_helper.from_array(np.array([5, -1], np.int64), "target"))
    assert isinstance(read_onnx(write(tmp_path / "reshape.onnx", p))[3], Flatten)


def test_randomly_damaged_graphs_give_a_model_or_a_value_error(tmp_path):
    """300 seeded random damages of a valid graph (inputs, outputs, ops, attributes, dims, data,
    node order) each end in a model or a ValueError: never another exception."""
    ops = ["Conv", "Relu", "MaxPool", "AveragePool", "Flatten", "Reshape", "Gemm", "MatMul", "Add",
           "BatchNormalization", "Dropout", "Identity", "Constant", "GlobalAveragePool", "ReduceMean",
           "Shape", "Gather", "Unsqueeze", "Concat"]
    values = [0, -1, 2, 1 << 40, 0.5, float("nan"), [1], [2, 2], [0, 0, 0, 0], [-3, 1 << 40], [0.5, 2.0], "abc"]
    good = small_proto(tmp_path)
    rng = np.random.default_rng(0)
    outcomes = set()
    for trial in range(300):
        p = onnx.ModelProto()
        p.CopyFrom(good)
        for _ in range(rng.integers(1, 4)):
            nodes = p.graph.node
            n = nodes[int(rng.integers(len(nodes)))]
            kind = rng.integers(8)
            if kind == 0 and n.input:
                del n.input[int(rng.integers(len(n.input)))]
            elif kind == 1:
                del n.output[:]
            elif kind == 2:
                n.op_type = str(rng.choice(ops))
            elif kind == 3:
                value = values[int(rng.integers(len(values)))]
                name = str(rng.choice(["kernel_shape", "strides", "pads", "axis", "alpha", "transB", "value",
                                       "group", "epsilon", "axes", "keepdims"]))
                kept = [a for a in n.attribute if a.name != name]
                del n.attribute[:]
                n.attribute.extend(kept + [helper.make_attribute(name, value)])
            elif kind == 4:
                t = p.graph.initializer[int(rng.integers(len(p.graph.initializer)))]
                if t.dims:
                    t.dims[int(rng.integers(len(t.dims)))] = int(rng.choice([0, 1, 7, 1 << 31]))
            elif kind == 5:
                t = p.graph.initializer[int(rng.integers(len(p.graph.initializer)))]
                t.raw_data = t.raw_data[: int(rng.integers(len(t.raw_data) + 1))]
            elif kind == 6 and len(nodes) > 1:
                i = int(rng.integers(len(nodes) - 1))
                a, b = onnx.NodeProto(), onnx.NodeProto()
                a.CopyFrom(nodes[i])
                b.CopyFrom(nodes[i + 1])
                nodes[i].CopyFrom(b)
                nodes[i + 1].CopyFrom(a)
            else:
                t = p.graph.initializer[int(rng.integers(len(p.graph.initializer)))]
                t.data_type = int(rng.choice([2, 7, 8, 10, 11, 16]))
        path = write(tmp_path / "fuzz.onnx", p)
        try:
            read_onnx(path)
            outcomes.add("model")
        except ValueError:
            outcomes.add("ValueError")
    assert "ValueError" in outcomes


# ============================================================================ issue 25: bounds, finite values, attributes
def graph_file(path, nodes, input_shape, inits=(), output="y", batch="N"):
    """Write a graph of ``nodes`` reading ``x`` of shape (batch, *input_shape) and giving ``output``."""
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, *input_shape])],
        [helper.make_tensor_value_info(output, TensorProto.FLOAT, None)],
        initializer=[numpy_helper.from_array(np.asarray(v), k) for k, v in dict(inits).items()])
    return str(write(path, helper.make_model(graph)))


def head(features, classes=2, src="f"):
    """A Gemm reading ``src`` (N, features): the end of every small test graph."""
    W = np.random.default_rng(0).standard_normal((classes, features)).astype(np.float32)
    return [helper.make_node("Gemm", [src, "W"], ["y"], name="fc", transB=1)], {"W": W}


def doubling_shapes_file(folder, n=40):
    """Shape(x), then ``n`` nodes Concat(s, s) that each double a shape value, beside a real chain."""
    nodes = [helper.make_node("Shape", ["x"], ["s0"], name="shape")]
    nodes += [helper.make_node("Concat", [f"s{i}", f"s{i}"], [f"s{i + 1}"], name=f"double{i}", axis=0)
              for i in range(n)]
    nodes.append(helper.make_node("Flatten", ["x"], ["f"], name="flatten", axis=1))
    gemm, inits = head(3 * 4 * 4)
    return graph_file(folder / "doubling.onnx", nodes + gemm, [3, 4, 4], inits)


def batchnorm_file(folder, name, channels, hw=1, vector_size=1):
    """BatchNormalization over a declared input of ``channels`` channels, its four vectors of
    ``vector_size`` values, then a global pool and a Gemm."""
    v = np.ones(vector_size, np.float32)
    nodes = [helper.make_node("BatchNormalization", ["x", "g", "b", "m", "v"], ["h"], name="bn"),
             helper.make_node("GlobalAveragePool", ["h"], ["p"], name="gap"),
             helper.make_node("Flatten", ["p"], ["f"], name="flatten", axis=1)]
    gemm, inits = head(vector_size)
    return graph_file(folder / name, nodes + gemm, [channels, hw, hw], dict(inits, g=v, b=v, m=v * 0, v=v))


def conv_pool_file(folder, name, filters=1, kernel=3, pad=0):
    """Conv (``pad`` on every side) -> GlobalAveragePool -> Flatten -> Gemm on 3x32x32 images."""
    w = np.full((filters, 3, kernel, kernel), 0.01, np.float32)
    nodes = [helper.make_node("Conv", ["x", "cw"], ["c"], name="wide", kernel_shape=[kernel, kernel],
                              pads=[pad] * 4),
             helper.make_node("GlobalAveragePool", ["c"], ["p"], name="gap"),
             helper.make_node("Flatten", ["p"], ["f"], name="flatten", axis=1)]
    gemm, inits = head(filters)
    return graph_file(folder / name, nodes + gemm, [3, 32, 32], dict(inits, cw=w))


ONNX_CHILD = """
import json, resource, sys
from ece662.formats.onnx_format import read_onnx
vm = int(next(l for l in open("/proc/self/status") if l.startswith("VmSize")).split()[1]) * 1024
resource.setrlimit(resource.RLIMIT_AS, (vm + (1 << 30), resource.RLIM_INFINITY))   # 1 GiB more
out = {}
for name, path in json.loads(sys.argv[1]).items():
    try:
        read_onnx(path)
        out[name] = ["ok", ""]
    except BaseException as e:
        out[name] = [type(e).__name__, str(e)]
print(json.dumps(out))
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="RLIMIT_AS and /proc are Linux's")
def test_small_onnx_files_that_ask_for_gigabytes_are_refused_under_a_memory_limit(tmp_path):
    """Each file is a few kB and asked for gigabytes before: 40 Concat(s, s) of a shape (2**40
    entries), a BatchNorm over 2**29 declared channels with 1-value weights, 2**20 channels of
    4x4 (within the activation budget, so the weights' sizes are what refuse it), a 3x3 conv padded
    by 3000, 20,000 1x1 filters (20 M values per image).  Read in a child process allowed 1 GiB more
    than it starts with, each is a ValueError naming the file and the node or layer."""
    import json
    import subprocess
    import sys
    from helpers import REPO
    files = {
        "40 doubling Concats": (doubling_shapes_file(tmp_path), r"node 'double1' \(Concat\): the concatenated "
                                                                r"shape would hold 16 values"),
        "BatchNorm of 2**29 channels": (batchnorm_file(tmp_path, "bn29.onnx", 1 << 29),
                                        r"graph input 'x' has shape \[None, 536870912, 1, 1\]: 536,870,912 "
                                        r"values per input, more than the 16,777,216"),
        "BatchNorm of 2**20 channels": (batchnorm_file(tmp_path, "bn20.onnx", 1 << 20, hw=4),
                                        r"node 'bn' \(BatchNormalization\): 'g' has shape \(1,\), "
                                        r"expected \(1048576,\)"),
        "conv padding 3000": (conv_pool_file(tmp_path, "pad.onnx", pad=3000),
                              r"node 'wide' \(Conv\): padding 3000 with a 3x3 kernel; .*\(at most 2\)"),
        "20,000 filters": (conv_pool_file(tmp_path, "wide.onnx", filters=20_000, kernel=1),
                           r"wide \(Conv2d\) would make an output of shape \(N, 20000, 32, 32\): 20,480,000 "
                           r"values per input, .*MAX_ACTIVATION_VALUES"),
    }
    for name, (path, _) in files.items():
        assert os.path.getsize(path) < (500_000 if "filters" in name else 3000), name
    env = dict(os.environ, PYTHONPATH=REPO)
    proc = subprocess.run([sys.executable, "-c", ONNX_CHILD, json.dumps({k: p for k, (p, _) in files.items()})],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, f"the child crashed (rc {proc.returncode}): {proc.stderr[-2000:]}"
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    for name, (path, message) in files.items():
        kind, text = results[name]
        assert kind == "ValueError", f"{name}: {kind}: {text[:300]}"
        assert text.startswith(path), f"{name}: the message does not name the file: {text}"
        assert re.search(message, text), f"{name}: {text}"


@pytest.mark.parametrize("case, match", [
    ("concat of a 1000-value constant", r"node 'cat' \(Concat\): shape 'big' holds 1,000 values"),
    ("gather of 1000 indices", r"node 'pick' \(Gather\): index tensor 'big' holds 1,000 values"),
    ("reshape to a 1000-value target", r"node 'flat' \(Reshape\): target shape 'big' holds 1,000 values"),
    ("concat along axis 1", r"node 'cat' \(Concat\): a Concat of shapes along axis 1"),
])
def test_shape_arithmetic_takes_only_small_constants(case, match, tmp_path):
    """Constants read as shapes, indices or targets hold at most 8 values, checked from their
    declared size before they are converted."""
    big = np.zeros(1000, np.int64)
    gemm, inits = head(3 * 4 * 4)
    inits = dict(inits, big=big, zero=np.array([0], np.int64), minus1=np.array([-1], np.int64))
    shape = [helper.make_node("Shape", ["x"], ["s"], name="shape")]
    if case == "concat of a 1000-value constant":
        nodes = shape + [helper.make_node("Concat", ["s", "big"], ["t"], name="cat", axis=0)]
    elif case == "gather of 1000 indices":
        nodes = shape + [helper.make_node("Gather", ["s", "big"], ["t"], name="pick", axis=0)]
    elif case == "concat along axis 1":
        nodes = shape + [helper.make_node("Concat", ["s", "minus1"], ["t"], name="cat", axis=1)]
    else:
        nodes = []
    nodes.append(helper.make_node("Reshape", ["x", "big" if case.startswith("reshape") else "flat_shape"], ["f"],
                                  name="flat"))
    inits["flat_shape"] = np.array([0, -1], np.int64)
    with pytest.raises(ValueError, match=match):
        read_onnx(graph_file(tmp_path / "shape.onnx", nodes + gemm, [3, 4, 4], inits))


def test_values_read_from_the_file_stay_within_the_budget(tmp_path, monkeypatch):
    """One 10,000-value initializer reused by 10 Gemm layers is counted for each layer's copy:
    with the budget lowered to 50,000 values, the fifth layer is refused, naming it."""
    from ece662.formats import common
    monkeypatch.setattr(common, "MAX_PARAMETERS", 50_000)
    W = np.eye(100, dtype=np.float32)
    nodes = [helper.make_node("Gemm", ["x" if i == 0 else f"h{i}", "W"], [f"h{i + 1}" if i < 9 else "y"],
                              name=f"fc{i}", transB=1) for i in range(10)]
    path = graph_file(tmp_path / "reuse.onnx", nodes, [100], {"W": W})
    with pytest.raises(ValueError, match=r"node 'fc4' \(Gemm\): the float32 copy of 'W' a layer holds: with it "
                                         r"the file asks for 60,000 values, more than the 50,000"):
        read_onnx(path)
    monkeypatch.setattr(common, "MAX_PARAMETERS", 200_000)
    assert len(read_onnx(path)) == 10


def bn_gemm_proto(tmp_path):
    """small_proto with a BatchNormalization and a LeakyRelu after its conv: Conv, BN, LeakyRelu, Relu..."""
    net = Sequential(Conv2d(3, 4, 3, seed=0), L.BatchNorm2d(4), L.LeakyReLU(0.1), MaxPool2d(2), Flatten(),
                     Linear(4 * 15 * 15, 2, seed=1)).eval()
    save_onnx(net, tmp_path / "bn.onnx")
    return onnx.load(str(tmp_path / "bn.onnx"))


def set_attribute(n, name, value):
    kept = [a for a in n.attribute if a.name != name]
    del n.attribute[:]
    n.attribute.extend(kept + [helper.make_attribute(name, value)])


@pytest.mark.parametrize("damage, match", [
    ("Gemm alpha NaN", r"node '5' \(Gemm\): attribute alpha=nan is not finite"),
    ("Gemm beta inf", r"node '5' \(Gemm\): attribute beta=inf is not finite"),
    ("Gemm alpha 1e30 times weights 1e10", r"layer '5' \(Linear\): weight holds 1800 NaN or infinite"),
    ("LeakyRelu alpha NaN", r"node '2' \(LeakyRelu\): attribute alpha=nan is not finite"),
    ("BatchNorm epsilon NaN", r"node '1' \(BatchNormalization\): attribute epsilon=nan is not finite"),
    ("running_var < 0", r"node '1' \(BatchNormalization\): '1.running_var' \(the running variance\) holds negative"),
    ("BatchNorm fold overflows", r"layer '1' \(BatchNorm2d\): folded into '0', the weights holds 27 NaN or infinite"),
    ("float64 weight 1e39", r"node '5' \(Gemm\): weight '5.weight' holds 1 NaN or infinite value\(s\) "
                            r"out of 1800 \(as float32\)"),
])
def test_weights_that_are_not_finite_as_computed_are_refused(damage, match, tmp_path):
    """What the model would compute NaN logits with is refused, naming the file and the node or
    layer: NaN/inf attributes, an alpha whose product with the weights overflows float32, a
    negative running variance, a batch norm whose fold into the conv overflows, a float64 weight
    beyond float32."""
    p = bn_gemm_proto(tmp_path)
    if damage.startswith("Gemm alpha NaN"):
        set_attribute(node(p, "5"), "alpha", float("nan"))
    elif damage == "Gemm beta inf":
        set_attribute(node(p, "5"), "beta", float("inf"))
    elif damage.startswith("Gemm alpha 1e30"):
        set_attribute(node(p, "5"), "alpha", 1e30)
        init(p, "5.weight").CopyFrom(numpy_helper.from_array(np.full((2, 900), 1e10, np.float32), "5.weight"))
    elif damage == "LeakyRelu alpha NaN":
        set_attribute(node(p, "2"), "alpha", float("nan"))
    elif damage == "BatchNorm epsilon NaN":
        set_attribute(node(p, "1"), "epsilon", float("nan"))
    elif damage == "running_var < 0":
        init(p, "1.running_var").CopyFrom(numpy_helper.from_array(np.array([1, -1, 1, 1], np.float32),
                                                                  "1.running_var"))
    elif damage == "BatchNorm fold overflows":
        init(p, "0.weight").CopyFrom(numpy_helper.from_array(np.full((4, 3, 3, 3), 1e20, np.float32), "0.weight"))
        init(p, "1.weight").CopyFrom(numpy_helper.from_array(np.array([1, 1, 1e20, 1], np.float32), "1.weight"))
    else:
        w = numpy_helper.to_array(init(p, "5.weight")).astype(np.float64)
        w[0, 0] = 1e39
        init(p, "5.weight").CopyFrom(numpy_helper.from_array(w, "5.weight"))
    path = str(write(tmp_path / "nonfinite.onnx", p))
    with pytest.raises(ValueError, match=re.escape(path) + ".*" + match):
        read_onnx(path)


def test_duplicate_initializers_and_redefined_values_are_refused(tmp_path):
    """Two initializers of one name (the ONNX checker refuses them; ece662 used the last), and a
    node output that redefines an initializer, are refused, naming the file and the name."""
    p = small_proto(tmp_path)
    twin = onnx.TensorProto()
    twin.CopyFrom(init(p, "4.weight"))
    p.graph.initializer.append(twin)
    path = str(write(tmp_path / "twice.onnx", p))
    with pytest.raises(ValueError, match=re.escape(path) + r": the initializers \['4.weight'\] are given "
                                                           r"more than once"):
        read_onnx(path)
    p = small_proto(tmp_path)
    node(p, "1").output[0] = "4.weight"
    node(p, "2").input[0] = "4.weight"
    with pytest.raises(ValueError, match=r"node '1' \(Relu\): its output '4.weight' is already defined"):
        read_onnx(write(tmp_path / "ssa.onnx", p))


@pytest.mark.parametrize("name, attr, value, match", [
    ("4", "transB", 7, "attribute transB=7; it is a flag, 0 or 1"),
    ("4", "transB", -1, "attribute transB=-1; it is a flag"),
    ("4", "transB", 1.0, "attribute 'transB' is of kind float, expected flag"),
    ("2", "ceil_mode", 2, "attribute ceil_mode=2; it is a flag"),
    ("2", "storage_order", 5, "attribute storage_order=5; it is a flag"),
    ("0", "group", 1.0, "attribute 'group' is of kind float, expected int"),
    ("0", "kernel_shape", [3.0, 3.0], "attribute 'kernel_shape' is of kind floats, expected ints"),
    ("0", "foo", 1, "attribute 'foo' is not one of Conv's"),
    ("1", "alpha", 0.5, "attribute 'alpha' is not one of Relu's .it has none."),
    ("3", "axis", "1", "attribute 'axis' is of kind string, expected int"),
])
def test_attribute_values_outside_their_allowed_sets_are_refused(name, attr, value, match, tmp_path):
    """Flags other than 0/1 (transB=7 was read as 'transposed'), attributes of the wrong kind and
    attributes the op does not have are refused, naming the node."""
    p = small_proto(tmp_path)
    n = node(p, name)
    set_attribute(n, attr, value)
    with pytest.raises(ValueError, match=rf"node '{name}' \({n.op_type}\): {match}"):
        read_onnx(write(tmp_path / "attr.onnx", p))


def test_an_attribute_given_twice_is_refused(tmp_path):
    p = small_proto(tmp_path)
    n = node(p, "4")
    n.attribute.extend([helper.make_attribute("transB", 0)])
    with pytest.raises(ValueError, match=r"node '4' \(Gemm\): attribute 'transB' is given twice"):
        read_onnx(write(tmp_path / "twice.onnx", p))


@pytest.mark.parametrize("location", ["sub/w.bin", "sub\\w.bin", "./w.bin", "C:w.bin"])
def test_external_data_only_directly_in_the_model_folder(location, tmp_path):
    """External data in a subfolder of the model's folder is refused too (a model saved in the
    home folder could otherwise read .ssh/), even when the file exists and holds the right bytes."""
    p = small_proto(tmp_path)
    t = init(p, "4.weight")
    raw = t.raw_data
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "w.bin").write_bytes(raw)
    (tmp_path / "w.bin").write_bytes(raw)
    make_external(t, location)
    path = str(write(tmp_path / "ext.onnx", p))
    with pytest.raises(ValueError, match=re.escape(path) + r".*must be a file directly inside the model's folder"):
        read_onnx(path)
    make_external(t, "w.bin", length=len(raw))
    assert read_onnx(write(tmp_path / "ext.onnx", p))[4].weight.shape == (2, 900)


def test_batchnorm_and_leaky_relu_files_still_read(tmp_path):
    """The graph the non-finite tests damage reads, undamaged, with ece662's logits."""
    p = bn_gemm_proto(tmp_path)
    net = read_onnx(write(tmp_path / "ok.onnx", p))
    assert [type(m).__name__ for m in net] == ["Conv2d", "BatchNorm2d", "LeakyReLU", "MaxPool2d", "Flatten",
                                                "Linear"]
    x = images(2)
    assert_close(net(x), ort_logits(tmp_path / "ok.onnx", x), "BN + LeakyReLU", atol=1e-5)
