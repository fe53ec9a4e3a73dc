"""ONNX files in and out: ``read_onnx(path) -> Sequential`` and ``save_onnx(model, path)``.

ONNX is the exchange format every framework exports (``torch.onnx.export``, tf2onnx for Keras)
and production runtimes such as onnxruntime run.  It needs the optional ``onnx`` package
(``pip install onnx``, or ``pip install -e ".[onnx]"``); the rest of ece662 never imports it.

What is inside an ONNX file
---------------------------
A protobuf ``ModelProto`` whose ``graph`` holds four lists.  Printed with
``print(onnx.printer.to_text(onnx.load(path).graph))``, the course CNN exported by torch reads
(abridged: node names, attribute types and defaults, and the weights' values left out)::

    main_graph (float[N,3,32,32] input)            <- graph.input: name, dtype, shape ('N' = any batch)
      => (float[N,10] logits)                       <- graph.output
      <float[32,3,5,5] conv1.weight, float[32] conv1.bias, ...>     <- graph.initializer: the weights
    {
      /conv1/Conv_output_0 = Conv <kernel_shape=[5,5], pads=[0,0,0,0], strides=[1,1]> (input, conv1.weight, conv1.bias)
      /Relu_output_0 = Relu (/conv1/Conv_output_0)
      /MaxPool_output_0 = MaxPool <kernel_shape=[2,2], strides=[2,2]> (/Relu_output_0)
      ...
      /Flatten_output_0 = Flatten <axis=1> (/MaxPool_1_output_0)
      logits = Gemm <transB=1> (/Flatten_output_0, fc.weight, fc.bias)     <- x @ W.T + b
    }

* ``graph.node``: operators in topological order.  A node names its inputs and outputs; tensors
  are wired by those names, not by position, so a graph may branch (ResNets) -- ece662 reads
  only a *chain*, in which each node reads the previous node's output (plus weights).
* ``graph.initializer``: ``TensorProto`` weights: ``dims``, ``data_type`` (1 = float32,
  7 = int64) and the values, either as little-endian bytes in ``raw_data``, in a typed field
  (``float_data``), or in another file (``data_location = EXTERNAL``, with ``location``,
  ``offset``, ``length``): torch's default exporter writes ``model.onnx.data`` beside the model.
  ``Constant`` nodes carry small tensors too (e.g. the target shape of a ``Reshape``).
* Attributes follow the ONNX operator spec (onnx.ai/onnx/operators): note that ONNX pads are
  ``[top, left, bottom, right]`` and that a pooling node's stride defaults to 1, not to its kernel.

How layers map (both directions)::

    Conv                          Conv2d (group 1, dilation 1, equal pads and strides)
    BatchNormalization            BatchNorm2d / BatchNorm1d (eval: running statistics)
    Relu / LeakyRelu              ReLU / LeakyReLU
    MaxPool / AveragePool         MaxPool2d / AvgPool2d (square window, no padding, floor mode)
    GlobalAveragePool             AdaptiveAvgPool2d(1)   (read also: ReduceMean over H, W)
    Flatten (axis 1), Reshape     Flatten                (Reshape only to (N, C*H*W); the target
                                                          may be computed: Shape, Gather, Concat...)
    Gemm, or MatMul then Add      Linear
    Dropout                       Dropout, Dropout2d (the identity in an inference graph); Identity is skipped

Every ONNX file is untrusted input: tensor sizes are checked against the bytes that really
hold them, and all values read against ``common.MAX_PARAMETERS``, before any array is made;
external data is read only from files directly in the model's folder (no subfolders, never
through ``..``, absolute paths or symlinks leading out) with bounded reads; shape arithmetic
works on at most 8 numbers; every attribute is checked against its op's list (kind, flags 0 or
1, finite floats); layers are built around the file's weights (``Conv2d.from_weights``) once
their sizes are checked, never random-initialised first; the finished model must pass the
plan's own checks (``check_input_shape``: no activation over ``MAX_ACTIVATION_VALUES`` per
image; ``check_finite_computation``: finite after every cast and fold).  Anything unexpected is
a ``ValueError`` naming the file, and the node and its op.
"""
import math
import os
import re
from collections import Counter, OrderedDict

import numpy as np

from ece662.formats import common
from ece662.formats.common import atomic_write, effective

from ece662.layers import (AdaptiveAvgPool2d, AvgPool2d, BatchNorm1d, BatchNorm2d, Conv2d, Dropout, Flatten,
                           LeakyReLU, Linear, MaxPool2d, ReLU, Sequential)
from ece662.layers import plan

# TensorProto data types ece662 reads: float weights, integer shapes (numbers from onnx's TensorProto)
_FLOAT = 1
_DTYPES = {1: np.float32, 6: np.int32, 7: np.int64, 10: np.float16, 11: np.float64}
_TYPED_FIELD = {1: "float_data", 6: "int32_data", 7: "int64_data", 11: "double_data"}
_MAX_TENSOR_BYTES = 1 << 30       # 1 GiB: far above any course model, far below a hostile "4 TiB" tensor
_MAX_FILE_BYTES = 2 << 30         # protobuf's own limit for one message
_MAX_SHAPE_VALUES = 8             # a shape, its axes or indices: (N, C, H, W) has 4 entries, no image network's 8
EXPORT_OPSET = 17                 # what save_onnx writes; onnxruntime >= 1.11 runs it
_EXPORT_IR_VERSION = 8            # the IR version that goes with opset 17


def _import_onnx():
    try:
        import onnx
    except ImportError:
        raise ImportError("ONNX files need the optional 'onnx' package: pip install onnx "
                          "(or pip install -e \".[onnx]\" from the ece662 folder)") from None
    return onnx


# ============================================================================ reading tensors
def _tensor_to_array(t, folder, where):
    """A ``TensorProto``'s values as a new numpy array (float32 or int64).

    The declared size ``prod(dims) * itemsize`` is checked against the bytes that hold the
    values (``raw_data``, the typed field, or the external file) *before* anything is
    allocated, so a file declaring a huge tensor is refused instead of exhausting memory.
    """
    what = f"{where}: tensor {t.name!r}"
    dtype = _DTYPES.get(t.data_type)
    if dtype is None:
        raise ValueError(f"{what} has ONNX data type {t.data_type}; ece662 reads float tensors "
                         f"(float32, float16, float64) and integer shapes")
    dtype = np.dtype(dtype).newbyteorder("<")
    dims = [int(d) for d in t.dims]
    if any(d < 0 for d in dims):
        raise ValueError(f"{what} declares negative dimensions {dims}")
    count = math.prod(dims)
    nbytes = count * dtype.itemsize
    if nbytes > _MAX_TENSOR_BYTES:
        raise ValueError(f"{what} declares shape {dims}, {nbytes:,} bytes; ece662 reads tensors of "
                         f"at most {_MAX_TENSOR_BYTES:,} bytes (the file is damaged or hostile)")
    if t.data_location == 1:                                    # TensorProto.EXTERNAL
        raw = _read_external(t, folder, nbytes, what)
    elif t.HasField("raw_data"):
        raw = t.raw_data
    else:
        field = _TYPED_FIELD.get(t.data_type)
        values = getattr(t, field) if field else ()
        if len(values) != count:
            raise ValueError(f"{what} declares shape {dims} ({count:,} values) but holds {len(values):,}")
        return np.array(values, dtype=dtype.newbyteorder("=")).reshape(dims)
    if len(raw) != nbytes:
        raise ValueError(f"{what} declares shape {dims} ({nbytes:,} bytes of {dtype.name}) but its "
                         f"data holds {len(raw):,} bytes; the file is truncated or damaged")
    return np.frombuffer(raw, dtype=dtype).astype(dtype.newbyteorder("=")).reshape(dims)


def _read_external(t, folder, nbytes, what):
    """Read ``nbytes`` of an external-data tensor from a file inside ``folder``, and only there."""
    info = {e.key: e.value for e in t.external_data}
    location = info.get("location", "")
    # a bare file name: no folder at all, so a model saved in the home folder cannot read .ssh/id_rsa
    if (not location or re.search(r"[\\/:\x00]", location) or location in (".", "..")
            or os.path.isabs(location)):
        raise ValueError(f"{what}: refusing external data at {location!r}: external data must be a "
                         f"file directly inside the model's folder, named without any folder (no "
                         f"subfolders, absolute paths or '..'); move it beside the .onnx file")
    real_folder = os.path.realpath(folder)
    target = os.path.realpath(os.path.join(real_folder, location))
    if os.path.commonpath([real_folder, target]) != real_folder:
        raise ValueError(f"{what}: refusing external data {location!r}: it resolves to {target}, "
                         f"outside the model's folder {real_folder} (a symbolic link?)")
    if not os.path.isfile(target):
        raise ValueError(f"{what}: its external data file {location!r} is missing from {real_folder}; "
                         f"copy it beside the .onnx file")
    try:
        offset = int(info.get("offset", "0"))
        length = int(info.get("length", str(nbytes)))
    except ValueError:
        raise ValueError(f"{what}: external data offset/length {info} are not integers") from None
    if offset < 0 or length != nbytes:
        raise ValueError(f"{what}: external data declares offset {offset} and length {length}, but the "
                         f"tensor's shape needs {nbytes:,} bytes")
    size = os.path.getsize(target)
    if offset + nbytes > size:
        raise ValueError(f"{what}: external data needs bytes {offset:,}..{offset + nbytes:,} of {location!r}, "
                         f"which holds only {size:,} bytes; the file is truncated")
    with open(target, "rb") as f:
        f.seek(offset)
        raw = f.read(nbytes)
    if len(raw) != nbytes:
        raise ValueError(f"{what}: could read only {len(raw):,} of {nbytes:,} bytes from {location!r}")
    return raw


# ============================================================================ reading graphs
def read_onnx(path):
    """Build an ece662 ``Sequential`` (eval mode) from an ONNX file holding a chain of layers.

    Parameters
    ----------
    path : str or os.PathLike
        An ``.onnx`` file, e.g. from ``torch.onnx.export(model, (x,), path)`` (either exporter) or
        :func:`save_onnx`.  External data (``path.data``) is read from the same folder only.

    Returns
    -------
    ece662.layers.Sequential, in eval mode
        Layers are named after the weights' names where the file has them (``conv1.weight`` ->
        layer ``conv1``, so a torch model's state-dict keys come back), otherwise ``relu1``, ``pool1``...

    Raises
    ------
    ImportError
        The ``onnx`` package is not installed.
    FileNotFoundError
        No file at ``path``.
    ValueError
        Not an ONNX file, an op or attribute ece662 has no layer for, a graph that is not a
        chain, tensors whose declared size does not match their data, more values than
        ``common.MAX_PARAMETERS``, weights that are not finite as computed (after the cast to
        float32, alpha/beta, a folded batch norm), an activation over
        ``plan.MAX_ACTIVATION_VALUES``, a conv padding not smaller than its kernel, duplicate
        names, external data not directly in the model's folder; the message names the file,
        and the node and its op.

    Examples
    --------
    >>> import os, tempfile
    >>> from ece662.models import default_convnet
    >>> path = os.path.join(tempfile.mkdtemp(), "net.onnx")
    >>> save_onnx(default_convnet(seed=0), path)
    >>> [name for name, _ in read_onnx(path).named_children()]
    ['conv1', 'relu1', 'pool1', 'conv2', 'relu2', 'pool2', 'flatten', 'fc']
    """
    onnx = _import_onnx()
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"read_onnx: no file at {path}")
    size = os.path.getsize(path)
    if size > _MAX_FILE_BYTES:
        raise ValueError(f"{path}: {size:,} bytes is more than an ONNX protobuf can hold (2 GiB)")
    with open(path, "rb") as f:
        data = f.read()
    proto = onnx.ModelProto()
    try:
        proto.ParseFromString(data)
    except Exception as e:       # protobuf's DecodeError, or a RuntimeError from its C backend
        raise ValueError(f"{path} is not a valid ONNX file: its protobuf does not parse ({e}); it may "
                         f"be truncated or be another kind of file") from None
    if not proto.HasField("graph") or not proto.graph.node:
        raise ValueError(f"{path} is not an ONNX model: it holds no graph nodes (a truncated or "
                         f"foreign file?)")
    return _ChainReader(proto.graph, os.path.dirname(os.path.abspath(path)), path).build()


def _guard(where, fn, *args):
    """Call ``fn``; the specific checks name what is wrong, and this net turns whatever else a
    malformed file provokes (an attribute of the wrong type, say) into the same kind of error."""
    try:
        return fn(*args)
    except ValueError as e:         # e.g. a layer refusing stride 0: say which node asked for it
        if where in str(e):
            raise
        raise ValueError(f"{where}: {e}") from None
    except (TypeError, IndexError, KeyError, AttributeError, OverflowError) as e:
        raise ValueError(f"{where}: malformed node ({type(e).__name__}: {e})") from None


def _attrs(node):
    """``{name: value}`` of a node's attributes (ints, floats, strings, lists of them)."""
    out = {}
    for a in node.attribute:
        if a.type == 1:
            out[a.name] = a.f
        elif a.type == 2:
            out[a.name] = int(a.i)
        elif a.type == 3:
            out[a.name] = a.s.decode("utf-8", "replace")
        elif a.type == 6:
            out[a.name] = [float(v) for v in a.floats]
        elif a.type == 7:
            out[a.name] = [int(v) for v in a.ints]
        else:
            out[a.name] = a                    # tensors (Constant) and graphs, handled by the caller
    return out


# The attributes each op may carry (the ONNX operator spec, onnx.ai/onnx/operators) and their kinds:
# 'int', 'ints', 'float' (finite), 'string', 'tensor', or 'flag' (the int 0 or 1: transB=7 means nothing).
# An attribute not listed for its op, of another kind, or given twice is refused, as the ONNX checker does.
_POOL = {"auto_pad": "string", "ceil_mode": "flag", "dilations": "ints", "kernel_shape": "ints",
         "pads": "ints", "strides": "ints"}
_ATTRIBUTES = {
    "Conv": {"auto_pad": "string", "dilations": "ints", "group": "int", "kernel_shape": "ints",
             "pads": "ints", "strides": "ints"},
    "BatchNormalization": {"epsilon": "float", "momentum": "float", "training_mode": "flag"},
    "Relu": {}, "LeakyRelu": {"alpha": "float"},
    "MaxPool": dict(_POOL, storage_order="flag"), "AveragePool": dict(_POOL, count_include_pad="flag"),
    "GlobalAveragePool": {}, "ReduceMean": {"axes": "ints", "keepdims": "flag", "noop_with_empty_axes": "flag"},
    "Flatten": {"axis": "int"}, "Reshape": {"allowzero": "flag"},
    "Gemm": {"alpha": "float", "beta": "float", "transA": "flag", "transB": "flag"},
    "MatMul": {}, "Add": {}, "Dropout": {"ratio": "float", "seed": "int"}, "Identity": {},
    "Shape": {"start": "int", "end": "int"}, "Gather": {"axis": "int"}, "Unsqueeze": {"axes": "ints"},
    "Squeeze": {"axes": "ints"}, "Concat": {"axis": "int"},
    "Constant": {"value": "tensor", "value_float": "float", "value_floats": "floats", "value_int": "int",
                 "value_ints": "ints"},
}
_ATTRIBUTE_KINDS = {1: "float", 2: "int", 3: "string", 4: "tensor", 6: "floats", 7: "ints"}   # AttributeProto.type


def _check_attributes(node, where):
    """Refuse an attribute ``node``'s op does not have, of the wrong kind, repeated, a flag that is
    not 0 or 1, or a float that is NaN or infinite (``LeakyRelu(alpha=nan)``, ``Gemm(beta=inf)``)."""
    allowed = _ATTRIBUTES.get(node.op_type)
    if allowed is None:
        return                           # an op ece662 does not read: refused by name in build()
    seen = set()
    for a in node.attribute:
        want = allowed.get(a.name)
        if want is None:
            raise ValueError(f"{where}: attribute {a.name!r} is not one of {node.op_type}'s "
                             f"({', '.join(sorted(allowed)) or 'it has none'})")
        if a.name in seen:
            raise ValueError(f"{where}: attribute {a.name!r} is given twice")
        seen.add(a.name)
        kind = _ATTRIBUTE_KINDS.get(a.type, f"type {a.type}")
        if kind != ("int" if want == "flag" else want):
            raise ValueError(f"{where}: attribute {a.name!r} is of kind {kind}, expected {want}")
        if want == "flag" and a.i not in (0, 1):
            raise ValueError(f"{where}: attribute {a.name}={a.i}; it is a flag, 0 or 1")
        floats = [a.f] if kind == "float" else list(a.floats) if kind == "floats" else []
        if not all(math.isfinite(f) for f in floats):
            raise ValueError(f"{where}: attribute {a.name}={floats[0] if kind == 'float' else floats} is "
                             f"not finite; the model would compute NaN")


class _ChainReader:
    """Walks the nodes of a chain graph in order, turning each into ece662 layers."""

    def __init__(self, graph, folder, source):
        self.graph, self.folder, self.source = graph, folder, source
        repeated = sorted(name for name, n in Counter(t.name for t in graph.initializer).items() if n > 1)
        if repeated:
            raise ValueError(f"{source}: the initializers {repeated} are given more than once; ONNX names "
                             f"each tensor once (the ONNX checker refuses this file), so which one the "
                             f"model should use is ambiguous")
        self.inits = {t.name: t for t in graph.initializer}
        self.constants = {}                      # name -> ndarray (converted initializers, Constant nodes)
        self.layers = OrderedDict()
        self.counts = Counter()                  # per kind, for generated names
        self.shape = None                        # (C, H, W) or (F,) of the tensor flowing along the chain
        self.batch = None                        # the input's batch size if the file fixes one
        self.bias_slot = None                    # a Linear built from MatMul, whose Add may follow
        self.shapes = {}                         # name -> list of ints and "N": shape arithmetic
        self.values = 0                          # values made from the file so far (see spend)
        self.input_shape = None                  # (C, H, W) or (F,) of the graph input

    # -- small helpers
    def where(self, node):
        return f"{self.source}: node {node.name or '(unnamed)'!r} ({node.op_type})"

    def const(self, name, node):
        """The array behind an initializer or a Constant (converted once)."""
        if name not in self.constants:
            if name not in self.inits:
                raise ValueError(f"{self.where(node)}: input {name!r} is neither a weight (initializer) "
                                 f"nor a Constant; ece662 reads chains whose extra inputs are weights")
            t = self.inits[name]
            dims = [int(d) for d in t.dims]
            self.spend(math.prod(max(d, 0) for d in dims), node, f"{name!r} declares shape {dims}")
            self.constants[name] = _tensor_to_array(t, self.folder, self.where(node))
        return self.constants[name]

    def spend(self, count, node, what):
        """Count ``count`` more values made from the file against ``common.MAX_PARAMETERS``, before
        they are made: each tensor read, and each layer's float32 copy of it (a file that reuses
        one 200 MB initializer in a thousand layers would otherwise ask for 200 GB)."""
        self.values += count
        if self.values > common.MAX_PARAMETERS:
            raise ValueError(f"{self.where(node)}: {what}: with it the file asks for {self.values:,} values, "
                             f"more than the {common.MAX_PARAMETERS:,} ece662 loads "
                             f"(ece662.formats.common.MAX_PARAMETERS)")

    def small_const(self, name, node, what):
        """A constant of at most ``_MAX_SHAPE_VALUES`` numbers (a shape, axes, indices, a ratio) as a
        flat array; its declared size is checked before it is converted."""
        if name in self.constants:
            count = self.constants[name].size
        elif name in self.inits:
            count = math.prod(max(int(d), 0) for d in self.inits[name].dims)
        else:
            count = 0                       # const() says what is wrong with the name
        if count > _MAX_SHAPE_VALUES:
            raise ValueError(f"{self.where(node)}: {what} {name!r} holds {count:,} values; ece662 reads "
                             f"{what}s of at most {_MAX_SHAPE_VALUES} (an image network's are 4 long)")
        return self.const(name, node).reshape(-1)

    def weight(self, name, node):
        """A weight as float32, refused if it holds NaN or infinity (also after the cast)."""
        arr = self.const(name, node)
        if arr.dtype.kind != "f":
            raise ValueError(f"{self.where(node)}: weight {name!r} has dtype {arr.dtype}, expected floats")
        self.spend(arr.size, node, f"the float32 copy of {name!r} a layer holds")
        with np.errstate(over="ignore"):                 # float64 beyond float32 becomes inf: refused here
            arr = arr.astype(np.float32)
        bad = int(arr.size - np.count_nonzero(np.isfinite(arr)))
        if bad:
            raise ValueError(f"{self.where(node)}: weight {name!r} holds {bad} NaN or infinite "
                             f"value(s) out of {arr.size} (as float32); the model file is damaged")
        return arr

    def is_const(self, name):
        """A weight, a Constant, or a value of the shape arithmetic (never the data flowing)."""
        return name in self.constants or name in self.inits or name in self.shapes

    def name_for(self, node, kind, weight_name=None):
        """A layer name: the weight's module path (``conv1.weight`` -> ``conv1``), torch's legacy
        node path (``/conv1/Conv`` -> ``conv1``), ece662's own node names, else ``<kind><k>``."""
        self.counts[kind] += 1
        candidates = []
        if weight_name and weight_name.endswith(".weight"):
            candidates.append(weight_name[:-len(".weight")].replace(".", "_"))
        m = re.fullmatch(r"/(.+)/\w+", node.name)
        if m:
            candidates.append(re.sub(r"[./]", "_", m.group(1)))
        elif re.fullmatch(r"\w+", node.name) and not node.name.startswith("node_"):
            candidates.append(node.name)         # "node_*" are torch's dynamo exporter's op names
        generated = "flatten" if kind == "flatten" and self.counts[kind] == 1 else f"{kind}{self.counts[kind]}"
        candidates.append(generated)
        for c in candidates:
            if c and c not in self.layers:
                return c
        k = 2
        while f"{generated}_{k}" in self.layers:
            k += 1
        return f"{generated}_{k}"

    def add(self, node, kind, layer, weight_name=None):
        name = self.name_for(node, kind, weight_name)
        self.layers[name] = layer
        try:
            out = layer.output_shape((1,) + self.shape)
        except (ValueError, TypeError) as e:
            raise ValueError(f"{self.where(node)}: does not fit its input of shape {self.shape}: {e}") from None
        if any(d < 1 for d in out[1:]):
            raise ValueError(f"{self.where(node)}: its window is larger than its input of shape "
                             f"(N, {', '.join(map(str, self.shape))})")
        self.shape = tuple(int(d) for d in out[1:])
        return layer

    def need_rank(self, node, rank):
        if len(self.shape) + 1 != rank:
            want = "(N, C, H, W)" if rank == 4 else "(N, features)"
            raise ValueError(f"{self.where(node)}: expects an input of shape {want}, but the tensor "
                             f"arriving has shape (N, {', '.join(map(str, self.shape))})")

    # -- the walk
    def graph_input(self):
        real = [i for i in self.graph.input if i.name not in self.inits]
        if len(real) != 1:
            raise ValueError(f"{self.source}: expected one graph input (the images), got "
                             f"{[i.name for i in real]}")
        inp = real[0]
        tt = inp.type.tensor_type
        if tt.elem_type != _FLOAT:
            raise ValueError(f"{self.source}: the graph input {inp.name!r} has ONNX element type "
                             f"{tt.elem_type}, expected 1 (float32)")
        dims = [d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim]
        if not tt.HasField("shape") or len(dims) not in (2, 4):
            raise ValueError(f"{self.source}: the graph input {inp.name!r} has rank {len(dims)} "
                             f"(shape {dims}); expected images (N, C, H, W) or features (N, F)")
        if any(d is None or d < 1 for d in dims[1:]):
            raise ValueError(f"{self.source}: the graph input {inp.name!r} has shape {dims}; ece662 "
                             f"needs fixed sizes for every axis but the batch (export with a fixed "
                             f"image size)")
        if math.prod(dims[1:]) > plan.MAX_ACTIVATION_VALUES:
            raise ValueError(f"{self.source}: the graph input {inp.name!r} has shape {dims}: "
                             f"{math.prod(dims[1:]):,} values per input, more than the "
                             f"{plan.MAX_ACTIVATION_VALUES:,} ece662 allows for one activation "
                             f"(ece662.layers.plan.MAX_ACTIVATION_VALUES)")
        self.batch = dims[0]                 # a fixed batch size, or None for a dynamic batch axis
        return inp.name, tuple(dims[1:])

    def build(self):
        current, self.shape = self.graph_input()
        self.input_shape = self.shape
        defined = set(self.inits) | {current}    # every value is named once (ONNX graphs are SSA)
        # a Shape node reads a tensor's shape, not its values: it does not make the graph branch
        uses = Counter(name for n in self.graph.node if n.op_type != "Shape" for name in n.input if name)
        outputs = [o.name for o in self.graph.output]
        if len(outputs) != 1:
            raise ValueError(f"{self.source}: expected one graph output (the logits), got {outputs}")
        for node in self.graph.node:
            where = self.where(node)
            if not node.output or not node.output[0]:
                raise ValueError(f"{where}: the node has no output")
            for out in node.output:
                if out and out in defined:
                    raise ValueError(f"{where}: its output {out!r} is already defined (by an initializer, "
                                     f"the graph input or an earlier node); ONNX names each value once")
                defined.add(out)
            if node.domain in ("", "ai.onnx"):
                _check_attributes(node, where)
            if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
                _guard(where, self.constant_node, node)
                continue
            if node.op_type in _SHAPE_OPS and node.domain in ("", "ai.onnx") and self.is_shape_node(node, current):
                _guard(where, self.shape_node, node)
                continue
            if node.op_type == "Identity" and node.input and self.is_const(node.input[0]):
                self.constants[node.output[0]] = self.const(node.input[0], node)
                continue
            data = [i for i in node.input if i and not self.is_const(i)]
            if data != [current]:
                raise ValueError(f"{where}: reads {data or 'only weights'}, but ece662 reads a chain of layers "
                                 f"in which every node reads the previous node's output {current!r}; "
                                 f"branching graphs (residual connections, several inputs) are not supported")
            if node.op_type != "Add" and node.input[0] != current:
                raise ValueError(f"{where}: reads the previous node's output {current!r} as input "
                                 f"{list(node.input).index(current)}, not as its data input 0")
            if uses[current] > 1 or current in outputs:
                raise ValueError(f"{where}: {current!r} feeds {uses[current]} nodes; ece662 reads only "
                                 f"chains (each output read once), not branching graphs")
            handler = _READERS.get(node.op_type) if node.domain in ("", "ai.onnx") else None
            if handler is None:
                raise ValueError(f"{where}: op {node.domain + '.' if node.domain else ''}{node.op_type} "
                                 f"has no ece662 layer; supported ops: {', '.join(sorted(_READERS))}")
            extra = [o for o in node.output[1:] if o and (uses[o] or o in outputs)]
            if extra:
                raise ValueError(f"{where}: its extra outputs {extra} are used; ece662 reads only the first")
            if len(node.input) < _MIN_INPUTS.get(node.op_type, 1):
                raise ValueError(f"{where}: has {len(node.input)} input(s), the op needs at least "
                                 f"{_MIN_INPUTS[node.op_type]}")
            if node.op_type != "Add":
                self.bias_slot = None
            _guard(where, handler, self, node, _attrs(node))
            current = node.output[0]
        if current != outputs[0]:
            raise ValueError(f"{self.source}: the chain ends at {current!r}, not at the graph output "
                             f"{outputs[0]!r}")
        if not self.layers:
            raise ValueError(f"{self.source}: the graph holds no layers")
        model = Sequential(self.layers).eval()
        try:     # the rules an eval forward will apply, applied now: activation sizes, finite weights
            plan.check_input_shape(model, self.input_shape)
        except ValueError as e:
            raise ValueError(f"{self.source}: {e}") from None
        plan.check_finite_computation(model, self.source)
        return model

    def constant_node(self, node):
        a = _attrs(node)
        if "value" in a and not hasattr(a["value"], "t"):
            raise ValueError(f"{self.where(node)}: its 'value' attribute is not a tensor")
        if "value" in a:
            dims = [int(d) for d in a["value"].t.dims]
            self.spend(math.prod(max(d, 0) for d in dims), node, f"its value declares shape {dims}")
            arr = _tensor_to_array(a["value"].t, self.folder, self.where(node))
        elif "value_ints" in a or "value_int" in a:
            arr = np.array(a.get("value_ints", a.get("value_int")), dtype=np.int64)
        elif "value_floats" in a or "value_float" in a:
            arr = np.array(a.get("value_floats", a.get("value_float")), dtype=np.float32)
        else:
            raise ValueError(f"{self.where(node)}: a Constant of kind {sorted(a)} is not supported")
        self.constants[node.output[0]] = arr

    # -- x.view(x.size(0), -1): torch's legacy exporter writes the target shape as arithmetic,
    #    Shape(x) -> Gather(0) -> Unsqueeze -> Concat([N], [-1]) -> Reshape(x, target).  The values
    #    are known here (the batch is "N"), so they are computed, not turned into layers.
    def is_shape_node(self, node, current):
        if node.op_type == "Shape":
            return bool(node.input) and node.input[0] == current
        return any(i in self.shapes for i in node.input)

    def shape_node(self, node):
        """Compute one step of shape arithmetic.  Every value is a list of at most
        ``_MAX_SHAPE_VALUES`` numbers, checked before it is made: ``Concat(s, s)`` doubles a list,
        and 40 of them in a 2 kB file would otherwise ask for 2**40 entries."""
        a = _attrs(node)
        if node.op_type == "Shape":
            value = ["N", *self.shape][a.get("start", 0):a.get("end", None)]
        elif node.op_type == "Gather":
            if a.get("axis", 0) != 0:
                raise ValueError(f"{self.where(node)}: a Gather of a shape along axis {a['axis']}")
            indices = self.small_const(node.input[1], node, "index tensor")
            value = [self.shapes[node.input[0]][int(i)] for i in indices]
        elif node.op_type in ("Unsqueeze", "Squeeze"):  # a shape value stays a list of numbers
            value = list(self.shapes[node.input[0]])
        else:                                           # Concat along axis 0
            if a.get("axis") not in (0, -1):
                raise ValueError(f"{self.where(node)}: a Concat of shapes along axis {a.get('axis')}; "
                                 f"shape values are 1-D (axis 0)")
            parts = [self.shapes[name] if name in self.shapes else
                     [int(v) for v in self.small_const(name, node, "shape")] for name in node.input]
            total = sum(len(part) for part in parts)
            if total > _MAX_SHAPE_VALUES:
                raise ValueError(f"{self.where(node)}: the concatenated shape would hold {total:,} values; "
                                 f"ece662 computes shapes of at most {_MAX_SHAPE_VALUES} (an image "
                                 f"network's are 4 long)")
            value = [v for part in parts for v in part]
        if len(value) > _MAX_SHAPE_VALUES:
            raise ValueError(f"{self.where(node)}: a shape of {len(value)} values; ece662 computes shapes "
                             f"of at most {_MAX_SHAPE_VALUES}")
        self.shapes[node.output[0]] = value

    def shape_input(self, name, node):
        """A Reshape's target: computed shape arithmetic, or a constant."""
        if name in self.shapes:
            return list(self.shapes[name])
        return [int(v) for v in self.small_const(name, node, "target shape")]

    # -- one method per op; each checks what ece662's layer cannot express
    def window(self, node, a, kernel_default=None):
        """Kernel, stride, pads of a conv or pooling node, refusing what ece662's layers lack."""
        where = self.where(node)
        if a.get("auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
            raise ValueError(f"{where}: auto_pad={a['auto_pad']} is not supported; export with "
                             f"explicit padding (torch does)")
        if any(d != 1 for d in a.get("dilations", [1, 1])):
            raise ValueError(f"{where}: dilations {a['dilations']} are not supported (ece662 layers "
                             f"have dilation 1)")
        if a.get("ceil_mode", 0):
            raise ValueError(f"{where}: ceil_mode=1 is not supported (ece662 pools round down, as "
                             f"torch's default ceil_mode=False)")
        kernel = a.get("kernel_shape", kernel_default)
        strides = a.get("strides", [1, 1])
        pads = a.get("pads", [0, 0, 0, 0])
        if kernel is None or len(kernel) != 2 or len(strides) != 2 or len(pads) != 4:
            raise ValueError(f"{where}: expected a 2-D window, got kernel_shape={kernel}, "
                             f"strides={strides}, pads={pads}")
        if len(set(pads)) != 1:
            raise ValueError(f"{where}: asymmetric pads {pads} ([top, left, bottom, right]) are not "
                             f"supported; ece662 pads every side by the same amount")
        if strides[0] != strides[1]:
            raise ValueError(f"{where}: strides {strides} differ per axis; ece662 uses one stride")
        return kernel, strides[0], pads[0]

    def read_conv(self, node, a):
        self.need_rank(node, 4)
        if a.get("group", 1) != 1:
            raise ValueError(f"{self.where(node)}: group={a['group']} (grouped or depthwise "
                             f"convolution) is not supported")
        w = self.weight(node.input[1], node)
        if w.ndim != 4:
            raise ValueError(f"{self.where(node)}: weight of shape {w.shape}, expected (F, C, HH, WW)")
        kernel, stride, pad = self.window(node, a, kernel_default=list(w.shape[2:]))
        F, C, HH, WW = w.shape
        if list(kernel) != [HH, WW] or C != self.shape[0]:
            raise ValueError(f"{self.where(node)}: weight {w.shape} does not fit kernel_shape {kernel} "
                             f"and {self.shape[0]} input channels")
        if pad >= max(HH, WW):
            # with pad >= kernel, the outermost outputs see only zeros: no trained network has that,
            # and a padding of 3000 would make gigabytes of activations out of a 1 kB file
            raise ValueError(f"{self.where(node)}: padding {pad} with a {HH}x{WW} kernel; ece662 reads "
                             f"paddings smaller than the kernel (at most {max(HH, WW) - 1}): a wider padding "
                             f"only adds outputs that see nothing but zeros")
        has_bias = len(node.input) > 2 and node.input[2]
        bias = self.vector(node.input[2], F, node) if has_bias else None
        self.add(node, "conv", Conv2d.from_weights(w, bias, stride=stride, padding=pad), node.input[1])

    def vector(self, name, n, node):
        v = self.weight(name, node)
        if v.size != n:
            raise ValueError(f"{self.where(node)}: {name!r} has shape {v.shape}, expected ({n},)")
        return np.ascontiguousarray(v.reshape(n))

    def read_batchnorm(self, node, a):
        if a.get("training_mode", 0):
            raise ValueError(f"{self.where(node)}: training_mode=1; export the model in eval mode "
                             f"(model.eval() before torch.onnx.export)")
        rank = len(self.shape) + 1
        if rank not in (2, 4):
            self.need_rank(node, 4)
        cls = BatchNorm2d if rank == 4 else BatchNorm1d
        C = self.shape[0]
        # the four vectors are read, and their sizes compared with C, before a layer of C channels is made
        vectors = {key: self.vector(name, C, node)
                   for key, name in zip(("weight", "bias", "running_mean", "running_var"), node.input[1:5])}
        if np.any(vectors["running_var"] < 0):
            raise ValueError(f"{self.where(node)}: {node.input[4]!r} (the running variance) holds negative "
                             f"values; a variance is at least 0 (the file is damaged)")
        bn = cls(C, eps=a.get("epsilon", 1e-5))
        for key, value in vectors.items():
            setattr(bn, key, value)
        self.add(node, "bn", bn, node.input[1])

    def read_relu(self, node, a):
        self.add(node, "relu", ReLU())

    def read_leaky_relu(self, node, a):
        self.add(node, "relu", LeakyReLU(negative_slope=float(a.get("alpha", 0.01))))

    def pool(self, node, a, cls):
        self.need_rank(node, 4)
        kernel, stride, pad = self.window(node, a)
        if kernel[0] != kernel[1] or pad != 0:
            raise ValueError(f"{self.where(node)}: kernel {kernel} with padding {pad}; ece662 pools "
                             f"with square windows and no padding")
        self.add(node, "pool", cls(kernel[0], stride=stride))

    def read_maxpool(self, node, a):
        if a.get("storage_order", 0):
            raise ValueError(f"{self.where(node)}: storage_order=1 (column-major indices) is not supported")
        self.pool(node, a, MaxPool2d)

    def read_avgpool(self, node, a):
        self.pool(node, a, AvgPool2d)

    def read_global_avgpool(self, node, a):
        self.need_rank(node, 4)
        self.add(node, "pool", AdaptiveAvgPool2d(1))

    def read_reduce_mean(self, node, a):
        """torch's dynamo exporter writes AdaptiveAvgPool2d(1) as ReduceMean over axes (-1, -2)."""
        self.need_rank(node, 4)
        axes = a.get("axes")
        if len(node.input) > 1 and node.input[1]:
            axes = [int(v) for v in self.small_const(node.input[1], node, "axes tensor")]
        if axes is None or sorted(ax % 4 for ax in axes) != [2, 3]:
            raise ValueError(f"{self.where(node)}: a mean over axes {axes}; ece662 reads only the mean "
                             f"over H and W (global average pooling)")
        self.add(node, "pool", AdaptiveAvgPool2d(1))
        if not a.get("keepdims", 1):
            self.add(node, "flatten", Flatten())

    def read_flatten(self, node, a):
        if a.get("axis", 1) != 1:
            raise ValueError(f"{self.where(node)}: axis={a['axis']}; ece662's Flatten keeps the batch "
                             f"axis only (axis=1)")
        self.add(node, "flatten", Flatten())

    def read_reshape(self, node, a):
        """A Reshape is a Flatten when its target shape is (N, C*H*W), N as -1, 0 or the batch."""
        target = self.shape_input(node.input[1], node)
        features = math.prod(self.shape)
        # "N" is the batch computed from the input (x.size(0)); 0 copies the input's axis, unless allowzero
        batch = ["N"] + ([] if a.get("allowzero", 0) else [0]) + ([self.batch] if self.batch else [])
        ok = len(target) == 2 and (
            (target[1] == features and (target[0] in batch or target[0] == -1 or target[0] > 0))
            or (target[1] == -1 and target[0] in batch))
        if not ok:
            raise ValueError(f"{self.where(node)}: reshape of (N, {', '.join(map(str, self.shape))}) to "
                             f"{target}; ece662 reads only a flatten to (N, {features})")
        self.add(node, "flatten", Flatten())

    def linear(self, node, w, b):
        """``w (out, in)`` as torch stores it."""
        self.need_rank(node, 2)
        if w.ndim != 2 or w.shape[1] != self.shape[0]:
            raise ValueError(f"{self.where(node)}: weight of shape {w.shape} does not fit "
                             f"{self.shape[0]} input features")
        return Linear.from_weights(w, b)

    def read_gemm(self, node, a):
        if a.get("transA", 0):
            raise ValueError(f"{self.where(node)}: transA=1 is not supported")
        # alpha and beta are checked finite with every float attribute (_check_attributes); their
        # products with the weights are checked once the model is built (check_finite_computation)
        with np.errstate(over="ignore"):                 # an overflow is refused once the model is built
            w = self.weight(node.input[1], node) * np.float32(a.get("alpha", 1.0))
        if w.ndim != 2:
            raise ValueError(f"{self.where(node)}: expected a 2-D weight, got shape {w.shape}")
        if not a.get("transB", 0):
            w = w.T                                 # ONNX B is (in, out) unless transB
        b = None
        if len(node.input) > 2 and node.input[2]:
            with np.errstate(over="ignore"):
                b = self.vector(node.input[2], w.shape[0], node) * np.float32(a.get("beta", 1.0))
        self.add(node, "fc", self.linear(node, w, b), node.input[1])

    def read_matmul(self, node, a):
        w = self.weight(node.input[1], node)
        if w.ndim != 2:
            raise ValueError(f"{self.where(node)}: expected MatMul(x, W) with W of shape (in, out), "
                             f"got W of shape {w.shape}")
        self.bias_slot = self.add(node, "fc", self.linear(node, w.T, None), node.input[1])

    def read_add(self, node, a):
        fc, self.bias_slot = self.bias_slot, None
        if fc is None:
            raise ValueError(f"{self.where(node)}: ece662 reads Add only right after a MatMul (the bias "
                             f"of a linear layer); this one is elsewhere in the graph")
        name = next(i for i in node.input if self.is_const(i))
        fc.register_parameter("bias", self.vector(name, fc.out_features, node))

    def read_dropout(self, node, a):
        ratio = a.get("ratio", 0.5)
        if len(node.input) > 1 and node.input[1]:
            ratio = float(self.small_const(node.input[1], node, "ratio")[0])
        if len(node.input) > 2 and node.input[2] and bool(self.small_const(node.input[2], node, "training_mode")[0]):
            raise ValueError(f"{self.where(node)}: training_mode is true; export the model in eval mode")
        if not 0 <= ratio < 1:
            raise ValueError(f"{self.where(node)}: dropout ratio {ratio} is not in [0, 1)")
        self.add(node, "dropout", Dropout(ratio))

    def read_identity(self, node, a):
        pass


# the ops of a shape computation (``x.view(x.size(0), -1)``), evaluated rather than turned into layers
_SHAPE_OPS = ("Shape", "Gather", "Unsqueeze", "Squeeze", "Concat")

# inputs each op needs besides its defaults (data, weight, bias, BatchNorm's four statistics, ...)
_MIN_INPUTS = {"Conv": 2, "BatchNormalization": 5, "Gemm": 2, "MatMul": 2, "Add": 2, "Reshape": 2}

_READERS = {
    "Conv": _ChainReader.read_conv, "BatchNormalization": _ChainReader.read_batchnorm,
    "Relu": _ChainReader.read_relu, "LeakyRelu": _ChainReader.read_leaky_relu,
    "MaxPool": _ChainReader.read_maxpool, "AveragePool": _ChainReader.read_avgpool,
    "GlobalAveragePool": _ChainReader.read_global_avgpool, "ReduceMean": _ChainReader.read_reduce_mean,
    "Flatten": _ChainReader.read_flatten, "Reshape": _ChainReader.read_reshape,
    "Gemm": _ChainReader.read_gemm, "MatMul": _ChainReader.read_matmul, "Add": _ChainReader.read_add,
    "Dropout": _ChainReader.read_dropout, "Identity": _ChainReader.read_identity,
}


# ============================================================================ writing
def _graph_nodes(model, input_name, helper, numpy_helper):
    """One ONNX node (and its initializers) per ece662 layer, wired as a chain."""
    nodes, inits = [], []
    x = input_name
    layers = list(model.named_children())
    for i, (name, m) in enumerate(layers):
        out = "logits" if i == len(layers) - 1 else f"{name}_out"
        kind = type(m).__name__

        def tensor(key, value):
            inits.append(numpy_helper.from_array(np.array(value, order="C"), f"{name}.{key}"))
            return f"{name}.{key}"

        if kind == "Conv2d":
            ins = [x, tensor("weight", effective(m, "weight"))]
            b = effective(m, "bias")
            if b is not None:
                ins.append(tensor("bias", b))
            p = m.padding
            nodes.append(helper.make_node("Conv", ins, [out], name=name, kernel_shape=list(m.kernel_size),
                                          strides=[m.stride] * 2, pads=[p] * 4))
        elif kind == "Linear":
            ins = [x, tensor("weight", effective(m, "weight"))]
            b = effective(m, "bias")
            if b is not None:
                ins.append(tensor("bias", b))
            nodes.append(helper.make_node("Gemm", ins, [out], name=name, transB=1))   # x @ W.T + b
        elif kind in ("BatchNorm2d", "BatchNorm1d"):
            C = m.num_features           # affine=False: ONNX still wants a scale (ones) and a shift (zeros)
            gamma = effective(m, "weight")
            beta = effective(m, "bias")
            ins = [x, tensor("weight", np.ones(C, np.float32) if gamma is None else gamma),
                   tensor("bias", np.zeros(C, np.float32) if beta is None else beta),
                   tensor("running_mean", effective(m, "running_mean")),
                   tensor("running_var", effective(m, "running_var"))]
            nodes.append(helper.make_node("BatchNormalization", ins, [out], name=name, epsilon=float(m.eps)))
        elif kind == "ReLU":
            nodes.append(helper.make_node("Relu", [x], [out], name=name))
        elif kind == "LeakyReLU":
            nodes.append(helper.make_node("LeakyRelu", [x], [out], name=name, alpha=float(m.negative_slope)))
        elif kind in ("MaxPool2d", "AvgPool2d"):
            if getattr(m, "padding", 0):
                raise ValueError(f"save_onnx: layer {name} ({kind}) has padding, which is not exported")
            k = m.kernel_size if isinstance(m.kernel_size, int) else m.kernel_size[0]
            s = m.stride if isinstance(m.stride, int) else m.stride[0]
            op = "MaxPool" if kind == "MaxPool2d" else "AveragePool"
            nodes.append(helper.make_node(op, [x], [out], name=name, kernel_shape=[k, k], strides=[s, s]))
        elif kind == "AdaptiveAvgPool2d":
            if m.output_size not in (1, (1, 1), [1, 1]):
                raise ValueError(f"save_onnx: layer {name}: only AdaptiveAvgPool2d(1) is exported")
            nodes.append(helper.make_node("GlobalAveragePool", [x], [out], name=name))
        elif kind == "Flatten":
            nodes.append(helper.make_node("Flatten", [x], [out], name=name, axis=1))
        elif kind in ("Dropout", "Dropout2d"):
            # the ratio is an input since opset 12; in an inference graph Dropout is the identity
            # (Dropout2d too: it is read back as a Dropout, which computes the same at inference)
            ratio = tensor("ratio", np.array(m.p, dtype=np.float32))
            nodes.append(helper.make_node("Dropout", [x, ratio], [out], name=name))
        else:
            raise ValueError(f"save_onnx: layer {name} is a {kind}, which has no ONNX export; "
                             f"export Conv2d, Linear, BatchNorm, ReLU/LeakyReLU, pooling, Flatten, Dropout")
        x = out
    return nodes, inits


def _check_input_shape(model, input_shape):
    """Walk the layers' shapes from ``input_shape`` (no batch axis) with the plan's own walk
    (``ece662.layers.plan.first_misfit``); return the output shape (batch axis 1).

    The ONNX graph declares these shapes, so an ``input_shape`` the model cannot take must
    fail here rather than inside whatever runtime loads the file.
    """
    misfit = plan.first_misfit(model, input_shape)
    if misfit is not None:
        name, m, _, problem = misfit
        raise ValueError(f"save_onnx: layer {name} ({type(m).__name__}) {problem}, from input_shape="
                         f"{input_shape}; pass the input_shape the model was built for")
    shape = (1,) + input_shape
    for _, m in model.named_children():
        shape = m.output_shape(shape)
    return shape


def save_onnx(model, path, input_shape=(3, 32, 32)):
    """Write ``model`` as an ONNX inference graph with a dynamic batch axis, atomically.

    Pruned parameters are written as their effective weights (``weight_orig * weight_mask``);
    to make a pruned network smaller and faster in any runtime, export
    ``ece662.pruning.shrink(model)``.  Layers become ``Conv``, ``Gemm``, ``Relu``, ``MaxPool``,
    ... nodes named like the layers, with weights named like the state dict (``conv1.weight``).

    Parameters
    ----------
    model : ece662.layers.Sequential
        Not changed (nor switched to eval mode).
    path : str or os.PathLike
        Written through a temporary file in the same folder and renamed into place.
    input_shape : tuple
        One input without the batch axis: ``(C, H, W)``, or ``(F,)`` for a network of linear layers.

    Raises
    ------
    TypeError
        ``model`` is not an ece662 ``Sequential``.
    ValueError
        A layer with no ONNX counterpart here, or an ``input_shape`` the model does not take.
    FileNotFoundError
        The target folder does not exist.

    Examples
    --------
    >>> import os, tempfile
    >>> import onnx
    >>> from ece662.models import default_convnet
    >>> path = os.path.join(tempfile.mkdtemp(), "net.onnx")
    >>> save_onnx(default_convnet(seed=0), path)
    >>> [n.op_type for n in onnx.load(path).graph.node]
    ['Conv', 'Relu', 'MaxPool', 'Conv', 'Relu', 'MaxPool', 'Flatten', 'Gemm']
    """
    _import_onnx()
    from onnx import TensorProto, helper, numpy_helper
    if not isinstance(model, Sequential):
        raise TypeError(f"save_onnx: expected an ece662 Sequential model, got {type(model).__name__}")
    if len(model) == 0:
        raise ValueError("save_onnx: the model has no layers")
    out_shape = _check_input_shape(model, tuple(int(d) for d in input_shape))
    nodes, inits = _graph_nodes(model, "input", helper, numpy_helper)
    graph = helper.make_graph(
        nodes, "ece662_model",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", *input_shape])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", *out_shape[1:]])],
        initializer=inits)
    proto = helper.make_model(graph, producer_name="ece662",
                              opset_imports=[helper.make_opsetid("", EXPORT_OPSET)])
    proto.ir_version = _EXPORT_IR_VERSION
    data = proto.SerializeToString()

    with atomic_write(path, "save_onnx") as f:
        f.write(data)
