"""Read LLVM's assembly for vectorisation, whatever the CPU: the tests that prove a tile is packed count
multiply-add *lanes*, so a 4 x 16 tile passes as eight 8-lane ``ymm`` FMAs on AVX2 and as four 16-lane ``zmm``
FMAs (often with an embedded broadcast, ``(%rax){1to16}``) on AVX-512 alike."""
import platform
import re

import pytest

LANES = {"x": 4, "y": 8, "z": 16}   # float32 lanes of an xmm / ymm / zmm register
# AT&T syntax: the destination is the last operand, optionally followed by a write mask such as {%k1}{z}
_PACKED = re.compile(r"^\s*vf(?:n?m(?:add|sub)|maddsub|msubadd)\w*ps\s[^\n]*%([xyz])mm\d+(?:\s*\{[^}\n]*\})*\s*$",
                     re.M)
_SCALAR = re.compile(r"^\s*vfn?m(?:add|sub)\w*ss\s", re.M)


def fma_lanes(asm):
    """(multiply-add lanes in packed FMAs, number of scalar FMAs) in one function's assembly."""
    return sum(LANES[w] for w in _PACKED.findall(asm)), len(_SCALAR.findall(asm))

# the reader knows x86's FMA mnemonics and registers; on another ISA (aarch64's fmla, ...) the tests say so and skip
requires_x86 = pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64"),
                                  reason=f"reads x86 FMA assembly (xmm/ymm/zmm); this machine is {platform.machine()}")


def packed_widths(asm):
    """The register kinds (``'y'``, ``'z'``, ...) of the packed FMAs in ``asm``."""
    return set(_PACKED.findall(asm))


def _host_has_avx2():
    try:
        import llvmlite.binding as llvm
        return "+avx2" in llvm.get_host_cpu_features().flatten().split(",")
    except Exception:              # an llvmlite that cannot say: assume no
        return False


# The code each vectorisation test compiles: for this machine's CPU, and for an AVX2 CPU (Haswell, 16 ymm registers)
# whatever this machine is, through Numba's NUMBA_CPU_NAME: so an AVX-512 machine's run also proves the AVX2 code
# is packed, and the other way round, and CI on either kind checks both.  Running AVX2 code needs an AVX2 CPU.
TARGETS = ["host", "avx2"]


def target_env(target, cache_dir, **extra):
    """The environment of the subprocess that compiles for ``target``; skips ``'avx2'`` on a CPU without AVX2."""
    env = dict(__import__("os").environ, NUMBA_CACHE_DIR=str(cache_dir), **extra)
    if target == "avx2":
        if not _host_has_avx2():
            pytest.skip("compiling for AVX2 (Haswell) runs AVX2 code, which this CPU does not have")
        env.update(NUMBA_CPU_NAME="haswell", NUMBA_CPU_FEATURES="")    # '': Haswell's own features, no more
    return env


def check_width(target, asm):
    """AVX2 code packs into ymm registers only (it has no zmm)."""
    if target == "avx2":
        assert packed_widths(asm) == {"y"}, f"AVX2 code with packed FMAs of {sorted(packed_widths(asm))}mm registers"
