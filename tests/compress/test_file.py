"""The Deep Compression file: load(save(x)) is x bit for bit, the bytes add up, and hostile files are refused."""
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from ece662 import load_model, save_model
from ece662.compress import huffman, load_compressed, save_compressed, share_weights
from ece662.compress.file import FORMAT, compressed_arrays, payload_bytes
from ece662.compress.table import layer_sizes, totals
from ece662.formats.npz_format import read_npz_arrays
from helpers import REPO


@pytest.fixture(scope="module")
def shared90():
    net = load_model("pruned-90")
    share_weights(net, bits=4)
    return net


@pytest.fixture(scope="module")
def good(shared90, tmp_path_factory):
    path = str(tmp_path_factory.mktemp("dc") / "pruned-90-4bits.npz")
    save_model(shared90, path, compress=True)
    return path


def _same_bits(a, b):
    return a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a.view(np.uint8), b.view(np.uint8))


def test_load_of_save_is_the_same_model_bit_for_bit(shared90, good, rng):
    """Every array (weights, biases, masks) comes back bit for bit through load_model, and so do the logits."""
    back = load_model(good)
    before, after = shared90.state_dict(), back.state_dict()
    assert list(before) == list(after)
    for k in before:
        assert _same_bits(before[k], after[k]), k
    x = rng.normal(size=(16, 3, 32, 32)).astype(np.float32)
    assert _same_bits(shared90.eval()(x), back(x))
    assert back.conv2.weight_mask.dtype == bool and not back.conv2.weight_mask.all()


def test_the_file_is_really_smaller(good):
    """pruned_90.npz keeps every zero; the compressed file holds a tenth of its bytes and a thirtieth of its numbers."""
    from ece662.models import named_model_path
    assert os.path.getsize(good) * 10 < os.path.getsize(named_model_path("pruned-90"))
    arrays = read_npz_arrays(good)
    assert payload_bytes(arrays) * 30 < 23_210 * 4


def test_the_bytes_add_up(shared90, good):
    """The table's per-layer bytes are the arrays in the file, and the layers sum to the total."""
    arrays = read_npz_arrays(good)
    rows = layer_sizes(shared90, bits=4, arrays=compressed_arrays(shared90))
    assert sum(r["huffman"] for r in rows) == totals(rows)["huffman"] == payload_bytes(arrays)
    for r in rows[:-1]:
        key = f"{r['layer']}.weight"
        assert r["huffman"] == sum(a.nbytes for k, a in arrays.items() if k.startswith(key + "."))
        counts = arrays[key + ".counts"]
        assert r["code_bits_per_weight"] * r["survivors"] == pytest.approx(int(counts[1]), rel=1e-12)   # a float ratio
        assert len(arrays[key + ".codes"]) == -(-int(counts[1]) // 8)
        assert r["shared"] == -(-(r["survivors"] * 4 + r["entries"] * r["index_bits"]) // 8) + 4 * 16
    assert rows[-1]["huffman"] == sum(a.nbytes for k, a in arrays.items() if k.endswith(".bias"))


def test_an_unpruned_model_round_trips_without_positions(tmp_path):
    net = load_model("filters-50")
    share_weights(net, bits=3)
    path = str(tmp_path / "filters-50-3bits.npz")
    save_compressed(net, path)
    arrays = read_npz_arrays(path)
    assert "conv1.weight.positions" not in arrays
    back = load_model(path)
    assert "weight_mask" not in back.conv1._buffers
    for k, v in net.state_dict().items():
        assert _same_bits(v, back.state_dict()[k]), k


def test_a_model_that_is_not_shared_is_refused_with_the_fix(tmp_path):
    with pytest.raises(ValueError, match=r"conv1\.weight: it holds .* distinct values.*share_weights"):
        save_compressed(load_model("pruned-90"), str(tmp_path / "x.npz"))


def test_negative_zero_survives():
    from ece662.compress.file import decode_weight, encode_weight
    w = np.array([[0.0, -0.0], [1.5, -0.0]], np.float32)
    out, mask = decode_weight(encode_weight(w, None, 5), w.shape, "t")
    assert mask is None and _same_bits(out, w)


# ============================================================================ hostile files
def _arrays(path):
    with np.load(path) as z:                 # our own file: trusted here, to build the hostile ones
        return {k: z[k] for k in z.files}


def _write(path, arrays):
    with open(path, "wb") as f:
        np.savez(f, **arrays)
    return str(path)


def _edit(good, tmp_path, name, change):
    arrays = _arrays(good)
    change(arrays)
    return _write(tmp_path / f"{name}.npz", arrays)


def _set(key, value):
    def change(a):
        a[key] = value
    return change


def _drop(key):
    def change(a):
        del a[key]
    return change


def _counts(i, value):
    def change(a):
        c = a["conv2.weight.counts"].copy()
        c[i] = value
        a["conv2.weight.counts"] = c
    return change


def _flip_stream(key):
    def change(a):
        s = a[key].copy()
        s[len(s) // 2] ^= 0xFF
        a[key] = s
    return change


def _lengths(n):
    """Every codebook index gets an n-bit code: over-full for n = 1, incomplete for 5 (with 15 or 16 values)."""
    def change(a):
        a["conv2.weight.code_lengths"] = huffman.pack_lengths([n] * len(a["conv2.weight.codebook"]))
    return change


HOSTILE = {
    "survivors beyond the layer": (_counts(0, 10 ** 9), r"1,000,000,000 surviving weights declared, but the layer has 9,216"),
    "position symbols beyond the layer": (_counts(2, 10 ** 6), r"1,000,000 position symbols declared"),
    "code bits beyond 15 per symbol": (_counts(1, 2 ** 31), r"bits for .* symbols; each takes 1..15"),
    "position bits that the stream lacks": (_counts(3, 10 ** 5), r"positions: .* bits"),
    "relative-index width 0": (_counts(4, 0), r"0 bits per relative index"),
    "relative-index width 30": (_counts(4, 30), r"30 bits per relative index"),
    "codebook of 1000 values": (_set("conv2.weight.codebook", np.zeros(1000, np.float32)), r"holds 1000 values"),
    "empty codebook": (_set("conv2.weight.codebook", np.zeros(0, np.float32)), r"holds 0 values"),
    "NaN in the codebook": (_set("conv2.weight.codebook", np.full(16, np.nan, np.float32)), r"NaN or infinite"),
    "float64 codebook": (_set("conv2.weight.codebook", np.zeros(16)), r"expected float32"),
    "over-full code lengths": (_lengths(1), r"over-full"),
    "incomplete code lengths": (_lengths(5), r"incomplete"),
    "code table longer than the codebook": (_set("conv2.weight.code_lengths", np.full(9, 0x44, np.uint8)),
                                            r"hold 18 code lengths, but there are only 1\d symbols"),
    "position table for 2**9 symbols": (_set("conv2.weight.position_lengths", np.full(200, 0x88, np.uint8)),
                                        r"400 code lengths, but there are only 256 symbols"),
    "counts of the wrong type": (_set("conv2.weight.counts", np.zeros(5, np.int64)), r"expected uint32 of shape \(5,\)"),
    "counts missing": (_drop("conv2.weight.counts"), r"'counts' is missing"),
    "codes missing": (_drop("conv2.weight.codes"), r"'codes' is missing"),
    "positions without their table": (_drop("conv2.weight.position_lengths"), r"'position_lengths' is missing"),
    "truncated codes": (lambda a: a.__setitem__("conv2.weight.codes", a["conv2.weight.codes"][:-3]), r"need \d+ bytes"),
    "damaged positions": (_flip_stream("conv2.weight.positions"), r"conv2\.weight"),
    "damaged codes": (_flip_stream("conv2.weight.codes"), r"conv2\.weight"),
    "a member of no layer": (_set("conv9.weight.codes", np.zeros(3, np.uint8)), r"belong to no Conv2d or Linear"),
    "another format": (_set("__ece662_format__", np.array("ece662-deep-compression-v9")), r"model-v1|v9"),
    "no architecture": (_drop("__ece662_spec__"), r"architecture|spec"),
    "pickled object": (_set("conv2.bias", np.array([object()], dtype=object)), r"pickled"),
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_files_are_refused_naming_the_file(good, tmp_path, name):
    change, message = HOSTILE[name]
    path = _edit(good, tmp_path, name.replace(" ", "_"), change)
    with pytest.raises(ValueError) as e:
        load_model(path)
    assert path in str(e.value), str(e.value)
    assert re.search(message, str(e.value)), str(e.value)


CHILD = """
import json, resource, sys
from ece662.compress import load_compressed
vm = int(next(l for l in open("/proc/self/status") if l.startswith("VmSize")).split()[1]) * 1024
resource.setrlimit(resource.RLIMIT_AS, (vm + (1 << 30), resource.RLIM_INFINITY))   # 1 GiB more
out = {}
for name, path in json.loads(sys.argv[1]).items():
    try:
        load_compressed(path)
        out[name] = ["ok", ""]
    except BaseException as e:
        out[name] = [type(e).__name__, str(e)]
print(json.dumps(out))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_AS and /proc are Linux's")
def test_small_files_that_declare_huge_counts_stay_within_memory(good, tmp_path):
    """Counts of 4 billion, a spec of 20 M weights with a 4-byte stream: a ValueError each in a child
    process allowed 1 GiB more than it starts with."""
    spec = json.loads(str(_arrays(good)["__ece662_spec__"]))
    spec["layers"][-1][1]["args"]["out_features"] = 20_000     # fc: 20,000 x 1,152 = 23 M weights declared
    files = {
        "counts of 2**32 - 1": _edit(good, tmp_path, "c", _counts(0, 2 ** 32 - 1)),
        "symbols of 2**32 - 1": _edit(good, tmp_path, "s", _counts(2, 2 ** 32 - 1)),
        "23 M weights behind a tiny stream": _edit(good, tmp_path, "w", _set("__ece662_spec__",
                                                                              np.array(json.dumps(spec)))),
    }
    env = dict(os.environ, PYTHONPATH=REPO)
    proc = subprocess.run([sys.executable, "-c", CHILD, json.dumps(files)], capture_output=True, text=True,
                          env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    for name, path in files.items():
        kind, text = results[name]
        assert kind == "ValueError" and path in text, (name, kind, text[:300])


def test_the_format_is_recognised_only_by_its_member(good, tmp_path):
    """load_model reads an ordinary ece662 .npz as before, and a compressed one by its format, whatever its name."""
    from ece662.compress import is_compressed_file
    from ece662.models import named_model_path
    assert is_compressed_file(good) and not is_compressed_file(named_model_path("pruned-90"))
    renamed = tmp_path / "model.bin"
    renamed.write_bytes(open(good, "rb").read())
    assert "conv1.weight_mask" in load_model(str(renamed)).state_dict()
    assert not is_compressed_file(str(tmp_path / "missing.npz"))
    assert FORMAT == "ece662-deep-compression-v1"


@pytest.mark.parametrize("extra", ["conv2.weight_orig", "conv2.weight_mask", "conv2.weight"])
def test_a_plain_copy_of_a_coded_weight_is_refused(good, tmp_path, extra):
    """One reading per file: a plain `conv2.weight_orig` or `_mask` next to conv2's coded members would
    silently replace the decoded weights or mask, so it is refused, naming the entry."""
    value = np.ones((32, 32, 3, 3), bool if extra.endswith("mask") else np.float32)
    path = _edit(good, tmp_path, extra, _set(extra, value))
    with pytest.raises(ValueError, match=rf"{re.escape(path)}: .*{re.escape(extra)}.* coded"):
        load_model(path)


@pytest.mark.parametrize("index_bits, message", [
    ({"conv1": 12}, r"conv1.*12.*1\.\.8"),                 # used to save a file that load_model refused
    ({"conv1": 0}, r"conv1.*0.*1\.\.8"),
    ({"conv9": 4}, r"conv9.*not a Conv2d or Linear layer"),
    (5, r"expected a dict"),                                # used to raise AttributeError
])
def test_index_widths_the_reader_refuses_are_refused_when_saving(shared90, tmp_path, index_bits, message):
    """save_compressed never writes a file that load_model refuses, and a failed save leaves the old file."""
    path = tmp_path / "old.npz"
    path.write_bytes(b"the old file")
    with pytest.raises((ValueError, TypeError), match=message):
        save_compressed(shared90, str(path), index_bits=index_bits)
    assert path.read_bytes() == b"the old file"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="a FIFO and /dev/zero")
def test_a_fifo_or_device_is_not_opened_to_look_for_the_format(tmp_path):
    """load_model asks is_compressed_file first: on a FIFO it waited for a writer forever, on /dev/zero zipfile
    read zeros until memory ran out. Both are "no file", as the ordinary reader says, at once."""
    fifo = str(tmp_path / "model.npz")
    os.mkfifo(fifo)
    code = CHILD.split("out = {}")[0] + (      # the same 1 GiB cap: /dev/zero must not be read
        "from ece662 import load_model\nfor p in sys.argv[1:]:\n    try:\n        load_model(p)\n"
        "    except FileNotFoundError as e:\n        print('refused', e)\n")
    proc = subprocess.run([sys.executable, "-c", code, fifo, "/dev/zero"], capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=REPO), timeout=60)
    assert proc.stdout.count("refused") == 2, proc.stderr[-2000:]
