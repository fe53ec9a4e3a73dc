"""Model files: ece662's own ``.npz`` format, and the entry point to the other formats.

ece662 format (``save_model`` / ``load_model``)
    One ``.npz`` (read with ``allow_pickle=False``, so loading runs no code) holding
    ``__ece662_format__`` (the string ``"ece662-model-v1"``), ``__ece662_spec__`` (the
    architecture as JSON, see ``Module.spec``) and one array per state-dict key,
    including ``<name>_orig`` / ``<name>_mask`` of pruned parameters, which are pruned
    again on load.  Saving writes a temporary file beside the target and renames it
    into place, so a failed save never leaves a half-written file where a good one was.

Other formats live beside this module and are re-exported here:
``ece662.torch_format`` (PyTorch state_dicts, read without torch) and
``ece662.keras_format`` (Keras files, read with h5py).
"""
import json
import os
import tempfile
import zipfile

import numpy as np

FORMAT = "ece662-model-v1"
_FORMAT_KEY = "__ece662_format__"
_SPEC_KEY = "__ece662_spec__"
# the most weights (values) a model file may declare: 50 million float32 are 200 MB, far more
# than any course network (the default one has 23,210); a file that declares more is refused
# before anything is allocated
MAX_PARAMETERS = 50_000_000


# ============================================================================ ece662 format
def save_model(model, path):
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
    >>> save_model(default_convnet(seed=1), path)
    >>> load_model(path).state_dict()["fc.bias"].shape
    (10,)
    """
    from ece662.layers import Sequential
    if not isinstance(model, Sequential):
        raise TypeError(f"save_model: expected an ece662 Sequential model, got {type(model).__name__}")
    path = os.fspath(path)
    arrays = {_FORMAT_KEY: np.array(FORMAT), _SPEC_KEY: np.array(json.dumps(model.spec()))}
    arrays.update(model.state_dict())
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"save_model: the folder {folder} does not exist; create it first")
    fd, tmp = tempfile.mkstemp(prefix=".ece662-", suffix=".npz.tmp", dir=folder)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)      # mkstemp makes 0600; a model file is an ordinary file
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def load_model(path):
    """Read a model written by :func:`save_model` (pruned parameters come back pruned).

    Raises
    ------
    FileNotFoundError
        No file at ``path``.
    ValueError
        The file is not an ece662 model (not an npz, truncated, no spec, pickled objects,
        or arrays that do not fit the architecture); the message says which.
    """
    from ece662.layers import from_spec
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"load_model: no file at {path}")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except ValueError as e:
        if "pickle" in str(e).lower():
            raise ValueError(f"{path}: the file holds pickled Python objects, which ece662 refuses "
                             f"to load (they can run code); re-save it with ece662.save_model") from None
        raise ValueError(f"{path} is not an ece662 model file (.npz): {e}") from None
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        raise ValueError(f"{path} is not a readable ece662 model file: it is not a complete .npz "
                         f"archive ({e}); it may be truncated or be another kind of file") from None
    if _SPEC_KEY not in arrays:
        raise ValueError(f"{path} is an .npz archive but not an ece662 model (no {_SPEC_KEY} entry); "
                         f"for a PyTorch state_dict use ece662.pruning_helper.load_model(path, mode='torch')")
    spec = json.loads(str(arrays.pop(_SPEC_KEY)))
    arrays.pop(_FORMAT_KEY, None)
    model = from_spec(spec)
    _load_with_masks(model, arrays, source=path)
    return model.eval()


def _load_with_masks(model, arrays, source):
    """Prune the parameters whose ``_mask`` arrays are present, then load every array."""
    masked = [k[:-len("_mask")] for k in arrays if k.endswith("_mask")]
    if masked:
        from ece662 import pruning
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
            pruning.custom_from_mask(module, pname, mask.astype(bool))
    try:
        model.load_state_dict(arrays)
    except (KeyError, ValueError) as e:
        raise ValueError(f"{source}: the stored arrays do not fit the stored architecture: {e}") from None


# the other formats, re-exported (they import this module lazily, inside functions)
from ece662.torch_format import model_from_state_dict, read_torch_state_dict  # noqa: E402
from ece662.keras_format import model_from_keras, read_keras_weights  # noqa: E402
