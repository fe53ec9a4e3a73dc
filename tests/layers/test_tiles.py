"""Kernel v7: the generated register tiles and the measurement that picks one (``ece662.layers.tuning``)."""
import json
import os
import subprocess
import sys

import numba
import numpy as np
import pytest

from asm_count import TARGETS, check_width, fma_lanes, requires_x86, target_env
from helpers import REPO, assert_close
from ece662.layers import functional as fn
from ece662.layers import reference as ref
from ece662.layers import tile_source, tuning
import ece662.pruning as prune
from ece662.models import default_convnet
from ece662.pruning_helper import load_model

# (N, C, H, W, F, KH, KW, pad): the course CNN's two layers, leftover filters, odd widths, one block per row
CASES = [(3, 3, 32, 32, 32, 5, 5, 0), (2, 32, 14, 14, 32, 3, 3, 0), (2, 5, 9, 11, 24, 3, 3, 1),
         (1, 2, 6, 5, 40, 2, 2, 0), (2, 3, 7, 13, 17, 3, 3, 0), (1, 3, 3, 5, 5, 2, 2, 1), (2, 1, 4, 4, 1, 3, 3, 1),
         (1, 4, 12, 10, 8, 3, 3, 0)]
TILES = [(t,) for t in tile_source.TILES] + [((8, 16), (8, 8)), ((4, 32), (8, 8)), ((8, 32), (4, 16))]


def _read_json(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _inputs(rng, case):
    N, C, H, W, F, KH, KW, pad = case
    return (rng.standard_normal((N, C, H, W)).astype(np.float32), rng.standard_normal((F, C, KH, KW)).astype(np.float32),
            rng.standard_normal(F).astype(np.float32), pad)


def test_generated_kernels_are_the_generators_output():
    """kernels_tiles.py is exactly what tile_source.py writes (regenerate: python -m ece662.layers.tile_source)."""
    with open(tile_source.generated_path(), encoding="utf-8") as f:
        assert f.read() == tile_source.module_source(), "run: python -m ece662.layers.tile_source"


@pytest.mark.parametrize("case", CASES, ids=str)
def test_every_tile_computes_the_reference_and_the_same_bits(case, rng):
    """Each tile (and each main + tail pair) equals reference conv + ReLU + 2x2 max pool, and all of them
    and kernel v6 return the same bits: the tile the measurement picks never changes an output."""
    x, w, b, pad = _inputs(rng, case)
    expected = ref.maxpool2d_forward_reference(ref.relu_forward_reference(
        ref.conv2d_forward_reference(x, w, b, 1, pad)), 2, 2)
    v6 = fn.conv2d_relu_maxpool2_lanes(x, w, b, pad)
    for tile in TILES:
        got = fn.conv2d_relu_maxpool2_tuned(x, w, b, pad, tile=tile)
        assert_close(got, expected, {"case": case, "tile": tile})
        np.testing.assert_array_equal(got, v6, err_msg=f"tile {tile} differs from v6 in some bits")
    # the other layout the measurement may pick: output positions as the lanes (kernels_sparse)
    assert_close(tuning.run(x, w, b, pad, tuning.LANES), expected, {"case": case, "tile": "lanes"})


def test_tuned_kernel_leaves_inputs_alone_and_refuses_unknown_tiles(rng):
    x, w, b, pad = _inputs(rng, CASES[2])
    before = [a.copy() for a in (x, w, b)]
    packed = fn.pack_filters_tile(w, b, ((8, 16), (8, 8)))
    assert_close(fn.conv2d_relu_maxpool2_tuned(x, w, b, pad, tile=((8, 16), (8, 8)), packed=packed),
                 fn.conv2d_relu_maxpool2_tuned(x, w, b, pad, tile=((8, 16), (8, 8))), "packed once")
    for a, a0 in zip((x, w, b), before):
        np.testing.assert_array_equal(a, a0)
    with pytest.raises(ValueError, match=r"tile must be one or more sizes of .*got \(\(6, 16\),\)"):
        fn.conv2d_relu_maxpool2_tuned(x, w, b, pad, tile=((6, 16),))


def test_tile_names_parse_and_count_their_padding():
    assert tuning.parse_tile("8x32") == ((8, 32),)
    assert tuning.parse_tile(" 8x16 + 8x8 ") == ((8, 16), (8, 8)) == tuning.parse_tile("8X16+8X8")
    assert tuning.format_tile(((8, 16), (8, 8))) == "8x16+8x8"
    assert tuning.parse_tile("lanes") == tuning.LANES and tuning.format_tile(tuning.LANES) == "lanes"
    for bad in ("", "8x", "6x16", "8x32+", "fast", "8x32x2"):
        with pytest.raises(ValueError, match="a v7 tile is one or more of 4x16, 8x16, 4x32, 8x32, 8x8"):
            tuning.parse_tile(bad)
    # 24 live filters: a 32-wide block computes 32 of them; 16 + 8 computes 24
    assert [tuning.computed_filters(t, 24) for t in (((8, 32),), ((8, 16), (8, 8)), ((8, 8),))] == [32, 24, 24]
    assert ((8, 32), (8, 8)) in tuning.candidates(40) and ((8, 32), (8, 8)) not in tuning.candidates(32)
    assert tuning.LANES in tuning.candidates(8) and tuning.computed_filters(tuning.LANES, 24) == 24


@pytest.fixture
def tile_cache(tmp_path, monkeypatch):
    """A fresh, empty cache folder and no choice remembered in memory."""
    monkeypatch.setenv("ECE662_TILE_CACHE", str(tmp_path))
    monkeypatch.delenv("ECE662_TILE", raising=False)
    monkeypatch.delenv("ECE662_SPARSE_FROM", raising=False)      # the suite pins it; here it is measured
    monkeypatch.setattr(tuning, "_memory", {})
    return tmp_path


def test_the_measured_choice_is_recorded_and_read_back(tile_cache, capsys):
    """The first choice for a shape is measured (and says so on stderr), written to this CPU's cache file,
    and read from it by the next process (here: with the memory cleared), without measuring again."""
    tile, why = tuning.choose_tile(3, 12, 12, 24, 3, 3, 0)
    assert "timed" in capsys.readouterr().err and why.startswith("measured fastest on")
    path = tuning.cache_path()
    assert os.path.dirname(path) == str(tile_cache)
    entry = _read_json(path)["C3 H12 W12 F24 k3x3 pad0 threads%d" % fn.thread_count()]
    assert tuning.parse_tile(entry["tile"]) == tile
    assert set(entry["seconds"]) == {tuning.format_tile(t) for t in tuning.candidates(24)} | {tuning.PROBE}
    ranked = sorted(((tuning.parse_tile(t), s) for t, s in entry["seconds"].items() if t != tuning.PROBE),
                    key=lambda ts: ts[1])
    # from the recorded seconds (rounded to 0.1 µs in the file), to the rounding
    assert entry["sparse_from"] == pytest.approx(tuning.break_even(ranked, entry["seconds"][tuning.PROBE]), abs=0.01)
    tuning._memory.clear()
    assert tuning.choose_tile(3, 12, 12, 24, 3, 3, 0)[0] == tile
    assert capsys.readouterr().err == ""                      # read, not measured


@pytest.mark.parametrize("content", [b"\x00\xff not json", b"[1, 2]", {"tile": "6x6", "sparse_from": 0.5},
                                     {"tile": "8x32"}, {"tile": "8x32", "sparse_from": 1.5},
                                     {"tile": "8x32", "sparse_from": True}, {"tile": "8x32", "sparse_from": "0.3"},
                                     {"tile": "lanes", "sparse_from": 0.5}, b"[" * 50000 + b"]" * 50000,
                                     b" " * (tuning.MAX_CACHE_BYTES + 1)],
                         ids=["bytes", "list", "unknown tile", "no break-even (an older file)", "break-even > 1",
                              "break-even a bool", "break-even a string", "lanes fastest yet sparse from 50%",
                              "nested 50,000 deep", "huge"])
def test_a_damaged_cache_file_is_measured_over(tile_cache, content, capsys):
    """A cache file that is not JSON, not a table, names an unknown tile, lacks a break-even or holds one that
    is not a fraction, or is too large is not trusted: the shape is measured again and the file rewritten."""
    key = "C3 H12 W12 F24 k3x3 pad0 threads%d" % fn.thread_count()
    if isinstance(content, dict):
        content = json.dumps({key: dict(content, seconds={})}).encode()
    path = tuning.cache_path()
    with open(path, "wb") as f:
        f.write(content)
    tile, why = tuning.choose_tile(3, 12, 12, 24, 3, 3, 0)
    assert "timed" in capsys.readouterr().err
    assert tuning.parse_tile(_read_json(path)[key]["tile"]) == tile
    assert 0.0 <= _read_json(path)[key]["sparse_from"] <= 1.0


def test_an_unwritable_cache_folder_still_gives_a_tile(tmp_path, monkeypatch, capsys):
    """A cache folder that cannot be created (here: its parent is a file) is said once; the choice is kept
    in memory and the layer runs."""
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("ECE662_TILE_CACHE", str(blocker / "cache"))
    monkeypatch.delenv("ECE662_TILE", raising=False)
    monkeypatch.setattr(tuning, "_memory", {})
    tile, _ = tuning.choose_tile(2, 8, 8, 8, 3, 3, 0)
    assert "could not record the measured tile" in capsys.readouterr().err
    assert tuning.choose_tile(2, 8, 8, 8, 3, 3, 0)[0] == tile


def test_a_cache_folder_that_is_a_file_is_named_as_such(tmp_path, monkeypatch, capsys):
    """ECE662_TILE_CACHE pointing at a file: said once, in those words, and no line claims a recorded choice."""
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("ECE662_TILE_CACHE", str(blocker))
    monkeypatch.delenv("ECE662_TILE", raising=False)
    monkeypatch.setattr(tuning, "_memory", {})
    monkeypatch.setattr(tuning, "_told", set())
    tuning.choose_tile(2, 8, 8, 8, 3, 3, 0)
    tuning.choose_tile(2, 8, 8, 16, 3, 3, 0)
    err = capsys.readouterr().err
    assert err.count("is a file, not a folder") == 1 and "recorded in" not in err
    assert err.count("kept for this run only") == 3 and blocker.read_text() == ""


def test_ece662_tile_forces_a_tile_and_the_plan_says_so(tile_cache, monkeypatch):
    x = np.random.default_rng(0).standard_normal((3, 3, 32, 32)).astype(np.float32)
    expected = default_convnet(seed=0).eval()(x)
    monkeypatch.setenv("ECE662_TILE", "lanes")
    net = default_convnet(seed=0).eval()
    assert net.plan((3, 32, 32)).steps[1].kernel.tile == "lanes"
    assert_close(net(x), expected, "the lanes layout")
    monkeypatch.setenv("ECE662_TILE", "8x16+8x8")
    plan = default_convnet(seed=0).plan((3, 32, 32))
    k = plan.steps[0].kernel
    assert (k.version, k.tile) == ("v7", "8x16+8x8") and "ECE662_TILE=8x16+8x8" in k.reason
    assert "v7 tile 8x16+8x8" in str(plan).splitlines()[0]
    monkeypatch.setenv("ECE662_TILE", "9x9")
    with pytest.raises(ValueError, match="ECE662_TILE: a v7 tile is one or more of .* got '9x9'; unset it"):
        default_convnet(seed=0).plan((3, 32, 32))


def test_without_the_jit_nothing_is_timed(tile_cache, monkeypatch, capsys):
    monkeypatch.setattr(numba.config, "DISABLE_JIT", True)
    tile, why = tuning.choose_tile(3, 32, 32, 32, 5, 5, 0)
    assert tile == tuning.DEFAULT_TILE and "NUMBA_DISABLE_JIT" in why and capsys.readouterr().err == ""
    assert not os.listdir(tile_cache)


def test_the_plan_counts_the_tiles_padding(tile_cache, monkeypatch):
    """A 32-wide tile computes 24 live filters as 32: the plan and report say so."""
    import ece662.pruning as prune
    monkeypatch.setenv("ECE662_TILE", "8x32")
    net = default_convnet(seed=0)
    prune.ln_structured(net.conv1, "weight", amount=8, n=2, dim=0)
    line = str(net.plan((3, 32, 32))).splitlines()[0]
    assert "24/32 filters live (computed as 32: the v7 tile works in blocks of its lanes, so skipping saves " \
           "nothing here)" in line


@requires_x86
@pytest.mark.parametrize("target", TARGETS)
def test_every_tile_is_vectorised(tmp_path, target):
    """Every generated tile compiles to packed FMAs only: positions x lanes multiply-adds per tap in vector
    lanes (8 per ymm FMA on AVX2, 16 per zmm on AVX-512), no scalar FMA; and no gather loads its inputs
    (``llvm_hints``: on AVX-512 a gather and its shuffles halved the tiles' speed).
    Compiled afresh in a subprocess (numba cannot show the assembly of cached code)."""
    if os.environ.get("NUMBA_DISABLE_JIT") == "1":
        pytest.skip("no machine code without the JIT")
    code = """
import json
import numpy as np
from ece662.layers import functional as fn, kernels_tiles
x, w = np.ones((1, 2, 8, 8), np.float32), np.ones((32, 2, 3, 3), np.float32)
for t, k in kernels_tiles.TILE_BODIES.items():      # the serial function each tile's threads run
    fn.conv2d_relu_maxpool2_tuned(x, w, None, tile=(t,))
    print(json.dumps([t, k.inspect_asm(k.signatures[0])]))
"""
    env = target_env(target, tmp_path, PYTHONPATH=REPO)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=900)
    assert r.returncode == 0, r.stderr
    for line in r.stdout.splitlines():
        (positions, lanes), asm = json.loads(line)
        check_width(target, asm)
        packed, scalar = fma_lanes(asm)
        assert packed >= positions * lanes and scalar == 0, \
            f"tile {positions}x{lanes}: {packed} lanes in packed FMAs, {scalar} scalar FMAs"
        assert "vgather" not in asm, f"tile {positions}x{lanes} loads its inputs with a gather"


def test_break_even_is_where_the_sparse_kernels_line_meets_the_fastest_tile():
    """The sparse kernel's time as a straight line through its dense time and its time at 75% zeros; the answer
    is where that line crosses the fastest tile's time (worked by hand), 0 when the lanes layout is the
    fastest already, 1 when zeros do not help it."""
    fast = ((8, 32),)
    assert tuning.break_even([(fast, 1.0), (tuning.LANES, 2.0)], 1.0) == 0.75        # 2 - z/0.75 = 1 at z = 0.75
    assert tuning.break_even([(fast, 1.0), (tuning.LANES, 1.2)], 0.4) == pytest.approx(0.1875, abs=1e-3)  # 1.2 - 0.8 z / 0.75 = 1
    assert tuning.break_even([(tuning.LANES, 1.0), (fast, 1.1)], 0.5) == 0.0
    assert tuning.break_even([(fast, 1.0), (tuning.LANES, 1.5)], 1.6) == 1.0
    assert tuning.break_even([(fast, 1.0), (tuning.LANES, 3.0)], 2.5) == 1.0         # would cross beyond 100%


def test_the_plan_runs_the_sparse_kernel_from_the_measured_break_even(tile_cache, monkeypatch):
    """With nothing forced, conv2 of the shipped model runs the sparse kernel from the fraction of zeros measured
    for its shape on this CPU, the dense tile below it, and the plan says which threshold and where it came
    from; ECE662_SPARSE_FROM overrides it, and a bad value is refused with the fix."""
    frac, why = tuning.sparse_from(32, 14, 14, 32, 3, 3, 0)
    assert 0.0 <= frac <= 1.0 and why.startswith("the break-even measured on ")

    def conv2_kernel(zeros):
        model = load_model()
        prune.l1_unstructured(model.conv2, "weight", amount=zeros)
        return model.plan((3, 32, 32)).steps[1].kernel
    if frac >= 0.05:
        k = conv2_kernel(frac - 0.05)
        assert k.version == "v7" and f"fewer than {frac:.0%} (the break-even measured on" in k.reason
    if frac <= 0.95:
        k = conv2_kernel(frac + 0.05)
        assert k.version == "sparse" and f"(>= {frac:.0%}, the break-even measured on" in k.reason
    monkeypatch.setenv("ECE662_SPARSE_FROM", "1")
    assert conv2_kernel(0.9).version == "v7"
    monkeypatch.setenv("ECE662_SPARSE_FROM", "0")
    assert conv2_kernel(0.0).version == "sparse"
    monkeypatch.setenv("ECE662_SPARSE_FROM", "lots")
    with pytest.raises(ValueError, match=r"ECE662_SPARSE_FROM: a fraction of zero weights in \[0, 1\].*'lots'"):
        conv2_kernel(0.5)


def test_the_cache_is_keyed_by_the_cpu_numba_compiles_for(monkeypatch):
    """NUMBA_CPU_NAME and NUMBA_CPU_FEATURES change the code Numba makes, each on its own: each changes the key."""
    host = tuning.cpu_key()
    tuning.cpu_key.cache_clear()
    try:
        monkeypatch.setattr(numba.config, "CPU_FEATURES", "+avx2,+fma,-avx512f")
        features_only = tuning.cpu_key()
        tuning.cpu_key.cache_clear()
        monkeypatch.setattr(numba.config, "CPU_NAME", "haswell")
        monkeypatch.setattr(numba.config, "CPU_FEATURES", "")
        haswell = tuning.cpu_key()
    finally:
        tuning.cpu_key.cache_clear()
    assert haswell.startswith("haswell-") and len({host, features_only, haswell}) == 3


def test_a_threshold_is_a_fraction_with_its_reason(monkeypatch):
    """choose_conv_kernel's threshold is checked; kernels='dense' makes no sparse decision, so a bad
    ECE662_SPARSE_FROM does not stop it."""
    from ece662.layers.kernel_choice import choose_conv_kernel
    w = np.zeros((4, 2, 3, 3), np.float32)
    for bad in (0.3, (float("nan"), "x"), (1.5, "x"), (True, "x")):
        with pytest.raises(ValueError, match="threshold must be \\(fraction of zero weights in \\[0, 1\\], reason\\)"):
            choose_conv_kernel("auto", w, 1, True, bad)
    assert choose_conv_kernel("auto", w, 1, True, (0.5, "a test"))[0] == "sparse"
    monkeypatch.setenv("ECE662_SPARSE_FROM", "lots")
    assert choose_conv_kernel("dense", w, 1, True)[0] == "v7"


def test_a_first_measurement_shares_the_compiling_with_a_helper_process(tmp_path):
    """On a new machine (empty Numba cache) a second process compiles part of the candidates into the cache,
    and this process loads that part from there instead of compiling it (``tuning._warm_up``).  The choice
    is one of the candidates either way."""
    if os.environ.get("NUMBA_DISABLE_JIT") == "1":
        pytest.skip("nothing is compiled without the JIT")
    if tuning.usable_cores() < 2:
        pytest.skip("the helper runs only with a second core")
    code = """
import json
from ece662.layers import tuning
ranked, warm, probe, helped = tuning.measure(3, 8, 8, 24, 3, 3, 1, rounds=1)
kernels = tuning.kernels_of(tuning.candidates(24))
mine, theirs = tuning.split_for_helper(kernels)
def stats(k):
    d = tuning.dispatcher(k)
    return [sum(d.stats.cache_hits.values()), sum(d.stats.cache_misses.values())]
print(json.dumps({"theirs": {str(k): stats(k) for k in theirs}, "mine": {str(k): stats(k) for k in mine},
                  "best": str(ranked[0][0]), "helped": helped}))
"""
    env = dict(os.environ, PYTHONPATH=REPO, NUMBA_CACHE_DIR=str(tmp_path / "numba"))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=900)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.splitlines()[-1])
    assert out["helped"] and out["theirs"], out
    assert all(hits > 0 and misses == 0 for hits, misses in out["theirs"].values()), \
        f"the helper's share was compiled here, not (only) loaded from the cache: {out}"
    assert all(hits == 0 for hits, _ in out["mine"].values()), \
        f"this process's share came from a cache it had no way to fill: {out}"
    assert out["best"] in {str(t) for t in tuning.candidates(24)}


def test_the_compile_helper_deals_the_largest_kernels_out_first():
    kernels = tuning.kernels_of(tuning.candidates(32) + [tuning.PROBE])
    assert sorted(map(str, kernels)) == sorted(map(str, list(tile_source.TILES) + [tuning.LANES]))
    mine, theirs = tuning.split_for_helper(kernels)
    assert sorted(map(str, mine + theirs)) == sorted(map(str, kernels)) and not set(map(str, mine)) & set(map(str, theirs))
    cost = lambda ks: sum(256 if k == tuning.LANES else k[0] * k[1] for k in ks)
    assert abs(cost(mine) - cost(theirs)) <= 64       # the two finish about together


def test_a_stuck_compile_helper_is_stopped_and_its_share_compiled_here(monkeypatch):
    """A helper that never finishes delays the first measurement by about this process's own share, not
    indefinitely, and is not left running; every layout still runs (here)."""
    import time
    started = []

    def stuck(kernels):
        started.append(subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"]))
        return started[-1]
    monkeypatch.setattr(tuning, "compile_in_helper", stuck)
    monkeypatch.setattr(tuning, "_never_compiled", lambda kernels: True)
    monkeypatch.setattr(tuning, "compile_kernels", lambda kernels: time.sleep(tuning.WARM_COMPILE + 0.2))
    ran = []
    t0 = time.perf_counter()
    seconds, helped = tuning._warm_up([((8, 8),), tuning.LANES], ran.append)
    assert time.perf_counter() - t0 < 30 and not helped
    assert started and started[0].poll() is not None, "the stuck helper was left running"
    assert ran == [((8, 8),), tuning.LANES]


def test_the_compile_helper_does_not_import_from_the_current_folder(tmp_path, monkeypatch):
    """A ``numpy.py`` in the folder a student runs from cannot run in the helper (it imports what this process
    imported, isolated from the current folder and from PYTHONPATH)."""
    if os.environ.get("NUMBA_DISABLE_JIT") == "1":
        pytest.skip("nothing is compiled without the JIT")
    if tuning.usable_cores() < 2:
        pytest.skip("the helper runs only with a second core")
    marker = tmp_path / "imported"
    (tmp_path / "numpy.py").write_text(f"open({str(marker)!r}, 'w').close()\nraise SystemExit(3)\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    helper = tuning.compile_in_helper([(8, 8)])
    assert helper is not None
    assert helper.wait(timeout=600) == 0 and not marker.exists()


@requires_x86
def test_the_pipeline_without_ssa_compiles_the_same_instructions(tmp_path):
    """``numba_pipeline.WithoutSSA`` only saves compile time: the 4x16 tile compiled with Numba's full pipeline
    and without its two SSA passes gives the same instructions in the same order (mnemonics; registers may be
    named differently) and the same bits.  Compiled afresh in a subprocess, from two scratch modules."""
    if os.environ.get("NUMBA_DISABLE_JIT") == "1":
        pytest.skip("no machine code without the JIT")
    source = tile_source.HEADER + tile_source.tile_kernel_source(4, 16)
    for name, text in (("with_ssa", source.replace(", pipeline_class=WithoutSSA", "")), ("without_ssa", source)):
        assert text.count("pipeline_class=WithoutSSA") == (name == "without_ssa")
        (tmp_path / f"{name}.py").write_text(text.replace("cache=True", "cache=False"), encoding="utf-8")
    code = """
import json, re, sys
import numpy as np, numba
sys.path.insert(0, sys.argv[1])
import with_ssa, without_ssa
from ece662.layers import functional as fn
numba.config.SLP_VECTORIZE = 1
rng = np.random.default_rng(0)
x = rng.standard_normal((2, 3 * 10 * 10)).astype(np.float32)
offs = fn.tap_offsets(3, 3, 3, 10, 10)
wp = rng.standard_normal((27, 2, 16)).astype(np.float32); bp = rng.standard_normal((2, 16)).astype(np.float32)
result = {}
for m in (with_ssa, without_ssa):
    out = np.zeros((2, 32, 4, 4), np.float32)
    m.images_4x16(x, offs, 10, wp, bp, 0, 32, np.empty(16, np.float32), 0, 2, out)
    asm = m.images_4x16.inspect_asm(m.images_4x16.signatures[0])
    ops = [line.split()[0] for line in asm.splitlines() if line.startswith("\\t") and not line.strip().startswith(".")]
    result[m.__name__] = [ops, out.tolist()]
print(json.dumps(result))
"""
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=600,
                       env=dict(os.environ, PYTHONPATH=REPO))
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    (ops_ssa, out_ssa), (ops_no, out_no) = result["with_ssa"], result["without_ssa"]
    assert len(ops_ssa) > 100 and ops_ssa == ops_no
    assert out_ssa == out_no


def test_the_shorter_pipeline_falls_back_to_numbas_own_with_a_warning(monkeypatch):
    """Should a Numba version not run the two SSA passes where ``WithoutSSA`` expects them, the tiles still
    compile (with Numba's full pipeline) and a warning says their first use takes longer."""
    if os.environ.get("NUMBA_DISABLE_JIT") == "1":
        pytest.skip("nothing is compiled without the JIT")
    from ece662.layers import numba_pipeline

    class NotInThePipeline:
        pass
    monkeypatch.setattr(numba_pipeline, "ReconstructSSA", NotInThePipeline)
    monkeypatch.setattr(numba_pipeline, "_warned", [])

    def add_up(a):
        s = np.float32(0.0)
        for v in a:
            s += v
        return s
    with pytest.warns(RuntimeWarning, match="full pipeline"):
        total = numba.njit(pipeline_class=numba_pipeline.WithoutSSA)(add_up)(np.arange(5, dtype=np.float32))
    assert total == 10.0
