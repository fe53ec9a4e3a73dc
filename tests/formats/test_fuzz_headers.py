"""Header fuzzing of the shipped files, one format after another: the bytes that say how big, how compressed and
what shape (zip local and central headers, .npy headers, HDF5 metadata, ONNX dims) are the ones a hostile file
lies with, so these runs overwrite them, a few bytes at a time, and load the result in a child process that may
use only 1 GiB more address space than it starts with.

Every mutated file must end in a model or in a ValueError with a message (never a traceback of another kind, a
MemoryError or a crash), within a time bound; the ONNX file's external data must never come from outside its
folder (a mutated location can only name a file that does not exist there).  Seeded: a failure names the seed
and the offsets, so it can be replayed.  ``ECE662_FUZZ_EXAMPLES`` runs more per format (default 300),
``ECE662_FUZZ_SEED`` other ones.
"""
import json
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from helpers import REPO

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_AS and /proc are Linux's")
EXAMPLES = int(os.environ.get("ECE662_FUZZ_EXAMPLES", "300"))
SEED = int(os.environ.get("ECE662_FUZZ_SEED", "0"))        # another seed explores other mutations
MODELS = os.path.join(REPO, "ece662", "models")

CHILD = textwrap.dedent("""
    import json, resource, sys, time, warnings
    warnings.simplefilter("ignore")
    from ece662.pruning_helper import load_model
    vm = int(next(l for l in open("/proc/self/status") if l.startswith("VmSize")).split()[1]) * 1024
    resource.setrlimit(resource.RLIMIT_AS, (vm + (1 << 30), resource.RLIM_INFINITY))   # 1 GiB more
    out = []
    for path, mode in json.loads(sys.stdin.read()):
        t0 = time.perf_counter()
        try:
            load_model(path, mode=mode)
            kind, msg = "ok", ""
        except BaseException as e:
            kind, msg = type(e).__name__, str(e)
        out.append([path, kind, msg[:300], time.perf_counter() - t0])
    print(json.dumps(out))
""")


def _zip_header_offsets(data):
    """Offsets of the size, method and name-length fields of every zip local and central header, and of each
    member's first 128 bytes (the .npy and pickle headers live there)."""
    offsets = []
    i = data.find(b"PK\x03\x04")
    while i != -1:
        offsets += list(range(i + 8, i + 10)) + list(range(i + 18, i + 30))      # method; sizes; name/extra lengths
        offsets += list(range(i + 30, min(i + 30 + 160, len(data))))             # name and the member's header
        i = data.find(b"PK\x03\x04", i + 4)
    i = data.find(b"PK\x01\x02")
    while i != -1:
        offsets += list(range(i + 10, i + 12)) + list(range(i + 20, i + 34)) + list(range(i + 42, i + 46))
        i = data.find(b"PK\x01\x02", i + 4)
    return [o for o in offsets if o < len(data)]


def _mutants(src, folder, name, seed, offsets_of):
    """``EXAMPLES`` copies of ``src`` with 1-4 header bytes overwritten (random bytes, or 0xff / 0x00 / a
    doubled value), each with the offsets it changed."""
    data = open(src, "rb").read()
    offsets = offsets_of(data)
    rng = np.random.default_rng(seed)
    out = []
    for k in range(EXAMPLES):
        b = bytearray(data)
        changed = sorted(int(o) for o in rng.choice(offsets, size=int(rng.integers(1, 5)), replace=False))
        for o in changed:
            b[o] = int(rng.choice([rng.integers(0, 256), 0xFF, 0x00, (b[o] * 2) & 0xFF, b[o] ^ 0x80]))
        path = os.path.join(folder, f"{name}-{k}{os.path.splitext(src)[1]}")
        with open(path, "wb") as f:
            f.write(bytes(b))
        out.append((path, changed))
    return out


def _run(files, mode, timeout=900):
    r = subprocess.run([sys.executable, "-c", CHILD], input=json.dumps([[p, mode] for p, _ in files]),
                       capture_output=True, text=True, timeout=timeout, env=dict(os.environ, PYTHONPATH=REPO))
    assert r.returncode == 0, f"the child died (a crash or the memory limit): {r.stderr[-2000:]}"
    return json.loads(r.stdout.strip().splitlines()[-1])


def _check(results, files, seed, allowed=("ok", "ValueError")):
    changed = dict(files)
    bad = [(os.path.basename(p), k, m, changed[p]) for p, k, m, _ in results if k not in allowed]
    assert not bad, f"seed {seed}: outcomes other than a model or a ValueError: {bad[:5]}"
    slow = [(os.path.basename(p), round(t, 1)) for p, k, _, t in results if t > 30]
    assert not slow, f"seed {seed}: loads that took over 30 s: {slow}"
    assert any(k == "ValueError" for _, k, _, _ in results), "no mutation was refused: the fuzzer did nothing"


@pytest.mark.parametrize("name, mode", [("default_convnet.npz", "numpy"), ("torch.model", "torch")])
def test_mutated_zip_headers_of_the_shipped_files(tmp_path, name, mode):
    seed = SEED + 25 + len(name)
    files = _mutants(os.path.join(MODELS, name), str(tmp_path), name.split(".")[0], seed, _zip_header_offsets)
    _check(_run(files, mode), files, seed)


def test_mutated_headers_of_the_shipped_keras_file(tmp_path):
    """The .keras zip's headers and the HDF5 file's first kilobytes (superblock, object headers: sizes,
    shapes, filters, links)."""
    pytest.importorskip("h5py")
    src = tmp_path / "course.keras"
    shutil.copy(os.path.join(MODELS, "tensorflow.model"), src)

    def offsets(data):
        h5 = data.find(b"\x89HDF\r\n\x1a\n")
        return _zip_header_offsets(data) + ([] if h5 < 0 else list(range(h5, min(h5 + 4096, len(data)))))
    seed = SEED + 2025
    files = _mutants(str(src), str(tmp_path), "keras", seed, offsets)
    _check(_run(files, "tensorflow"), files, seed)


@pytest.mark.oracle
def test_mutated_headers_of_an_exported_onnx_file(tmp_path):
    """An ONNX export of the shipped model, its protobuf's first kilobytes (graph, node and tensor headers,
    dims) overwritten; an initializer's bytes moved to an external file beside it that mutations can rename."""
    pytest.importorskip("onnx")
    from ece662.io import save_model
    from ece662.pruning_helper import load_model
    src = tmp_path / "net.onnx"
    save_model(load_model(), src)
    seed = SEED + 4242
    files = _mutants(str(src), str(tmp_path), "onnx", seed, lambda data: list(range(0, min(4096, len(data)))))
    _check(_run(files, "onnx"), files, seed)
