"""Build the students' notebook from the solutions notebook: the same experiments, no answers.

    python scripts/make_assignment_notebook.py           # writes notebooks/Pruning.ipynb
    python scripts/make_assignment_notebook.py --check   # exit 1 if notebooks/Pruning.ipynb is stale

``notebooks/Pruning_solutions.ipynb`` is the one source.  Each of its cells tagged ``solution`` (the code that
writes a reference answer) becomes, in ``notebooks/Pruning.ipynb``, the guiding prompts stored in that cell's
``assignment_prompt`` metadata and an empty answer cell for the student.  Every other cell is copied as it is,
outputs cleared, so the assignment runs the same experiments and draws the same figures.
``tests/course/test_notebook.py`` checks that the file is this script's output and executes both notebooks.
"""
import argparse
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOLUTIONS = os.path.join(ROOT, "notebooks", "Pruning_solutions.ipynb")
ASSIGNMENT = os.path.join(ROOT, "notebooks", "Pruning.ipynb")
ANSWER = "**Your answer:**\n\n*(write it here, quoting the numbers above that support it)*"


def _markdown(text, cell_id):
    lines = text.split("\n")
    return {"cell_type": "markdown", "id": cell_id, "metadata": {},
            "source": [line + "\n" for line in lines[:-1]] + [lines[-1]]}


def build(solutions):
    """The assignment notebook (a dict) from the solutions notebook (a dict)."""
    cells = []
    for i, cell in enumerate(solutions["cells"]):
        meta = cell.get("metadata", {})
        if "solution" in meta.get("tags", []):
            cells += [_markdown(meta["assignment_prompt"], f"prompt-{i}"), _markdown(ANSWER, f"answer-{i}")]
            continue
        cell = json.loads(json.dumps(cell))
        cell["metadata"] = {k: v for k, v in cell.get("metadata", {}).items() if k != "tags"}
        if cell["cell_type"] == "code":
            cell["outputs"], cell["execution_count"] = [], None
        if cell["cell_type"] == "markdown" and "".join(cell["source"]).startswith("# Pruning"):
            cell = _markdown(
                "".join(cell["source"]).split("\n\nThis is the **solutions** notebook")[0]
                + "\n\nRun every cell, read the numbers and figures, and answer the two questions in the empty cells; "
                  "the guiding prompts above each say where to look. Set `ECE662_NOTEBOOK_DATA` to a smaller `.npz` "
                  "and `ECE662_NOTEBOOK_FINETUNE_IMAGES` to fewer images for a quick run; the defaults use the "
                  "library's data lookup and 20,000 training images.", cell.get("id", "intro"))
        cells.append(cell)
    return {"cells": cells, "metadata": solutions["metadata"], "nbformat": solutions["nbformat"],
            "nbformat_minor": solutions["nbformat_minor"]}


def render(notebook):
    return json.dumps(notebook, indent=1, ensure_ascii=False) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="exit 1 if notebooks/Pruning.ipynb is not up to date")
    args = ap.parse_args()
    with open(SOLUTIONS, encoding="utf-8") as f:
        text = render(build(json.load(f)))
    if args.check:
        with open(ASSIGNMENT, encoding="utf-8") as f:
            stale = f.read() != text
        print("notebooks/Pruning.ipynb is " + ("stale: run python scripts/make_assignment_notebook.py" if stale
                                                  else "up to date"))
        sys.exit(1 if stale else 0)
    with open(ASSIGNMENT + ".tmp", "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(ASSIGNMENT + ".tmp", ASSIGNMENT)
    print(f"wrote {os.path.relpath(ASSIGNMENT, ROOT)}")


if __name__ == "__main__":
    main()
