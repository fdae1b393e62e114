"""The public surface is explicit and documented (STYLE.md rule 14).

Walks every name each package exports in ``__all__`` and fails on a missing docstring or an argument
that the docstring does not mention; public functions taking or returning tensors must give shapes.
"""

from __future__ import annotations

import inspect
import re

import pytest

import ssmkit
from tests.test_docs import shapes
from ssmkit import analysis, data, layers, models, ops, train

PACKAGES = [ops, layers, models, analysis, train, data]


def public_objects():
    for pkg in PACKAGES:
        for name in pkg.__all__:
            obj = getattr(pkg, name)
            if inspect.isfunction(obj) or inspect.isclass(obj):
                yield f"{pkg.__name__}.{name}", obj


OBJECTS = list(public_objects())


def documented_arguments(obj) -> tuple[str, list[str]]:
    doc = inspect.getdoc(obj) or ""
    target = obj.__init__ if inspect.isclass(obj) else obj
    if inspect.isclass(obj) and obj.__init__ in (object.__init__, ssmkit.layers.SequenceLayer.__init__):
        return doc, []  # no constructor of its own (an abstract base inherits nn.Module's)
    params = [p for p in inspect.signature(target).parameters if p not in ("self", "cls", "ctx")]
    if inspect.isclass(obj) and obj.__init__.__doc__:
        doc += "\n" + inspect.getdoc(obj.__init__)
    return doc, params


@pytest.mark.parametrize("qualname,obj", OBJECTS, ids=[q for q, _ in OBJECTS])
def test_every_public_name_is_documented(qualname, obj):
    doc, params = documented_arguments(obj)
    assert doc.strip(), f"{qualname} has no docstring"
    missing = [p for p in params if not re.search(rf"\b{re.escape(p)}\b", doc)]
    assert not missing, f"{qualname}: arguments not described in the docstring: {missing}"


@pytest.mark.parametrize("qualname,obj", [(q, o) for q, o in OBJECTS if inspect.isfunction(o)])
def test_tensor_functions_state_shapes(qualname, obj):
    hints = inspect.signature(obj)
    takes_tensor = any("Tensor" in str(p.annotation) for p in hints.parameters.values())
    returns_tensor = "Tensor" in str(hints.return_annotation)
    if takes_tensor or returns_tensor:
        doc = inspect.getdoc(obj) or ""
        assert shapes(doc) or "any shape" in doc, f"{qualname} gives no shape"  # (B, L, H), not any parenthesis


def test_package_exports_exist():
    for pkg in PACKAGES:
        for name in pkg.__all__:
            assert hasattr(pkg, name), f"{pkg.__name__}.__all__ names missing {name}"
    assert ssmkit.__version__
