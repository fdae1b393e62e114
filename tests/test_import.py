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


def loaded_after(code: str) -> dict[str, bool]:
    """Run ``code`` in a new interpreter; report which of the watched modules it loaded."""
    watched = ["scipy", "scipy.signal", "scipy.linalg", "ssmkit.analysis", "torch._dynamo"]
    probe = f"{code}\nimport json, sys\nprint(json.dumps({{m: m in sys.modules for m in {watched!r}}}))"
    env = dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""))
    done = run_python(["-c", probe], env=env)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_model_path_never_imports_scipy_signal():
    loaded = loaded_after(
        "import torch, ssmkit, ssmkit.layers\n"
        "y, h = ssmkit.layers.build('s4d', d_model=4)(torch.randn(1, 5, 4))\n"
        "assert y.shape == (1, 5, 4)"
    )
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


def test_the_model_path_never_imports_dynamo_and_the_compile_mark_is_torchs():
    """``ops.backend.constant_under_compile`` marks a function as ``torch.compiler.assume_constant_result`` does, without
    importing torch._dynamo (the decorator did, at every ``import ssmkit``): the model path leaves torch._dynamo
    unloaded, and the mark equals the one torch's own decorator sets (the attributes dynamo reads when it traces)."""
    loaded = loaded_after(
        "import torch, ssmkit, ssmkit.layers, ssmkit.models\n"
        "y, h = ssmkit.layers.build('mamba', d_model=4)(torch.randn(1, 5, 4))\n"
        "assert y.shape == (1, 5, 4)"
    )
    assert not loaded["torch._dynamo"], loaded
    probe = (
        "import sys, json\n"
        "from ssmkit.ops.backend import constant_under_compile\n"
        "ours = constant_under_compile(lambda: 0)\n"
        "lazy = 'torch._dynamo' not in sys.modules\n"
        "import torch\n"
        "theirs = torch.compiler.assume_constant_result(lambda: 0)\n"
        "print(json.dumps([lazy, sorted(vars(ours).items()), sorted(vars(theirs).items())]))"
    )
    env = dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""))
    done = run_python(["-c", probe], env=env)
    assert done.returncode == 0, done.stderr
    lazy, ours, theirs = json.loads(done.stdout.strip().splitlines()[-1])
    assert lazy and ours == theirs == [["_dynamo_marked_constant", True]]
