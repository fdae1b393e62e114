"""scripts/gpu_check.sh's bench stage on the CPU, with a stand-in interpreter that records its command lines: which
options each bench process gets, with and without the carried peers (.gpu-data/mamba and .gpu-data/causal-conv1d, the
checkouts' package folders; .gpu-data/cuda_peers, their CUDA kernels built by scripts/cuda_peers/build.sh). The GPU run
itself is the script's purpose and is not repeated here."""

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

needs_shell = pytest.mark.skipif(shutil.which("bash") is None or shutil.which("timeout") is None,
                                 reason="needs bash and timeout")


def run_stages(tmp_path: pathlib.Path, carried: bool, stages: tuple[str, ...]) -> tuple[str, list[str]]:
    """Run the named stages with the stand-in interpreter, from a tree with (or without) the carried peers: the
    script's output and the interpreter's calls."""
    tree = tmp_path / "tree"
    (tree / "scripts").mkdir(parents=True)
    shutil.copy(ROOT / "scripts" / "gpu_check.sh", tree / "scripts" / "gpu_check.sh")
    if carried:
        (tree / ".gpu-data" / "mamba" / "mamba_ssm").mkdir(parents=True)
        (tree / ".gpu-data" / "causal-conv1d" / "causal_conv1d").mkdir(parents=True)
        (tree / ".gpu-data" / "cuda_peers").mkdir(parents=True)
        for lib in ("mamba_ssm_cuda.so", "causal_conv1d_cuda.so"):
            (tree / ".gpu-data" / "cuda_peers" / lib).write_bytes(b"\x7fELF")
    python = tmp_path / "python"
    python.write_text(FAKE_PYTHON)
    python.chmod(0o755)
    calls = tmp_path / "calls.txt"
    env = {**os.environ, "PYTHON": str(python), "CALLS": str(calls), "OUT": str(tmp_path / "out"), "TOTAL_S": "60"}
    done = subprocess.run(["bash", "scripts/gpu_check.sh", *stages], cwd=tree, env=env, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout, calls.read_text().splitlines()


def run_bench_stage(tmp_path: pathlib.Path, carried: bool) -> list[str]:
    """The bench stage's interpreter calls, from a tree with (or without) the carried peers."""
    out, calls = run_stages(tmp_path, carried, ("bench",))
    assert "bench: ok" in out and "| a bench row |" in out
    return [line for line in calls if "ssmkit.bench gpu" in line]


@needs_shell
def test_bench_stage_passes_the_carried_peers(tmp_path):
    selective, scan, ssd, short_conv = run_bench_stage(tmp_path, carried=True)  # one process per op, selective first
    peers = ("--mamba-ssm-src .gpu-data/mamba --mamba-ssm-cuda .gpu-data/cuda_peers/mamba_ssm_cuda.so "
             "--causal-conv1d-src .gpu-data/causal-conv1d "
             "--causal-conv1d-cuda .gpu-data/cuda_peers/causal_conv1d_cuda.so")
    bench = "-m ssmkit.bench gpu "
    assert selective.startswith(bench + "--scan-shapes --ssd-shapes --short-conv-shapes " + peers + " --json ")
    assert ssd.startswith(bench + "--scan-shapes --selective-shapes --short-conv-shapes " + peers + " --json ")
    assert short_conv.startswith(bench + "--scan-shapes --ssd-shapes --selective-shapes " + peers + " --json ")
    # the diagonal scan's process gets no peer of these (accelerated-scan comes from the wheels)
    assert scan.startswith("-m ssmkit.bench gpu --ssd-shapes --selective-shapes --short-conv-shapes --json ")


@needs_shell
def test_bench_stage_without_the_peers(tmp_path):
    calls = run_bench_stage(tmp_path, carried=False)
    assert len(calls) == 4 and not any("--mamba-ssm" in c or "--causal-conv1d" in c for c in calls)
    assert calls[0].startswith("-m ssmkit.bench gpu --scan-shapes --ssd-shapes --short-conv-shapes --json ")


@needs_shell
def test_kernel_tests_run_in_the_kernels_stage_and_not_again_in_the_suite(tmp_path):
    kernel_tests = ["tests/ops/test_triton.py", "tests/ops/test_compile_triton.py", "tests/ops/test_triton_adversarial.py",
                    "tests/ops/test_triton_mutants_reference.py"]
    for name in kernel_tests:  # each file the stage names exists
        assert (ROOT / name).is_file(), name
    _, calls = run_stages(tmp_path, carried=False, stages=("kernels", "suite"))
    kernels, suite = [c.split() for c in calls if c.startswith("-m pytest")]
    assert kernels[-len(kernel_tests):] == kernel_tests and "tests" not in kernels
    assert [w for w in suite if w.startswith("--ignore=")] == [f"--ignore={name}" for name in kernel_tests]
    assert suite[-1] == "tests"
