"""The documentation is a specification: one letter legend for every shape, no citation of files outside the
repository, and the public API regex that tells a shape from a parenthesised remark."""

from __future__ import annotations

import importlib
import inspect
import pathlib
import re

import pytest

import ssmkit

SRC = pathlib.Path(ssmkit.__file__).resolve().parent
# a size: a number, a letter (or two: nc), 2N, H_out / H_in, or an option name such as d_input
_SIZE = r"(\d*[A-Za-z]{1,2}(_(out|in))?|d_[a-z]+|\d+)"
ITEM = re.compile(rf"^\s*(\.\.\.|\?|{_SIZE}([·*/+\-]{_SIZE})*)\s*$")
SHAPE = re.compile(r"\(([^()]*)\)")


def legend() -> set[str]:
    """The shape letters the package docstring defines (lines '    X  meaning')."""
    return set(re.findall(r"^    (\w+) {2,}\S", ssmkit.__doc__, flags=re.M))


def shapes(doc: str) -> list[list[str]]:
    """The parenthesised groups of ``doc`` that read as shapes: two or more comma-separated sizes (or one with a
    trailing comma, "(H,)"), each a letter, a number, '...', '?' or an expression of them (N/2, 2N, G*m), with at
    least one letter."""
    found = []
    for group in SHAPE.findall(doc):
        items = [i for i in group.split(",") if i.strip()]
        several = len(items) >= 2 or group.rstrip().endswith(",")
        if several and all(ITEM.match(i) for i in items) and re.search(r"[A-Za-z]", group):
            found.append([i.strip() for i in items])
    return found


def modules():
    for path in sorted(SRC.rglob("*.py")):
        parts = path.relative_to(SRC.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        if name.endswith("__main__"):
            continue
        yield importlib.import_module(name)


def public_docs():
    """Every public function and class defined in ssmkit (and the public methods of the classes), with its doc."""
    for module in modules():
        yield module.__name__, inspect.getdoc(module) or ""
        for name, obj in vars(module).items():
            if name.startswith("_") or getattr(obj, "__module__", None) != module.__name__:
                continue
            if inspect.isfunction(obj):
                yield f"{module.__name__}.{name}", inspect.getdoc(obj) or ""
            elif inspect.isclass(obj):
                yield f"{module.__name__}.{name}", inspect.getdoc(obj) or ""
                for attr, member in vars(obj).items():
                    if inspect.isfunction(member) and not attr.startswith("_"):
                        yield f"{module.__name__}.{name}.{attr}", inspect.getdoc(member) or ""


DOCS = list(public_docs())


def test_the_legend_is_defined_once():
    letters = legend()
    assert {"B", "L", "H", "N", "M", "P", "G", "C", "S", "r", "W", "n", "m", "p"} <= letters
    defined = re.findall(r"^    (\w+) {2,}\S", ssmkit.__doc__, flags=re.M)
    twice = sorted({x for x in defined if defined.count(x) > 1})
    assert not twice, f"letters defined more than once in the legend: {twice}"


@pytest.mark.parametrize("qualname,doc", DOCS, ids=[q for q, _ in DOCS])
def test_shapes_use_only_legend_letters(qualname, doc):
    letters = legend()
    for shape in shapes(doc):
        for item in shape:
            for token in re.split(r"[·*/+\-]", item):
                word = re.sub(r"^\d+", "", token)  # 2N -> N
                base = word.split("_")[0]  # H_out -> H
                ok = not base or base in letters or token in ("...", "?") or token.startswith("d_")
                assert ok, f"{qualname}: '{token}' in {shape} is not a letter of the legend in ssmkit/__init__.py"


def test_shape_detection_rejects_remarks():
    text = "(the oracle) (B, L, H) (default 120) (H_out, H_in, L) (..., N/2) (Tustin) (m+1) (H,) (forward, backward)"
    assert shapes(text) == [["B", "L", "H"], ["H_out", "H_in", "L"], ["...", "N/2"], ["H"]]


def test_no_citation_of_files_outside_the_repository():
    outside = re.compile(r"REFERENCE(\.md)?|STYLE\.md|(?<!docs/)DESIGN\.md|shared/|notes/|core-checked|layers-checked")
    hits = [f"{path.relative_to(SRC)}:{i}" for path in SRC.rglob("*.py")
            for i, line in enumerate(path.read_text().splitlines(), 1) if outside.search(line)]
    assert not hits, f"docstrings/comments cite files that are not in the repository: {hits}"
