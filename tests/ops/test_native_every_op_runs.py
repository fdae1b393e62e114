"""Every native op passes its smoke call wherever a C compiler is found (and ``SSMKIT_NATIVE`` is not 0).

The smoke call (``ssmkit.ops.native.gate``) checks a kernel against its PyTorch reference before the kernel is
trusted; when it fails, the kernel is marked unusable and every test of it under ``@native`` skips. So a wrong
PyTorch reference, or a kernel that no longer builds, turned dozens of kernel tests into skips and the suite stayed
green (the 2026-12-07 mutation round of ops/gated_norm and ops/philox: "59 skipped"). This test makes that loud.
"""

from __future__ import annotations

import os

import pytest

from ssmkit.ops.native.build import NativeBuildError, compiler
from ssmkit.ops.native.gate import DTYPES, OPS, native_status


def _compiler_present() -> bool:
    try:
        compiler()
    except NativeBuildError:
        return False
    return True


@pytest.mark.skipif(os.environ.get("SSMKIT_NATIVE", "1") == "0", reason="the native backend is disabled (SSMKIT_NATIVE=0)")
@pytest.mark.skipif(not _compiler_present(), reason="no C compiler: the PyTorch paths run (tested elsewhere)")
@pytest.mark.parametrize("dtype", list(DTYPES), ids=list(DTYPES.values()))
@pytest.mark.parametrize("op", OPS)
def test_every_native_op_passes_its_smoke_call_where_a_compiler_is_found(op, dtype):
    ok, why = native_status(op, dtype)
    assert ok, f"the native {op} ({DTYPES[dtype]}) is unusable here although a C compiler is found: {why}"
