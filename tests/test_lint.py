"""pyflakes over the package, the tests and the scripts: no undefined name, no unused import or variable.

An undefined name in a branch no test takes is a NameError waiting for a user; the first run found one in a
string annotation (`ops/native/build.py`), unused imports in five files and an unused variable in a test."""

from __future__ import annotations

import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_pyflakes_finds_nothing():
    api = pytest.importorskip("pyflakes.api")
    reporter_module = pytest.importorskip("pyflakes.reporter")

    class Collect(reporter_module.Reporter):
        def __init__(self) -> None:
            self.found: list[str] = []

        def unexpectedError(self, filename, msg):  # noqa: N802 (pyflakes' names)
            self.found.append(f"{filename}: {msg}")

        def syntaxError(self, filename, msg, lineno, offset, text):  # noqa: N802
            self.found.append(f"{filename}:{lineno}: {msg}")

        def flake(self, message):
            line = pathlib.Path(message.filename).read_text().splitlines()[message.lineno - 1]
            if "# noqa" not in line:  # a deliberate re-export says so on its line
                self.found.append(str(message))

    files = sorted(p for d in ("src", "tests", "scripts") for p in (ROOT / d).rglob("*.py"))
    assert len(files) > 300
    reporter = Collect()
    for path in files:
        api.checkPath(str(path), reporter)
    assert reporter.found == []
