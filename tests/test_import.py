"""`import ssmkit` and the model path stay light: scipy.signal (and ssmkit.analysis) load only when asked for, and
torch._dynamo (1.4 s of a 3.3 s import, for a decorator) only under torch.compile.

Each check runs in a fresh interpreter, since this test process has long imported everything.
"""

from __future__ import annotations

import json
import os
import pathlib

import pytest

import ssmkit
from tests.interpreters import run_python

SRC = str(pathlib.Path(ssmkit.__file__).resolve().parents[1])


WATCHED = ["scipy", "scipy.signal", "scipy.linalg", "ssmkit.analysis", "torch._dynamo"]


def loaded_after(code: str) -> dict[str, bool]:
    """Run ``code`` in a new interpreter; report which of the watched modules it loaded."""
    probe = f"{code}\nimport json, sys\nprint(json.dumps({{m: m in sys.modules for m in {WATCHED!r}}}))"
    env = dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""))
    done = run_python(["-c", probe], env=env)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def model_path() -> dict:
    """One new interpreter for the model-path tests below (a module a test must not see loaded stays unloaded in a run
    that does what each of them did, and more): it marks a function with ``constant_under_compile`` first (nothing
    else imported yet), runs an S4D and a Mamba layer (ssmkit.models imported), records the watched modules, and only
    then makes torch's own mark (which loads torch._dynamo)."""
    probe = (
        "import sys, json\n"
        "from ssmkit.ops.backend import constant_under_compile\n"
        "ours = constant_under_compile(lambda: 0)\n"
        "lazy = 'torch._dynamo' not in sys.modules\n"
        "import torch, ssmkit, ssmkit.layers, ssmkit.models\n"
        "for name in ('s4d', 'mamba'):\n"
        "    y, h = ssmkit.layers.build(name, d_model=4)(torch.randn(1, 5, 4))\n"
        "    assert y.shape == (1, 5, 4)\n"
        f"loaded = {{m: m in sys.modules for m in {WATCHED!r}}}\n"
        "theirs = torch.compiler.assume_constant_result(lambda: 0)\n"
        "print(json.dumps({'loaded': loaded, 'lazy': lazy, 'ours': sorted(vars(ours).items()),"
        " 'theirs': sorted(vars(theirs).items())}))"
    )
    env = dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""))
    # the two interpreters' time it replaces: a cold native cache compiles both layers' kernels here
    done = run_python(["-c", probe], env=env, timeout=240)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_model_path_never_imports_scipy_signal(model_path):
    loaded = model_path["loaded"]
    assert not loaded["scipy.signal"] and not loaded["ssmkit.analysis"], loaded


def test_analysis_loads_on_attribute_access_and_scipy_signal_only_for_to_scipy():
    loaded = loaded_after(
        "import sys, torch, ssmkit\n"
        "assert 'analysis' in dir(ssmkit) and 'ssmkit.analysis' not in sys.modules\n"
        "a, b = torch.full((2, 3), 0.5j), torch.ones(2, 3)\n"
        "ss = ssmkit.analysis.StateSpace.from_diagonal(a, b, b, None)\n"
        "assert ss.is_stable() and ss.hinf_norm().shape == (2,)\n"
        "assert ss.frequency_response([0.1]).shape == (2, 1, 1, 1)\n"
        "assert 'scipy.signal' not in sys.modules, 'analysis without to_scipy loaded scipy.signal'\n"
        "assert len(ss.to_scipy()) == 2"
    )
    assert loaded["ssmkit.analysis"] and loaded["scipy.linalg"] and loaded["scipy.signal"], loaded


def test_unknown_attribute_raises_attribute_error():
    with pytest.raises(AttributeError, match="module 'ssmkit' has no attribute 'not_a_module'"):
        ssmkit.not_a_module  # noqa: B018


def test_the_model_path_never_imports_dynamo_and_the_compile_mark_is_torchs(model_path):
    """``ops.backend.constant_under_compile`` marks a function as ``torch.compiler.assume_constant_result`` does, without
    importing torch._dynamo (the decorator did, at every ``import ssmkit``): the model path leaves torch._dynamo
    unloaded, and the mark equals the one torch's own decorator sets (the attributes dynamo reads when it traces)."""
    assert not model_path["loaded"]["torch._dynamo"], model_path["loaded"]
    assert model_path["lazy"] and model_path["ours"] == model_path["theirs"] == [["_dynamo_marked_constant", True]]
