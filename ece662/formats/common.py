"""What every model format shares: a weight budget, finite weights, masks loaded as pruning, atomic writes.

Writing files so that a failure never loses the old one: every model writer of ece662 (``.npz``, torch, Keras, ONNX) goes through :func:`atomic_write`:
the bytes go to a temporary file beside the target, are flushed to disk, and only then
replace the target in one ``os.replace``.  A reader sees the old file or the new one, never
half of one; a write that fails (a full disk, an exception, Ctrl-C) leaves the old file as it
was and no temporary file behind.
"""
import contextlib
import os
import tempfile

import numpy as np

from ece662 import pruning

# the most weights (values) a model file may declare: 50 million float32 are 200 MB, far more
# than any course network (the default one has 23,210); a file that declares more is refused
# before anything is allocated
MAX_PARAMETERS = 50_000_000


@contextlib.contextmanager
def atomic_write(path, caller):
    """Open a binary file that becomes ``path`` when the ``with`` block ends without an error.

    Parameters
    ----------
    path : str or os.PathLike
        The target; its folder must exist.
    caller : str
        The public function's name, for the error message.

    Only a regular file is ever replaced.  A target that exists and is something else (a folder, a
    FIFO, a device such as ``/dev/null``, a socket) is refused: ``os.replace`` would put a file in its
    place, and run as root that would remove ``/dev/null`` for every program on the machine.  A
    symbolic link is judged by what it points to: a link to a regular file is itself replaced by the
    new file (its old target is left as it was), a link to anything else is refused.

    Raises
    ------
    FileNotFoundError
        The target's folder does not exist.
    ValueError
        The target exists and is not a regular file.

    Examples
    --------
    >>> import os, tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "x.bin")
    >>> with atomic_write(path, "example") as f:
    ...     _ = f.write(b"all or nothing")
    >>> open(path, "rb").read()
    b'all or nothing'
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"{caller}: the folder {folder} does not exist; create it first")
    if os.path.exists(path) and not os.path.isfile(path):     # both follow symbolic links
        raise ValueError(f"{caller}: {path} exists and is not a regular file (a folder, FIFO, device or "
                         f"socket); ece662 only replaces files: choose another path")
    suffix = os.path.splitext(path)[1] + ".tmp"
    fd, tmp = tempfile.mkstemp(prefix=".ece662-", suffix=suffix, dir=folder)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)      # mkstemp makes 0600; a model file is an ordinary file
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def check_finite_weights(arrays, source):
    """Refuse float arrays holding NaN or infinity, naming the layer (a model with them only
    ever predicts one class, which would look like a 10% accuracy instead of an error)."""
    for key, a in arrays.items():
        if a.dtype.kind == "f" and not np.isfinite(a).all():
            bad = int(np.count_nonzero(~np.isfinite(a)))
            layer = key.rsplit(".", 1)[0] if "." in key else key
            raise ValueError(f"{source}: {key} (layer {layer!r}) holds {bad} NaN or infinite values of "
                             f"{a.size}; the model cannot be evaluated (was training diverging when "
                             f"it was saved?)")


def load_with_masks(model, arrays, source):
    """Prune the parameters whose ``_mask`` arrays are present, then load every array."""
    masked = [k[:-len("_mask")] for k in arrays if k.endswith("_mask")]
    if masked:
        modules = dict(model.named_modules())
        for key in masked:
            mod_name, _, pname = key.rpartition(".")
            module = modules.get(mod_name)
            if module is None or pname not in module._parameters:
                raise ValueError(f"{source}: mask {key}_mask does not belong to any parameter of the model")
            mask = arrays[key + "_mask"]
            if mask.shape != module._parameters[pname].shape:
                raise ValueError(f"{source}: {key}_mask has shape {mask.shape}, but {key} has shape "
                                 f"{module._parameters[pname].shape}")
            odd = mask[~np.isin(mask, (0, 1))]          # 0.5 would read as True
            if odd.size:
                raise ValueError(f"{source}: {key}_mask is not a pruning mask: it holds {odd.size} values "
                                 f"other than 0 and 1 (e.g. {odd.flat[0].item()!r})")
            pruning.custom_from_mask(module, pname, mask.astype(bool))
    try:
        model.load_state_dict(arrays)
    except (KeyError, ValueError) as e:
        raise ValueError(f"{source}: the stored arrays do not fit the stored architecture: {e}") from None


def effective(module, name):
    """The array a forward pass uses for ``module``'s parameter or buffer ``name``, as float32: for a pruned
    parameter ``name_orig * name_mask``; None if the module has no such entry.  Writers export this."""
    orig = module._parameters.get(name + "_orig")
    if orig is not None and name + "_mask" in module._buffers:
        return (orig * module._buffers[name + "_mask"]).astype(np.float32)
    value = module._parameters.get(name, module._buffers.get(name))
    return None if value is None else np.asarray(value, dtype=np.float32)
