"""Zip archives that lie, against every zip-based reader of ece662 (issue 25).

Four readers open zip archives: PyTorch ``.pt`` (``read_torch_state_dict``), ece662 ``.npz`` models
(``load_model``), Keras ``.keras`` (``load_model(mode='tensorflow')``) and CINIC-10 data ``.npz``
(``ece662.data.npz.read_npz``).  All four read members through ``ece662.safezip``; each hostile archive
here is built byte by byte (``tests/zip_files.py``) and must end in one ``ValueError`` that names the
file.  The archives that would inflate to hundreds of megabytes are opened in a child process whose
address space may grow by only 1 GiB, and whose peak memory must grow by less than 100 MB per file.
"""
import json
import os
import re
import subprocess
import sys
import textwrap
import zlib

import numpy as np
import pytest

from helpers import FIXTURES, REPO
from torch_files import simple_pt
from zip_files import BZIP2, LZMA, Member, deflate_lie, deflate_zeros, members_of, packed_lie, stored, write_zip
from ece662.data.npz import read_npz
from ece662.formats.npz_format import save_npz_model
from ece662.models import default_convnet
from ece662.pruning_helper import load_model

KERAS = os.path.join(FIXTURES, "keras_default_convnet.keras")


# ============================================================================ one honest file per reader
def _torch(folder):
    return simple_pt(folder / "honest.pt", size=(4,), stride=(1,), numel=4)


def _model(folder):
    path = folder / "honest.npz"
    save_npz_model(default_convnet(seed=0), path)
    return path


def _data(folder):
    rng = np.random.default_rng(0)
    arrays = {}
    for s in ("train", "val", "test"):
        arrays[f"X_{s}"] = rng.integers(0, 256, (10, 32, 32, 3), dtype=np.uint8)
        arrays[f"y_{s}"] = np.arange(10) % 10
    path = folder / "honest-data.npz"
    np.savez(path, **arrays)
    return path


def _keras(folder):
    pytest.importorskip("h5py")
    return KERAS


# reader: (how to make an honest file, the member made hostile, how the reader is called in the child)
READERS = {
    "torch": (_torch, "archive/data/0",
              "from ece662.formats.torch_format import read_torch_state_dict as load"),
    "model npz": (_model, "conv1.weight.npy", "from ece662.pruning_helper import load_model as load"),
    "keras": (_keras, "config.json",
              "from ece662.pruning_helper import load_model\n"
              "load = lambda path: load_model(path, mode='tensorflow')"),
    "data npz": (_data, "X_train.npy", "from ece662.data.npz import read_npz as load"),
}


def _load(reader, path):
    """Call ``reader`` on ``path`` in this process."""
    namespace = {}
    exec(READERS[reader][2], namespace)
    return namespace["load"](str(path))


def _swap(folder, reader, make_member, name):
    """A copy of the reader's honest file with its target member replaced by ``make_member(content)``."""
    make, target, _ = READERS[reader]
    honest = str(make(folder))
    members = [make_member(m.data) if m.name == target else m for m in members_of(honest)]
    return write_zip(folder / f"{name}{os.path.splitext(honest)[1]}", members)


# ============================================================================ refused in this process
@pytest.mark.parametrize("reader", READERS)
@pytest.mark.parametrize("method, label", [(BZIP2, "bzip2"), (LZMA, "lzma")])
def test_bzip2_and_lzma_members_are_refused_by_name(tmp_path, reader, method, label):
    """A member compressed with bzip2 or lzma (which zipfile inflates whole in one call) is refused
    before a byte is inflated, with the method named (the payload here is small; see the child test)."""
    target = READERS[reader][1]
    path = _swap(tmp_path, reader, lambda content: packed_lie(target, method, len(content), 1), label)
    with pytest.raises(ValueError, match=rf"member '{re.escape(target)}'.* is compressed with {label} "
                                         rf"\(zip method {method}\)|{re.escape(target)}.*{label}") as err:
        _load(reader, path)
    assert str(path) in str(err.value)


@pytest.mark.parametrize("reader", READERS)
def test_deflated_member_that_inflates_past_its_declared_size_is_refused(tmp_path, reader):
    """A deflated member that declares its honest size and CRC but inflates 4 MiB further is refused,
    not cut short at the declared size and loaded."""
    target = READERS[reader][1]
    path = _swap(tmp_path, reader, lambda content: deflate_lie(target, content, 4), "deflate-lie")
    with pytest.raises(ValueError, match="inflates to more than the .* bytes it declares") as err:
        _load(reader, path)
    assert str(path) in str(err.value)


@pytest.mark.parametrize("reader", READERS)
def test_a_member_named_twice_is_refused(tmp_path, reader):
    """Two members with one name: torch would read the first, zipfile the last; ece662 refuses both."""
    make, target, _ = READERS[reader]
    honest = str(make(tmp_path))
    members = members_of(honest)
    twin = next(m for m in members if m.name == target)
    members.append(stored(target, twin.data[::-1]))
    path = write_zip(tmp_path / f"twice{os.path.splitext(honest)[1]}", members)
    with pytest.raises(ValueError, match=f"two members named '{re.escape(target)}'") as err:
        _load(reader, path)
    assert str(path) in str(err.value)


@pytest.mark.parametrize("reader", READERS)
def test_honest_deflated_archives_still_load(tmp_path, reader):
    """The checks refuse nothing honest: every member deflated (as np.savez_compressed does) loads."""
    honest = str(READERS[reader][0](tmp_path))
    members = []
    for m in members_of(honest):
        c = zlib.compressobj(6, zlib.DEFLATED, -15)
        members.append(Member(m.name, c.compress(m.data) + c.flush(), 8, len(m.data), zlib.crc32(m.data)))
    path = write_zip(tmp_path / f"deflated{os.path.splitext(honest)[1]}", members)
    assert _load(reader, path) is not None


def test_local_header_naming_another_member_is_refused(tmp_path):
    """A local header whose name differs from the central directory's: tools that stream local headers
    would read another file than ece662 does."""
    members = members_of(_torch(tmp_path))
    for m in members:
        if m.name == "archive/data/0":
            m.local_name = "archive/data/9"
    path = write_zip(tmp_path / "local.pt", members)
    with pytest.raises(ValueError, match="local header says 'archive/data/9'") as err:
        _load("torch", path)
    assert str(path) in str(err.value)


def test_a_flipped_bit_in_a_deflated_member_is_a_crc_error(tmp_path):
    """The CRC-32 of every member read to its end is checked, deflated or stored."""
    members = members_of(_data(tmp_path))
    for i, m in enumerate(members):
        if m.name == "X_val.npy":
            data = bytearray(m.data)
            data[500] ^= 1
            c = zlib.compressobj(6, zlib.DEFLATED, -15)
            members[i] = Member(m.name, c.compress(bytes(data)) + c.flush(), 8, len(m.data), zlib.crc32(m.data))
    path = write_zip(tmp_path / "crc.npz", members)
    with pytest.raises(ValueError, match=r"'X_val.npy': bad CRC-32") as err:
        read_npz(str(path))
    assert str(path) in str(err.value)


# ============================================================================ bombs, in a child process
def _bombs(folder):
    """Small archives that would inflate to hundreds of megabytes: {name: (reader, path, regex)}."""
    out = {}
    for reader, (make, target, _) in READERS.items():
        if reader == "keras" and not _has_h5py():
            continue
        sub = folder / reader.replace(" ", "-")
        sub.mkdir()
        for method, label in ((BZIP2, "bzip2"), (LZMA, "lzma")):     # 256 MiB of zeros in 2-40 kB
            path = _swap(sub, reader, lambda content: packed_lie(target, method, len(content), 256), label)
            out[f"{reader}: {label}"] = (reader, path, f"compressed with {label}")
        path = _swap(sub, reader, lambda content: deflate_lie(target, content, 1536), "deflate-1.5GB")
        out[f"{reader}: deflate that declares its honest size, then 1.5 GB"] = (reader, path, "inflates to more than")
    # ece662 .npz: strings and deflated zeros within the value budget but far beyond the file's size
    members = members_of(_model(folder))
    many = members + [deflate_zeros(f"note{i}.npy", _npy_header("<U1000000", ()), 4_000_000) for i in range(400)]
    out["model npz: 400 strings of 4 MB"] = ("model npz", write_zip(folder / "strings.npz", many),
                                              r"'note0' holds strings")
    spec = [deflate_zeros("__ece662_spec__.npy", _npy_header("<U2000000", ()), 8_000_000) if m.name == "__ece662_spec__.npy"
            else m for m in members]
    out["model npz: a spec of 2,000,000 characters"] = ("model npz", write_zip(folder / "spec.npz", spec),
                                                         r"declares 2,000,000 characters")
    zeros = members + [deflate_zeros("extra.npy", _npy_header("<f4", (70_000_000,)), 280_000_000)]
    out["model npz: 280 MB of zeros in 300 kB"] = ("model npz", write_zip(folder / "zeros.npz", zeros),
                                                    r"compression bomb")
    return out


def _has_h5py():
    try:
        import h5py  # noqa: F401
        return True
    except ImportError:
        return False


def _npy_header(descr, shape):
    import io
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": descr, "fortran_order": False, "shape": shape})
    return buf.getvalue()


CHILD = textwrap.dedent("""
    import json, resource, sys
    sys.path.insert(0, sys.argv[2])
    import test_hostile_zips as t
    try:
        import h5py  # imported before measuring: a library is not a bomb
    except ImportError:
        pass
    vm = int(next(l for l in open("/proc/self/status") if l.startswith("VmSize")).split()[1]) * 1024
    resource.setrlimit(resource.RLIMIT_AS, (vm + (1 << 30), resource.RLIM_INFINITY))   # 1 GiB more
    out = {}
    for name, (reader, path) in json.loads(sys.argv[1]).items():
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        try:
            t._load(reader, path)
            out[name] = ["ok", "", 0]
        except BaseException as e:
            out[name] = [type(e).__name__, str(e), 0]
        out[name][2] = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024   # MB
    print(json.dumps(out))
""")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_AS and /proc are Linux's")
def test_small_archives_that_inflate_to_gigabytes_are_refused_under_a_memory_limit(tmp_path):
    """bzip2/lzma bombs, deflated members that lie about their size, strings and zeros beyond the
    budget: a ValueError each, naming the file, in a child process limited to 1 GiB more address
    space, whose peak memory grows by less than 100 MB per file."""
    bombs = _bombs(tmp_path)
    for name, (_, path, _) in bombs.items():
        assert os.path.getsize(path) < 2_000_000, name
    here = os.path.dirname(os.path.abspath(__file__))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([REPO, os.path.dirname(here)]))
    arg = json.dumps({k: [reader, str(p)] for k, (reader, p, _) in bombs.items()})
    proc = subprocess.run([sys.executable, "-c", CHILD, arg, here], capture_output=True, text=True,
                          env=env, timeout=600)
    assert proc.returncode == 0, f"the child crashed (rc {proc.returncode}): {proc.stderr[-2000:]}"
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    for name, (_, path, message) in bombs.items():
        kind, text, grew = results[name]
        assert kind == "ValueError", f"{name}: {kind}: {text[:300]}"
        assert str(path) in text, f"{name}: the message does not name the file: {text}"
        assert re.search(message, text), f"{name}: {text}"
        assert grew < 100, f"{name}: peak memory grew by {grew:.0f} MB"
