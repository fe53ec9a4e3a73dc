"""docs/compression.md is one recorded run of `python -m ece662 compress`: its tables are rendered from
docs/compression.json, its totals add up from the per-layer bytes, and the README quotes only its numbers."""
import importlib.util
import json
import os
import re

import pytest
from helpers import REPO

from ece662.compress.table import STAGES


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location("make_compression_page",
                                                  os.path.join(REPO, "scripts", "make_compression_page.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def run():
    with open(os.path.join(REPO, "docs", "compression.json")) as f:
        return json.load(f)


def _text(name):
    with open(os.path.join(REPO, name), encoding="utf-8") as f:
        return f.read()


def test_page_is_exactly_what_the_recorded_run_renders(script, run):
    text = _text("docs/compression.md")
    assert text.count(script.BEGIN) == 1 and text.count(script.END) == 1
    section = text.split(script.BEGIN, 1)[1].split(script.END, 1)[0].strip("\n")
    assert section == script.render(run), "run `python scripts/make_compression_page.py --render`"


def test_the_recorded_bytes_add_up(run):
    """Every total is the sum of its layers; the shared stage's bytes follow from the counts; the file read back
    was bit for bit the fine-tuned model, and scored the same."""
    assert run["dense_bytes"] == 4 * run["dense_params"]
    for rec in run["records"]:
        assert rec["totals"] == {s: sum(r[s] for r in rec["layers"]) for s in STAGES[:4]}
        for s in rec["shared"]:
            assert s["totals"] == {st: sum(r[st] for r in s["layers"]) for st in STAGES}
            assert s["identical_after_loading"] and s["accuracy_file"] == s["accuracy_finetuned"]
            for r in s["layers"][:-1]:
                assert r["shared"] == (-(-(r["survivors"] * r["bits"] + r["entries"] * r["index_bits"]) // 8)
                                       + 4 * 2 ** r["bits"]) or r["entries"] == 0
            assert s["totals"]["huffman"] < s["totals"]["shared"] < rec["totals"]["relative"]


def test_the_headline_meets_the_issue_targets(run):
    """pruned-90 with 4-5 bit sharing and Huffman: at least 30x smaller than the float32 dense weights, losing at
    most 0.5 points against pruned-90 itself (10,000 test images)."""
    assert run["test_images"] == 10_000
    rec = next(r for r in run["records"] if r["model"] == "pruned-90")
    s = next(x for x in rec["shared"] if x["bits"] == run["headline"]["bits"])
    assert run["dense_bytes"] / s["totals"]["huffman"] >= 30
    assert rec["accuracy_pruned"] - s["accuracy_file"] <= 0.005


def test_readme_quotes_the_recorded_run(run):
    """The README's section links the page and its numbers (bytes, ratios, accuracies) are the run's."""
    readme = _text("README.md")
    section = readme.split("## How much smaller does pruning make the model?", 1)[1].split("\n## ", 1)[0]
    assert "](docs/compression.md)" in section and "](docs/compression.md)" in readme.split("## More", 1)[1]
    rec = next(r for r in run["records"] if r["model"] == "pruned-90")
    s = next(x for x in rec["shared"] if x["bits"] == run["headline"]["bits"])
    recorded = {f"{rec['accuracy_pruned']:.4f}", f"{s['accuracy_file']:.4f}", f"{run['dense_accuracy']:.4f}",
                f"{s['totals']['huffman']:,}", f"{run['dense_bytes']:,}", f"{run['dense_bytes'] / s['totals']['huffman']:.1f}x",
                f"{s['file_bytes']:,}", f"{run['seconds'] / 60:.0f}"}
    quoted = set(re.findall(r"\b0\.\d{4}\b|\b\d{1,3}(?:,\d{3})+\b|\b\d+\.\dx", section))
    assert quoted and quoted <= recorded, sorted(quoted - recorded)


def test_links_and_figure_resolve():
    text = _text("docs/compression.md")
    for link in re.findall(r"\]\(([^)#\s]+)\)", text):
        path = os.path.normpath(os.path.join(REPO, "docs", link))
        assert os.path.exists(path), link
        if link.endswith(".png"):
            assert os.path.getsize(path) > 10_000


def test_the_per_layer_index_bits_are_in_one_unit():
    """Both index-bit columns count bits per survivor, fillers included: a Huffman code is never longer than the
    fixed-width code it replaces, so P+Q+H never exceeds P+Q (fc read 5 against 5.19: per entry against per survivor)."""
    page = _text("docs/compression.md").split("### Per layer:", 1)[1]
    rows = [line.split("|")[1:-1] for line in page.splitlines() if re.match(r"\| (conv|fc)", line)]
    assert rows
    for cells in rows:
        layer, fixed, huffman = cells[0].strip(), cells[5].strip(), cells[6].strip()
        if fixed != "-":
            assert float(huffman) <= float(fixed), (layer, fixed, huffman)
