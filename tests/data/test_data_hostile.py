"""Hostile and careless data: .npz values and files, PNG trees, and a fuzz suite over both.

Every input is built here.  The only acceptable outcomes: the right arrays, or a ValueError /
TypeError / PermissionError whose message names the file (and for an .npz, the key).

The fuzz tests run a few hundred examples; set ECE662_FUZZ_EXAMPLES (e.g. 5000) to run longer.
"""
import io
import os
import struct
import tracemalloc
import warnings
import zipfile
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ece662.data_utils import CLASSES, SPLIT_FOLDERS, get_CINIC10_data
from helpers import REPO

FUZZ_EXAMPLES = int(os.environ.get("ECE662_FUZZ_EXAMPLES", "150"))


# ---------------------------------------------------------------------------- .npz values
def _arrays(n=10, seed=0):
    rng = np.random.default_rng(seed)
    out = {}
    for s in ("train", "val", "test"):
        out[f"X_{s}"] = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
        out[f"y_{s}"] = np.arange(n) % 10
    return out


def _with(key, value):
    def change(a):
        a[key] = value(a) if callable(value) else value
    return change


BAD_NPZ = {
    "labels float": (_with("y_train", lambda a: a["y_train"].astype(np.float64)), "y_train", "float64"),
    "labels float with NaN": (_with("y_val", lambda a: np.where(a["y_val"] == 3, np.nan, a["y_val"])),
                              "y_val", "NaN"),
    "labels negative": (_with("y_test", lambda a: a["y_test"] - 1), "y_test", "out of range"),
    "labels 10": (_with("y_test", lambda a: a["y_test"] + 1), "y_test", "out of range"),
    "labels huge": (_with("y_train", lambda a: a["y_train"] + 2 ** 40), "y_train", "out of range"),
    "labels bool": (_with("y_train", lambda a: a["y_train"] > 4), "y_train", "bool"),
    "labels strings": (_with("y_train", lambda a: a["y_train"].astype(str)), "y_train", "integer"),
    "labels one-hot": (_with("y_val", lambda a: np.eye(10, dtype=np.int64)[a["y_val"]]), "y_val", "one-hot"),
    "labels too few": (_with("y_test", lambda a: a["y_test"][:-1]), "y_test", "to match"),
    "labels too many": (_with("y_test", lambda a: np.r_[a["y_test"], 1]), "y_test", "to match"),
    "labels object": (_with("y_train", lambda a: a["y_train"].astype(object)), "y_train", "object array"),
    "images float 0..255": (_with("X_train", lambda a: a["X_train"].astype(np.float32)), "X_train",
                            r"\[0, 1\].*uint8"),
    "images float negative": (_with("X_val", lambda a: a["X_val"] / 255.0 - 0.5), "X_val", r"\[0, 1\]"),
    "images float NaN": (_with("X_val", lambda a: np.where(a["X_val"] > 250, np.nan, a["X_val"] / 255.0)),
                         "X_val", "NaN"),
    "images float inf": (_with("X_val", lambda a: np.where(a["X_val"] > 250, np.inf, a["X_val"] / 255.0)),
                         "X_val", "infinite"),
    "images int above 255": (_with("X_test", lambda a: a["X_test"].astype(np.int64) + 1), "X_test", "0..255"),
    "images int negative": (_with("X_test", lambda a: a["X_test"].astype(np.int16) - 1), "X_test", "0..255"),
    "images bool": (_with("X_test", lambda a: a["X_test"] > 127), "X_test", "bool"),
    "images complex": (_with("X_test", lambda a: a["X_test"].astype(np.complex64)), "X_test", "complex"),
    "images object": (_with("X_test", lambda a: a["X_test"].astype(object)), "X_test", "object array"),
    "images channels first": (_with("X_train", lambda a: a["X_train"].transpose(0, 3, 1, 2)), "X_train",
                              "channels first"),
    "images grey": (_with("X_train", lambda a: a["X_train"][..., 0]), "X_train", r"\(N, 32, 32, 3\)"),
    "images 64x64": (_with("X_train", lambda a: np.tile(a["X_train"], (1, 2, 2, 1))), "X_train",
                     r"\(N, 32, 32, 3\)"),
    "images one": (_with("X_train", lambda a: a["X_train"][0]), "X_train", r"\(N, 32, 32, 3\)"),
    "images scalar": (_with("X_train", np.uint8(3)), "X_train", r"\(N, 32, 32, 3\)"),
    "origin unknown word": (_with("origin_test", np.array(["cifar10"] * 9 + ["evil"])), "origin_test", "evil"),
    "origin numbers": (_with("origin_test", np.zeros(10)), "origin_test", "strings"),
    "origin too short": (_with("origin_test", np.array(["cifar10"] * 9)), "origin_test", "strings"),
    "missing key": (lambda a: a.pop("X_val"), "X_val", "missing"),
    "empty split": (lambda a: a.update(X_test=a["X_test"][:0], y_test=a["y_test"][:0]), "y_test", "empty"),
}


@pytest.mark.parametrize("case", sorted(BAD_NPZ))
def test_bad_npz_values_name_the_file_and_the_key(tmp_path, case):
    """Float/NaN/negative/out-of-range labels, images outside uint8 0..255 or float [0, 1], wrong shapes,
    length mismatches and object arrays: a ValueError naming the file and the key."""
    change, key, match = BAD_NPZ[case]
    arrays = _arrays()
    change(arrays)
    path = tmp_path / "hostile.npz"
    np.savez(path, **arrays)                     # object arrays are pickled by savez; never unpickled here
    with pytest.raises(ValueError, match=match) as err:
        get_CINIC10_data(str(path))
    assert str(path) in str(err.value) and key in str(err.value), str(err.value)


def test_float_and_wide_integer_images_in_range_are_converted_exactly(tmp_path):
    """Float images in [0, 1] become round(255 x) as uint8; int64 images in 0..255 and uint8 labels load."""
    arrays = _arrays()
    expected = arrays["X_train"].copy()
    arrays["X_train"] = expected / np.float32(255)
    arrays["X_val"] = arrays["X_val"].astype(np.int64)
    arrays["y_test"] = arrays["y_test"].astype(np.uint8)
    np.savez(tmp_path / "d.npz", **arrays)
    d = get_CINIC10_data(str(tmp_path / "d.npz"), normalize=False, channels_first=False)
    np.testing.assert_array_equal(d["X_train"], expected)
    assert d["X_train"].dtype == np.uint8 and d["y_test"].dtype == np.int64
    np.testing.assert_array_equal(d["X_val"], arrays["X_val"])


def _npy_bytes(shape, dtype, payload):
    """An .npy file whose header declares ``shape``/``dtype`` followed by ``payload`` bytes."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)),
                                               "fortran_order": False, "shape": shape})
    return buf.getvalue() + payload


def _zip(path, members, compression=zipfile.ZIP_DEFLATED):
    with zipfile.ZipFile(path, "w", compression) as z:
        for name, data in members.items():
            z.writestr(name, data)


def _valid_members():
    out = {}
    for k, v in _arrays().items():
        buf = io.BytesIO()
        np.save(buf, v)
        out[k + ".npy"] = buf.getvalue()
    return out


@pytest.mark.parametrize("shape, match", [((10 ** 9, 32, 32, 3), "more than the 4 GB"),
                                          ((10 ** 6, 32, 32, 3), "compression bomb|holds only"),
                                          ((100, 32, 32, 3), "holds only"),
                                          ((2 ** 62, 32, 32, 3), "more than the 4 GB")])
def test_a_header_demanding_gigabytes_is_refused_before_allocating(tmp_path, shape, match):
    """A 60 KB archive whose X_train header declares more images than it holds (100, a million, a billion)
    is refused from the header and the zip directory, without allocating (traced memory stays small)."""
    members = _valid_members()
    members["X_train.npy"] = _npy_bytes(shape, np.uint8, np.zeros((10, 32, 32, 3), np.uint8).tobytes())
    path = tmp_path / "bomb.npz"
    _zip(path, members)
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match=match) as err:
            get_CINIC10_data(str(path))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert "X_train" in str(err.value) and str(path) in str(err.value)
    assert peak < 50 * 2 ** 20, f"{peak / 2 ** 20:.0f} MB traced"


def test_a_compressed_zero_bomb_is_refused_by_its_ratio(tmp_path):
    """320 MB of zeros deflate to 1.4 MB: refused from the zip directory, before anything is inflated."""
    members = _valid_members()
    n = 104_166                                    # images: 320 MB of uint8
    path = tmp_path / "zeros.npz"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as z:
        for name, data in members.items():
            if name != "X_train.npy":
                z.writestr(name, data)
        with z.open("X_train.npy", "w") as f:
            f.write(_npy_bytes((n, 32, 32, 3), np.uint8, b""))
            block = bytes(32 * 2 ** 20)
            for _ in range(n * 3072 // len(block)):
                f.write(block)
            f.write(bytes(n * 3072 % len(block)))
    assert os.path.getsize(path) < 5 * 2 ** 20
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match="X_train.*compression bomb") as err:
            get_CINIC10_data(str(path))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert str(path) in str(err.value)
    assert peak < 50 * 2 ** 20, f"{peak / 2 ** 20:.0f} MB traced"


@pytest.mark.parametrize("content, match", [
    (lambda p: np.save(p, np.zeros((3, 32, 32, 3), np.uint8)), "single array"),
    (lambda p: p.write_bytes(b""), "not a readable .npz"),
    (lambda p: p.write_bytes(b"just some text\n"), "not a readable .npz"),
    (lambda p: p.write_bytes(b"\x80\x04\x95" + os.urandom(64)), "not a readable .npz"),   # a pickle
    (lambda p: p.write_bytes(b"PK\x03\x04" + os.urandom(200)), "not a readable .npz"),     # a broken zip
])
def test_files_that_are_not_npz_archives_say_so(tmp_path, content, match):
    """An .npy, an empty file, text, a pickle or a broken zip given as the .npz: a ValueError naming it."""
    path = tmp_path / "d.npz"
    content(path)
    if not path.exists():                          # np.save added '.npy'
        os.replace(str(path) + ".npy", path)
    with pytest.raises(ValueError, match=match) as err:
        get_CINIC10_data(str(path))
    assert str(path) in str(err.value)


@pytest.mark.parametrize("damage", ["truncated", "crc", "header"])
def test_a_damaged_npz_names_the_file_and_the_key(tmp_path, damage):
    """A cut-off archive, one whose pixels fail their CRC, or a mangled .npy header: file and key named."""
    path = tmp_path / "d.npz"
    members = _valid_members()
    if damage == "header":
        members["y_val.npy"] = b"\x93NUMPY\x01\x00" + b"\x10\x00{'descr': 'garbage"
    _zip(path, members, zipfile.ZIP_STORED)
    data = bytearray(path.read_bytes())
    if damage == "truncated":
        data = data[: len(data) // 2]
    elif damage == "crc":
        start = data.index(b"X_val.npy") + 200     # inside the stored pixels of X_val
        data[start] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError) as err:
        get_CINIC10_data(str(path))
    assert str(path) in str(err.value)
    if damage != "truncated":                      # a truncated zip loses its directory: no key to name
        assert ("X_val" if damage == "crc" else "y_val") in str(err.value), str(err.value)


# ---------------------------------------------------------------------------- hostile PNG trees
def _png(arr, mode=None, **save):
    from PIL import Image
    img = Image.fromarray(arr)
    if mode:
        img = img.convert(mode)
    buf = io.BytesIO()
    img.save(buf, save.pop("format", "PNG"), **save)
    return buf.getvalue()


def _chunk(kind, body):
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _png_claiming(width, height):
    """A tiny, well-formed PNG header that claims ``width x height`` RGB pixels (no real pixel data)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(b"\0" * 100)) + \
        _chunk(b"IEND", b"")


_ADAM7 = [(0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2)]


def _png_by_hand(a, rows=None, interlace=0, passes=7, depth=8, cut=0, text=b""):
    """An RGB PNG written byte by byte: ``rows`` limits the rows the zlib stream holds (a stream that
    ends early), ``interlace`` Adam7 (of which only the first ``passes``), ``depth`` 8 or 16, ``cut``
    drops that many bytes from the end of the IDAT body (keeping its declared length), ``text`` a
    zTXt chunk's uncompressed text."""
    H, W, _ = a.shape
    samples = a.astype(">u2") * 257 if depth == 16 else a
    grids = [samples[y0::dy, x0::dx] for x0, y0, dx, dy in _ADAM7][:passes] if interlace else [samples]
    raw = b"".join(b"\0" + row.tobytes() for g in grids if g.size for row in g[:rows])
    idat = _chunk(b"IDAT", zlib.compress(raw))
    if cut:
        idat = idat[:-4 - cut]
    ztxt = _chunk(b"zTXt", b"comment\0\0" + zlib.compress(text)) if text else b""
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", W, H, depth, 2, 0, 0, interlace))
            + ztxt + idat + _chunk(b"IEND", b""))


def _tree(root, per_class=2):
    rng = np.random.default_rng(1)
    for folder in SPLIT_FOLDERS.values():
        for cls in CLASSES:
            os.makedirs(os.path.join(root, folder, cls))
            for i in range(per_class):
                with open(os.path.join(root, folder, cls, f"cifar10-{folder}-{i}.png"), "wb") as f:
                    f.write(_png(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)))
    return str(root)


RGB = np.random.default_rng(2).integers(0, 256, (32, 32, 3), dtype=np.uint8)


def _write(data):
    def make(path):
        with open(path, "wb") as f:
            f.write(data)
    return make


BAD_FILES = {
    "empty": (_write(b""), "corrupt or truncated"),
    "random bytes": (_write(os.urandom(300)), "corrupt or truncated"),
    "truncated": (_write(_png(RGB)[:100]), "corrupt or truncated"),
    "bad CRC": (_write(_png(RGB)[:40] + bytes([_png(RGB)[40] ^ 1]) + _png(RGB)[41:]), "corrupt or truncated"),
    "a JPEG": (_write(_png(RGB, format="JPEG")), "corrupt or truncated"),
    "a GIF": (_write(_png(RGB, format="GIF")), "corrupt or truncated"),
    "RGBA": (_write(_png(RGB, "RGBA")), "mode is RGBA"),
    "palette": (_write(_png(RGB, "P")), "mode is P"),
    "grey": (_write(_png(RGB, "L")), "mode is L"),
    "1-bit": (_write(_png(RGB, "1")), "mode is 1"),
    "31x32": (_write(_png(RGB[:, :31].copy())), "31x32, expected 32x32"),
    "claims 12000x12000": (_write(_png_claiming(12000, 12000)), "12000x12000, expected 32x32"),
    "claims 2^31 x 2^31": (_write(_png_claiming(2 ** 31 - 1, 2 ** 31 - 1)), "corrupt|expected 32x32"),
    "a folder": (lambda p: os.makedirs(p), "not a regular file"),
    "a broken symlink": (lambda p: os.symlink(p + ".missing", p), "broken symbolic link"),
    "a symlink to a device": (lambda p: os.symlink("/dev/zero", p), "not a regular file"),
    "2 MB": (_write(_png(RGB) + bytes(2 * 2 ** 20)), "too big"),
    "zlib stream of 5 of 32 rows": (_write(_png_by_hand(RGB, rows=5)),
                                    "image data hold 485 of the 3,104 bytes its 32x32 pixels need"),
    "zlib stream of 31 of 32 rows": (_write(_png_by_hand(RGB, rows=31)), "hold 3,007 of the 3,104 bytes"),
    "interlaced, 3 of 7 passes": (_write(_png_by_hand(RGB, interlace=1, passes=3)),
                                  "image data hold 204 of the 3,132 bytes"),
    "IDAT cut short, declared length kept": (_write(_png_by_hand(RGB, cut=14)),
                                             "before the end of their zlib stream|corrupt or truncated"),
    "10 MB zTXt chunk": (_write(_png_by_hand(RGB, text=b"a" * 10_000_000)), "MAX_TEXT_CHUNK"),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_a_bad_file_in_a_tree_is_named_or_skipped(tmp_path, monkeypatch, case):
    """Each hostile file: a strict load raises a ValueError naming it; with 'skip' the other 60 load."""
    monkeypatch.setenv("ECE662_CACHE", str(tmp_path / "cache"))
    root = _tree(tmp_path / "t")
    bad = os.path.join(root, "train", "ship", "zz-hostile.png")
    make, match = BAD_FILES[case]
    make(bad)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", getattr(__import__("PIL.Image").Image, "DecompressionBombWarning"))
        with pytest.raises(ValueError, match=match) as err:
            get_CINIC10_data(root, progress=False)
        assert "zz-hostile.png" in str(err.value)
        with pytest.warns(UserWarning, match="skipped 1 bad image.*zz-hostile.png"):
            d = get_CINIC10_data(root, progress=False, on_bad_image="skip", normalize=False)
    assert len(d["y_train"]) == 20 and list(np.bincount(d["y_train"])) == [2] * 10


def test_a_fifo_named_png_is_refused_without_blocking(tmp_path):
    """A FIFO would block a reader forever: it is refused as 'not a regular file' (in a child, with a timeout)."""
    import subprocess
    import sys
    root = _tree(tmp_path / "t")
    os.mkfifo(os.path.join(root, "test", "cat", "fifo.png"))
    code = ("import sys; from ece662.data_utils import get_CINIC10_data\n"
            "try:\n    get_CINIC10_data(sys.argv[1], progress=False)\n"
            "except ValueError as e:\n    print(e)\n")
    repo = REPO
    r = subprocess.run([sys.executable, "-c", code, root], capture_output=True, text=True, timeout=120,
                       env=dict(os.environ, PYTHONPATH=repo, ECE662_CACHE=str(tmp_path / "cache")))
    assert "fifo.png: not a regular file" in r.stdout, r.stdout + r.stderr


def test_odd_but_valid_files_load(tmp_path, monkeypatch):
    """A symlink to a PNG elsewhere, an upper-case .PNG and a non-UTF-8 file name load like any file."""
    monkeypatch.setenv("ECE662_CACHE", str(tmp_path / "cache"))
    root = _tree(tmp_path / "t", per_class=1)
    elsewhere = tmp_path / "elsewhere.png"
    elsewhere.write_bytes(_png(np.full((32, 32, 3), 5, np.uint8)))
    os.symlink(elsewhere, os.path.join(root, "test", "dog", "link.png"))
    with open(os.path.join(root, "test", "dog", "UPPER.PNG"), "wb") as f:
        f.write(_png(np.full((32, 32, 3), 6, np.uint8)))
    with open(os.path.join(os.fsencode(root), b"test", b"dog", b"caf\xe9-\xff.png"), "wb") as f:
        f.write(_png(np.full((32, 32, 3), 7, np.uint8)))
    d = get_CINIC10_data(root, progress=False, normalize=False, channels_first=False)
    dogs = d["X_test"][d["y_test"] == 5]
    assert sorted(int(x[0, 0, 0]) for x in dogs if x.min() == x.max() and x[0, 0, 0] in (5, 6, 7)) == [5, 6, 7]
    assert len(d["y_test"]) == 13
    again = get_CINIC10_data(root, progress=False, normalize=False, channels_first=False)
    np.testing.assert_array_equal(np.asarray(again["X_test"]), d["X_test"])


# ---------------------------------------------------------------------------- fuzz
def _mutate(data, edits):
    """Apply (kind, position, value) edits to ``data``: flip a byte, cut, insert or delete."""
    b = bytearray(data)
    for kind, pos, val in edits:
        if not b:
            break
        i = pos % len(b)
        if kind == "flip":
            b[i] ^= (val % 255) + 1
        elif kind == "cut":
            del b[i:]
        elif kind == "insert":
            b[i:i] = bytes([val % 256]) * (1 + val % 7)
        else:
            del b[i:i + 1 + val % 16]
    return bytes(b)


EDITS = st.lists(st.tuples(st.sampled_from(["flip", "cut", "insert", "delete"]),
                           st.integers(0, 10 ** 6), st.integers(0, 255)), min_size=1, max_size=4)
FUZZ = settings(max_examples=FUZZ_EXAMPLES, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@pytest.fixture(scope="module")
def fuzz_tree(tmp_path_factory):
    root = _tree(tmp_path_factory.mktemp("fuzz") / "t", per_class=1)
    return root


@FUZZ
@given(edits=EDITS, which=st.integers(0, 3))
def test_fuzz_mutated_pngs_give_the_true_pixels_or_a_clear_error(fuzz_tree, tmp_path_factory, edits, which):
    """A mutated PNG in a tree: the load returns exactly what Pillow decodes from those bytes as 32x32 RGB,
    or a ValueError naming the file; the cache never serves anything else."""
    from PIL import Image
    os.environ["ECE662_CACHE"] = str(tmp_path_factory.getbasetemp() / "fuzz-cache")
    seeds = [_png(RGB), _png(RGB, optimize=True), _png(RGB, compress_level=0), _png(RGB[::-1].copy())]
    data = _mutate(seeds[which], edits)
    folder = os.path.join(fuzz_tree, "test", "frog")
    for name in os.listdir(folder):
        if name.startswith("fuzz-"):
            os.remove(os.path.join(folder, name))
    name = f"fuzz-{zlib.crc32(data):08x}-{len(data)}.png"
    with open(os.path.join(folder, name), "wb") as f:
        f.write(data)
    try:
        with Image.open(io.BytesIO(data), formats=["PNG"]) as im:
            im.load()
            expected = np.asarray(im) if (im.size, im.mode) == ((32, 32), "RGB") else None
    except Exception:
        expected = None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            d = get_CINIC10_data(fuzz_tree, splits=("test",), progress=False, normalize=False,
                                 channels_first=False)
        except ValueError as e:
            assert name in str(e), str(e)
            assert expected is None, f"Pillow decodes {name} but the loader refused it: {e}"
            return
    assert expected is not None, f"the loader accepted {name}, which Pillow does not decode as 32x32 RGB"
    got = d["X_test"][list(d["y_test"]).index(6) + sorted(os.listdir(folder)).index(name)]
    np.testing.assert_array_equal(got, expected)


@pytest.fixture(scope="module")
def npz_bytes():
    buf = io.BytesIO()
    np.savez(buf, **_arrays(n=10, seed=3))
    return buf.getvalue()


@FUZZ
@given(edits=EDITS, compressed=st.booleans())
def test_fuzz_mutated_npz_give_the_true_arrays_or_a_clear_error(tmp_path_factory, npz_bytes, edits, compressed):
    """A mutated .npz: the same arrays as the original (the zip CRCs guard the data), or a ValueError
    naming the file, within a memory budget."""
    original = _arrays(n=10, seed=3)
    source = npz_bytes
    if compressed:
        buf = io.BytesIO()
        np.savez_compressed(buf, **original)
        source = buf.getvalue()
    path = str(tmp_path_factory.getbasetemp() / "fuzz.npz")
    with open(path, "wb") as f:
        f.write(_mutate(source, edits))
    tracemalloc.start()
    try:
        d = get_CINIC10_data(path, normalize=False, channels_first=False)
    except ValueError as e:
        assert path in str(e), str(e)
        return
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert peak < 100 * 2 ** 20, f"{peak / 2 ** 20:.0f} MB traced"
    for s in ("train", "val", "test"):
        np.testing.assert_array_equal(d[f"X_{s}"], original[f"X_{s}"])
        np.testing.assert_array_equal(d[f"y_{s}"], original[f"y_{s}"])


@pytest.mark.parametrize("interlace", [0, 1])
@pytest.mark.parametrize("depth", [8, 16])
def test_whole_pngs_of_every_layout_decode_exactly(interlace, depth):
    """The image-data length check knows Adam7 interlacing and 16-bit samples: such files load exactly."""
    from ece662.data.tree import _decode_png
    np.testing.assert_array_equal(_decode_png(_png_by_hand(RGB, interlace=interlace, depth=depth), "x.png"), RGB)
