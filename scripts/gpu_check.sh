#!/usr/bin/env bash
# The GPU check of ssmkit, in one go: run it from the repository root on a machine with an NVIDIA GPU.
#
#   OUT=/some/dir scripts/gpu_check.sh [env] [kernels] [bench] [suite] [selective]
#                                       (no stage named: env kernels bench suite, in this order)
#
# Where one command may run at most 10 minutes (the device tool of these sessions), call it three times:
#   scripts/gpu_check.sh env kernels    (<= 8 min)     scripts/gpu_check.sh bench    (<= 5 min)
#   scripts/gpu_check.sh suite          (<= 9 min)
# Triton compiles every kernel on first use (a fresh machine has no cache): count about a minute for that.
#
# Stages (each under its own time limit, so that a hang in one leaves the others their time; results under $OUT):
#   env      nvidia-smi, python/torch/triton/CUDA versions, the packages the tests import       -> env.txt
#   kernels  tests/ops/test_triton.py on CUDA (the Triton kernels against their references at real sizes,
#            the L = 2^20 S4D run, the gate's smoke calls), then the whole ops suite on CUDA    -> kernels.txt, ops.txt
#   bench    ssmkit bench gpu: ssm_scan (chunked / fft / triton) and ssd (chunked / triton), float32, at
#            B,H,d_state,L = 8,128,64,{1024,4096,16384}; 1,128,64,1048576; 64,768,64,4096 and SSD B,L,H,P,N =
#            2,2048,32,64,128; 8,4096,16,64,64; the selective scan (chunked / triton at its default and 3 more tiles /
#            mamba-ssm's CUDA kernel when it imports, else a row saying why) at B,d_inner,N,L = 8,512,16,{1024,4096}
#            (a Mamba block of d_model 256, expand 2) and 8,1536,16,2048; with the copy bandwidth measured in the
#            same run                                                                       -> bench_gpu.md/.json
#   suite    the whole test suite with SSMKIT_TEST_DEVICE=cuda (protocol tests run "auto" = the kernels)
#                                                                                                -> suite.txt, suite.xml
#   selective  only the selective scan (<= 5 min): its CUDA tests (test_triton.py -k "selective or gate or auto or mamba"),
#            then its bench (the scan and SSD shapes left out)               -> selective.txt, bench_selective.md/.json
# Time limits in seconds: KERNELS_S (240, for each of its two pytest runs), BENCH_S (300), SUITE_S (540),
# SELECTIVE_S (150, for each of its two runs).
# Python: $PYTHON (python).
# Nothing here installs anything; ssmkit runs from src/ (PYTHONPATH). Exit status: the number of failed stages.
set -u
OUT=${OUT:-gpu_check_out}
PYTHON=${PYTHON:-python}
mkdir -p "$OUT"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
export SSMKIT_TEST_DEVICE=cuda
unset TRITON_INTERPRET
stages=("$@")
[ ${#stages[@]} -eq 0 ] && stages=(env kernels bench suite)
failed=0

run_env() {
  {
    date -u
    nvidia-smi || echo "nvidia-smi: not found"
    "$PYTHON" - <<'PY'
import importlib, platform, sys
print("python", sys.version.split()[0], platform.platform())
import torch
print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())
if torch.cuda.is_available():
    print("device", torch.cuda.get_device_name(0), torch.cuda.get_device_capability(0))
for name in ("triton", "numpy", "scipy", "pytest", "lightning", "jsonargparse", "matplotlib", "control", "mambapy",
             "mamba_ssm", "causal_conv1d", "accelerated_scan"):
    try:
        m = importlib.import_module(name)
        print(name, getattr(m, "__version__", "?"))
    except Exception as e:  # noqa: BLE001
        print(name, "MISSING:", type(e).__name__, e)
from ssmkit.ops.triton_gate import triton_status
for op in ("ssm_scan", "ssd", "selective_scan"):
    for dtype in (torch.float32, torch.float64):
        print("triton_status", op, dtype, triton_status("cuda", op, dtype))
PY
  } > "$OUT/env.txt" 2>&1
}

run_kernels() {
  timeout "${KERNELS_S:-240}" "$PYTHON" -m pytest -q -p no:cacheprovider -rs --durations=15 tests/ops/test_triton.py \
    > "$OUT/kernels.txt" 2>&1 || return 1
  timeout "${KERNELS_S:-240}" "$PYTHON" -m pytest -q -p no:cacheprovider -rs --durations=15 tests/ops tests/bench \
    > "$OUT/ops.txt" 2>&1
}

run_bench() {
  timeout "${BENCH_S:-300}" "$PYTHON" -m ssmkit.bench gpu --json "$OUT/bench_gpu.json" > "$OUT/bench_gpu.md" 2>&1
}

run_selective() {
  timeout "${SELECTIVE_S:-150}" "$PYTHON" -m pytest -q -p no:cacheprovider -rs --durations=15 tests/ops/test_triton.py \
    -k "selective or gate or auto or mamba" > "$OUT/selective.txt" 2>&1
  local tests=$?
  timeout "${SELECTIVE_S:-150}" "$PYTHON" -m ssmkit.bench gpu --scan-shapes --ssd-shapes \
    --json "$OUT/bench_selective.json" > "$OUT/bench_selective.md" 2>&1 && return "$tests"
}

run_suite() {
  timeout "${SUITE_S:-540}" "$PYTHON" -m pytest -q -p no:cacheprovider -rs --durations=25 \
    --junitxml="$OUT/suite.xml" tests > "$OUT/suite.txt" 2>&1
}

for stage in "${stages[@]}"; do
  case "$stage" in
    env|kernels|bench|suite|selective) ;;
    *) echo "unknown stage '$stage' (env, kernels, bench, suite, selective)" >&2; exit 64 ;;
  esac
  start=$(date +%s)
  if "run_$stage"; then status=ok; else status="FAILED ($?)"; failed=$((failed + 1)); fi
  echo "$stage: $status in $(( $(date +%s) - start )) s" | tee -a "$OUT/stages.txt"
done
exit "$failed"
