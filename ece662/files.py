"""Writing files so that a failure never loses the old one.

Every model writer of ece662 (``.npz``, torch, Keras, ONNX) goes through :func:`atomic_write`:
the bytes go to a temporary file beside the target, are flushed to disk, and only then
replace the target in one ``os.replace``.  A reader sees the old file or the new one, never
half of one; a write that fails (a full disk, an exception, Ctrl-C) leaves the old file as it
was and no temporary file behind.
"""
import contextlib
import os
import tempfile


@contextlib.contextmanager
def atomic_write(path, caller):
    """Open a binary file that becomes ``path`` when the ``with`` block ends without an error.

    Parameters
    ----------
    path : str or os.PathLike
        The target; its folder must exist.
    caller : str
        The public function's name, for the error message.

    Raises
    ------
    FileNotFoundError
        The target's folder does not exist.

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
