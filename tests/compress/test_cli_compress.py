"""`python -m ece662 compress`: a small real run, and command lines it refuses in one line."""
import json
import os

import pytest

from ece662 import load_model
from ece662.cli import main


def test_a_small_run_writes_models_json_and_figure(real_data, tmp_path, capsys):
    out = str(tmp_path / "dc")
    rc = main(["compress", "--data", real_data, "--out", out, "--models", "pruned-90", "--bits", "2,5/4",
               "--num-test", "100", "--finetune-images", "200"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "### pruned-90" in printed and "shared 5/4 bits + Huffman" in printed
    files = sorted(os.listdir(out))
    assert files == ["compression.json", "compression.png", "pruned-90-2bits.npz", "pruned-90-5-4bits.npz"]
    with open(os.path.join(out, "compression.json")) as f:
        run = json.load(f)
    assert run["test_images"] == 100 and run["headline"] == {"model": "pruned-90", "bits": "5/4"}
    net = load_model(os.path.join(out, "pruned-90-5-4bits.npz"))         # no further arguments
    assert len(set(net.fc.weight[net.fc.weight_mask].tolist())) <= 16


@pytest.mark.parametrize("args, message", [
    (["--models", "pruned-95"], "--models: expected shipped model names"),
    (["--bits", "4,x"], "--bits: expected widths"),
    (["--bits", "9"], "must lie in 1..8"),
    (["--bits", "5/4/3"], "conv/linear"),
])
def test_bad_options_get_one_clear_line(tmp_path, capsys, args, message):
    assert main(["compress", "--out", str(tmp_path / "o"), *args]) == 2
    assert message in capsys.readouterr().err


def test_an_unwritable_out_is_refused_before_any_work(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(SystemExit, match="cannot write to the output folder"):
        main(["compress", "--out", str(blocker / "sub"), "--models", "pruned-90"])


def test_help_explains_every_option(capsys):
    """`python -m ece662 compress --help` says what each option does (and the widths it takes)."""
    with pytest.raises(SystemExit):
        main(["compress", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    from ece662.cli import _parser
    sub = next(a for a in _parser()._actions if a.dest == "command").choices["compress"]
    silent = [a.option_strings[0] for a in sub._actions if not a.help]
    assert not silent, f"{silent} have no help text"
    assert "1..8" in text


def test_an_out_that_is_a_file_says_so(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(SystemExit, match=r"exists and is not a folder"):
        main(["compress", "--out", str(blocker), "--models", "pruned-90"])
