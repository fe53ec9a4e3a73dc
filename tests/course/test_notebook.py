"""The course's notebooks run top to bottom on the small real data: the students' notebook
(notebooks/Pruning.ipynb) leaves the answers to them, and the solutions notebook (Pruning_solutions.ipynb, from which
the first is built) computes its reference answers from its own numbers."""
import os
import re

import pytest
from helpers import REPO

ROOT = REPO
NOTEBOOK = os.path.join(ROOT, "notebooks", "Pruning_solutions.ipynb")
ASSIGNMENT = os.path.join(ROOT, "notebooks", "Pruning.ipynb")

QUESTION_1 = "What happened with the accuracy as the % of pruning increased? Why was that the case?"
QUESTION_2 = ("What is the difference between performing Structured Pruning vs Dropout? Why would it be "
              "beneficial to perform both techniques when developing a Neural Network?")
REMARK = ("can be performed during the end of an epoch of training or after training is complete. "
          "Experimenting to find out which way works the best is part of the fun")


def _markdown(nb):
    return [" ".join("".join(c.source).split()) for c in nb.cells if c.cell_type == "markdown"]


@pytest.mark.parametrize("path", [NOTEBOOK, ASSIGNMENT])
def test_course_questions_and_remark_are_kept_word_for_word(path):
    import nbformat
    text = "\n".join(_markdown(nbformat.read(path, as_version=4)))
    assert f"**Question 1**: {QUESTION_1}" in text
    assert f"**Question 2**: {QUESTION_2}" in text
    assert REMARK in text


@pytest.mark.parametrize("path", [NOTEBOOK, ASSIGNMENT])
def test_markdown_cells_hold_no_typed_results(path):
    """Measured numbers (accuracies such as 0.6446, speedups such as 2.1x) appear only in computed output."""
    import nbformat
    for cell in _markdown(nbformat.read(path, as_version=4)):
        assert not re.search(r"\b0\.\d{3,}", cell), cell
        assert not re.search(r"\d\.\d+x", cell), cell
        assert "silences every weight" not in cell


def test_the_assignment_is_built_from_the_solutions_and_holds_no_answer():
    """notebooks/Pruning.ipynb is exactly what scripts/make_assignment_notebook.py makes of the solutions: every
    solution cell replaced by its guiding prompts and an empty answer cell, every experiment kept."""
    import json
    import subprocess
    import sys
    r = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "make_assignment_notebook.py"), "--check"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    sol, ass = (json.load(open(p, encoding="utf-8")) for p in (NOTEBOOK, ASSIGNMENT))
    solutions = [c for c in sol["cells"] if "solution" in c["metadata"].get("tags", [])]
    assert len(solutions) == 4
    code = lambda nb: ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"]
    assert code(ass) == [s for s in code(sol) if s not in ["".join(c["source"]) for c in solutions]]
    text = "\n".join("".join(c["source"]) for c in ass["cells"] if c["cell_type"] == "markdown")
    assert text.count("**Your answer:**") == 4 and text.count("**Guiding prompts**") == 4
    assert "**Answer**" not in json.dumps(ass) and "display(Markdown" not in json.dumps(ass)


def _execute(path, real_data, tmp_path_factory):
    import nbformat                     # in the [test] extra
    from nbclient import NotebookClient
    env = {"ECE662_NOTEBOOK_DATA": os.path.join(real_data, "cifar10_real_small.npz"),
           "ECE662_NOTEBOOK_FINETUNE_IMAGES": "500", "ECE662_NOTEBOOK_SEEDS": "2",
           "ECE662_CACHE": str(tmp_path_factory.mktemp("cache"))}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        nb = nbformat.read(path, as_version=4)
        NotebookClient(nb, timeout=600, kernel_name="python3",
                       resources={"metadata": {"path": str(tmp_path_factory.mktemp("nb"))}}).execute()
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return nb


@pytest.fixture(scope="module")
def executed(real_data, tmp_path_factory):
    return _execute(NOTEBOOK, real_data, tmp_path_factory)


@pytest.fixture(scope="module")
def executed_assignment(real_data, tmp_path_factory):
    return _execute(ASSIGNMENT, real_data, tmp_path_factory)


def test_the_assignment_runs_its_experiments_and_writes_no_answer(executed_assignment):
    out = _outputs(executed_assignment)
    assert re.search(r"Test Acc: 0\.7\d{3}", out) and "masked weights still zero: True" in out
    assert re.search(r"Dropout2d p=0\.2: 0% filters pruned 0\.\d{4}", out)
    assert "**Answer**" not in out and "**During vs after**" not in out


def _outputs(nb):
    texts = []
    for c in nb.cells:
        for o in c.get("outputs", []) if c.cell_type == "code" else []:
            texts.append(o.get("text", ""))
            texts.append(o.get("data", {}).get("text/markdown", ""))
            texts.append(o.get("data", {}).get("text/plain", ""))
    return "\n".join(texts)


def test_notebook_executes_and_answers_from_its_own_numbers(executed):
    """Every cell runs; each answer quotes the numbers printed above it, from this run."""
    out = _outputs(executed)
    acc = re.search(r"Test Acc: (0\.\d{4})", out).group(1)     # the shipped model on the small test split
    assert acc.startswith("0.7")
    answers = [o.get("data", {}).get("text/markdown", "") for c in executed.cells if c.cell_type == "code"
               for o in c.get("outputs", [])]
    answers = [a for a in answers if a.strip()]
    assert len(answers) == 4          # question 1, during vs after, question 2, before / during / after
    assert f"unpruned accuracy {acc}" in " ".join(answers[0].split())
    # the control runs: the 50% per-layer L1 / random accuracies printed are the ones the answer quotes
    l1, rnd = re.search(r"50% of every layer: L1 (0\.\d{4}), random (0\.\d{4})", out).groups()
    assert f"gives {l1}" in " ".join(answers[0].split()) and f"gives {rnd}" in " ".join(answers[0].split())
    during = re.search(r"during: 3 rounds of prune \+ 1 epoch: (0\.\d{4})", out).group(1)
    assert during in answers[1]
    drop = re.search(r"Dropout2d p=0\.2: 0% filters pruned (0\.\d{4})", out).group(1)
    assert f"with {drop}" in answers[2]                          # the absolute accuracies, mean over seeds
    assert "2 seed(s) each" in answers[2] and "beyond the larger of the seed spread" in " ".join(answers[2].split())
    assert "masked weights still zero: True" in out
    # every arm at one budget: the ticket and its controls, as printed, are what the answer quotes
    ticket, reinit, shuffled = (re.search(rf"{name} +(?:after|control): (0\.\d{{4}}) \(seeds", out).group(1)
                                for name in ("lottery", "lottery-reinit", "lottery-random-mask"))
    arms = " ".join(answers[3].split())
    assert f"lottery ticket ({ticket})" in arms and f"freshly initialised ({reinit})" in arms
    assert f"per-layer sparsity ({shuffled})" in arms and "2 seed(s)" in arms


@pytest.mark.parametrize("which", ["executed", "executed_assignment"])
def test_notebook_prints_no_warnings(which, request):
    """No TqdmWarning (or any other warning) on the notebook's stderr.  The one exception is the
    timer's "the machine is busy" warning: it tells a student the truth about their machine, and
    whether it appears depends on what else is running, not on the notebook."""
    executed = request.getfixturevalue(which)
    err = "".join(o.get("text", "") for c in executed.cells if c.cell_type == "code"
                  for o in c.get("outputs", []) if o.get("name") == "stderr")
    warned = re.findall(r"(\w*Warning): ([^\n]*)", err)
    other = [w for w in warned if not (w[0] == "RuntimeWarning" and w[1].startswith("the machine is busy"))]
    assert not other and "IProgress" not in err, err
