"""scripts/gpu_check.sh's bench stage on the CPU, with a stand-in interpreter that records its command lines: which
options each bench process gets, with and without the carried mamba-ssm peers (.gpu-data/mamba, the checkout's
mamba_ssm folder; .gpu-data/mamba_cuda/mamba_ssm_cuda.so, its CUDA selective scan built by
scripts/mamba_ssm_cuda/build.sh). The GPU run itself is the script's purpose and is not repeated here."""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]

FAKE_PYTHON = """#!/usr/bin/env bash
echo "$*" >> "$CALLS"
case "$*" in
  *"ssmkit.bench gpu"*) echo "| a bench row |" ;;
esac
exit 0
"""


def run_bench_stage(tmp_path: pathlib.Path, carried: bool) -> list[str]:
    """The bench stage's interpreter calls, from a tree with (or without) the carried peers."""
    tree = tmp_path / "tree"
    (tree / "scripts").mkdir(parents=True)
    shutil.copy(ROOT / "scripts" / "gpu_check.sh", tree / "scripts" / "gpu_check.sh")
    if carried:
        (tree / ".gpu-data" / "mamba" / "mamba_ssm").mkdir(parents=True)
        (tree / ".gpu-data" / "mamba_cuda").mkdir(parents=True)
        (tree / ".gpu-data" / "mamba_cuda" / "mamba_ssm_cuda.so").write_bytes(b"\x7fELF")
    python = tmp_path / "python"
    python.write_text(FAKE_PYTHON)
    python.chmod(0o755)
    calls = tmp_path / "calls.txt"
    env = {**os.environ, "PYTHON": str(python), "CALLS": str(calls), "OUT": str(tmp_path / "out"), "TOTAL_S": "60"}
    done = subprocess.run(["bash", "scripts/gpu_check.sh", "bench"], cwd=tree, env=env, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "bench: ok" in done.stdout and "| a bench row |" in done.stdout
    return [line for line in calls.read_text().splitlines() if "ssmkit.bench gpu" in line]


@pytest.mark.skipif(shutil.which("bash") is None or shutil.which("timeout") is None, reason="needs bash and timeout")
def test_bench_stage_passes_the_carried_mamba_ssm_peers(tmp_path):
    selective, scan, ssd = run_bench_stage(tmp_path, carried=True)  # one process per op, the selective scan first
    peers = "--mamba-ssm-src .gpu-data/mamba --mamba-ssm-cuda .gpu-data/mamba_cuda/mamba_ssm_cuda.so"
    assert selective.startswith("-m ssmkit.bench gpu --scan-shapes --ssd-shapes " + peers + " --json ")
    assert ssd.startswith("-m ssmkit.bench gpu --scan-shapes --selective-shapes " + peers + " --json ")
    assert scan.startswith("-m ssmkit.bench gpu --ssd-shapes --selective-shapes --json ")  # no peer of mamba-ssm's


@pytest.mark.skipif(shutil.which("bash") is None or shutil.which("timeout") is None, reason="needs bash and timeout")
def test_bench_stage_without_the_peers(tmp_path):
    selective, scan, ssd = run_bench_stage(tmp_path, carried=False)
    assert "--mamba-ssm" not in selective + scan + ssd
    assert selective.startswith("-m ssmkit.bench gpu --scan-shapes --ssd-shapes --json ")
