"""ece662's own model file: one ``.npz`` with the architecture, the weights and the pruning masks.

One ``.npz`` (never unpickled, so loading runs no code) holding ``__ece662_format__`` (the string
``"ece662-model-v1"``), ``__ece662_spec__`` (the architecture as JSON, see ``Module.spec`` and
:mod:`ece662.formats.spec`) and one array per state-dict key, including ``<name>_orig`` / ``<name>_mask`` of
pruned parameters, which are pruned again on load.  Saving writes a temporary file beside the target and renames
it into place, so a failed save never leaves a half-written file where a good one was.  Loading treats the file
as untrusted input (see :func:`load_npz_model`).
"""
import json
import os
import zipfile

import numpy as np

from ece662.formats import common
from ece662.formats.common import atomic_write, check_finite_weights, load_with_masks
from ece662.formats.spec import MAX_SPEC_CHARS, check_spec
from ece662.layers import Sequential, from_spec
from ece662.layers.plan import check_finite_computation
from ece662.safezip import ZipReader

FORMAT = "ece662-model-v1"
FORMAT_KEY = "__ece662_format__"
SPEC_KEY = "__ece662_spec__"


def save_npz_model(model, path):
    """Write ``model`` (architecture, weights, pruning masks) to ``path`` atomically.

    Parameters
    ----------
    model : ece662.layers.Sequential
    path : str or os.PathLike
        Used exactly as given (no ``.npz`` is appended).

    Examples
    --------
    >>> import os, tempfile
    >>> from ece662.models import default_convnet
    >>> path = os.path.join(tempfile.mkdtemp(), "net.npz")
    >>> save_npz_model(default_convnet(seed=1), path)
    >>> load_npz_model(path).state_dict()["fc.bias"].shape
    (10,)
    """
    if not isinstance(model, Sequential):
        raise TypeError(f"save_model: expected an ece662 Sequential model, got {type(model).__name__}")
    path = os.fspath(path)
    arrays = {FORMAT_KEY: np.array(FORMAT), SPEC_KEY: np.array(json.dumps(model.spec()))}
    arrays.update(model.state_dict())
    with atomic_write(path, "save_model") as f:
        np.savez(f, **arrays)


def load_npz_model(path):
    """Read a model written by :func:`save_model` (pruned parameters come back pruned).

    The file is untrusted input, checked in this order, before anything large is allocated:
    the archive (members read through ``ece662.safezip``: stored or deflated, never past their
    declared size, no name twice; at most ``max(256 MiB, 100 x the file's size)`` bytes in all),
    each array's ``.npy`` header (no pickled objects; the declared shape must fit the bytes the
    zip member really holds; at most ``2 x MAX_PARAMETERS`` values in all; strings only for the
    format and the spec, of bounded length), then the
    architecture's JSON spec (known layer types, argument types, at most
    :data:`MAX_PARAMETERS` weights, conv paddings smaller than their kernels), then the arrays'
    values as the model holds them, in float32 (no NaN or infinity, also once a batch norm is
    folded; no negative running variance).

    Raises
    ------
    FileNotFoundError
        No file at ``path``.
    PermissionError
        The file cannot be read by this user.
    ValueError
        The file is not an ece662 model (not an npz, truncated, no spec, pickled objects,
        a damaged or oversized spec, non-finite weights, masks holding values other than 0 and 1,
        or arrays that do not fit the architecture); the message says which.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"load_model: no file at {path}")
    arrays = read_npz_arrays(path)
    if SPEC_KEY not in arrays:
        raise ValueError(f"{path} is an .npz archive but not an ece662 model (no {SPEC_KEY} entry); "
                         f"for a PyTorch state_dict use ece662.pruning_helper.load_model(path, mode='torch')")
    fmt = arrays.pop(FORMAT_KEY, None)
    if fmt is not None and (fmt.dtype.kind != "U" or fmt.shape != () or str(fmt) != FORMAT):
        raise ValueError(f"{path}: unknown ece662 format {str(fmt)[:40]!r} (this ece662 reads {FORMAT!r}); "
                         f"it may have been written by a newer ece662")
    spec = parse_spec(arrays.pop(SPEC_KEY), path)
    model = from_spec(spec)
    with np.errstate(over="ignore"):           # float64 1e39 becomes inf in float32: refused just below
        load_with_masks(model, arrays, source=path)
    # checked after the cast to float32 and as the network computes (batch norms folded, slopes)
    check_finite_weights(model.state_dict(), path)
    check_finite_computation(model, path)
    return model.eval()




# Bytes the arrays of one file may inflate to: at least _MIN_BYTES (a model file of np.savez holds its bytes
# uncompressed, so its size is its inflated size), and for a larger model _MAX_RATIO times the file's size.
# Weights compress by 1.1x, masks and zeros by more, but never a hundredfold across a whole file; a file that
# does is a compression bomb.
_MIN_BYTES = 256 << 20
_MAX_RATIO = 100
_MAX_FORMAT_CHARS = 64               # "ece662-model-v1"


def read_npz_arrays(path):
    """``{key: ndarray}`` of an ``.npz``, each member's ``.npy`` header checked before its data are read.

    ``np.load`` allocates whatever a header declares before it reads a byte, so a 1 kB file
    declaring a shape of ``(10**12,)`` would ask for terabytes; here the declared size must
    equal what the zip member holds, all numeric arrays together stay within ``2 * MAX_PARAMETERS``
    values (weights and their masks), the two strings (format and spec) within their own small
    bounds, and all bytes together within ``max(256 MiB, 100 x the file's size)``.  Members are read
    through ``ece662.safezip``, so none yields more bytes than it declares.
    """
    fmt = np.lib.format
    try:
        zf = ZipReader(path)
    except PermissionError:
        raise PermissionError(f"cannot read {path}: permission denied; check the file's "
                              f"permissions (ls -l {path})") from None
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as e:
        raise ValueError(f"{path} is not a readable ece662 model file: it is not a complete .npz "
                         f"archive ({e}); it may be truncated or be another kind of file") from None
    arrays, values, nbytes = {}, 0, 0
    max_bytes = max(_MIN_BYTES, _MAX_RATIO * zf.size)
    with zf:
        names = zf.namelist()            # refuses a name that appears twice
        if any(n.endswith("data.pkl") for n in names) or "config.json" in names:
            kind, mode = ("a PyTorch file (torch.save)", "torch") if "config.json" not in names else \
                         ("a Keras .keras file", "tensorflow")
            raise ValueError(f"{path} is {kind}, not an ece662 .npz model: load it with "
                             f"load_model(path, mode='{mode}') (on the command line: --mode {mode})")
        try:
            for info in zf.infolist():
                if not info.filename.endswith(".npy"):
                    raise ValueError(f"{path}: the archive member {info.filename!r} is not an array "
                                     f"(.npy); this is not a file ece662 wrote")
                key = info.filename[:-len(".npy")]
                nbytes += info.file_size
                if nbytes > max_bytes:
                    raise ValueError(f"{path}: the members declare {nbytes:,} bytes in all (at {key!r}), more "
                                     f"than {max_bytes:,} (the larger of {_MIN_BYTES >> 20} MiB and {_MAX_RATIO} "
                                     f"times the file's {zf.size:,} bytes); refused as a compression bomb")
                with zf.open(info, max_bytes=max_bytes) as f:
                    version = fmt.read_magic(f)
                    if version not in ((1, 0), (2, 0)):
                        raise ValueError(f"{path}: array {key!r} uses .npy format {version}, "
                                         f"which ece662 files never do")
                    try:      # numpy parses the header as a Python literal: a damaged one fails in many ways
                        shape, fortran, dtype = (fmt.read_array_header_1_0(f) if version == (1, 0)
                                                 else fmt.read_array_header_2_0(f))
                    except Exception as e:
                        raise ValueError(f"{path}: array {key!r} has a damaged .npy header "
                                         f"({type(e).__name__}: {str(e)[:120]}); the file is not one "
                                         f"ece662 wrote intact") from None
                    header = f.tell()
                if dtype.hasobject:
                    raise ValueError(f"{path}: the file holds pickled Python objects (array {key!r}), "
                                     f"which ece662 refuses to load (they can run code); re-save it "
                                     f"with ece662.save_model")
                if dtype.kind not in "fbiuU" or dtype.fields is not None:
                    raise ValueError(f"{path}: array {key!r} has dtype {dtype}; ece662 files hold "
                                     f"float, integer and boolean arrays and a JSON string")
                count = 1
                for n in shape:
                    count *= n
                if count * dtype.itemsize != info.file_size - header:
                    raise ValueError(f"{path}: array {key!r} declares shape {shape} of {dtype} "
                                     f"({count * dtype.itemsize:,} bytes), but its archive member holds "
                                     f"{info.file_size - header:,}; the file is damaged or crafted")
                if dtype.kind == "U":
                    _check_string_member(key, shape, dtype, path)
                else:
                    values += count
                if values > 2 * common.MAX_PARAMETERS:
                    raise ValueError(f"{path}: the arrays declare more than {2 * common.MAX_PARAMETERS:,} "
                                     f"values (at {key!r}), more than ece662 loads (ece662.formats.common.MAX_PARAMETERS)")
                with zf.open(info, max_bytes=max_bytes) as f:
                    arrays[key] = fmt.read_array(f, allow_pickle=False)
        except PermissionError:
            raise
        except (zipfile.BadZipFile, OSError, EOFError) as e:
            raise ValueError(f"{path} is not a readable ece662 model file: it is not a complete .npz "
                             f"archive ({e}); it may be truncated or be another kind of file") from None
        except ValueError as e:
            if str(e).startswith(path):
                raise
            raise ValueError(f"{path} is not an ece662 model file (.npz): {e}") from None
    return arrays


def _check_string_member(key, shape, dtype, path):
    """An ece662 file holds two strings, the format and the spec, each one string of bounded length."""
    limits = {FORMAT_KEY: _MAX_FORMAT_CHARS, SPEC_KEY: MAX_SPEC_CHARS}
    if key not in limits:
        raise ValueError(f"{path}: array {key!r} holds strings ({dtype}); in an ece662 file only "
                         f"{FORMAT_KEY} and {SPEC_KEY} are strings, the weights are numbers")
    if shape != ():
        raise ValueError(f"{path}: {key} must be one string, got an array of {dtype} with shape {shape}")
    chars = dtype.itemsize // 4          # numpy's '<U' stores 4 bytes per character
    if chars > limits[key]:
        raise ValueError(f"{path}: the string {key!r} declares {chars:,} characters, more than the "
                         f"{limits[key]:,} an ece662 file needs")


def parse_spec(value, path):
    """The JSON architecture spec, checked (types, counts, known layers, a weight budget)
    before any layer is made."""
    if value.dtype.kind != "U" or value.shape != ():
        raise ValueError(f"{path}: {SPEC_KEY} must be one JSON string, got an array of {value.dtype} "
                         f"with shape {value.shape}")
    try:
        spec = json.loads(str(value))
    except (ValueError, RecursionError) as e:      # JSONDecodeError, or an integer of over 4,300 digits
        raise ValueError(f"{path}: the model spec ({SPEC_KEY}) is not valid JSON ({str(e)[:200]}); "
                         f"the file is damaged") from None
    check_spec(spec, path)
    return spec
