"""The PNG cache: never stale, never half-built, repaired when damaged, and a fallback (or a clear
error) when it or the data cannot be read or written.  Every hostile input is built here."""
import contextlib
import glob
import io
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import warnings

import numpy as np
import pytest

from ece662.data import tree as data_tree
from ece662.data_utils import CLASSES, SPLIT_FOLDERS, get_CINIC10_data
from helpers import REPO



# ---------------------------------------------------------------------------- helpers
def _png_bytes(arr, compress_level=6):
    from PIL import Image
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG", compress_level=compress_level)
    return buf.getvalue()


def _make_tree(root, per_class=2, seed=0, compress_level=6):
    """A CINIC-10 tree of random 32x32 RGB PNGs (``per_class`` per class per split)."""
    rng = np.random.default_rng(seed)
    for folder in SPLIT_FOLDERS.values():
        for cls in CLASSES:
            d = os.path.join(root, folder, cls)
            os.makedirs(d)
            for i in range(per_class):
                img = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
                with open(os.path.join(d, f"cifar10-{folder}-{i}.png"), "wb") as f:
                    f.write(_png_bytes(img, compress_level))
    return str(root)


def _age(root, seconds=3600):
    """Set every PNG's mtime ``seconds`` in the past, as in a data set unpacked long ago."""
    then = time.time_ns() - seconds * 10 ** 9
    for path in glob.glob(os.path.join(root, "*", "*", "*.png")):
        os.utime(path, ns=(then, then))


def _rewrite_in_place(path, arr):
    """New pixels in the same file (same inode), same byte length (stored PNGs), mtime restored."""
    st = os.stat(path)
    new = _png_bytes(arr, compress_level=0)
    assert len(new) == st.st_size
    with open(path, "r+b") as f:
        f.write(new)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def _truth(root, split):
    """The split decoded straight from the PNGs with Pillow, in the loader's order (class, then name)."""
    from PIL import Image
    X, y = [], []
    for label, cls in enumerate(CLASSES):
        d = os.path.join(root, SPLIT_FOLDERS[split], cls)
        for name in sorted(n for n in os.listdir(d) if n.lower().endswith(".png")):
            with Image.open(os.path.join(d, name)) as im:
                X.append(np.asarray(im.convert("RGB")))
            y.append(label)
    return np.array(X, dtype=np.uint8), np.array(y)


def _load(root, **kw):
    return get_CINIC10_data(str(root), normalize=False, channels_first=False, progress=False, **kw)


def _assert_true_pixels(data, root, splits=("train", "val", "test")):
    for split in splits:
        X, y = _truth(root, split)
        np.testing.assert_array_equal(np.asarray(data[f"X_{split}"]), X, err_msg=f"{split} pixels")
        np.testing.assert_array_equal(data[f"y_{split}"], y, err_msg=f"{split} labels")


def _entries(cache, split):
    """The published cache entries of ``split`` (one folder per key)."""
    return sorted(glob.glob(os.path.join(cache, "*", f"{split}-" + "[0-9a-f]" * 16)))


def _no_warnings(fn, *args, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return fn(*args, **kw)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    path = str(tmp_path / "cache")
    monkeypatch.setenv("ECE662_CACHE", path)
    return path


@contextlib.contextmanager
def _unprivileged():
    """Run the block as user 'nobody' when the tests run as root, so file permissions apply.

    The interpreter's own files may be private to root, so whatever the block would import
    lazily is imported first (a failed import, e.g. of the zip names' cp437 codec, would stay
    failed for the rest of the session).
    """
    if os.geteuid() != 0:
        yield
        return
    import filelock  # noqa: F401
    import tqdm.auto  # noqa: F401
    "warm-up".encode("cp437").decode("cp437")
    from PIL import Image
    with Image.open(io.BytesIO(_png_bytes(np.zeros((32, 32, 3), np.uint8))), formats=["PNG"]) as im:
        im.load()
    os.setegid(65534)
    os.seteuid(65534)
    try:
        yield
    finally:
        os.seteuid(0)
        os.setegid(0)


@pytest.fixture
def public(monkeypatch):
    """A temp folder 'nobody' may enter (pytest's tmp_path is private to root), removed afterwards."""
    d = tempfile.mkdtemp(prefix="ece662-test-")
    os.chmod(d, 0o777)
    yield d
    for dirpath, dirnames, _ in os.walk(d):          # give back what a test took away, then remove
        for name in dirnames:
            os.chmod(os.path.join(dirpath, name), 0o777)
    shutil.rmtree(d)


# ---------------------------------------------------------------------------- never stale
def test_image_replaced_in_place_is_decoded_again(tmp_path, cache):
    """Same name, same count, other pixels: the next load has the new pixels, and the old entry is gone."""
    root = _make_tree(tmp_path / "t")
    _assert_true_pixels(_load(root), root)
    victim = os.path.join(root, "train", "cat", "cifar10-train-0.png")
    with open(victim, "wb") as f:
        f.write(_png_bytes(np.full((32, 32, 3), 7, np.uint8)))
    data = _load(root)
    _assert_true_pixels(data, root)
    assert (np.asarray(data["X_train"])[data["y_train"] == 3][0] == 7).all()
    assert len(_entries(cache, "train")) == 1           # the stale entry was removed


def test_added_removed_or_renamed_images_change_the_cache(tmp_path, cache):
    """Adding, removing and renaming files (same count after the rename) all reach the next load."""
    root = _make_tree(tmp_path / "t")
    _load(root)
    d = os.path.join(root, "valid", "dog")
    os.rename(os.path.join(d, "cifar10-valid-0.png"), os.path.join(d, "cifar10-valid-9.png"))
    _assert_true_pixels(_load(root), root)
    os.remove(os.path.join(root, "test", "ship", "cifar10-test-1.png"))
    shutil.copy(os.path.join(root, "test", "cat", "cifar10-test-0.png"), os.path.join(root, "test", "frog", "x.png"))
    data = _load(root)
    _assert_true_pixels(data, root)
    assert list(np.bincount(data["y_test"])) == [2, 2, 2, 2, 2, 2, 3, 2, 1, 2]


def test_a_file_rewritten_within_one_timestamp_tick_of_the_build_is_caught(tmp_path, cache):
    """A PNG written just before the cache read it, then rewritten keeping size and mtime (as happens
    within one timestamp tick): its bytes were recorded, so a plain load notices and re-decodes."""
    root = _make_tree(tmp_path / "t", compress_level=0)      # stored PNGs: every file has the same size
    _load(root)                                              # right after writing: every file is 'racy'
    _rewrite_in_place(os.path.join(root, "valid", "ship", "cifar10-valid-0.png"), np.full((32, 32, 3), 9, np.uint8))
    with pytest.warns(UserWarning, match="cifar10-valid-0.png changed within"):
        data = _load(root)
    _assert_true_pixels(data, root)


def test_verify_finds_content_changed_behind_the_same_size_and_times(tmp_path, cache):
    """Old files rewritten in place with size and mtime restored: a plain load cannot see it (it trusts
    size, mtime and inode); verify=True re-hashes, warns and re-decodes."""
    root = _make_tree(tmp_path / "t", compress_level=0)      # stored PNGs: every file has the same size
    _age(root)
    _load(root)
    victim = os.path.join(root, "test", "deer", "cifar10-test-1.png")
    _rewrite_in_place(victim, np.full((32, 32, 3), 200, np.uint8))
    with pytest.raises(AssertionError):                       # the documented limit of the cheap key
        _assert_true_pixels(_no_warnings(_load, root), root)
    with pytest.warns(UserWarning, match="PNG files changed"):
        data = _load(root, verify=True)
    _assert_true_pixels(data, root)
    _assert_true_pixels(_no_warnings(_load, root), root)      # the rebuilt entry serves plain loads
    _assert_true_pixels(_no_warnings(_load, root, verify=True), root)


def test_verify_finds_a_cache_array_altered_in_place(tmp_path, cache):
    """A flipped byte of the cached pixels between the windows every load samples (shape intact) is
    only visible to verify=True; it rebuilds."""
    root = _make_tree(tmp_path / "t")
    _load(root)
    (entry,) = _entries(cache, "val")
    path = os.path.join(entry, "X.npy")
    nbytes = np.load(path, mmap_mode="r").nbytes
    gap = data_tree._sample_offsets(nbytes)[0] + data_tree._SAMPLE_BYTES + 10    # after the first window
    assert gap < data_tree._sample_offsets(nbytes)[1]
    with open(path, "r+b") as f:
        f.seek(os.path.getsize(path) - nbytes + gap)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0xFF]))
    _no_warnings(_load, root)                   # the sampled check does not see it (documented)
    with pytest.warns(UserWarning, match=re.escape(entry) + ".*X.npy does not match"):
        _assert_true_pixels(_load(root, verify=True), root)
    _assert_true_pixels(_no_warnings(_load, root), root)


def test_a_skipping_cache_is_never_used_by_a_strict_load(tmp_path, cache):
    """A cache built with on_bad_image='skip' that left a file out makes a strict load raise, naming it."""
    root = _make_tree(tmp_path / "t")
    bad = os.path.join(root, "test", "cat", "cifar10-test-0.png")
    with open(bad, "r+b") as f:
        f.truncate(40)
    with pytest.warns(UserWarning, match="skipped 1 bad image"):
        assert len(_load(root, on_bad_image="skip")["y_test"]) == 19
    with pytest.raises(ValueError, match="cifar10-test-0.png.*(corrupt|truncated)"):
        _load(root)
    with pytest.warns(UserWarning, match="skipped 1 bad image"):     # said again on every cached load
        assert len(_load(root, on_bad_image="skip")["y_test"]) == 19


# ---------------------------------------------------------------------------- never half-built
CHILD = r"""
import hashlib, importlib.util, os, sys, time, traceback
import numpy as np
sys.path.insert(0, sys.argv[1])
from ece662 import data_utils
tree, work, me, trials = sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
for t in range(trials):
    open(os.path.join(work, f"ready-{t}-{me}"), "w").close()
    while len([n for n in os.listdir(work) if n.startswith(f"ready-{t}-")]) < 3:    # start together
        time.sleep(0.001)
    os.environ["ECE662_CACHE"] = os.path.join(work, f"cache-{t}")
    try:
        d = data_utils.get_CINIC10_data(tree, normalize=False, channels_first=False, progress=False)
        h = hashlib.sha256()
        for s in ("train", "val", "test"):
            h.update(np.ascontiguousarray(d["X_" + s]).tobytes()); h.update(d["y_" + s].tobytes())
        print(t, h.hexdigest(), flush=True)
    except Exception:
        print(t, "failed:", traceback.format_exc().strip().splitlines()[-1], flush=True)
"""


def test_three_processes_building_one_cache_all_succeed_with_identical_data(real_data, tmp_path):
    """Three processes that find no cache at the same moment all load, and load the same true pixels
    (10 trials, each on a fresh cache)."""
    import hashlib
    tree = os.path.join(real_data, "cinic10_png_sample")
    truth = hashlib.sha256()
    for split in ("train", "val", "test"):
        X, y = _truth(tree, split)
        truth.update(X.tobytes())
        truth.update(y.astype(np.int64).tobytes())
    trials = 10
    procs = [subprocess.Popen([sys.executable, "-c", CHILD, REPO, tree, str(tmp_path), str(i),
                               str(trials)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(3)]
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err
        assert out.splitlines() == [f"{t} {truth.hexdigest()}" for t in range(trials)], out
    for t in range(trials):
        (folder,) = glob.glob(os.path.join(tmp_path, f"cache-{t}", "*"))
        leftovers = [n for n in os.listdir(folder) if n.startswith(".")]
        assert leftovers == [], f"trial {t}: temp folders left behind: {leftovers}"


KILLED = r"""
import os, signal, sys
from ece662 import data_utils
real_save = data_utils.np.save
def save_then_die(fh, arr):                     # killed after the first array is half written
    real_save(fh, arr[: len(arr) // 2])
    fh.flush()
    os.kill(os.getpid(), signal.SIGKILL)
data_utils.np.save = save_then_die
data_utils.get_CINIC10_data(sys.argv[1], splits=("train",), progress=False)
"""


def test_a_killed_builder_leaves_nothing_that_breaks_the_next_load(tmp_path, cache):
    """A builder killed mid-write leaves a temp folder and a lock file; the next load cleans up and loads."""
    root = _make_tree(tmp_path / "t")
    r = subprocess.run([sys.executable, "-c", KILLED, root], env=dict(os.environ, PYTHONPATH=REPO),
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == -9, r.stderr
    (folder,) = glob.glob(os.path.join(cache, "*"))
    assert any(n.startswith(".tmp-train-") for n in os.listdir(folder))     # what the dead process left
    _assert_true_pixels(_no_warnings(_load, root, splits=("train",)), root, splits=("train",))
    assert not [n for n in os.listdir(folder) if n.startswith(".")]


# ---------------------------------------------------------------------------- damaged caches
def _truncate(path):
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)


def _write(name, data):
    def damage(entry):
        with open(os.path.join(entry, name), "wb") as f:
            f.write(data)
    return damage


def _save(name, fn):
    def damage(entry):
        arr = np.load(os.path.join(entry, name))
        np.save(os.path.join(entry, name), fn(arr))
    return damage


DAMAGE = {
    "X truncated": lambda e: _truncate(os.path.join(e, "X.npy")),
    "X empty": _write("X.npy", b""),
    "X not an array": _write("X.npy", b"\x89PNG not an npy file at all"),
    "X one image short": _save("X.npy", lambda a: a[:-1]),
    "X float": _save("X.npy", lambda a: a.astype(np.float32)),
    "X pickled objects": _save("X.npy", lambda a: np.array([None] * len(a), dtype=object)),
    "y out of range": _save("y.npy", lambda a: a + 10),
    "y negative": _save("y.npy", lambda a: a - 5),
    "y float": _save("y.npy", lambda a: a.astype(np.float64)),
    "origin missing": lambda e: os.remove(os.path.join(e, "origin.npy")),
    "origin out of range": _save("origin.npy", lambda a: a + 50),
    "y all cat, in range": _save("y.npy", lambda a: np.full_like(a, CLASSES.index("cat"))),
    "y two labels swapped": _save("y.npy", lambda a: np.concatenate([a[-1:], a[1:-1], a[:1]])),
    "origin rewritten, in range": _save("origin.npy", lambda a: (a + 1) % 2),
    "X whitened": _save("X.npy", lambda a: np.full_like(a, 255)),
    "X last pixel flipped": _save("X.npy", lambda a: np.concatenate([a[:-1], 255 - a[-1:]])),
    "X one byte longer": lambda e: open(os.path.join(e, "X.npy"), "ab").write(b"\0"),
    "manifest not JSON": _write("manifest.json", b'{"version": 2, "key'),
    "manifest a list": _write("manifest.json", b"[1, 2, 3]"),
    "manifest wrong types": _write("manifest.json", b'{"version": 2, "key": 1, "count": "many", '
                                                     b'"skipped": 0, "sha256": [], "png_sha256": 3}'),
    "manifest not UTF-8": _write("manifest.json", b"\xff\xfe\x00garbage"),
    "manifest missing": lambda e: os.remove(os.path.join(e, "manifest.json")),
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_a_damaged_cache_is_reported_and_rebuilt(tmp_path, cache, damage):
    """Each kind of damage gives a warning naming the entry (no manifest: just a rebuild), then the true
    pixels, and the load after that is clean: never a permanent failure."""
    root = _make_tree(tmp_path / "t")
    _load(root)
    (entry,) = _entries(cache, "train")
    DAMAGE[damage](entry)
    if damage == "manifest missing":        # an entry without its manifest was never published
        data = _no_warnings(_load, root)
    else:
        with pytest.warns(UserWarning, match=re.escape(entry) + " cannot be used"):
            data = _load(root)
    _assert_true_pixels(data, root)
    _assert_true_pixels(_no_warnings(_load, root), root)


def test_a_cache_hit_reads_no_png(public, monkeypatch):
    """Once cached, loads only stat the PNGs: they load even after the PNGs are made unreadable."""
    root = _make_tree(os.path.join(public, "t"))
    _age(root)                                               # else recently written files are re-hashed
    cache = os.path.join(public, "cache")
    os.makedirs(cache, mode=0o777)
    os.chmod(cache, 0o777)
    monkeypatch.setenv("ECE662_CACHE", cache)
    with _unprivileged():
        _load(root)
    for path in glob.glob(os.path.join(root, "*", "*", "*.png")):
        os.chmod(path, 0)
    with _unprivileged():
        data = _no_warnings(_load, root)
    for path in glob.glob(os.path.join(root, "*", "*", "*.png")):
        os.chmod(path, 0o644)
    _assert_true_pixels(data, root)


# ---------------------------------------------------------------------------- caches that cannot be written
def test_a_read_only_cache_folder_decodes_in_memory_with_a_warning(public, monkeypatch):
    """No permission to write the cache: a warning saying how to fix it (ECE662_CACHE), then the data."""
    root = _make_tree(os.path.join(public, "t"))
    cache = os.path.join(public, "ro-cache")
    os.makedirs(cache)
    os.chmod(cache, 0o555)
    monkeypatch.setenv("ECE662_CACHE", os.path.join(cache, "sub"))
    with _unprivileged(), pytest.warns(UserWarning, match="cannot write the PNG cache.*(Permission denied|"
                                                         "permission denied).*ECE662_CACHE"):
        data = _load(root)
    _assert_true_pixels(data, root)
    assert os.listdir(cache) == []


def test_a_read_only_cache_that_is_complete_is_used_silently(public, monkeypatch):
    """A cache built earlier and then made read-only (e.g. shared by a course) serves loads, no warning."""
    root = _make_tree(os.path.join(public, "t"))
    cache = os.path.join(public, "cache")
    monkeypatch.setenv("ECE662_CACHE", cache)
    _load(root)
    for dirpath, dirnames, filenames in os.walk(cache):
        for name in filenames:
            os.chmod(os.path.join(dirpath, name), 0o444)
        os.chmod(dirpath, 0o555)
    with _unprivileged():
        data = _no_warnings(_load, root)
    _assert_true_pixels(data, root)


def test_cache_under_a_regular_file_falls_back_with_a_warning(tmp_path, monkeypatch):
    """ECE662_CACHE pointing below a file: a warning naming the problem, then the data; no traceback."""
    root = _make_tree(tmp_path / "t")
    (tmp_path / "afile").write_text("not a folder")
    monkeypatch.setenv("ECE662_CACHE", str(tmp_path / "afile" / "cache"))
    with pytest.warns(UserWarning, match="cannot write the PNG cache.*afile.*ECE662_CACHE"):
        data = _load(root)
    _assert_true_pixels(data, root)
    assert (tmp_path / "afile").read_text() == "not a folder"


def test_a_full_disk_while_writing_falls_back_with_a_warning(tmp_path, cache, monkeypatch):
    """An OSError while writing the entry (here ENOSPC) leaves no temp folder and still gives the data."""
    import errno
    root = _make_tree(tmp_path / "t")

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", cache)
    monkeypatch.setattr(data_tree, "_write_entry", no_space)
    with pytest.warns(UserWarning, match="No space left"):
        data = _load(root, splits=("val",))
    _assert_true_pixels(data, root, splits=("val",))
    (folder,) = glob.glob(os.path.join(cache, "*"))
    assert not [n for n in os.listdir(folder) if n.startswith(".tmp") or re.fullmatch(r"val-[0-9a-f]{16}", n)]


# ---------------------------------------------------------------------------- data that cannot be read
def test_an_unreadable_data_folder_says_permission_denied(public):
    """A data folder we may not enter: PermissionError with 'permission denied' and the path, not 'no data'."""
    root = _make_tree(os.path.join(public, "t"))
    os.chmod(root, 0)
    with _unprivileged(), pytest.raises(PermissionError, match=f"permission denied.*{re.escape(root)}"):
        _load(root)


@pytest.mark.parametrize("folder, mode", [("valid/horse", 0), ("valid/horse", 0o311), ("valid", 0),
                                          ("valid", 0o600)])
def test_an_unreadable_split_or_class_folder_says_permission_denied(public, monkeypatch, folder, mode):
    """A split or class folder we may not list or enter: PermissionError naming it, not 'missing'."""
    root = _make_tree(os.path.join(public, "t"))
    monkeypatch.setenv("ECE662_CACHE", os.path.join(public, "cache"))
    os.chmod(os.path.join(root, folder), mode)
    with _unprivileged(), pytest.raises(PermissionError, match=f"permission denied.*{folder}"):
        _load(root)


@pytest.mark.parametrize("on_bad_image", ["raise", "skip"])
def test_an_unreadable_png_is_permission_denied_not_corrupt(public, monkeypatch, on_bad_image):
    """A PNG we may not read is a PermissionError naming it (also with 'skip': it is not a bad image)."""
    root = _make_tree(os.path.join(public, "t"))
    cache = os.path.join(public, "cache")
    os.makedirs(cache)
    os.chmod(cache, 0o777)
    monkeypatch.setenv("ECE662_CACHE", cache)
    victim = os.path.join(root, "train", "bird", "cifar10-train-1.png")
    os.chmod(victim, 0)
    with _unprivileged(), pytest.raises(PermissionError, match=f"permission denied.*{re.escape(victim)}") as e:
        _load(root, on_bad_image=on_bad_image)
    assert "corrupt" not in str(e.value)


def test_an_unreadable_npz_says_permission_denied(public, real_data):
    """An .npz we may not read: PermissionError with its path, not 'not a readable .npz archive'."""
    path = os.path.join(public, "d.npz")
    shutil.copy(os.path.join(real_data, "cifar10_real_small.npz"), path)
    os.chmod(path, 0)
    with _unprivileged(), pytest.raises(PermissionError, match=f"permission denied.*{re.escape(path)}") as e:
        get_CINIC10_data(path)
    assert "not a readable" not in str(e.value)


def test_ece662_data_in_an_unreadable_folder_is_not_silently_skipped(public, real_data, monkeypatch):
    """ECE662_DATA below a folder we may not enter: permission denied, not a fall-back to other data."""
    locked = os.path.join(public, "locked")
    os.makedirs(os.path.join(locked, "data"))
    shutil.copy(os.path.join(real_data, "cifar10_real_small.npz"), os.path.join(locked, "data", "cinic10.npz"))
    os.chmod(locked, 0)
    monkeypatch.setenv("ECE662_DATA", os.path.join(locked, "data"))
    with _unprivileged(), pytest.raises(PermissionError, match="permission denied.*locked"):
        get_CINIC10_data()
