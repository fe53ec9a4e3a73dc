"""CINIC-10 PNG trees, read through a keyed, locked, self-repairing uint8 cache.

The PNG cache
-------------
The first load of a PNG folder decodes every image once (with a progress bar) into
uint8 ``.npy`` files in ``$ECE662_CACHE`` (default ``~/.cache/ece662``; never inside the
data folder, which may be shared and read-only); later loads memory-map them.  The
cache must never serve other pixels than the PNGs hold, never be seen half-built, and
never fail for good:

- **Key.** Each split's entry is the folder ``<split>-<key>``, where the key hashes the
  cache version, the class order and, per file, its relative path, size, mtime_ns and
  inode: one ``os.scandir`` and one ``stat`` per file, no reads.  An image replaced in
  place, added, removed or renamed gives another key, hence a rebuild.  A file modified
  less than 2 s before the build read it could change again within one timestamp tick
  keeping size and mtime, so its bytes' SHA-256 goes in the manifest and is re-checked
  on every hit (git's rule for "racily clean" files).  The manifest
  lists the files left out by ``on_bad_image='skip'``: a strict load refuses such an
  entry (raising the recorded error), a skipping load reuses a strict one (same arrays).
  ``verify=True`` also re-hashes every PNG's bytes and the cached arrays (SHA-256),
  for file systems whose times cannot be trusted.
- **Lock and atomic publish.** A missing entry is built while holding the split's
  file lock (``<split>.lock``, with ``filelock``), in a private ``.tmp-<split>-*``
  folder: arrays first, ``manifest.json`` last, then one ``os.replace`` of the folder
  publishes it.  Readers take no lock: they see a whole entry or none.  Processes that
  find no entry wait for the lock and then use what the first one built.  A killed
  builder's temp folder is removed by the next builder (who holds the lock, so it is
  nobody's), with entries of older keys.
- **Self-repair.** Every hit checks the manifest (valid JSON, this key and version) and
  the arrays: each file's size, shapes, dtypes, labels 0..9, and a SHA-256 of the labels,
  the origins and 64 fixed windows of 256 bytes of the pixels (16 kB, whatever the data
  set's size), all recorded in the manifest; a damaged entry is reported with a warning
  naming its path and rebuilt.  Labels rewritten in range, or pixels whitened, are caught
  this way; a few pixels changed between the windows are caught only by ``verify=True``,
  which hashes every byte of the arrays and of the PNGs.  A cache folder that cannot be written
  (read-only, ``ECE662_CACHE`` under a file, disk full) gives a warning and the images
  are decoded in memory instead.
"""
import hashlib
import io
import json
import operator
import os
import re
import stat
import struct
import sys
import tempfile
import time
import uuid
import warnings
from typing import NamedTuple

import numpy as np

from ece662.data.find import SPLIT_FOLDERS, permission_denied
from ece662.data.images import CLASSES
from ece662.data.npz import ORIGINS, origin_of

_CACHE_VERSION = 3        # bump whenever decoding, or what the manifest records, changes


# A CINIC-10 PNG is about 2.5 KB; a file this big is not a 32x32 image and is never read whole.
_MAX_PNG_BYTES = 1 << 20


class _PngFile(NamedTuple):
    """One listed file and the stat fields that key the cache."""
    path: str          # as opened
    rel: str           # relative to the data root, e.g. 'test/cat/cifar10-test-7.png'
    label: int
    size: int
    mtime_ns: int
    inode: int
    problem: str       # why it cannot be an image (not a regular file, too big), or ''


def _list_tree_split(root, split):
    """Every ``*.png`` of one split in label then name order, with its stat, from ``os.scandir``.

    One ``stat`` per file and no reads: this is what a cache hit pays (about a second for
    270,000 files on a local disk).
    """
    folder = os.path.join(root, SPLIT_FOLDERS[split])
    files = []
    for label, cls in enumerate(CLASSES):
        cdir = os.path.join(folder, cls)
        try:
            is_dir = stat.S_ISDIR(os.stat(cdir).st_mode)
        except PermissionError:
            raise permission_denied(cdir, "opening") from None
        except OSError:
            is_dir = False
        if not is_dir:
            raise ValueError(f"{folder}: class folder {cls!r} is missing; a CINIC-10 split has the "
                             f"ten folders {', '.join(CLASSES)}")
        prefix = f"{SPLIT_FOLDERS[split]}/{cls}/"
        try:
            with os.scandir(cdir) as it:
                entries = sorted((e for e in it if e.name.lower().endswith(".png")), key=_by_name)
            files.extend(_stat_png(e, prefix + e.name, label) for e in entries)
        except PermissionError as err:
            raise permission_denied(err.filename or cdir, "listing or reading") from None
    if not files:
        raise ValueError(f"{folder}: the split holds no PNG images")
    return files


_by_name = operator.attrgetter("name")


def _stat_png(entry, rel, label):
    try:
        st = entry.stat()                       # follows a symlink to its target
    except FileNotFoundError:
        return _PngFile(entry.path, rel, label, -1, -1, -1, "a broken symbolic link")
    if not stat.S_ISREG(st.st_mode):
        return _PngFile(entry.path, rel, label, -1, -1, -1, "not a regular file")
    problem = (f"{st.st_size} bytes, too big for a 32x32 PNG" if st.st_size > _MAX_PNG_BYTES else "")
    return _PngFile(entry.path, rel, label, st.st_size, st.st_mtime_ns, st.st_ino, problem)


def _read_png_bytes(f):
    """``(bytes, '')`` of a listed file, or ``(None, why)`` when it cannot be an image."""
    if f.problem:
        return None, f.problem
    try:
        with open(f.path, "rb") as fh:
            return fh.read(_MAX_PNG_BYTES + 1), ""
    except PermissionError:
        raise permission_denied(f.path, "reading") from None
    except OSError as e:                        # vanished or unreadable since it was listed
        return None, f"cannot read the file ({e.strerror})"


def _decode_png(data, path):
    """PNG bytes -> ``(32, 32, 3)`` uint8; size and mode are checked before any pixel is decoded,
    and the image data must hold every row (see :func:`_png_data_shortfall`)."""
    from PIL import Image
    pixels = None
    try:
        with Image.open(io.BytesIO(data), formats=["PNG"]) as im:
            size, mode = im.size, im.mode
            if size == (32, 32) and mode == "RGB":     # before load(): a PNG may claim 100000x100000
                im.load()
                pixels = np.asarray(im, dtype=np.uint8)
    except Exception as e:          # Pillow's own errors (a text chunk over MAX_TEXT_CHUNK is a ValueError)
        raise ValueError(f"{path}: cannot decode the PNG ({type(e).__name__}: {e}); "
                         f"the file is corrupt or truncated") from None
    if size != (32, 32):
        raise ValueError(f"{path}: image is {size[0]}x{size[1]}, expected 32x32")
    if mode != "RGB":
        raise ValueError(f"{path}: image mode is {mode}, expected RGB")
    short = _png_data_shortfall(data)
    if short:
        raise ValueError(f"{path}: cannot decode the PNG: {short}; the file is corrupt or truncated")
    return pixels


def _png_data_shortfall(data):
    """Why the image data of a PNG Pillow has decoded do not cover every row, or ''.

    Pillow stops, without an error, when the zlib stream inside the IDAT chunks *ends* early
    (``LOAD_TRUNCATED_IMAGES`` only concerns a file that runs out of bytes), and leaves the rows
    it never received as zeros; it also takes a stream cut before its end (no checksum) whose
    bytes happen to fill the rows.  So the stream is inflated again here (at most the bytes the
    header calls for, plus one), its length compared with what the header calls for (per row a
    filter byte and ``ceil(width x channels x bit depth / 8)`` bytes, per Adam7 pass if
    interlaced), and its end and checksum required.
    """
    import zlib
    pos, idat, header = 8, [], None
    while pos + 8 <= len(data):                 # chunks: length, type, body, CRC (Pillow checked them)
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        if kind == b"IHDR" and len(body) == 13:
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat.append(body)
        elif kind == b"IEND":
            break
        pos += 12 + length
    if header is None:
        return "it has no image header"
    width, height, depth, color, _, _, interlace = header
    channels = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}.get(color, 3)
    if interlace:                               # Adam7: 7 passes over sub-grids (x0, y0, dx, dy)
        passes = [(0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2)]
        grids = [(-(-(width - x0) // dx), -(-(height - y0) // dy)) for x0, y0, dx, dy in passes]
    else:
        grids = [(width, height)]
    expected = sum(h * (1 + -(-w * channels * depth // 8)) for w, h in grids if w > 0 and h > 0)
    inflate = zlib.decompressobj()
    try:
        got = len(inflate.decompress(b"".join(idat), expected + 1))
    except zlib.error as e:
        return f"its image data are not a zlib stream ({e})"
    if got < expected:
        return (f"its image data hold {got:,} of the {expected:,} bytes its {width}x{height} pixels need "
                f"(the compressed stream ends early)")
    if got == expected and not inflate.eof:     # eof: the stream ended and its Adler-32 checksum matched
        return "its compressed image data stop before the end of their zlib stream (a cut or damaged file)"
    return ""


def _hash_file_into(h, f, data, why):
    """Feed one file's name and content (or why it has none) to the content hash ``h``."""
    h.update(os.fsencode(f.rel) + b"\0")
    h.update(b"B%d\0" % len(data) + data if data is not None else b"P" + why.encode() + b"\0")


def _decode_files(files, split, on_bad_image, progress):
    """Decode every listed PNG.

    Returns
    -------
    X : uint8 (N, 32, 32, 3)
    y : int64 (N,)
    origin : uint8 (N,), an index into ORIGINS
    skipped : list of [rel, message] for the files left out (only with on_bad_image='skip')
    png_sha256 : str, the hash of every file's name and bytes (see ``verify``)
    racy : dict {rel: sha256 of its bytes} for the files modified within ``_RACY_NS`` of this read
    """
    from tqdm.auto import tqdm
    X = np.empty((len(files), 32, 32, 3), dtype=np.uint8)
    keep = np.ones(len(files), dtype=bool)
    skipped = []
    h = hashlib.sha256()
    recent = time.time_ns() - _RACY_NS          # every read below happens after this instant
    racy = {}
    for i, f in enumerate(tqdm(files, desc=f"decoding {split}", unit="img", disable=not progress, leave=False)):
        data, why = _read_png_bytes(f)
        _hash_file_into(h, f, data, why)
        if f.mtime_ns >= recent:
            racy[f.rel] = _sha256_bytes(data)
        try:
            if data is None:
                raise ValueError(f"{f.path}: {why}")
            X[i] = _decode_png(data, f.path)
        except ValueError as e:
            if on_bad_image == "raise":
                raise
            keep[i] = False
            skipped.append([f.rel, str(e)])
    y = np.array([f.label for f in files], dtype=np.int64)
    origin = np.array([ORIGINS.index(origin_of(os.path.basename(f.rel))) for f in files], dtype=np.uint8)
    if not keep.all():
        X, y, origin = X[keep], y[keep], origin[keep]
    if len(y) == 0:
        raise ValueError(f"{split}: no readable images left")
    return X, y, origin, skipped, h.hexdigest(), racy


# A file modified this close to when the cache read it could be modified again within the same
# timestamp tick (1-4 ms on Linux, 2 s on FAT), keeping its size and mtime: its bytes are hashed
# into the manifest and re-checked on every hit.  The same rule as git's "racily clean" entries.
_RACY_NS = 2_000_000_000


def _sha256_bytes(data):
    return hashlib.sha256(data).hexdigest() if data is not None else ""


def _png_digest(files):
    """The content hash ``_decode_files`` records, re-read from disk (what ``verify=True`` costs)."""
    h = hashlib.sha256()
    for f in files:
        data, why = _read_png_bytes(f)
        _hash_file_into(h, f, data, why)
    return h.hexdigest()


# ---------------------------------------------------------------------------- the PNG cache
def _cache_dir(root):
    """``$ECE662_CACHE/<folder name>-<hash>``, default ``~/.cache/ece662/...``.

    The cache never goes inside the data folder: data folders may be shared and read-only.
    """
    base = os.environ.get("ECE662_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "ece662")
    digest = hashlib.sha1(os.path.abspath(root).encode("utf-8", "surrogateescape")).hexdigest()[:12]
    return os.path.join(os.path.abspath(base), f"{os.path.basename(os.path.abspath(root))}-{digest}")


def _tree_key(split, files):
    """SHA-256 of everything that decides a split's arrays, except the pixels themselves.

    The cache version (bumped whenever decoding changes), the class order, and per file its
    relative path, size, mtime_ns and inode (an image replaced in place, or renamed, changes the
    key).  ``on_bad_image`` is not part of it: the manifest lists the skipped files instead,
    and a strict load refuses an entry that skipped any.
    """
    lines = [f"ece662 PNG cache v{_CACHE_VERSION} {split} {','.join(CLASSES)} {_MAX_PNG_BYTES}"]
    lines += [f"{f.rel}\t{f.size}\t{f.mtime_ns}\t{f.inode}" for f in files]
    return hashlib.sha256("\n".join(lines).encode("utf-8", "surrogateescape")).hexdigest()


class _Unusable(Exception):
    """A published cache entry that must not be used (damaged, or stale on ``verify``); says why."""


_ENTRY_FILES = ("X.npy", "y.npy", "origin.npy")


# What every hit hashes of the pixels: windows at fixed, evenly spaced offsets (the first at the
# start, the last at the end), so that damage spread over the array (every image whitened) or at
# either end is seen without reading the whole array; verify=True reads it all.
_SAMPLE_WINDOWS, _SAMPLE_BYTES = 64, 256


def _sample_offsets(nbytes):
    """The byte offsets of the windows ``_quick_digest`` hashes in an array of ``nbytes`` bytes."""
    last = max(nbytes - _SAMPLE_BYTES, 0)
    return [last * i // (_SAMPLE_WINDOWS - 1) for i in range(_SAMPLE_WINDOWS)]


def _quick_digest(X, y, origin):
    """SHA-256 of the labels, the origins and the sampled pixel windows: what every hit checks.

    ``X`` may be memory-mapped: only the pages under the windows are read.
    """
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(y).tobytes())
    h.update(np.ascontiguousarray(origin).tobytes())
    flat = X.reshape(-1)                        # a view of the (N, 32, 32, 3) uint8 bytes
    for start in _sample_offsets(flat.size):
        h.update(flat[start:start + _SAMPLE_BYTES].tobytes())
    return h.hexdigest()


def _sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def _open_entry(entry, key, files, verify):
    """The checked arrays of a published cache entry, or None when there is none.

    Returns
    -------
    (X uint8 (N, 32, 32, 3) memory-mapped, y int64 (N,), origin <U8 (N,), manifest dict) or None

    Raises
    ------
    _Unusable
        A damaged entry (unreadable or corrupt manifest, array files of other sizes than
        recorded, wrong shapes/dtypes, labels out of range, labels, origins or sampled pixels
        that no longer hash to what the manifest recorded), or with ``verify`` one whose arrays
        or PNGs, read whole, no longer hash to what the manifest recorded.
    """
    try:
        with open(os.path.join(entry, "manifest.json"), "rb") as fh:
            raw = fh.read()
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as e:
        raise _Unusable(f"its manifest cannot be read ({e.strerror})") from None
    try:
        m = json.loads(raw)
        n, skipped, sums = m["count"], m["skipped"], m["sha256"]
        ok = (m["version"] == _CACHE_VERSION and m["key"] == key and isinstance(n, int) and n > 0
              and isinstance(skipped, list)
              and all(isinstance(s, list) and len(s) == 2 and all(isinstance(t, str) for t in s) for s in skipped)
              and isinstance(sums, dict) and isinstance(m["png_sha256"], str) and isinstance(m["racy"], dict)
              and isinstance(m["bytes"], dict) and isinstance(m["quick_sha256"], str))
    except (ValueError, TypeError, KeyError) as e:     # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise _Unusable(f"its manifest is not valid ({type(e).__name__}: {e})") from None
    if not ok:
        raise _Unusable("its manifest does not describe this data")
    for name in _ENTRY_FILES:                   # one stat each: a file cut short or grown
        try:
            size = os.stat(os.path.join(entry, name)).st_size
        except OSError as e:
            raise _Unusable(f"{name} cannot be read ({e.strerror})") from None
        if size != m["bytes"].get(name):
            raise _Unusable(f"{name} is {size:,} bytes, its manifest says {m['bytes'].get(name)}")
    try:
        X = np.load(os.path.join(entry, "X.npy"), mmap_mode="r")
        y = np.load(os.path.join(entry, "y.npy"))
        origin = np.load(os.path.join(entry, "origin.npy"))
    except (OSError, ValueError, EOFError) as e:
        raise _Unusable(f"an array is missing, truncated or corrupt ({type(e).__name__}: {e})") from None
    for name, arr, shape, dtype in (("X.npy", X, (n, 32, 32, 3), np.uint8), ("y.npy", y, (n,), np.int64),
                                    ("origin.npy", origin, (n,), np.uint8)):
        if arr.shape != shape or arr.dtype != dtype:
            raise _Unusable(f"{name} holds {arr.dtype} {arr.shape}, expected {np.dtype(dtype)} {shape}")
    if y.min() < 0 or y.max() >= len(CLASSES) or origin.max() >= len(ORIGINS):
        raise _Unusable("its labels or origins are out of range")
    if _quick_digest(X, y, origin) != m["quick_sha256"]:
        raise _Unusable("its labels, origins or sampled pixels do not match the hash in its manifest")
    if m["racy"]:                               # files written just before the build: compare their bytes
        by_rel = {f.rel: f for f in files}
        for rel, digest in m["racy"].items():
            if rel not in by_rel or _sha256_bytes(_read_png_bytes(by_rel[rel])[0]) != digest:
                raise _Unusable(f"{rel} changed within its file system's timestamp resolution")
    if verify:
        for name in _ENTRY_FILES:
            if _sha256_file(os.path.join(entry, name)) != sums.get(name):
                raise _Unusable(f"{name} does not match the hash in its manifest")
        if _png_digest(files) != m["png_sha256"]:
            raise _Unusable("the PNG files changed since it was built (same sizes and times, other bytes)")
    return X, y, np.array(ORIGINS, dtype="<U8")[origin], m


def _write_entry(tmp, key, X, y, origin, skipped, png_sha256, racy):
    """Write the arrays, then the manifest last, into the private folder ``tmp``."""
    sums, sizes = {}, {}
    for name, arr in zip(_ENTRY_FILES, (X, y, origin)):
        path = os.path.join(tmp, name)
        with open(path, "wb") as fh:
            np.save(fh, arr)
            fh.flush()
            os.fsync(fh.fileno())
        sums[name], sizes[name] = _sha256_file(path), os.path.getsize(path)
    manifest = {"version": _CACHE_VERSION, "key": key, "count": len(y), "skipped": skipped,
                "sha256": sums, "bytes": sizes, "quick_sha256": _quick_digest(X, y, origin),
                "png_sha256": png_sha256, "racy": racy}
    with open(os.path.join(tmp, "manifest.json"), "w") as fh:
        json.dump(manifest, fh)
        fh.flush()
        os.fsync(fh.fileno())


def _why(e):
    return f"{e.strerror or e}: {e.filename}" if isinstance(e, OSError) and e.filename else str(e)


def _load_split(root, split, cache, on_bad_image, verify, progress):
    """One split of a PNG tree: from its cache entry, or decoded and published under the lock."""
    files = _list_tree_split(root, split)
    key = _tree_key(split, files)
    entry = os.path.join(cache, f"{split}-{key[:16]}")
    try:
        hit = _open_entry(entry, key, files, verify)
    except _Unusable as e:
        warnings.warn(f"the PNG cache {entry} cannot be used: {e}; rebuilding it")
        hit = None
    if hit is not None:
        return hit

    # No usable entry: build one under the split's lock, in a private temp folder, and publish it
    # with one rename.  A cache folder we cannot write falls back to decoding in memory.
    try:
        from filelock import FileLock, Timeout
    except ImportError:
        raise ImportError("building the PNG cache needs the filelock package: pip install filelock "
                          "(or pip install -e . again, which installs it)") from None
    try:
        os.makedirs(cache, exist_ok=True)
        lock = FileLock(os.path.join(cache, f"{split}.lock"))
        try:
            lock.acquire(timeout=0)
        except Timeout:
            if progress:
                print(f"waiting for another process to finish the cache {entry} ...", file=sys.stderr)
            lock.acquire()
    except OSError as e:
        return _in_memory(_decode_files(files, split, on_bad_image, progress), cache, e)
    try:
        try:                                    # another process may have built it while we waited
            hit = _open_entry(entry, key, files, verify)
        except _Unusable:
            hit = None
        return hit if hit is not None else _build_entry(cache, entry, split, key, files, on_bad_image, progress)
    finally:
        lock.release()


def _build_entry(cache, entry, split, key, files, on_bad_image, progress):
    """Holding the split's lock: decode into a private temp folder, then publish it with one rename."""
    import shutil
    _clean(cache, split)                        # dead builders' temp folders, entries of older keys
    try:
        tmp = tempfile.mkdtemp(prefix=f".tmp-{split}-", dir=cache)
    except OSError as e:
        return _in_memory(_decode_files(files, split, on_bad_image, progress), cache, e)
    try:
        decoded = _decode_files(files, split, on_bad_image, progress)    # bad data raises here
        try:
            _write_entry(tmp, key, *decoded)
            if os.path.lexists(entry):          # left by a failed clean-up: move it aside first
                os.replace(entry, os.path.join(cache, f".old-{split}-{uuid.uuid4().hex}"))
            os.replace(tmp, entry)
        except OSError as e:                    # disk full, folder made read-only meanwhile, ...
            return _in_memory(decoded, cache, e)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # nothing left once it is published
    return _open_entry(entry, key, files, verify=False) or _in_memory(decoded)


def _clean(cache, split):
    """Under the split's lock: remove every temp folder and entry of ``split`` (none is in use)."""
    import shutil
    for name in os.listdir(cache):
        if name.startswith((f".tmp-{split}-", f".old-{split}-")) or re.fullmatch(rf"{split}-[0-9a-f]{{16}}", name):
            shutil.rmtree(os.path.join(cache, name), ignore_errors=True)   # a reader's memory map survives


def _in_memory(decoded, cache=None, error=None):
    """Decoded arrays as ``_open_entry`` returns them, with a warning when the cache was not writable."""
    X, y, origin, skipped, _, _ = decoded
    if error is not None:
        warnings.warn(f"cannot write the PNG cache in {cache} ({_why(error)}); the images were decoded in "
                      f"memory and will be decoded again on every load. Set ECE662_CACHE to a folder "
                      f"you can write to keep a cache.")
    return X, y, np.array(ORIGINS, dtype="<U8")[origin], {"skipped": skipped}


def read_tree(root, splits=("train", "val", "test"), on_bad_image="raise", progress=True, verify=False):
    """Read the CINIC-10 folder layout, through the uint8 cache (see the module docstring).

    Parameters
    ----------
    root : str
        The folder holding ``train/ valid/ test/``.
    on_bad_image : {'raise', 'skip'}
        A corrupt image, or one that is not 32x32 RGB, raises ``ValueError`` naming the
        file; with ``'skip'`` it is left out with a warning that counts the skipped files.
    progress : bool
        Show a progress bar while decoding.
    verify : bool
        Every load checks the cached arrays' sizes and a hash of their labels, origins and
        16 kB of sampled pixels against the manifest (damage such as every label rewritten,
        or every image whitened, is caught), and trusts each PNG's size, mtime and inode.
        ``verify=True`` adds a SHA-256 of every byte of the cached arrays (damage between the
        sampled windows) and of every PNG (a PNG rewritten behind the same size and times).
        Costs a full read of the data (about 700 MB for CINIC-10: seconds from the page
        cache, a minute or more from a cold disk) but no decoding; a mismatch rebuilds the cache.

    Returns
    -------
    dict
        ``{split: (X uint8 (N, 32, 32, 3) memory-mapped, y int64 (N,), origin <U8 (N,))}``

    Raises
    ------
    ValueError
        A missing class folder, an empty split, or (with ``on_bad_image='raise'``) a bad image.
    PermissionError
        A folder or file of the data that may not be read ("permission denied" and its path).
    """
    if on_bad_image not in ("raise", "skip"):
        raise ValueError(f"on_bad_image must be 'raise' or 'skip', got {on_bad_image!r}")
    cache = _cache_dir(root)
    out = {}
    for split in splits:
        X, y, origin, manifest = _load_split(root, split, cache, on_bad_image, verify, progress)
        skipped = manifest["skipped"]
        if skipped and on_bad_image == "raise":     # an entry built with 'skip' never serves a strict load
            raise ValueError(skipped[0][1])
        if skipped:
            warnings.warn(f"skipped {len(skipped)} bad image(s) in {split}; first: {skipped[0][1]}")
        out[split] = (X, y, origin)
    return out
