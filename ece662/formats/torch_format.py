"""PyTorch ``state_dict`` files, read without torch (``read_torch_state_dict``).

What ``torch.save(model.state_dict(), "m.pt")`` writes (torch >= 1.6) is a zip archive,
every member stored uncompressed under one folder::

    m/data.pkl        a pickle of the dict {"conv1.weight": tensor, ...}
    m/data/0          raw little-endian bytes of storage "0" (e.g. 2400 float32 = 9600 bytes)
    m/data/1 ...      one member per storage
    m/byteorder       "little"
    m/version, m/.format_version, m/.storage_alignment, m/.data/serialization_id

Inside ``data.pkl`` each tensor is the call
``torch._utils._rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad, hooks)``,
and each storage is a *persistent id*, the tuple
``("storage", torch.FloatStorage, "0", "cpu", 2400)`` = (kind, dtype, member key, device,
number of elements).  The tensor is the strided view
``storage[offset + i0*stride0 + i1*stride1 + ...]`` of shape ``size``.

A file is untrusted input, and this reader checks every step:

* A pickle can name any Python callable, so unpickling a stranger's file can run any code.
  The unpickler here resolves only the names a state dict needs (``OrderedDict``, the
  tensor/parameter rebuild functions, the typed storages) and refuses anything else, as
  torch's ``weights_only=True`` does.  Torch is never imported.
* Before anything is unpickled, the opcode stream is scanned (``_check_pickle``): no opcode
  torch never writes, no memo index or declared length beyond the data, no tuples nested
  deeper than 100 (hashing one deeper can overflow the C stack), no dict key or set element
  but strings, ints below 2**31, None and booleans (ints that share one hash would make
  building a dict quadratic).
* Every tensor's offset, size and stride are checked to stay inside its storage, whose
  declared size must equal the zip member's real size, before any byte is read.
* Everything read from the archive counts against a byte budget (``max_bytes``), so a small
  file can never make the reader allocate gigabytes (a zip bomb, or a stride-0 tensor of a
  billion elements over one float).  Members are read through ``ece662.safezip``: stored or
  deflated only, never more bytes than a member declares, no member name twice.
* Weights that are NaN or infinite are refused (or, with ``on_nonfinite='warn'``, reported).

``model_from_state_dict`` then puts the arrays into an ece662 model: by name, or, for an
``nn.Sequential`` whose keys are ``0.weight``, ``3.bias``..., by the position of the layers.
"""
import hashlib as _hashlib
import io as _io
import os
import pickle
import pickletools
import reprlib
import struct as _struct
import sys
import warnings
import zipfile
from collections import OrderedDict

import numpy as np

from ece662.formats.common import atomic_write, load_with_masks
from ece662.layers.plan import check_finite_computation
from ece662.safezip import ZipReader

# ============================================================================ limits
MAX_PICKLE_BYTES = 64 << 20       # data.pkl of a state dict is ~100 bytes per tensor
MAX_PICKLE_OPCODES = 4_000_000    # each opcode makes at most one Python object
MAX_TUPLE_DEPTH = 100             # torch nests tuples 3 deep
MAX_DIMS = 32                     # numpy's limit is 64; conv weights have 4
MIN_BUDGET = 256 << 20            # default max_bytes: max(MIN_BUDGET, 4 x the file's size)
_CHUNK = 1 << 20                  # members are read 1 MiB at a time

_TORCH_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "LongStorage": np.int64, "IntStorage": np.int32, "ShortStorage": np.int16,
    "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_,
}
# dtypes numpy has no (exact) twin for; torch names each storage "<Dtype>Storage"
_UNSUPPORTED_DTYPES = {
    "BFloat16Storage": "bfloat16", "ComplexFloatStorage": "complex64",
    "ComplexDoubleStorage": "complex128", "QInt8Storage": "qint8", "QUInt8Storage": "quint8",
    "QInt32Storage": "qint32", "QUInt4x2Storage": "quint4x2", "QUInt2x4Storage": "quint2x4",
}
_LEGACY_MAGIC = b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19."   # pickle of torch's magic number
_CHECKPOINT_KEYS = ("model_state_dict", "state_dict", "model")   # where training scripts put it

_short = reprlib.Repr()
_short.maxstring, _short.maxother, _short.maxlevel = 60, 60, 3


# ============================================================================ what a file is
def _describe_file(path):
    """A few words on what a file that is not a torch archive looks like, with the fix.

    Used only for error messages: sniffs the first bytes (and a zip's member names).
    """
    with open(path, "rb") as f:
        head = f.read(64)
    if not head:
        return "an empty file"
    if path.lower().endswith(".onnx"):
        return "an ONNX model (by its name): load it with load_model(path, mode='onnx')"
    for magic, what in ((b"\x89PNG\r\n\x1a\n", "a PNG image"), (b"\xff\xd8\xff", "a JPEG image"),
                        (b"GIF8", "a GIF image"), (b"\x1f\x8b", "a gzip-compressed file"),
                        (b"\x93NUMPY", "a NumPy .npy array (np.save)")):
        if head.startswith(magic):
            return what
    if head.startswith(b"\x89HDF\r\n\x1a\n"):
        return "an HDF5 file, like a Keras .h5 model: load it with load_model(path, mode='tensorflow')"
    if head.startswith(_LEGACY_MAGIC):
        return ("a PyTorch file in the legacy format of torch < 1.6 (not a zip archive), which "
                "ece662 does not read: re-save it with a recent torch, "
                "torch.save(torch.load(path, weights_only=True), 'new.pt')")
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return ("a bare pickle (pickle.dump), not a torch.save archive: "
                "save the model with torch.save(model.state_dict(), path)")
    if head.startswith(b"PK"):
        try:
            with zipfile.ZipFile(path) as zf:
                names = zf.namelist()
        except Exception:       # whatever zipfile makes of a damaged directory (BadZipFile, NotImplementedError...)
            return "a damaged or truncated zip archive (an incomplete download or copy?)"
        return _describe_zip(names)
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:          # maybe a character cut in two at byte 64
        text = head[:-3].decode("utf-8", errors="replace") if len(head) == 64 else None
    if text is not None and all(c.isprintable() or c in "\r\n\t" for c in text):
        return f"a text file (it starts with {_short.repr(text[:40])})"
    return f"an unknown binary file (it starts with {head[:16]!r})"


def _describe_zip(names):
    """What a zip archive that has no torch ``data.pkl`` holds."""
    if "__ece662_spec__.npy" in names:
        return "an ece662 .npz model: load it with load_model(path) (mode='numpy')"
    if "config.json" in names and "model.weights.h5" in names:
        return "a Keras .keras model: load it with load_model(path, mode='tensorflow')"
    if any(n.endswith("constants.pkl") for n in names) and any("/code/" in n for n in names):
        return ("a TorchScript archive (torch.jit.save), which holds code: save the weights with "
                "torch.save(model.state_dict(), path) instead")
    if names and all(n.endswith(".npy") for n in names):
        keys = [n[:-4] for n in names[:5]]
        return f"a NumPy .npz archive of arrays ({', '.join(keys)}{', ...' if len(names) > 5 else ''})"
    return f"a zip archive without data.pkl (it holds {_short.repr(names[:5])})"


# ============================================================================ pickle pre-scan
# Opcodes torch.save (protocol 2, or higher if asked) and plain containers need.  Left out:
# INST/OBJ/NEWOBJ/NEWOBJ_EX (build objects), EXT1/2/4 (the copyreg registry), PERSID
# (text persistent ids), and protocol 5's out-of-band buffers and bytearrays.
_ALLOWED_OPCODES = frozenset("""
    PROTO FRAME STOP MARK POP POP_MARK DUP
    GLOBAL STACK_GLOBAL REDUCE BUILD BINPERSID
    NONE NEWTRUE NEWFALSE INT BININT BININT1 BININT2 LONG LONG1 LONG4 FLOAT BINFLOAT
    STRING BINSTRING SHORT_BINSTRING UNICODE BINUNICODE SHORT_BINUNICODE BINUNICODE8
    BINBYTES SHORT_BINBYTES BINBYTES8
    EMPTY_TUPLE TUPLE TUPLE1 TUPLE2 TUPLE3 EMPTY_LIST LIST APPEND APPENDS
    EMPTY_DICT DICT SETITEM SETITEMS EMPTY_SET ADDITEMS FROZENSET
    GET BINGET LONG_BINGET PUT BINPUT LONG_BINPUT MEMOIZE
""".split())
_TUPLE_OPS = {"TUPLE": None, "TUPLE1": 1, "TUPLE2": 2, "TUPLE3": 3, "EMPTY_TUPLE": 0, "FROZENSET": None}


# Values that may be dict keys or set elements.  Python hashes an int k as k mod (2**61 - 1), so the
# keys k * (2**61 - 1) all hash to 0 and building a dict of N of them takes N**2 / 2 comparisons (80,000
# keys in 250 kB of pickle: 48 s that Ctrl-C cannot interrupt).  A state dict's keys are strings (whose
# hashes are salted per process); an optimizer state's are small ints (each its own hash); so only
# these, None and booleans are accepted as keys.
_STRING_OPS = frozenset("STRING BINSTRING SHORT_BINSTRING UNICODE BINUNICODE SHORT_BINUNICODE BINUNICODE8".split())
_INT_OPS = frozenset("INT BININT BININT1 BININT2 LONG LONG1 LONG4".split())
_MAX_INT_KEY = 2 ** 31


def _check_pickle(data, source):
    """Scan ``data.pkl``'s opcodes without running them; raise ValueError on anything hostile.

    ``pickletools.genops`` decodes one opcode at a time and fails on a declared length that
    runs past the data (Python's own unpickler would allocate it first).  A small stack
    machine tracks, for each value, how deeply tuples nest in it and whether it may be a dict
    key (a string or a small int, see ``_STRING_OPS``); memo indices must be below the opcode count.
    """
    # stack and memo hold, per value, (tuple-nesting depth, None if it may be a dict key, else what it
    # is: "the float 2.5", "a tuple"), not the values themselves
    stack, marks, memo = [], [], {}
    try:
        for count, (op, arg, pos) in enumerate(pickletools.genops(data)):
            name = op.name
            if count >= MAX_PICKLE_OPCODES:
                raise ValueError(f"more than {MAX_PICKLE_OPCODES} opcodes")
            if name == "GLOBAL":            # refuse a forbidden name first: its message has the fix
                _allowed_global(*(arg.split(" ", 1) + [""])[:2], source)
            if name not in _ALLOWED_OPCODES:
                raise ValueError(f"opcode {name} at byte {pos}, which a state_dict never needs")
            if name in ("GET", "BINGET", "LONG_BINGET", "PUT", "BINPUT", "LONG_BINPUT") and \
                    not 0 <= int(arg) <= count:
                raise ValueError(f"memo index {arg} at byte {pos} is out of range")
            if name == "FRAME" and arg > len(data) - pos:
                raise ValueError(f"a frame of {arg} bytes at byte {pos} runs past the end")
            # -- the stack machine
            if name == "MARK":
                marks.append(len(stack))
                continue
            if name == "SETITEM" and len(stack) >= 3:
                _check_keys(stack[-2:-1], pos)
            if name in _TUPLE_OPS or name in ("LIST", "DICT", "APPENDS", "SETITEMS", "ADDITEMS", "POP_MARK"):
                n = _TUPLE_OPS.get(name)
                start = marks.pop() if n is None else len(stack) - n
                if start < 0:
                    raise ValueError(f"stack underflow at byte {pos}")
                items, stack[start:] = stack[start:], []
                if name in ("DICT", "SETITEMS"):
                    _check_keys(items[0::2], pos)
                elif name in ("ADDITEMS", "FROZENSET"):
                    _check_keys(items, pos)
                if name in _TUPLE_OPS:
                    depth = 1 + max((d for d, _ in items), default=0)
                    if depth > MAX_TUPLE_DEPTH:
                        raise ValueError(f"tuples nested more than {MAX_TUPLE_DEPTH} deep")
                    stack.append((depth, "a frozenset" if name == "FROZENSET" else "a tuple"))
                elif name in ("LIST", "DICT"):
                    stack.append((0, "a list or dict"))    # mutable: cannot be hashed, so its depth is harmless
            elif name in ("GET", "BINGET", "LONG_BINGET"):
                stack.append(memo.get(int(arg), (0, "a value")))
            elif name in ("PUT", "BINPUT", "LONG_BINPUT", "MEMOIZE"):
                if not stack:
                    raise ValueError(f"stack underflow at byte {pos}")
                memo[int(arg) if arg is not None else len(memo)] = stack[-1]
            elif name == "DUP":
                stack.append(stack[-1] if stack else (0, "a value"))
            elif name == "REDUCE":      # result keeps the args' depth (_rebuild_parameter returns one)
                if len(stack) < 2:
                    raise ValueError(f"stack underflow at byte {pos}")
                depth, _ = stack.pop()
                stack[-1] = (depth, "an object")
            elif name in ("POP", "BINPERSID", "BUILD", "APPEND", "SETITEM", "STACK_GLOBAL"):
                pops = {"POP": 1, "BINPERSID": 1, "BUILD": 1, "APPEND": 1, "SETITEM": 2, "STACK_GLOBAL": 2}[name]
                if len(stack) < pops:
                    raise ValueError(f"stack underflow at byte {pos}")
                del stack[len(stack) - pops:]
                if name in ("BINPERSID", "STACK_GLOBAL"):
                    stack.append((0, "an object"))
            elif name not in ("PROTO", "FRAME", "STOP"):
                # a number, string, bytes, None, bool, empty container or global
                key = (name in _STRING_OPS or name in ("NONE", "NEWTRUE", "NEWFALSE")
                       or (name in _INT_OPS and -_MAX_INT_KEY <= int(arg) < _MAX_INT_KEY))
                stack.append((0, None if key else f"{_a(arg)} {_short.repr(arg)}"))
    except pickle.UnpicklingError as e:
        raise ValueError(str(e)) from None
    except ValueError as e:             # also genops' own "truncated" / "unknown opcode" errors
        raise ValueError(f"{source}: data.pkl is not a state_dict pickle: {e}") from None
    except IndexError:                  # pop from an empty mark list
        raise ValueError(f"{source}: data.pkl is not a state_dict pickle: MARK missing") from None


def _check_keys(items, pos):
    """Refuse dict keys and set elements that are not strings, small ints, None or booleans."""
    for _, what in items:
        if what is not None:
            raise ValueError(f"a dict key or set element at byte {pos} is {what}; state_dict keys are "
                             f"strings such as 'conv1.weight' (other keys are only accepted as ints below "
                             f"2**31: keys that share one hash, like k * (2**61 - 1), would make building "
                             f"the dict take minutes)")


# ============================================================================ unpickling
class _NoState:
    """Refuses pickle's BUILD opcode, which would set attributes on the placeholder objects."""
    __slots__ = ()

    def __setstate__(self, state):
        raise pickle.UnpicklingError("BUILD on a storage or tensor, which torch.save never writes")


class _StorageType(_NoState):
    """Stands in for ``torch.FloatStorage`` etc.: only remembers the dtype's name."""
    __slots__ = ("name",)

    def __init__(self, name):
        self.name = name

    def __repr__(self):
        return f"torch.{self.name}"


class _Storage(_NoState):
    """One storage, ``("storage", <type>, key, device, numel)``; its bytes are read on demand."""
    __slots__ = ("type", "key", "numel", "_array")

    def __init__(self, storage_type, key, numel):
        self.type, self.key, self.numel, self._array = storage_type, key, numel, None

    def __repr__(self):
        return f"<storage {self.key!r}: {self.numel} elements of {self.type!r}>"


class _Tensor(_NoState):
    """The recorded call ``_rebuild_tensor_v2(*args)``; checked and copied out by ``_materialize``."""
    __slots__ = ("args",)

    def __init__(self, *args):
        self.args = args

    def __repr__(self):
        return "<tensor>"


class _RebuildParameter(_NoState):
    """``torch._utils._rebuild_parameter(data, requires_grad, hooks)``: a Parameter is just its data.

    A class, not a function: pickle's BUILD could set a function's attributes for good.
    """
    __slots__ = ()

    def __new__(cls, data, *unused):
        return data


def _allowed_global(module, name, source):
    """What the pickle's name ``module.name`` stands for here; any other name is refused."""
    if (module, name) == ("collections", "OrderedDict"):
        return OrderedDict
    if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
        return _Tensor
    if (module, name) in (("torch._utils", "_rebuild_parameter"),
                          ("torch._utils", "_rebuild_parameter_with_state")):
        return _RebuildParameter
    if module == "torch" and (name in _TORCH_DTYPES or name in _UNSUPPORTED_DTYPES):
        return _StorageType(name)
    hint = ""
    if module.startswith("torch.nn") or module == "__main__":
        hint = (" The file seems to hold a whole pickled model object, not a state_dict: "
                "save it with torch.save(model.state_dict(), path) instead.")
    elif module.startswith("numpy"):
        hint = (" A NumPy value is stored in the file (e.g. 'acc': np.float64(...)): convert it "
                "with float() or torch.from_numpy() before torch.save.")
    elif module.startswith("__torch__"):
        hint = " This is TorchScript; save the weights with torch.save(model.state_dict(), path)."
    raise pickle.UnpicklingError(
        f"{source}: refusing to load {module}.{name}: a state_dict file may only contain "
        f"tensors, numbers, strings and plain containers, and unpickling other objects can run "
        f"arbitrary code.{hint}")


class _StateDictUnpickler(pickle.Unpickler):
    """Unpickles a state dict and plain Python values, nothing else (the guard against malicious files)."""

    def __init__(self, file, source):
        super().__init__(file)
        self._source, self._storages = source, {}

    def find_class(self, module, name):
        return _allowed_global(module, name, self._source)

    def persistent_load(self, pid):
        if not (type(pid) is tuple and len(pid) == 5 and pid[0] == "storage"
                and isinstance(pid[1], _StorageType) and type(pid[2]) is str
                and type(pid[4]) is int and pid[4] >= 0):
            raise pickle.UnpicklingError(f"{self._source}: unsupported storage reference {_short.repr(pid)}")
        _, storage_type, key, _device, numel = pid       # any device: a CUDA tensor's bytes are the same
        cache_key = (storage_type.name, key, numel)       # several tensors may share one storage
        if cache_key not in self._storages:
            self._storages[cache_key] = _Storage(storage_type, key, numel)
        return self._storages[cache_key]


# ============================================================================ reading bytes
class _Reader:
    """The open archive, its folder prefix, and the byte budget every read counts against."""

    def __init__(self, zf, prefix, source, max_bytes, archive_size):
        self.zf, self.prefix, self.source = zf, prefix, source
        self.left, self.max_bytes, self.archive_size = max_bytes, max_bytes, archive_size

    def take(self, nbytes, what):
        """Count ``nbytes`` against the budget, or raise before they are allocated."""
        if nbytes > self.left:
            where = "" if what.startswith(self.source) else f"{self.source}: "
            raise ValueError(
                f"{where}{what} needs {nbytes:,} bytes, beyond the {self.max_bytes:,}-byte budget "
                f"for a {self.archive_size:,}-byte file; if the file really is that large, pass a larger "
                f"max_bytes to read_torch_state_dict")
        self.left -= nbytes

    def read_member(self, info, nbytes, what):
        """The first ``nbytes`` of a zip member, read 1 MiB at a time into one buffer.

        The member is read through ``ece662.safezip``: never more than it declares (a deflated member
        that would inflate past that, or one compressed with bzip2 or lzma, is refused)."""
        self.take(nbytes, what)
        out = np.empty(nbytes, dtype=np.uint8)
        done = 0
        try:
            with self.zf.open(info, max_bytes=nbytes) as f:
                while done < nbytes:
                    got = f.readinto(memoryview(out)[done:done + _CHUNK])
                    if not got:
                        break
                    done += got
        except ValueError as e:
            msg = str(e).replace(f"{self.source}: member {info.filename!r}", f"{self.source}: {what}", 1)
            raise ValueError(msg) from None
        except OSError as e:
            raise ValueError(f"{self.source}: {what} cannot be read ({e}); the file is damaged") from None
        if done < nbytes:
            raise ValueError(f"{self.source}: {what} ends after {done:,} of {nbytes:,} bytes; the file is truncated")
        return out


def _storage_array(reader, storage, entry):
    """The storage's elements as a 1-D array, read once (its size checked against the member's)."""
    if storage._array is not None:
        return storage._array
    name = storage.type.name
    if name in _UNSUPPORTED_DTYPES:
        dtype = _UNSUPPORTED_DTYPES[name]
        fix = " (convert with .float() before saving)" if dtype == "bfloat16" else ""
        raise ValueError(f"{entry}: unsupported dtype {dtype}{fix}")
    dtype = np.dtype(_TORCH_DTYPES[name]).newbyteorder("<")
    member = f"{reader.prefix}data/{storage.key}"
    try:
        info = reader.zf.getinfo(member)
    except KeyError:
        raise ValueError(f"{entry}: its storage {member} is missing from the archive") from None
    nbytes = storage.numel * dtype.itemsize
    if info.file_size != nbytes:
        why = ("the file is truncated" if info.file_size < nbytes else
               "the pickle and the data disagree")
        if info.file_size % dtype.itemsize:
            why = f"not a whole number of {dtype.itemsize}-byte {dtype.name} elements"
        raise ValueError(f"{entry}: its storage {member} holds {info.file_size:,} bytes, but data.pkl "
                         f"declares {storage.numel:,} {dtype.name} elements ({nbytes:,} bytes): {why}")
    raw = reader.read_member(info, nbytes, f"storage {member}")
    native = np.dtype(_TORCH_DTYPES[name])
    storage._array = raw.view(native) if dtype == native else raw.view(dtype).astype(native)
    return storage._array


def _a(value):
    """'an int', 'a str', 'a tensor': what a value is, for messages."""
    name = "tensor" if isinstance(value, _Tensor) else type(value).__name__.lstrip("_")
    return ("an " if name[:1].lower() in "aeiou" else "a ") + name


def _is_int(x):
    return type(x) is int      # not bool, not float


def _materialize(reader, tensor, entry):
    """Check a ``_rebuild_tensor_v2`` call against its storage, then copy the tensor out.

    The element at index ``(i0, i1, ...)`` is ``storage[offset + i0*stride0 + i1*stride1 + ...]``.
    With sizes >= 1 and strides >= 0 the largest index is ``offset + sum((size_d - 1) * stride_d)``,
    which must be below the storage's element count.  Strides may be 0 or overlap (``expand``).
    """
    args = tensor.args
    if not 4 <= len(args) <= 7:
        raise ValueError(f"{entry}: _rebuild_tensor_v2 takes 6 or 7 arguments, the file gives {len(args)}")
    storage, offset, size, stride = args[:4]
    if not isinstance(storage, _Storage):
        raise ValueError(f"{entry}: the tensor's storage is {_a(storage)}, not a storage reference")
    if not (type(size) in (tuple, list) and type(stride) in (tuple, list) and len(size) == len(stride)
            and all(map(_is_int, size)) and all(map(_is_int, stride)) and _is_int(offset)):
        raise ValueError(f"{entry}: expected an int offset and int size/stride tuples of equal length, got "
                         f"offset {_short.repr(offset)}, size {_short.repr(size)}, stride {_short.repr(stride)}")
    if len(size) > MAX_DIMS:
        raise ValueError(f"{entry}: a tensor of {len(size)} dimensions (at most {MAX_DIMS} are read)")
    if offset < 0 or min(size, default=0) < 0 or min(stride, default=0) < 0:
        raise ValueError(f"{entry}: negative offset, size or stride (offset {offset}, size {tuple(size)}, "
                         f"stride {tuple(stride)})")
    if storage.type.name in _UNSUPPORTED_DTYPES:
        _storage_array(reader, storage, entry)      # raises "unsupported dtype"
    itemsize = np.dtype(_TORCH_DTYPES[storage.type.name]).itemsize
    numel = 0 if 0 in size else 1
    for s in size if numel else ():
        numel *= s
        if numel * itemsize > reader.left:    # raise before the product grows without bound
            reader.take(numel * itemsize, f"{entry} (shape {tuple(size)})")
    if numel == 0:
        if max(size) * itemsize > reader.max_bytes:     # numpy refuses such a shape, even empty
            raise ValueError(f"{entry}: an empty tensor of shape {tuple(size)}; no dimension can be that long")
        if offset > storage.numel:
            raise ValueError(f"{entry}: offset {offset} is past the end of its {storage.numel}-element storage")
        _storage_array(reader, storage, entry)     # still check the storage (dtype, member size)
        return np.zeros(tuple(size), dtype=storage._array.dtype)
    last = offset + sum((s - 1) * st for s, st in zip(size, stride))
    if last >= storage.numel:
        raise ValueError(f"{entry}: shape {tuple(size)}, stride {tuple(stride)} and offset {offset} reach "
                         f"element {last:,} of a storage that holds {storage.numel:,}; the file is damaged "
                         f"or crafted")
    data = _storage_array(reader, storage, entry)
    reader.take(numel * data.itemsize, entry)
    # strides of length-1 dimensions never move; zero them so a huge one cannot overflow
    byte_strides = tuple(st * data.itemsize if s > 1 else 0 for s, st in zip(size, stride))
    view = np.lib.stride_tricks.as_strided(data[offset:], shape=tuple(size), strides=byte_strides,
                                           writeable=False)
    return np.array(view, order="C")      # a C-contiguous copy, whatever the strides were


# ============================================================================ public functions
def read_torch_state_dict(path, on_nonfinite="raise", max_bytes=None):
    """Read a ``torch.save(model.state_dict(), path)`` file into ``{key: ndarray}``, without torch.

    A training checkpoint, ``torch.save({"epoch": 3, "model_state_dict": ..., "optimizer_state_dict":
    ...}, path)``, is read too: its state dict is taken from ``model_state_dict``, ``state_dict``
    or ``model`` (the first present), with a ``UserWarning`` naming the key.  Keys of
    ``nn.DataParallel`` models (all prefixed ``module.``) lose the prefix.

    Parameters
    ----------
    path : str or os.PathLike
    on_nonfinite : {'raise', 'warn'}
        A floating-point entry holding NaN or inf raises ``ValueError`` (default), or, with
        ``'warn'``, is loaded as it is with a ``UserWarning``.
    max_bytes : int, optional
        At most this many bytes are read and allocated for storages and tensors; default
        ``max(256 MiB, 4 x the file's size)``.

    Returns
    -------
    OrderedDict of str -> ndarray
        Arrays in the file's order, their torch dtype (float32, int64 ``num_batches_tracked``...).

    Raises
    ------
    FileNotFoundError
        No file at ``path``.
    ValueError
        Not a torch zip archive (the message says what the file looks like), a pickle naming
        anything but state-dict building blocks, a tensor reaching outside its storage, an
        unsupported dtype, non-finite weights, or a file beyond ``max_bytes``; the message names
        the file and the entry.

    Examples
    --------
    >>> import os
    >>> sd = read_torch_state_dict(os.path.join("tests", "fixtures", "torch_default_convnet.pt"))
    >>> list(sd)[:2], sd["conv1.weight"].shape, sd["conv1.weight"].dtype
    (['conv1.weight', 'conv1.bias'], (32, 3, 5, 5), dtype('float32'))
    """
    if on_nonfinite not in ("raise", "warn"):
        raise ValueError(f"read_torch_state_dict: on_nonfinite must be 'raise' or 'warn', got {on_nonfinite!r}")
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no file at {path}")
    size = os.path.getsize(path)
    if max_bytes is None:
        max_bytes = max(MIN_BUDGET, 4 * size)
    try:
        zf = ZipReader(path)
    except (zipfile.BadZipFile, ValueError, EOFError, NotImplementedError):
        raise ValueError(f"{path} is not a PyTorch file: it looks like {_describe_file(path)}") from None
    with zf:
        reader = _Reader(zf, _find_prefix(zf, path), path, max_bytes, size)
        _check_byteorder(reader)
        obj = _unpickle(reader)
        state_dict, where = _select_state_dict(obj, path)
        if not state_dict:
            raise ValueError(f"{path}: {where} is empty: there are no weights in it")
        out = OrderedDict()
        for key, value in state_dict.items():
            entry = f"{path}: {where}[{_short.repr(key)}]"
            if not isinstance(key, str):
                raise ValueError(f"{entry}: the key is {_a(key)}; state_dict keys are "
                                 f"strings such as 'conv1.weight'")
            if not isinstance(value, _Tensor):
                raise ValueError(f"{entry} is {_a(value)}, not a tensor")
            out[key] = _materialize(reader, value, entry)
            _check_finite(out[key], entry, on_nonfinite)
    # nn.DataParallel prefixes every key with "module."
    if out and all(k.startswith("module.") for k in out):
        out = OrderedDict((k[len("module."):], v) for k, v in out.items())
    return out


def _find_prefix(zf, path):
    """The archive's folder (``"m/"`` for ``m/data.pkl``), after checking it is a torch archive."""
    names = zf.namelist()
    pkl = [n for n in names if n.endswith("/data.pkl") and n.count("/") == 1]
    if len(pkl) > 1:
        raise ValueError(f"{path} holds {len(pkl)} data.pkl files ({_short.repr(pkl)}); a torch.save "
                         f"archive has one")
    if len(pkl) != 1 or any(n.endswith("constants.pkl") for n in names):
        raise ValueError(f"{path} is not a torch.save file: it looks like {_describe_zip(names)}")
    return pkl[0][: -len("data.pkl")]


def _check_byteorder(reader):
    """``byteorder`` says "little" (ece662 reads only little-endian storages)."""
    if reader.prefix + "byteorder" in reader.zf.namelist():
        info = reader.zf.getinfo(reader.prefix + "byteorder")
        if info.file_size > 16 or reader.read_member(info, info.file_size, "byteorder").tobytes().strip() != b"little":
            raise ValueError(f"{reader.source} was written on a big-endian machine, which ece662 does not read")


def _unpickle(reader):
    """Read, pre-scan and unpickle ``data.pkl``: storages and tensors come back as placeholders."""
    info = reader.zf.getinfo(reader.prefix + "data.pkl")
    if info.file_size > MAX_PICKLE_BYTES:
        raise ValueError(f"{reader.source}: data.pkl declares {info.file_size:,} bytes; a state dict's "
                         f"pickle is far smaller (at most {MAX_PICKLE_BYTES:,} are read)")
    data = reader.read_member(info, info.file_size, "data.pkl").tobytes()
    _check_pickle(data, reader.source)
    try:
        return _StateDictUnpickler(_io.BytesIO(data), reader.source).load()
    except pickle.UnpicklingError as e:
        msg = str(e)
        if not msg.startswith(reader.source):
            msg = f"{reader.source}: data.pkl is damaged ({msg})"
        raise ValueError(msg) from None
    except (EOFError, ValueError, TypeError, AttributeError, KeyError, IndexError, OverflowError,
            RecursionError) as e:
        raise ValueError(f"{reader.source}: data.pkl is damaged or not a state_dict "
                         f"({type(e).__name__}: {_short.repr(str(e))})") from None


def _is_state_dict(obj):
    return isinstance(obj, dict) and len(obj) > 0 and all(isinstance(v, _Tensor) for v in obj.values())


def _select_state_dict(obj, path):
    """The state dict itself, or the one a training checkpoint holds; and how to name its entries."""
    if isinstance(obj, _Tensor):
        raise ValueError(f"{path} holds a single tensor, not a state_dict: save "
                         f"torch.save(model.state_dict(), path)")
    if not isinstance(obj, dict):
        raise ValueError(f"{path} holds a {type(obj).__name__}, not a state_dict (a dict of tensors): "
                         f"save torch.save(model.state_dict(), path)")
    if not obj:
        raise ValueError(f"{path} holds an empty dict: there are no weights in it")
    if _is_state_dict(obj):
        return obj, "state_dict"
    for key in _CHECKPOINT_KEYS:
        if key in obj and isinstance(obj[key], dict):
            others = [k for k in obj if k != key]
            _warn(f"{path} is a training checkpoint (it also holds {_short.repr(others)}); "
                  f"loading the model weights from its entry {key!r}")
            return obj[key], f"checkpoint[{key!r}]"
    bad = next(k for k, v in obj.items() if not isinstance(v, _Tensor))
    raise ValueError(
        f"{path}: entry {_short.repr(bad)} is {_a(obj[bad])}, not a tensor, so the file is "
        f"not a state_dict; a training checkpoint must keep the weights under one of "
        f"{list(_CHECKPOINT_KEYS)} (this one has keys {_short.repr(list(obj)[:8])})")


def _warn(message):
    """A UserWarning that points at the first line outside ece662: the student's own call."""
    here = os.path.dirname(os.path.abspath(__file__))
    frame, level = sys._getframe(1), 2          # stacklevel 2 is _warn's caller
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(here + os.sep):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, UserWarning, stacklevel=level)


def _check_finite(array, entry, on_nonfinite):
    if array.dtype.kind != "f":
        return
    bad = int(array.size - np.count_nonzero(np.isfinite(array)))
    if bad:
        msg = (f"{entry} holds {bad} non-finite values (NaN or inf) out of {array.size}: "
               f"the weights are broken (did training diverge?)")
        if on_nonfinite == "raise":
            raise ValueError(msg + "; pass on_nonfinite='warn' to read them anyway")
        _warn(msg)


# ============================================================================ into a model
def _layers(named_arrays):
    """Group ``{dotted key: array}`` by layer: ``OrderedDict(prefix -> OrderedDict(name -> shape))``.

    A pruned parameter (``weight_orig`` + ``weight_mask``) counts as ``weight``; its mask is
    checked to sit beside it.
    """
    groups = OrderedDict()
    keys = set(named_arrays)
    for key, value in named_arrays.items():
        prefix, _, name = key.rpartition(".")
        if name.endswith("_mask"):
            if key[: -len("_mask")] + "_orig" not in keys:
                raise ValueError(f"mask {key!r} has no {key[: -len('_mask')] + '_orig'!r} beside it")
            continue
        if name.endswith("_orig"):
            if key[: -len("_orig")] + "_mask" not in keys:
                raise ValueError(f"{key!r} has no {key[: -len('_orig')] + '_mask'!r} beside it")
            name = name[: -len("_orig")]
        groups.setdefault(prefix, OrderedDict())[name] = tuple(np.shape(value))
    return groups


def _layers_text(groups):
    """``conv1.weight (32, 3, 5, 5), conv1.bias (32,); fc.weight ...``: one layer per ``;``."""
    return "; ".join(", ".join(f"{p + '.' if p else ''}{n} {s}" for n, s in g.items())
                     for p, g in groups.items())


def _architecture_hint(where="python"):
    """What to do about a state_dict that is not the course network: in Python, or at the command line
    (``where='cli'``, where model= means nothing and ``--arch net.json`` says the same)."""
    if where == "cli":
        return ("A state_dict holds weights, not the architecture, so ece662 cannot build the network "
                "from it. Name the network with --arch net.json, a file written in Python with "
                "json.dump(model.spec(), f) for an ece662 Sequential with the same layers (matched by key, "
                "or by the position of the layers for nn.Sequential keys such as '0.weight'); or use a "
                "file that carries the architecture: an ece662 .npz written by ece662.save_model "
                "(--mode numpy), or an ONNX export (torch.onnx.export; --mode onnx).")
    return ("A state_dict holds weights, not the architecture, so ece662 cannot build the network "
            "from it. Pass model=Sequential(...) with the same layers (matched by key, or by the "
            "position of the layers for nn.Sequential keys such as '0.weight'), or use a file that "
            "carries the architecture: an ece662 .npz written by ece662.save_model (load_model(path)), "
            "or an ONNX export (torch.onnx.export; load_model(path, mode='onnx')).")


def _course_network_hint(where="python"):
    """For a file whose layers have the course network's shapes under other names."""
    if where == "cli":
        return (" Its layers have the shapes of the course network, in order: if it is that network (e.g. "
                "as an nn.Sequential), write its architecture with python -c \"import json; from "
                "ece662.models import default_convnet; json.dump(default_convnet().spec(), "
                "open('net.json', 'w'))\" and pass --arch net.json.")
    return (" Its layers have the shapes of the course network, in order: if it is that "
            "network (e.g. as an nn.Sequential), pass model=default_convnet().")


def command_line_advice(message):
    """``message`` (a load error) with its Python advice (``model=...``) replaced by the command line's
    (``--arch net.json``); used by ``python -m ece662``."""
    for hint in (_architecture_hint, _course_network_hint):
        message = message.replace(hint(), hint("cli"))
    return message


def _check_masks(state_dict, source):
    """Torch stores masks as float 0./1. tensors; anything else is not a mask."""
    for key, value in state_dict.items():
        if key.endswith("_mask"):
            value = np.asarray(value)
            if not np.isin(value, (0, 1)).all():
                raise ValueError(f"{source}: {key!r} is not a pruning mask: it holds values other than 0 and 1")


def _match_by_position(file_groups, model_groups, source):
    """``{file prefix: model prefix}`` pairing the i-th layer with weights of each, or ValueError."""
    fp, mp = list(file_groups), list(model_groups)
    for i, (f, m) in enumerate(zip(fp, mp)):
        fg, mg = dict(file_groups[f]), model_groups[m]
        if "num_batches_tracked" not in mg:
            fg.pop("num_batches_tracked", None)
        if fg != dict(mg):
            bn = "running_mean" in fg and "running_mean" not in mg
            hint = ""
            if bn:
                hint = (f" The file's layer {f!r} is a BatchNorm (running_mean, running_var): the model "
                        f"needs a BatchNorm layer at that position (BatchNorm2d or BatchNorm1d).")
            raise ValueError(
                f"{source}: the file's layers do not fit the model, by name or by position: its layer "
                f"{i + 1} with weights holds {_layers_text({f: file_groups[f]})}, the model's holds "
                f"{_layers_text({m: mg})}.{hint} File: {_layers_text(file_groups)}. "
                f"Model: {_layers_text(model_groups)}.")
    if len(fp) != len(mp):
        raise ValueError(f"{source}: the file has {len(fp)} layers with weights, the model has {len(mp)}. "
                         f"File: {_layers_text(file_groups)}. Model: {_layers_text(model_groups)}. "
                         + _architecture_hint())
    return dict(zip(fp, mp))


def model_from_state_dict(state_dict, model=None, source="state_dict", default=None):
    """Put a state dict's arrays into ``model`` (or, when it is None, into ``default()``).

    Keys are matched by name; when the names differ (an ``nn.Sequential``'s ``0.weight``,
    ``3.bias``...) and ``model`` is given, by position: the i-th layer with weights of the
    file goes into the i-th layer with weights of the model, if their shapes agree.  A
    parameter pruned with ``torch.nn.utils.prune`` (``weight_orig`` + ``weight_mask``) is
    loaded pruned, with its mask.  Every key and shape is checked before anything is
    assigned; the error names what does not fit.

    Parameters
    ----------
    state_dict : dict of str -> ndarray
    model : ece662.layers.Sequential, optional
    source : str
        Names the file in error messages.
    default : callable, optional
        Builds the network to assume when ``model`` is None (``ece662.io`` passes the course's
        ``default_convnet``; a reader does not choose a network itself).  Errors then say that the
        file does not hold that default network.

    Returns
    -------
    ece662.layers.Sequential, in eval mode
    """
    arrays = OrderedDict(state_dict)
    for key in arrays:
        if not isinstance(key, str):
            raise ValueError(f"{source}: state_dict key {_short.repr(key)} is {_a(key)}, "
                             f"not a string such as 'conv1.weight'")
    try:
        file_groups = _layers(arrays)
    except ValueError as e:
        raise ValueError(f"{source}: {e}") from None
    _check_masks(arrays, source)
    assumed = model is None
    if assumed:
        if default is None:
            raise ValueError(f"{source}: {_architecture_hint()}")
        model = default()
    model_groups = _layers(model.state_dict())
    if not any("num_batches_tracked" in g for g in model_groups.values()):  # a counter, no place for it
        arrays = OrderedDict((k, v) for k, v in arrays.items() if not k.endswith("num_batches_tracked"))
        file_groups = _layers(arrays)
    same = list(file_groups) == list(model_groups) and all(
        dict(file_groups[p]) == dict(model_groups[p]) for p in file_groups)   # order within a layer may differ
    if not same:
        if assumed:
            fits = ""
            try:
                _match_by_position(file_groups, model_groups, source)
                fits = _course_network_hint()
            except ValueError:
                pass
            raise ValueError(
                f"{source} does not hold the default course network: the file has "
                f"{_layers_text(file_groups)}; the course network has {_layers_text(model_groups)}."
                f"{fits} {_architecture_hint()}")
        rename = _match_by_position(file_groups, model_groups, source)
        renamed = OrderedDict()
        for key, value in arrays.items():
            prefix, _, name = key.rpartition(".")
            new = (rename[prefix] + "." if rename[prefix] else "") + name
            renamed[new] = value
        arrays = renamed
    load_with_masks(model, arrays, source=source)
    check_finite_computation(model.eval(), source)       # finite as computed: casts, folds, running_var >= 0
    return model


# ============================================================================ torch format: writing
# ``save_torch_state_dict`` writes what ``torch.save(state_dict, path)`` writes, without torch, so
# that ece662 can ship a ``.pt`` file that real torch reads with ``torch.load(path, weights_only=True)``.
# The archive, as torch 2.x lays it out (``<archive>/`` is a folder name inside the zip):
#
#   archive/data.pkl            the pickle (protocol 2) of an OrderedDict {key: tensor}
#   archive/.format_version     b"1"
#   archive/.storage_alignment  b"64": every member's bytes start at a multiple of 64 in the file
#   archive/byteorder           b"little"
#   archive/data/<i>            tensor i's raw storage, little-endian, C order
#   archive/version             b"3\n"
#   archive/.data/serialization_id
#
# Every tensor is pickled as ``torch._utils._rebuild_tensor_v2(storage, storage_offset, size, stride,
# requires_grad, backward_hooks)``, and its storage as a *persistent id*
# ``("storage", torch.FloatStorage, "<i>", "cpu", numel)`` that the loader resolves to ``data/<i>``.
# The pickle is written opcode by opcode (below), because Python's pickler can only name
# functions it can import, and torch is not imported here.
_STORAGE_NAMES = {np.dtype(np.float32): "FloatStorage", np.dtype(np.float64): "DoubleStorage",
                  np.dtype(np.float16): "HalfStorage", np.dtype(np.int64): "LongStorage",
                  np.dtype(np.int32): "IntStorage", np.dtype(np.int16): "ShortStorage",
                  np.dtype(np.int8): "CharStorage", np.dtype(np.uint8): "ByteStorage",
                  np.dtype(np.bool_): "BoolStorage"}
_ALIGNMENT = 64


class _PickleWriter:
    """Emits pickle protocol-2 opcodes (the names are those of ``pickletools.dis``)."""

    def __init__(self):
        self.out = bytearray(b"\x80\x02")                     # PROTO 2

    def global_(self, module, name):
        self.out += b"c" + f"{module}\n{name}\n".encode()     # GLOBAL: push module.name

    def str_(self, s):
        b = s.encode("utf-8")
        self.out += b"X" + _struct.pack("<I", len(b)) + b     # BINUNICODE

    def int_(self, n):
        if 0 <= n < 256:
            self.out += b"K" + _struct.pack("<B", n)          # BININT1
        elif 0 <= n < 65536:
            self.out += b"M" + _struct.pack("<H", n)          # BININT2
        elif -2 ** 31 <= n < 2 ** 31:
            self.out += b"J" + _struct.pack("<i", n)          # BININT
        else:
            b = n.to_bytes((n.bit_length() + 8) // 8, "little", signed=True)
            self.out += b"\x8a" + _struct.pack("<B", len(b)) + b   # LONG1

    def tuple_(self, items):
        self.out += b"("                                      # MARK
        for n in items:
            self.int_(n)
        self.out += b"t"                                      # TUPLE (from the MARK)

    def empty_ordered_dict(self):
        self.global_("collections", "OrderedDict")
        self.out += b")R"                                     # EMPTY_TUPLE, REDUCE: OrderedDict()

    def op(self, code):
        self.out += code


def _state_dict_pickle(arrays):
    """The ``data.pkl`` bytes for ``[(key, C-contiguous ndarray), ...]``; storage i is tensor i."""
    p = _PickleWriter()
    p.empty_ordered_dict()
    p.op(b"(")                                                # MARK: the (key, tensor) pairs follow
    for i, (key, a) in enumerate(arrays):
        p.str_(key)
        p.global_("torch._utils", "_rebuild_tensor_v2")
        p.op(b"(")                                            # MARK: its arguments
        p.op(b"(")                                            # MARK: the storage's persistent id
        p.str_("storage")
        p.global_("torch", _STORAGE_NAMES[a.dtype])
        p.str_(str(i))
        p.str_("cpu")
        p.int_(a.size)
        p.op(b"tQ")                                           # TUPLE, BINPERSID: storage i
        p.int_(0)                                             # storage_offset
        p.tuple_(a.shape)                                     # size
        p.tuple_([s // a.itemsize for s in a.strides] if a.size else [1] * a.ndim)   # stride
        p.op(b"\x89")                                         # NEWFALSE: requires_grad
        p.empty_ordered_dict()                                # backward_hooks
        p.op(b"tR")                                           # TUPLE, REDUCE: the tensor
    p.op(b"u.")                                               # SETITEMS, STOP
    return bytes(p.out)


def _aligned_member(zf, f, name, data):
    """Write one stored (uncompressed) zip member whose bytes start at a multiple of 64, padding
    the local header's extra field as torch does (an ``FB`` record of ``Z`` bytes)."""
    header = 30 + len(name.encode()) + 4                      # fixed header + name + FB record head
    pad = -(f.tell() + header) % _ALIGNMENT
    info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
    info.compress_type = zipfile.ZIP_STORED
    info.extra = b"FB" + _struct.pack("<H", pad) + b"Z" * pad
    zf.writestr(info, data)


def save_torch_state_dict(state_dict, path, archive_name="archive"):
    """Write ``{key: ndarray}`` as ``torch.save(state_dict, path)`` would, without torch.

    Real torch reads the file with ``torch.load(path, weights_only=True)`` and gets an
    ``OrderedDict`` of tensors with the same keys, shapes, dtypes and values.  The file is
    written to a temporary name beside ``path`` and renamed into place, so a failed save
    never leaves a half-written file where a good one was.  The output depends only on the
    arrays (no time stamps), so the same state dict always gives the same bytes.

    Parameters
    ----------
    state_dict : mapping of str -> ndarray
        E.g. ``model.state_dict()``.  dtypes: float32/64/16, int64/32/16/8, uint8, bool.
    path : str or os.PathLike
    archive_name : str
        The folder name inside the zip (torch uses the file's stem; any name loads).

    Raises
    ------
    TypeError
        A key that is not a string, or a value that is not an array.
    ValueError
        A dtype torch has no storage for.
    FileNotFoundError
        The target folder does not exist.

    Examples
    --------
    >>> import os, tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "w.pt")
    >>> save_torch_state_dict({"fc.bias": np.arange(3, dtype=np.float32)}, path)
    >>> read_torch_state_dict(path)["fc.bias"]
    array([0., 1., 2.], dtype=float32)
    """
    if not isinstance(state_dict, dict):
        raise TypeError(f"save_torch_state_dict: expected a dict of arrays, got {type(state_dict).__name__}")
    arrays = []
    for key, value in state_dict.items():
        if not isinstance(key, str):
            raise TypeError(f"save_torch_state_dict: keys must be strings, got {key!r}")
        if not isinstance(value, np.ndarray):
            raise TypeError(f"save_torch_state_dict: {key!r} is a {type(value).__name__}, expected an ndarray")
        a = value.astype(value.dtype.newbyteorder("="), order="C", copy=False)   # keeps 0-d as 0-d
        if a.dtype not in _STORAGE_NAMES:
            raise ValueError(f"save_torch_state_dict: {key!r} has dtype {a.dtype}, which torch has no "
                             f"storage for; use one of {sorted(str(d) for d in _STORAGE_NAMES)}")
        arrays.append((key, a))
    pkl = _state_dict_pickle(arrays)
    storages = [a.astype(a.dtype.newbyteorder("<")).tobytes() for _, a in arrays]
    # torch writes a random id; a digest of the content keeps equal state dicts byte-identical
    digest = _hashlib.sha256(pkl + b"".join(storages)).digest()
    serialization_id = str(int.from_bytes(digest[:16], "big")).zfill(40)[:40].encode()
    members = [("data.pkl", pkl), (".format_version", b"1"),
               (".storage_alignment", str(_ALIGNMENT).encode()), ("byteorder", b"little")]
    members += [(f"data/{i}", raw) for i, raw in enumerate(storages)]
    members += [("version", b"3\n"), (".data/serialization_id", serialization_id)]
    with atomic_write(path, "save_torch_state_dict") as f, zipfile.ZipFile(f, "w", zipfile.ZIP_STORED) as zf:
        for name, data in members:
            _aligned_member(zf, f, f"{archive_name}/{name}", data)
