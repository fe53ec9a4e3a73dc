"""A shorter Numba pipeline for the unrolled register tiles: the same machine code, compiled sooner.

Every CPU compiles every tile once, on first use, before it can time them (``tuning.py``), so a tile's
compile time is part of what a student waits for.  Most of it is not LLVM's: a tile of 8 positions x 32
filters has 256 running sums, each a Python variable assigned in the loop over taps, and Numba's own front
end spends a third of the compile on two passes about those variables (measured on Zen 4, the 8x32 body,
``get_metadata(sig)['pipeline_times']``: 3.8 s in all, of which ``ReconstructSSA`` 0.7 s and
``PreLowerStripPhis`` 0.5 s):

* ``ReconstructSSA`` gives every assignment its own version of the variable and joins them with phi nodes
  at the loop's head: 256 phis, built by a walk over the whole function per variable;
* ``PreLowerStripPhis`` takes the phis out again before lowering, as copies.

Numba lowers every variable to a stack slot and LLVM's ``mem2reg`` builds its own SSA form from those
slots, so the machine code does not depend on Numba's: without the two passes the tiles compile to the
same instructions (the 8x32 and 4x16 tiles' mnemonics compared in order: identical) and return the same
bits (``tests/layers/test_tiles.py`` checks every tile against the reference, and the assembly).  Numba's
front end worked without SSA until 2020; it added the form so that its analyses of branches, literals and
inlined calls see one definition per variable, and the tiles need none of them (plain loops over float sums,
no branch on a literal, nothing inlined).

End to end (a fresh process each, LLVM and the ``prange`` driver of the time included) the five tiles compiled
in 13.2 s instead of 15.9 s (``python benchmarks/bench_compile.py``, Zen 4); the rest of the
saving came from running the tiles on Python threads (``threads.py``).

Use it as ``@njit(cache=True, pipeline_class=WithoutSSA)``.  If another Numba version moves or renames the
two passes, :class:`WithoutSSA` runs Numba's own pipeline and a warning says the tiles compile the slow way.
"""
import warnings

from numba.core.compiler import Compiler, CompilerBase, DefaultPassBuilder

try:
    from numba.core.typed_passes import PreLowerStripPhis
    from numba.core.untyped_passes import ReconstructSSA
except ImportError:                        # another Numba: its own pipeline (WithoutSSA says so when used)
    PreLowerStripPhis = ReconstructSSA = None

_warned = []


def _full_pipeline_warning(why):
    if not _warned:
        _warned.append(why)
        warnings.warn(f"ece662: the tiles are compiled with Numba's full pipeline ({why}); their first use takes "
                      f"longer", RuntimeWarning)


class WithoutSSA(CompilerBase):
    """Numba's nopython pipeline without ``ReconstructSSA`` and ``PreLowerStripPhis`` (see the module).  Should a
    Numba version not have both passes in its pipeline, this is Numba's own pipeline, with a warning."""

    def define_pipelines(self):
        pipeline = DefaultPassBuilder.define_nopython_pipeline(self.state)
        skipped = (ReconstructSSA, PreLowerStripPhis)
        found = [p for p, _ in pipeline.passes if p in skipped]
        if None in skipped or len(found) != 2:
            _full_pipeline_warning("its SSA passes are not where this version of ece662 expects them")
            return Compiler.define_pipelines(self)
        pipeline.passes = [(p, why) for p, why in pipeline.passes if p not in skipped]
        pipeline.finalize()
        return [pipeline]
