"""A shorter Numba pipeline for the unrolled register tiles: the same machine code, compiled in two thirds of the time.

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
same instructions (compared instruction by instruction for the 8x32 and 4x16 tiles) and return the same
bits (``tests/layers/test_tiles.py`` checks every tile against the reference, and the assembly).  Numba's
front end worked without SSA until 2020; it added the form so that its analyses of branches, literals and
inlined calls see one definition per variable, and the tiles use none of those (one loop, float sums).

Use it as ``@njit(cache=True, pipeline_class=WithoutSSA)``.  If another Numba version moves the two passes,
:data:`WithoutSSA` is Numba's own pipeline and a warning says the tiles compile the slow way.
"""
import warnings

from numba.core.compiler import Compiler, CompilerBase, DefaultPassBuilder

try:
    from numba.core.typed_passes import PreLowerStripPhis
    from numba.core.untyped_passes import ReconstructSSA
except ImportError as e:                   # another Numba: keep its own pipeline
    warnings.warn(f"ece662: the tiles are compiled with Numba's full pipeline ({e!r}); their first use takes "
                  f"longer", RuntimeWarning)
    WithoutSSA = Compiler
else:
    class WithoutSSA(CompilerBase):
        """Numba's nopython pipeline without ``ReconstructSSA`` and ``PreLowerStripPhis`` (see the module)."""

        SKIPPED = (ReconstructSSA, PreLowerStripPhis)

        def define_pipelines(self):
            pipeline = DefaultPassBuilder.define_nopython_pipeline(self.state)
            pipeline.passes = [(p, why) for p, why in pipeline.passes if p not in self.SKIPPED]
            pipeline.finalize()
            return [pipeline]
