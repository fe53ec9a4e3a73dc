"""The README and its pages are checked, not trusted: their examples run, their links resolve, and the sweep
page's section is generated from a real run.

``scripts/make_readme_results.py`` runs the sweeps the README shows, stores what they printed and their
records in ``docs/readme_results.json`` and writes the generated section of ``docs/sweep.md`` from that file.
These tests re-render the section from the same file and compare it with the page character for character,
so every number in its prose and its sample output is the one the run produced.
"""
import importlib.util
import json
import os
import re

import pytest
from helpers import REPO

ROOT = REPO
RESULTS = os.path.join(ROOT, "docs", "readme_results.json")


# the front door and the pages it links to; the Python blocks of those marked True run (in this order)
PAGES = {"README.md": True, "docs/sweep.md": True, "docs/course-port.md": True, "docs/own-models.md": False,
         "docs/schedules.md": False, "docs/speed.md": False, "docs/allocation.md": False, "docs/compression.md": False,
         "docs/methods.md": False, "ARCHITECTURE.md": False}


def _page(name):
    with open(os.path.join(ROOT, name), encoding="utf-8") as f:
        return f.read()


def _readme():
    return _page("README.md")


def _script(name):
    """The script ``scripts/<name>.py`` as a module (its ``render`` and markers)."""
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "scripts", name + ".py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def script():
    return _script("make_readme_results")


@pytest.fixture(scope="module")
def results():
    with open(RESULTS) as f:
        return json.load(f)


def _section(script, page="docs/sweep.md"):
    text = _page(page)
    assert text.count(script.BEGIN) == 1 and text.count(script.END) == 1, "the generated section's markers"
    return text.split(script.BEGIN, 1)[1].split(script.END, 1)[0].strip("\n")


def test_sweep_section_is_exactly_what_the_results_file_renders(script, results):
    """Every number in the section (prose and sample output) comes from docs/readme_results.json."""
    section = _section(script)
    expected = script.render(results)
    assert section == expected, ("docs/sweep.md's generated section differs from docs/readme_results.json: run "
                                 "`python scripts/make_readme_results.py --render` (or without --render to re-measure)")


def test_results_file_is_one_real_run(results):
    """The sample output is the default command's, into the default folder, and agrees with its records."""
    plain = results["plain"]
    assert plain["command"] == "python -m ece662 sweep"
    lines = plain["stdout"].splitlines()
    assert lines[-1].startswith("wrote runs/sweep/: ")
    seconds = float(re.search(r" in ([\d.]+) s$", lines[-1]).group(1))
    assert 0 < seconds <= plain["seconds"]
    assert f"unpruned test accuracy: {plain['records'][0]['accuracy']:.4f}" in lines
    rows = [line.split() for line in lines if line.split() and line.split()[0] in
            ("none", "global_l1_unstructured", "l2_structured_filters")]
    assert len(rows) == len(plain["records"])
    for row, rec in zip(rows, plain["records"]):       # the table and results.json are the same run
        assert row[0] == rec["method"] and row[3] == f"{rec['accuracy']:.4f}"
        low, high = ("speedup_low", "speedup_high") if "speedup_low" in rec else ("speedup_iqr_low", "speedup_iqr_high")
        assert f"{rec['speedup']:.2f}x" in row and f"{rec[low]:.2f}-{rec[high]:.2f}" in row
    assert "machine" in plain and plain["machine"]


def test_every_quoted_accuracy_in_the_readme_matches_the_run(results):
    """`Test Acc: 0.xxxx` anywhere in the README or its pages is the unpruned accuracy of the recorded run."""
    acc = f"{results['plain']['records'][0]['accuracy']:.4f}"
    quoted = [q for name in PAGES for q in re.findall(r"Test Acc: (0\.\d{4})", _page(name))]
    assert quoted and set(quoted) == {acc}


def test_readme_is_a_short_front_door():
    """The README is read first: under 150 lines, and it links every page (the rest lives in docs/)."""
    text = _readme()
    assert len(text.splitlines()) < 150
    for name in PAGES:
        assert name == "README.md" or f"]({name})" in text, f"the README does not link {name}"


@pytest.mark.parametrize("name", sorted(PAGES))
def test_links_and_figures_resolve(name):
    """Every relative link of a page names a file that exists (figures: a real image, not a stub)."""
    here = os.path.dirname(os.path.join(ROOT, name))
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", _page(name))
    for link in links:
        if "://" in link:
            continue
        path = os.path.normpath(os.path.join(here, link))
        assert os.path.exists(path), f"{name} links {link}, which does not exist"
        if link.endswith(".png"):
            assert os.path.getsize(path) > 10_000, link


def test_readme_python_blocks_run(real_data, monkeypatch, capsys, results):
    """Every ```python block of the README and of its runnable pages executes without error, in order,
    in one namespace, from the repository root (as a student runs them)."""
    monkeypatch.setenv("ECE662_DATA", real_data)
    monkeypatch.chdir(ROOT)
    namespace, ran = {}, 0
    for name, runnable in PAGES.items():
        if runnable:
            for block in re.findall(r"```python\n(.*?)```", _page(name), flags=re.S):
                exec(compile(block, name, "exec"), namespace)
                ran += 1
    assert ran >= 3, "the README and its pages have too few Python examples"
    assert f"Test Acc: {results['plain']['records'][0]['accuracy']:.4f}" in capsys.readouterr().out


def test_schedule_comparison_numbers_are_the_recorded_run():
    """Every accuracy and the time quoted in docs/schedules.md's comparison come from
    docs/compare_schedules.json, and the command shown is the one that made it."""
    with open(os.path.join(ROOT, "docs", "compare_schedules.json")) as f:
        run = json.load(f)
    text = _page("docs/schedules.md")
    section = text[:text.index("Shipped pruned models, made")]
    recorded = {f"{r['accuracy']:.4f}" for r in run["records"]}
    quoted = re.findall(r"\b0\.\d{4}\b", section)
    assert quoted and set(quoted) <= recorded, sorted(set(quoted) - recorded)
    assert f"{run['seconds']:,.0f} s" in section
    shown = re.search(r"```bash\n(python -m ece662 compare [^\n]*)\n```", section).group(1)
    # the recorded run was made with `python -m ece662.recipes`, which `compare` replaced, and an explicit --data
    options = re.sub(r"^python -m ece662(\.recipes| compare) ", "", run["command"])
    options = re.sub(r"--data \S+ ?", "", options).split()
    assert shown.split()[4:] == options, (shown, run["command"])


def test_ci_runs_the_readmes_own_commands_first():
    """CI's first step is the README's first command block, line for line, before it installs any oracle:
    what a newcomer types is what CI proves (issue 19: CI once installed extras the README did not name)."""
    block = re.search(r"```bash\n(.*?)```", _readme(), re.S).group(1)
    commands = [line.split("#")[0].strip() for line in block.splitlines() if line.split("#")[0].strip()]
    assert any("pytest" in c for c in commands) and any("pip install" in c for c in commands), commands
    with open(os.path.join(ROOT, ".ci", "run"), encoding="utf-8") as f:
        ci = [line.strip() for line in f if line.strip() and not line.lstrip().startswith("#")]
    first_extra = next(i for i, line in enumerate(ci) if "oracle" in line)
    step1 = [line for line in ci[:first_extra] if line in commands]
    assert step1 == commands, f".ci/run's first step runs {step1}, the README says {commands}"


def test_allocation_page_is_its_recorded_run():
    """docs/allocation.md's table is rendered from docs/allocation.json, and every accuracy its prose quotes is
    one of that run's."""
    module = _script("compare_allocation")
    with open(os.path.join(ROOT, "docs", "allocation.json")) as f:
        run = json.load(f)
    text = _page("docs/allocation.md")
    section = _section(module, "docs/allocation.md")
    assert section == module.render(run), "run `python scripts/compare_allocation.py --render`"
    at = module.summary(run)
    recorded = ({f"{v:.4f}" for r in at.values() for k, v in r.items() if k in ("oneshot", "mean", "low", "high")}
                | {f"{run['dense_accuracy']:.4f}"})
    # the differences the prose quotes: between two methods at the same sparsity, before or after fine-tuning
    recorded |= {f"{abs(a[k] - b[k]):.4f}" for (_, s), a in at.items() for (_, t), b in at.items()
                 for k in ("oneshot", "mean") if s == t}
    quoted = set(re.findall(r"\b0\.\d{4}\b", text.replace(section, "")))
    assert quoted and quoted <= recorded, sorted(quoted - recorded)
    assert run["seeds"] == [0, 1, 2] and {r["n"] for r in at.values()} == {3}
    assert {s for _, s in at} >= {0.8, 0.9, 0.95, 0.98}
    assert {r["method"] for r in run["records"]} == {"global", "lamp", "erk", "uniform"}


def test_speed_page_quotes_the_recorded_v7_run():
    """Every ratio and percentage docs/speed.md gives for kernel v7 is in benchmarks/RESULTS.md's kernel v7
    section, which holds the benchmark's own output: the page cannot drift from the measurement."""
    import re
    page = _page("docs/speed.md")
    claim = page[page.index("**Kernel v7 measures its tile"):]
    claim = claim[:claim.index("\n- ")]
    results = _page("benchmarks/RESULTS.md")
    section = results[results.index("kernel v7, the tile measured per CPU"):]
    section = section[:section.index("\n## ")]
    numbers = re.findall(r"\d+\.\d+x|\d+%", claim)
    assert len(numbers) >= 10
    missing = [n for n in numbers if n not in section]
    assert not missing, f"docs/speed.md quotes {missing} for kernel v7, which benchmarks/RESULTS.md does not record"


def test_methods_page_is_its_recorded_run():
    """docs/methods.md's generated section is what scripts/compare_methods.py renders from docs/methods.json; the
    command shown is the one recorded; every accuracy the prose around it quotes (a mean, a seed's extreme, or
    the difference of two means at one sparsity) is one of that run's."""
    module = _script("compare_methods")
    with open(os.path.join(ROOT, "docs", "methods.json")) as f:
        run = json.load(f)
    text = _page("docs/methods.md")
    section = _section(module, "docs/methods.md")
    assert section == module.render(run), "run `python scripts/compare_methods.py`"
    assert re.search(r"```bash\n(python -m ece662 compare [^\n]*)\n```", text).group(1) == run["command"]
    rows = run["summary"]
    recorded = {f"{r[k]:.4f}" for r in rows for k in ("mean", "low", "high")}
    recorded |= {f"{abs(a['mean'] - b['mean']):.4f}" for a in rows for b in rows
                 if a["sparsity"] == b["sparsity"] or b["method"] in ("dense", "dense-scratch")}
    quoted = set(re.findall(r"\b0\.\d{4}\b", text.replace(section, "")))
    assert quoted <= recorded, sorted(quoted - recorded)
    assert {r["method"] for r in run["records"]} >= {"snip", "synflow", "random", "gradual", "rigl", "set",
                                                     "one-shot", "iterative", "lottery", "rewind", "small-dense",
                                                     "dense-scratch"}
    assert {r["n"] for r in rows if r["method"] != "dense"} == {3}
