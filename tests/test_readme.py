"""The README's quickstart runs as written."""

import pathlib
import re

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def test_quickstart_runs(capsys):
    text = README.read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert blocks, "README has no python block"
    namespace: dict = {}
    exec(compile(blocks[0], str(README), "exec"), namespace)
    assert namespace["y"].shape == (8, 1000, 64)
    assert namespace["ss"].nstates == 64 and namespace["ss"].nsystems == 64
    assert "(64, 64) True" in capsys.readouterr().out


def test_first_lines_are_the_two_commands():
    first = README.read_text().splitlines()[:2]
    assert "make demo" in first[0] and "make test" in first[1]
