"""The README's Python examples run as written (on the real data)."""
import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_readme_python_blocks_run(real_data, monkeypatch, capsys):
    """Every ```python block of README.md executes without error, in order, in one namespace."""
    monkeypatch.setenv("ECE662_DATA", real_data)
    text = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert blocks, "the README has no Python examples"
    namespace = {}
    for block in blocks:
        exec(compile(block, "README.md", "exec"), namespace)
    assert "Test Acc: 0.7424" in capsys.readouterr().out
