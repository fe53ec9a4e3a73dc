"""Where the data is: the places ``get_CINIC10_data`` looks, first hit wins.

1. the ``path`` argument,
2. the environment variable ``ECE662_DATA``,
3. ``datasets/`` in the repository (where ``datasets/get_datasets.sh`` puts it),
4. ``../shared/datasets`` beside the repository (the course machines' real data),
5. the same two places relative to the working directory (for a non-editable install).

In a folder it takes a CINIC-10 tree (``train/ valid/ test/``), then ``cinic-10/`` (or ``CINIC-10/``), then
``cinic10.npz``, then ``cifar10_real.npz`` (the CIFAR-10 part of CINIC-10 shipped with the course machines).
"""
import errno
import os
import stat

# our split names -> the CINIC-10 folder names
SPLIT_FOLDERS = {"train": "train", "val": "valid", "test": "test"}
_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def permission_denied(path, doing):
    """The PermissionError every reader raises: what could not be done, to what, and the fix."""
    return PermissionError(errno.EACCES, f"permission denied {doing} {path}; make it readable "
                           f"(e.g. chmod -R a+rX on the data folder) or point ECE662_DATA (or path=) at a "
                           f"copy you can read", path)



def _candidates(path):
    if path is not None:
        return [("the path argument", os.fspath(path))]
    found = []
    if os.environ.get("ECE662_DATA"):
        found.append(("$ECE662_DATA", os.environ["ECE662_DATA"]))
    found.append(("the repository's datasets/", os.path.join(_REPO_ROOT, "datasets")))
    found.append(("../shared/datasets beside the repository",
                  os.path.join(os.path.dirname(_REPO_ROOT), "shared", "datasets")))
    # the same two places seen from the working directory (for a non-editable install)
    for label, folder in (("datasets/ in the working directory", os.path.abspath("datasets")),
                          ("../shared/datasets from the working directory",
                           os.path.abspath(os.path.join("..", "shared", "datasets")))):
        if all(os.path.abspath(f) != folder for _, f in found):
            found.append((label, folder))
    return found


def _is_tree(folder):
    return all(os.path.isdir(os.path.join(folder, f)) for f in SPLIT_FOLDERS.values())


def _resolve(folder):
    """The data source inside ``folder``: ('tree', dir), ('npz', file) or None.

    A folder we may not look into is a PermissionError, never "no data found".
    """
    try:
        st = os.stat(folder)
        if stat.S_ISDIR(st.st_mode):
            os.listdir(folder)                  # may we look inside?
    except PermissionError:
        raise permission_denied(folder, "opening") from None
    except OSError:                             # missing, or a path through a file
        return None
    if stat.S_ISREG(st.st_mode):
        return ("npz", folder)
    if not stat.S_ISDIR(st.st_mode):
        return None
    if _is_tree(folder):
        return ("tree", folder)
    for name in ("cinic-10", "CINIC-10"):
        if _is_tree(os.path.join(folder, name)):
            return ("tree", os.path.join(folder, name))
    for name in ("cinic10.npz", "cifar10_real.npz"):
        if os.path.isfile(os.path.join(folder, name)):
            return ("npz", os.path.join(folder, name))
    return None


def find_data(path=None):
    """Return ``(kind, location)`` of the data ``get_CINIC10_data`` would load.

    Raises
    ------
    FileNotFoundError
        Listing every place it looked and how to get the data.
    """
    looked = []
    for label, folder in _candidates(path):
        hit = _resolve(folder)
        if hit is not None:
            return hit
        looked.append(f"  {label}: {os.path.abspath(folder)}")
    raise FileNotFoundError(
        "no CINIC-10 data found. Looked in:\n" + "\n".join(looked) +
        "\nExpected a CINIC-10 folder (train/ valid/ test/ with ten class folders of PNGs), "
        "a folder holding cinic-10/, cinic10.npz or cifar10_real.npz, or an .npz archive with "
        "X_train, y_train, X_val, y_val, X_test, y_test. Get CINIC-10 with "
        "`bash datasets/get_datasets.sh` (or `python -m ece662.data.download`), or point ECE662_DATA "
        "(or path=) at data you have.")
