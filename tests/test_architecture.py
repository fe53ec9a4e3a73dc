"""The house has floors, and imports only look down.

ece662 is a stack of layers (ARCHITECTURE.md draws it).  A module may import from a lower floor, and from
its own package; never from a higher floor, never from a sibling package on the same floor, and no two files
may import each other, directly or round a loop.  Function-local imports count the same as those at the top
of a file: an import hidden inside a function is still a dependency.  The rule is written once, as the table
below, so that the shape cannot drift without this test failing and naming the import.
"""
import ast
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(ROOT, "ece662")

# floor of each part of the package, bottom (0) to top.  A part is a subpackage or a top-level module.
FLOORS = {
    "layers": 0,          # reference twins, kernels, functional wrappers, modules, the plan
    "timing": 0,          # paired speed measurement (imports nothing of the package)
    "safezip": 0,         # zip members read without trusting their declared sizes (imports nothing of the package)
    "pruning": 1,         # masks (pure), the torch.nn.utils.prune API, shrink, report
    "data": 1,            # CINIC-10 trees, the keyed and locked cache, normalisation, the download
    "formats": 2,         # .npz, PyTorch, Keras and ONNX readers and writers, limits, atomic writes
    "training": 2,        # losses, optimizers, evaluation, the Trainer, the schedules
    "models": 3,          # default_convnet and the shipped weights
    "compress": 3,        # Deep Compression: sparse storage, weight sharing, Huffman coding, its file and table
    "io": 4,              # load_model / save_model: picks a format, nothing more
    "pruning_helper": 5,  # the course's own import paths (the façade)
    "data_utils": 5,
    "experiments": 6,     # the assignment's study: records, figures, the schedule comparison
    "plots": 7,
    "cli": 8,             # the command line
    "__main__": 9,
    "__init__": 9,        # the package's face re-exports from below
}
# files that a student can read alone: they import nothing of the package but other leaves
LEAVES = ["layers/shapes.py", "layers/kernels.py", "layers/reference.py", "layers/tile_source.py",
          "layers/kernels_tiles.py", "layers/llvm_hints.py", "layers/numba_pipeline.py", "layers/threads.py", "pruning/masks.py", "timing.py", "safezip.py", "compress/huffman.py",
          "compress/sparse_index.py", "compress/kmeans.py"]


def _modules():
    """{dotted module name: path} for every .py file of the package."""
    found = {}
    for folder, _, files in os.walk(PACKAGE):
        for f in files:
            if f.endswith(".py"):
                path = os.path.join(folder, f)
                rel = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
                found[rel[:-len(".__init__")] if rel.endswith(".__init__") else rel] = path
    return found


def _imports(path, modules):
    """The package's modules that the file at ``path`` imports (anywhere in it), with line numbers."""
    tree = ast.parse(open(path, encoding="utf-8").read(), path)
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            # `from ece662.layers import plan` imports the module ece662.layers.plan
            names = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module
                     for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            raise AssertionError(f"{path}:{node.lineno}: a relative import; the package spells its imports out")
        else:
            continue
        for name in names:
            while name and name not in modules and "." in name:
                name = name.rsplit(".", 1)[0]
            if name in modules:
                out.append((name, node.lineno))
    return out


def _part(module):
    """'ece662.layers.plan' -> 'layers'; 'ece662.cli' -> 'cli'; 'ece662' -> '__init__'."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


MODULES = _modules()
GRAPH = {m: _imports(p, MODULES) for m, p in MODULES.items()}


def test_every_part_has_a_floor():
    """A new subpackage or top-level module is placed in the table, on purpose."""
    missing = sorted({_part(m) for m in GRAPH} - set(FLOORS))
    assert not missing, f"add {missing} to FLOORS in tests/test_architecture.py (and to ARCHITECTURE.md)"


def test_imports_only_look_down():
    """No import climbs to a higher floor or crosses to a sibling part on the same floor."""
    bad = []
    for m, imports in GRAPH.items():
        for target, line in imports:
            a, b = _part(m), _part(target)
            if a != b and FLOORS[b] >= FLOORS[a] and m != "ece662":
                bad.append(f"{os.path.relpath(MODULES[m], ROOT)}:{line}: {m} ({a}, floor {FLOORS[a]}) imports "
                           f"{target} ({b}, floor {FLOORS[b]})")
    assert not bad, "imports that run up or sideways:\n" + "\n".join(bad)


def test_no_two_files_import_each_other():
    """No loop of imports between files, inside a package or across packages."""
    state, stack, loops = {}, [], []

    def visit(m):
        state[m] = "open"
        stack.append(m)
        for target, _ in GRAPH[m]:
            if target == m or target == "ece662":
                continue
            if state.get(target) == "open":
                loop = " -> ".join(stack[stack.index(target):] + [target])
                if loop not in loops:
                    loops.append(loop)
            elif target not in state:
                visit(target)
        stack.pop()
        state[m] = "done"

    for m in sorted(GRAPH):
        if m not in state:
            visit(m)
    assert not loops, "import loops:\n" + "\n".join(loops)


@pytest.mark.parametrize("leaf", LEAVES)
def test_leaves_import_nothing_of_the_package(leaf):
    """The files a student reads first stand alone."""
    module = "ece662." + leaf[:-3].replace("/", ".")
    leaves = {"ece662." + other[:-3].replace("/", ".") for other in LEAVES}
    others = [t for t, _ in GRAPH[module] if t not in leaves]
    assert not others, f"{leaf} imports {others}"


def test_no_private_name_crosses_a_module():
    """`from ece662.x import _name` ties two files by a detail: a shared helper is public in its own file."""
    bad = []
    for m, path in MODULES.items():
        for node in ast.walk(ast.parse(open(path, encoding="utf-8").read())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("ece662"):
                bad += [f"{path}:{node.lineno}: {a.name} from {node.module}" for a in node.names
                        if a.name.startswith("_") and not a.name.startswith("__")]
    assert not bad, "private names imported across modules:\n" + "\n".join(bad)
