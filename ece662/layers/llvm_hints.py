"""One hint to LLVM, for the register tiles: load each input with a broadcast, not with a gather.

A tile's inner loop, per tap, loads one row of weights (a vector: 16 or 32 filters) and P scalar inputs,
one per output position, and does P x lanes multiply-adds: every input is *broadcast* across a vector
register and multiplied into that position's accumulators.  The fastest way to do it on x86 is a
broadcast load straight from memory (``vbroadcastss (mem), %zmm``), which runs in the load unit.

On CPUs with AVX-512, LLVM's SLP vectoriser sees that the P inputs are P loads from one base at
different offsets and packs them into one *gather* instruction, then takes the vector apart again,
lane by lane, with a dozen shuffles to make the P broadcasts.  On AMD Zen 4 the shuffles share the
execution ports of the multiply-adds, and every tile ran 1.6-3.0x slower than the same tile with
broadcast loads (``python benchmarks/bench_hint.py``; ``benchmarks/RESULTS.md``, "Broadcast loads instead
of a gather").  On an AVX2 CPU LLVM already prefers the broadcasts, so the hint changes nothing there.

The hint is the target feature ``prefer-no-gather`` (what clang's ``-mno-gather`` sets), attached to
one function only: the feature string of the function that calls :func:`prefer_broadcast_loads` becomes
Numba's own (its CPU's features, or ``NUMBA_CPU_FEATURES``) plus ``+prefer-no-gather``.  It chooses among
instructions the CPU has; it cannot make code the CPU cannot run, and it changes no result (the same
multiply-adds in the same order).  ``llvmlite`` checks function attributes against a fixed list that
lacks LLVM's string attributes, so the attribute is added to the set directly, as LLVM IR text.

With ``NUMBA_DISABLE_JIT=1`` the kernels run as Python and the hint is a function that does nothing.  The hint
reaches into two details of Numba and llvmlite (the codegen's feature string, the attribute set); should another
version change them, the tiles compile without it and a warning says so.
"""
import warnings

import numba
from numba import types
from numba.extending import intrinsic

NO_GATHER = "+prefer-no-gather"


def function_features(numba_features):
    """The feature string for a hinted function, from Numba's own (``''`` when Numba names none).

    Examples
    --------
    >>> function_features("+avx2,+fma")
    '+avx2,+fma,+prefer-no-gather'
    >>> function_features("")
    '+prefer-no-gather'
    """
    return ",".join(f for f in (numba_features, NO_GATHER) if f)


if numba.config.DISABLE_JIT:
    def prefer_broadcast_loads():
        """Nothing to hint: the kernels run as plain Python."""
        return None
else:
    @intrinsic
    def prefer_broadcast_loads(typingctx):
        """Call first thing in a jitted kernel: LLVM compiles that kernel with ``+prefer-no-gather``."""
        def codegen(context, builder, signature, args):
            try:
                numba_features = context.codegen().magic_tuple()[2]
                attribute = f'"target-features"="{function_features(numba_features)}"'
                set.add(builder.function.attributes, attribute)   # see the module's docstring
            except (AttributeError, IndexError, TypeError) as e:  # another Numba / llvmlite: compile without
                warnings.warn(f"ece662: the tiles are compiled without their compiler hint ({e!r}); they may "
                              f"run at half speed on AVX-512 CPUs", RuntimeWarning)
            return context.get_dummy_value()
        return types.none(), codegen
