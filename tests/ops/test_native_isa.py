"""The native kernels' AVX2 code paths, built and tested on a CPU with AVX-512.

The C kernels size their vectors and register blocks by the target (``common.h``: ``VBYTES``; the selective scan's
AVX-512 exponential), so a machine with AVX-512 builds and tests only its own paths. Here the native kernel tests (and
the selective scan's fused ``delta_proj`` tests and the SSD kernel's, whose gradient sums take the vector width) run again in a subprocess whose kernels are built with ``-mno-avx512f`` (``SSMKIT_NATIVE_CFLAGS``, its own cache folder).
On a CPU without AVX-512 the default build already takes those paths, and this test is skipped.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _cpu_has_avx512() -> bool:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return False
    flags = next((line for line in lines if line.startswith("flags")), "")
    return "avx512f" in flags.split()


@pytest.mark.skipif(not _cpu_has_avx512(), reason="no AVX-512 here: the default build already runs the AVX2 paths")
def test_native_kernels_built_without_avx512_pass_their_tests(tmp_path):
    cache = tmp_path / "cache"
    # on the CPU whatever this run's device (the native kernels are CPU code; under cuda their tests skip)
    env = {**os.environ, "SSMKIT_NATIVE_CFLAGS": "-mno-avx512f", "SSMKIT_NATIVE_CACHE": str(cache),
           "SSMKIT_TEST_DEVICE": "cpu"}
    # the kernels' own tests; the mutation tests (test_native_mutants_*.py: do the tests catch a broken kernel) run in
    # the default build only: they check the tests, which are the same here, and two of them build more variants
    tests = [str(ROOT / "tests/ops" / name) for name in ("test_native.py", "test_selective_delta_proj.py",
                                                         "test_ssd_native.py", "test_gated_norm.py",
                                                         "test_rglru_native.py", "test_native_spectral.py",
                                                         "test_fftblocks.py", "test_cauchy_pairs.py",
                                                         "test_rglru_native_float32_long.py",
                                                         "test_native_irregular_bank.py",
                                                         "test_native_irregular_bank_table.py",
                                                         "test_native_irregular_mimo.py",
                                                         "test_native_irregular_dplr.py",
                                                         "test_native_irregular_dplr_backward.py")]
    tests.append(str(ROOT / "tests/layers/test_native_steps.py"))  # the mixers' fused steps
    cmd = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *tests]
    out = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=1800)
    assert out.returncode == 0, out.stdout[-6000:] + out.stderr[-2000:]
    assert " passed" in out.stdout.splitlines()[-1]
    # the kernels were built afresh, with the flag, in the subprocess's own cache
    assert {"selective_scan", "diagonal_scan", "causal_conv", "ssd_scan", "spectral", "cauchy_pairs",
            "irregular_bank", "irregular_mimo", "irregular_dplr"} <= {
        p.name.split("-")[0] for p in cache.glob("*.so")}
    objdump = subprocess.run(["objdump", "-d", str(next(cache.glob("selective_scan-float32-*.so")))],
                             capture_output=True, text=True) if os.path.exists("/usr/bin/objdump") else None
    if objdump is not None and objdump.returncode == 0:
        assert "zmm" not in objdump.stdout  # no AVX-512 register in the AVX2 build
