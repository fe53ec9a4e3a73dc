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
