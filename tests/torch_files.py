"""Build torch.save-style files byte by byte, for the hostile-file and fuzz tests (no torch needed).

A torch file is a zip: ``<folder>/data.pkl`` (a pickle) and ``<folder>/data/<key>`` (raw storages).
``tensor_pickle`` writes the pickle opcode by opcode, exactly as torch does, so a test can put any
value, however hostile, in any argument of ``_rebuild_tensor_v2``.
"""
import pickle
import struct
import zipfile

import numpy as np

PROTO2 = b"\x80\x02"
MARK, TUPLE, REDUCE, SETITEMS, STOP, BINPERSID, NEWFALSE = b"(", b"t", b"R", b"u", b".", b"Q", b"\x89"


def op_global(module, name):
    """GLOBAL: push the object ``module.name`` (resolved by the unpickler's find_class)."""
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def op_value(x):
    """Push a plain value (int, str, float, tuple, list, None, bool) with pickle's own encoder."""
    return pickle.dumps(x, protocol=2)[2:-1]     # drop PROTO and STOP


ORDERED_DICT = op_global("collections", "OrderedDict") + b")" + REDUCE     # OrderedDict()


def tensor_ops(storage_type, key, numel, offset, size, stride, device="cpu"):
    """Opcodes that push ``_rebuild_tensor_v2(("storage", type, key, device, numel), offset, size, stride, False, OrderedDict())``."""
    pid = MARK + op_value("storage") + op_global("torch", storage_type) + op_value(key) + \
        op_value(device) + op_value(numel) + TUPLE
    return (op_global("torch._utils", "_rebuild_tensor_v2") + MARK + pid + BINPERSID +
            op_value(offset) + op_value(size) + op_value(stride) + NEWFALSE + ORDERED_DICT + TUPLE + REDUCE)


def tensor_pickle(entries):
    """A state-dict pickle; ``entries`` is a list of ``(dict key, tensor_ops(...) bytes)``."""
    body = b"".join(op_value(k) + t for k, t in entries)
    return PROTO2 + ORDERED_DICT + MARK + body + SETITEMS + STOP


def dict_pickle(items):
    """A plain-dict pickle: ``items`` is a list of ``(key, value opcodes)``."""
    return PROTO2 + b"}" + MARK + b"".join(op_value(k) + v for k, v in items) + SETITEMS + STOP


def write_pt(path, pkl, storages, folder="archive", compression=zipfile.ZIP_STORED):
    """Write a torch-style zip: ``pkl`` as data.pkl and ``{key: bytes}`` as data/<key>."""
    with zipfile.ZipFile(path, "w", compression=compression) as z:
        z.writestr(f"{folder}/data.pkl", pkl)
        z.writestr(f"{folder}/byteorder", "little")
        for key, raw in storages.items():
            z.writestr(f"{folder}/data/{key}", raw)
        z.writestr(f"{folder}/version", "3\n")
    return path


def simple_pt(path, size=(2, 3), stride=(3, 1), offset=0, numel=6, storage=None,
              storage_type="FloatStorage", key="w"):
    """One tensor ``key`` over storage "0" (float32 arange unless ``storage`` bytes are given)."""
    if storage is None:
        storage = np.arange(numel, dtype=np.float32).tobytes()
    pkl = tensor_pickle([(key, tensor_ops(storage_type, "0", numel, offset, size, stride))])
    return write_pt(path, pkl, {"0": storage})


def binbytes8(declared, actual=b"abc"):
    """BINBYTES8 whose header declares ``declared`` bytes (pickle would allocate them first)."""
    return b"\x8e" + struct.pack("<Q", declared) + actual
