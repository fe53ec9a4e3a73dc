"""get_CINIC10_data on the real data, and every bad-input case on small trees written here."""
import os
import shutil

import numpy as np
import pytest

from ece662.data_utils import (CLASSES, MEAN, STD, NormalizedImages, find_data, get_CINIC10_data,
                               read_tree)


def test_real_npz_loads_with_documented_shapes(real_data):
    """The shared real data loads as normalised float32 NCHW with labels 0..9."""
    d = get_CINIC10_data(os.path.join(real_data, "cifar10_real_small.npz"))
    assert d["X_train"].shape == (3000, 3, 32, 32) and d["X_test"].shape == (1000, 3, 32, 32)
    assert d["X_val"].dtype == np.float32 and len(d["y_val"]) == 1000
    assert set(np.unique(d["y_test"])) == set(range(10))
    assert (d["origin_test"] == "cifar10").all()
    raw = get_CINIC10_data(os.path.join(real_data, "cifar10_real_small.npz"), normalize=False,
                           channels_first=False)
    x = np.asarray(d["X_test"][:5])
    expected = ((raw["X_test"][:5] / 255.0 - MEAN) / STD).transpose(0, 3, 1, 2)
    np.testing.assert_allclose(x, expected, rtol=1e-5, atol=1e-5)


def test_default_lookup_finds_the_real_data(real_data, monkeypatch):
    """With no path, ECE662_DATA is used and the full 10,000-image test split loads."""
    monkeypatch.setenv("ECE662_DATA", real_data)
    kind, location = find_data()
    assert (kind, os.path.basename(location)) == ("npz", "cifar10_real.npz")
    d = get_CINIC10_data(splits=("test",))
    assert d["X_test"].shape == (10000, 3, 32, 32)


def test_real_png_tree_matches_the_npz(real_data, tmp_path, monkeypatch):
    """The 600-PNG CINIC-10 tree decodes to the pixels and labels of the npz (first 20 per class)."""
    monkeypatch.setenv("ECE662_CACHE", str(tmp_path / "cache"))
    tree = get_CINIC10_data(os.path.join(real_data, "cinic10_png_sample"), normalize=False,
                            channels_first=False, progress=False)
    assert tree["X_train"].shape == (200, 32, 32, 3) and tree["X_test"].shape == (200, 32, 32, 3)
    assert list(np.bincount(tree["y_val"])) == [20] * 10
    npz = get_CINIC10_data(os.path.join(real_data, "cifar10_real.npz"), normalize=False,
                           channels_first=False, splits=("train",))
    # the tree's train images are the npz's first 20 per class; compare as sets of images per class
    for c in range(10):
        a = {x.tobytes() for x in tree["X_train"][tree["y_train"] == c]}
        b = {x.tobytes() for x in npz["X_train"][npz["y_train"] == c][:20]}
        assert a == b
    again = get_CINIC10_data(os.path.join(real_data, "cinic10_png_sample"), normalize=False,
                             channels_first=False, progress=False)
    np.testing.assert_array_equal(np.asarray(again["X_test"]), tree["X_test"])   # from the cache


def test_subsets_are_seeded_and_class_balanced(real_data):
    """num_test picks the same class-balanced images for the same seed."""
    path = os.path.join(real_data, "cifar10_real_small.npz")
    a = get_CINIC10_data(path, splits=("test",), num_test=50, seed=1)
    b = get_CINIC10_data(path, splits=("test",), num_test=50, seed=1)
    np.testing.assert_array_equal(a["y_test"], b["y_test"])
    assert list(np.bincount(a["y_test"])) == [5] * 10
    assert isinstance(a["X_test"], NormalizedImages) and np.asarray(a["X_test"]).shape == (50, 3, 32, 32)


def _make_tree(root, per_class=2, size=(32, 32), mode="RGB"):
    from PIL import Image
    rng = np.random.default_rng(0)
    for split in ("train", "valid", "test"):
        for cls in CLASSES:
            d = root / split / cls
            d.mkdir(parents=True)
            for i in range(per_class):
                arr = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
                img = Image.fromarray(arr)
                if mode != "RGB":
                    img = img.convert(mode)
                img.save(d / f"cifar10-{split}-{i}.png")
    return root


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ECE662_CACHE", str(tmp_path / "cache"))


def test_missing_class_folder_is_named(tmp_path, cache):
    """A split without one of the ten class folders says which."""
    root = _make_tree(tmp_path / "t")
    shutil.rmtree(root / "valid" / "frog")
    with pytest.raises(ValueError, match="frog.*missing"):
        get_CINIC10_data(str(root), progress=False)


def test_corrupt_png_is_named_or_skipped(tmp_path, cache):
    """A truncated PNG fails with its file name, or is skipped with a warning and a count."""
    root = _make_tree(tmp_path / "t")
    bad = root / "test" / "cat" / "cifar10-test-0.png"
    bad.write_bytes(bad.read_bytes()[:40])
    with pytest.raises(ValueError, match="cifar10-test-0.png.*(corrupt|truncated)"):
        get_CINIC10_data(str(root), progress=False)
    with pytest.warns(UserWarning, match="skipped 1 bad image"):
        d = get_CINIC10_data(str(root), progress=False, on_bad_image="skip")
    assert len(d["y_test"]) == 19


@pytest.mark.parametrize("size, mode, match", [((31, 32), "RGB", "expected 32x32"),
                                                ((32, 32), "L", "mode is L")])
def test_wrong_size_or_mode_is_named(tmp_path, cache, size, mode, match):
    """An image that is not 32x32 RGB is refused with its name."""
    root = _make_tree(tmp_path / "t", size=size, mode=mode)
    with pytest.raises(ValueError, match=match):
        get_CINIC10_data(str(root), progress=False)


def test_failed_cache_build_leaves_no_valid_cache(tmp_path, cache):
    """After a failed decode, fixing the file gives a fresh, correct load (no stale cache)."""
    root = _make_tree(tmp_path / "t")
    good = (root / "train" / "dog" / "cifar10-train-1.png").read_bytes()
    (root / "train" / "dog" / "cifar10-train-1.png").write_bytes(b"junk")
    with pytest.raises(ValueError):
        read_tree(str(root), splits=("train",), progress=False)
    (root / "train" / "dog" / "cifar10-train-1.png").write_bytes(good)
    X, y, origin = read_tree(str(root), splits=("train",), progress=False)["train"]
    assert len(y) == 20 and (origin == "cifar10").all()


@pytest.mark.parametrize("change, match", [
    (lambda a: a.pop("y_val"), "missing array 'y_val'"),
    (lambda a: a.__setitem__("y_test", a["y_test"] + 10), "out of range"),
    (lambda a: a.__setitem__("X_train", a["X_train"][:0]) or a.__setitem__("y_train", a["y_train"][:0]), "empty"),
    (lambda a: a.__setitem__("X_test", a["X_test"][:, :16]), "32, 32, 3"),
])
def test_bad_npz_archives_are_explained(tmp_path, change, match):
    """An npz missing a key, with a bad label, an empty split or wrong-size images says so."""
    rng = np.random.default_rng(0)
    arrays = {}
    for s in ("train", "val", "test"):
        arrays[f"X_{s}"] = rng.integers(0, 256, (10, 32, 32, 3), dtype=np.uint8)
        arrays[f"y_{s}"] = np.arange(10)
    change(arrays)
    np.savez(tmp_path / "d.npz", **arrays)
    with pytest.raises(ValueError, match=match):
        get_CINIC10_data(str(tmp_path / "d.npz"))


def test_no_data_lists_where_it_looked(tmp_path, monkeypatch):
    """A path without data gives an error listing the places searched and how to get data."""
    with pytest.raises(FileNotFoundError, match="get_datasets.sh"):
        get_CINIC10_data(str(tmp_path / "nothing-here"))


def test_normalize_names_the_input_scaling_a_model_was_trained_with(tmp_path):
    """normalize='cinic' (= True, the default) is CINIC-10 mean/std, 'unit' pixels/255 in [0, 1], 'none'
    raw 0-255 floats, lazily or not; False stays uint8; anything else is refused with the choices."""
    path = str(tmp_path / "tiny.npz")
    pixels = np.zeros((10, 32, 32, 3), np.uint8)
    pixels[::2] = 255                                     # every other image white: the range is 0 .. 255
    np.savez(path, X_test=pixels, y_test=np.arange(10))
    load = lambda **kw: get_CINIC10_data(path, splits=("test",), **kw)["X_test"]
    for lazy in (True, False):
        unit, none = np.asarray(load(normalize="unit", lazy=lazy)), np.asarray(load(normalize="none", lazy=lazy))
        assert unit.dtype == none.dtype == np.float32 and unit.shape == none.shape == (10, 3, 32, 32)
        assert (unit.min(), unit.max()) == (0.0, 1.0) and (none.min(), none.max()) == (0.0, 255.0)
        np.testing.assert_array_equal(np.asarray(load(normalize="cinic", lazy=lazy)), np.asarray(load(lazy=lazy)))
        np.testing.assert_allclose(np.asarray(load(lazy=lazy))[0, :, 0, 0], (1 - MEAN) / STD, rtol=1e-6)
    assert load(normalize=False).dtype == np.uint8
    assert load(normalize="unit")[1].shape == (3, 32, 32)     # one image, scaled the same way
    assert "normalize='unit'" in repr(load(normalize="unit"))
    for bad in ("Unit", "imagenet", None, 1):
        with pytest.raises(ValueError, match=r"expected normalize to be one of \['cinic', 'none', 'unit'\]"):
            load(normalize=bad)
