"""Helper of the kernel tests that rerun some of their tests against kernels built with other compiler flags."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def passes_without_fma(test_file: str, tests: list[str], cache: Path, kernel: str) -> None:
    """Run ``tests`` (names in ``test_file``) in a subprocess whose kernels are built with ``-ffp-contract=off`` into
    their own ``cache`` folder, and assert that they all passed and that ``kernel``'s float64 build was made there
    (built afresh, with the flag)."""
    flags = f"{os.environ.get('SSMKIT_NATIVE_CFLAGS', '')} -ffp-contract=off".strip()
    env = {**os.environ, "SSMKIT_NATIVE_CFLAGS": flags, "SSMKIT_NATIVE_CACHE": str(cache), "SSMKIT_TEST_DEVICE": "cpu"}
    here = str(Path(test_file).resolve())
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                          *(f"{here}::{name}" for name in tests)], env=env, cwd=ROOT, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0 and f"{len(tests)} passed" in out.stdout.splitlines()[-1], (
        out.stdout[-4000:] + out.stderr[-2000:])
    assert any(cache.glob(f"{kernel}-float64-*.so"))
