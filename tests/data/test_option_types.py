"""Every registered task refuses an option of the wrong kind when it is built (registry-driven).

A size or seed of 2.5, True or "3" failed with a TypeError deep inside the split after the files had loaded (CIFAR,
MNIST), or was taken as 1 (True); an int option takes an int, a float option a finite number, a str option a str
(`ssmkit.data.task.check_option_types`; docs/design.md, "Constructor options, fuzzed")."""

from __future__ import annotations

import dataclasses
import math

import pytest

from ssmkit.data.task import _TASKS, available_tasks, get_task

BAD = {bool: ["yes", 2, None], int: [2.5, True, "3", math.nan], float: ["x", True, math.nan, math.inf], str: [3, None]}
CASES = [
    (name, f.name, type(f.default))
    for name in available_tasks()
    if dataclasses.is_dataclass(_TASKS[name])
    for f in dataclasses.fields(_TASKS[name])
    if type(f.default) in BAD
]


def test_the_options_are_found():
    assert len(CASES) > 50 and {"smnist", "scifar", "listops", "adding"} <= {name for name, _, _ in CASES}


@pytest.mark.parametrize("name,option,kind", CASES, ids=[f"{n}-{o}" for n, o, _ in CASES])
def test_an_option_of_the_wrong_kind_is_refused(name, option, kind):
    for bad in BAD[kind]:
        with pytest.raises(ValueError, match=rf"^{name}: option {option} must be .*; got "):
            get_task(name, **{option: bad})
        with pytest.raises(ValueError, match=rf"option {option} must be|{option} must be"):
            _TASKS[name](**{option: bad}).splits("/nonexistent-root")  # built directly: refused before any file
