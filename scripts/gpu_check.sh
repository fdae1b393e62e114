#!/usr/bin/env bash
# The GPU check of ssmkit in one command: run it from the repository root on a machine with an NVIDIA GPU.
#
#   OUT=/some/dir scripts/gpu_check.sh [stage ...]      (no stage named: env kernels bench suite, in this order;
#                                                        f16, selective and long only when named)
#
# Sized for the device tool of these sessions (15 minutes of device time per session, the machine's start included;
# at most 10 minutes per command; at most 8 files come back): ONE command, all stages within TOTAL_S seconds
# (default 500). Each stage runs under min(its own limit, the time left), so a hang in one leaves the later ones
# theirs, and the script ends before the command's limit. Call it with the device tool's timeout_s >= TOTAL_S + 40
# (pytest gets 20 s after its SIGINT; packing takes a second): 560 at the default.
# Triton compiles every kernel on first use (a fresh machine has no cache): the env and kernels stages pay for that,
# the latter on KERNEL_WORKERS processes (each compiles what its tests need; the first to finish a kernel fills the shared disk cache).
# The bench runs before the whole suite: the suite alone can take all of TOTAL_S, and the bench (issue 16's speed
# targets) would get the seconds left. pytest is stopped by SIGINT at its limit (then KILL 20 s later), so it still
# prints its summary and writes its junit XML; a single test is stopped after TEST_S seconds (pytest-timeout, when
# it imports) instead of holding the stage.
# Wheels in .gpu-data/wheels (carried; e.g. jsonargparse, which the f16 stage's CLI needs and the H200 image lacks)
# are installed into a temporary folder on PYTHONPATH first; nothing is downloaded. The peers mamba-ssm and
# causal-conv1d: carry .gpu-data/mamba and .gpu-data/causal-conv1d (the mamba_ssm and causal_conv1d folders of their
# released sdists or of checkouts, named in SOURCE) and .gpu-data/cuda_peers (mamba_ssm_cuda.so and
# causal_conv1d_cuda.so, their CUDA kernels built by scripts/cuda_peers/build.sh for the GPU's torch and sm_90).
# All of .gpu-data comes from PyPI by `make gpu-data` (scripts/gpu_data.sh) on the CPU machine: it is ignored by git, so
# a new checkout lacks it.
#
# Lessons of the first two runs (H200, 2026-12-04): the whole suite needs ~300 s on 14 workers (16 cores); the image
# has pytest-benchmark, whose hooks once ended an xdist run with an INTERNALERROR, so it is turned off (-p no:benchmark);
# the F-16 run (130 s) is out of the default stages, its figures are in docs/benchmarks.md.
# Stages (results in $OUT/gpu_check.tgz; $OUT/stages.txt and $OUT/summary.txt, also printed, stay outside it):
#   env      nvidia-smi, python/torch/triton/CUDA versions, the packages the tests import, the Triton gate's verdicts
#            (six smoke calls: the first compilation of 12 kernels)                           (ENV_S, 120 s)
#   kernels  tests/ops/test_triton.py on CUDA: the Triton kernels against their references at real sizes, the
#            L = 2^20 S4D, Mamba and Mamba-2 runs, the gate's smoke calls; and tests/ops/test_compile_triton.py (the
#            kernels as custom ops inside torch.compile graphs, never run on CUDA before), test_triton_adversarial.py
#            and test_triton_mutants_reference.py (the cases the interpreter's mutation probe added); KERNEL_WORKERS (4) processes
#                                                                                           (KERNELS_S, 150 s)
#   bench    ssmkit bench gpu: ssm_scan (chunked / fft / triton) and ssd (chunked / triton), float32, at
#            B,H,d_state,L = 8,128,64,{1024,4096,16384}; 1,128,64,1048576; 64,768,64,4096 and SSD B,L,H,P,N =
#            2,2048,32,64,128; 8,4096,16,64,64; the selective scan (chunked / triton / mamba-ssm's CUDA kernel when it
#            imports, else a row saying why) at B,d_inner,N,L = 8,512,16,{1024,4096} and 8,1536,16,2048; the scan's
#            triton:G rows (chunks per program); mamba-ssm's Triton SSD beside the ssd rows when .gpu-data/mamba holds
#            a checkout (git archive of state-spaces/mamba's mamba_ssm folder) and einops is among the wheels, and its
#            CUDA selective scan beside the selective rows when .gpu-data/cuda_peers/mamba_ssm_cuda.so is carried too
#            (built without a GPU by scripts/cuda_peers/build.sh); Mamba's short convolution (ssmkit's F.conv1d path
#            and causal-conv1d's CUDA kernel from .gpu-data/causal-conv1d and .gpu-data/cuda_peers) at B,d_inner,L =
#            8,512,4096 and 8,1536,2048; every row with its output's difference from the first backend's; the copy
#            bandwidth measured in the same run; one process per op: selective, scan, ssd, short_conv
#                                                                                           (BENCH_S, 240 s)
#   suite    the rest of the test suite with SSMKIT_TEST_DEVICE=cuda (protocol tests run "auto" = the kernels),
#            on WORKERS pytest-xdist processes (default 14) when xdist imports, else one   (SUITE_S, 300 s)
#   f16      issue 15's F-16 GVT run on the GPU: ssmkit sysid --benchmark f16 --model s4d --device cuda, data from
#            F16_DIR (default ../shared/data/f16gvt, else .gpu-data/f16gvt: a copy carried beside the tree, since the
#            device tool sends the repository alone)                                      (F16_S, 240 s)
#   selective  (only when named) the selective scan alone: its CUDA tests, then its bench  (SELECTIVE_S, 150 s each)
#   long     (only when named) scripts/long_sequence_check.py --device cuda: every layer but attention at
#            L = 1 048 576, batch 1, H 64, N 16, forward and forward+backward, time and CUDA peak memory (LONG_S, 150 s)
# Python: $PYTHON (default: python3, the H200 image's interpreter, which has no 'python'; else python). Nothing is
# downloaded; only carried wheels are installed (above), into /tmp; ssmkit runs from src/ (PYTHONPATH). Exit status:
# the number of failed or skipped stages.
set -u
OUT=${OUT:-gpu_check_out}
if [ -z "${PYTHON:-}" ]; then
  PYTHON=python3; command -v python3 >/dev/null || PYTHON=python
fi
TOTAL_S=${TOTAL_S:-500}
mkdir -p "$OUT/all"
LOG="$OUT/all"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
export SSMKIT_TEST_DEVICE=cuda PYTHONUNBUFFERED=1
unset TRITON_INTERPRET
if compgen -G ".gpu-data/wheels/*.whl" >/dev/null; then
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/gpu_check_site \
    .gpu-data/wheels/*.whl > "$LOG/wheels.txt" 2>&1 && export PYTHONPATH="$PYTHONPATH:/tmp/gpu_check_site"
fi
stages=("$@")
[ ${#stages[@]} -eq 0 ] && stages=(env kernels bench suite)
deadline=$(( $(date +%s) + TOTAL_S ))
failed=0

limit() {  # the seconds a stage may take: its own limit, or what is left of TOTAL_S (5 s kept for packing)
  local left=$(( deadline - $(date +%s) - 5 ))
  echo $(( $1 < left ? $1 : left ))
}

run_env() {
  {
    date -u
    nvidia-smi || echo "nvidia-smi: not found"
    command -v cc gcc || echo "no C compiler: the native CPU kernels fall back to PyTorch"
    timeout "$(limit "${ENV_S:-120}")" "$PYTHON" - <<'PY'
import importlib, platform, sys
print("python", sys.version.split()[0], platform.platform())
import torch
print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())
if torch.cuda.is_available():
    print("device", torch.cuda.get_device_name(0), torch.cuda.get_device_capability(0))
for name in ("triton", "numpy", "scipy", "pytest", "xdist", "lightning", "jsonargparse", "matplotlib", "control",
             "onnx", "onnxruntime", "mambapy", "mamba_ssm", "causal_conv1d", "accelerated_scan"):
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
  } > "$LOG/env.txt" 2>&1
}

pytest_opts() {  # xdist workers and a per-test limit, where the plugins import
  local n=$1
  "$PYTHON" -c "import xdist" 2>/dev/null && echo "-n $n"
  "$PYTHON" -c "import pytest_timeout" 2>/dev/null && echo "--timeout=${TEST_S:-150}"
}

run_pytest() {  # run_pytest SECONDS ARGS...: pytest under SIGINT at the limit (it then reports what ran), KILL 20 s on
  local s=$1; shift
  timeout -s INT -k 20 "$s" "$PYTHON" -m pytest -q -p no:cacheprovider -p no:benchmark -rfEs "$@"
}

# the kernels stage's tests (the suite stage leaves them out)
KERNEL_TESTS="tests/ops/test_triton.py tests/ops/test_compile_triton.py tests/ops/test_triton_adversarial.py
tests/ops/test_triton_mutants_reference.py"

run_kernels() {
  # shellcheck disable=SC2046
  run_pytest "$(limit "${KERNELS_S:-150}")" --durations=15 $(pytest_opts "${KERNEL_WORKERS:-4}") \
    --junitxml="$LOG/kernels.xml" $KERNEL_TESTS > "$LOG/kernels.txt" 2>&1
}

run_suite() {
  # shellcheck disable=SC2046
  run_pytest "$(limit "${SUITE_S:-300}")" --durations=25 $(pytest_opts "${WORKERS:-14}") \
    $(printf -- '--ignore=%s ' $KERNEL_TESTS) --junitxml="$LOG/suite.xml" tests > "$LOG/suite.txt" 2>&1
}

run_bench() {  # one bench process per op (selective first: issue 16's speed target), each printing its table when
  # done, so a time-out loses one op's rows, not all (the bench prints nothing before its last shape)
  local end=$(( $(date +%s) + $(limit "${BENCH_S:-240}") )) rc=0 part left code
  : > "$LOG/bench_gpu.md"
  for part in selective scan ssd short_conv; do
    left=$(( end - $(date +%s) ))
    if [ "$left" -lt 10 ]; then
      echo "bench $part: not run (BENCH_S spent)" >> "$LOG/bench_gpu.md"; rc=1; continue
    fi
    local skip=()
    [ "$part" != scan ] && skip+=(--scan-shapes)
    [ "$part" != ssd ] && skip+=(--ssd-shapes)
    [ "$part" != selective ] && skip+=(--selective-shapes)
    [ "$part" != short_conv ] && skip+=(--short-conv-shapes)
    # the peers from carried checkouts (.gpu-data/mamba, .gpu-data/causal-conv1d; einops among the wheels) and their
    # CUDA kernels built without a GPU (.gpu-data/cuda_peers: scripts/cuda_peers/build.sh)
    [ "$part" != scan ] && skip+=($(peer_args))
    timeout "$left" "$PYTHON" -m ssmkit.bench gpu "${skip[@]}" --json "$LOG/bench_$part.json" \
      >> "$LOG/bench_gpu.md" 2>&1
    code=$?
    [ "$code" -ne 0 ] && { echo "bench $part: exit $code$([ "$code" -eq 124 ] && echo ' (time limit)')" \
      >> "$LOG/bench_gpu.md"; rc=$code; }
  done
  return $rc
}

peer_args() {  # the bench's options for the carried peers, where they are carried
  [ -d .gpu-data/mamba ] && echo --mamba-ssm-src .gpu-data/mamba
  [ -f .gpu-data/cuda_peers/mamba_ssm_cuda.so ] && echo --mamba-ssm-cuda .gpu-data/cuda_peers/mamba_ssm_cuda.so
  [ -d .gpu-data/causal-conv1d ] && echo --causal-conv1d-src .gpu-data/causal-conv1d
  [ -f .gpu-data/cuda_peers/causal_conv1d_cuda.so ] && \
    echo --causal-conv1d-cuda .gpu-data/cuda_peers/causal_conv1d_cuda.so
  return 0
}

run_long() {  # issue 16: every scan layer at L = 2^20, batch 1, on the GPU (one process; a failure is a table row)
  timeout "$(limit "${LONG_S:-150}")" "$PYTHON" scripts/long_sequence_check.py --device cuda \
    --json "$LOG/long.json" > "$LOG/long.md" 2>&1
}

run_f16() {
  local data=${F16_DIR:-../shared/data/f16gvt}
  [ -d "$data" ] || data=.gpu-data/f16gvt
  if [ ! -d "$data" ]; then
    echo "no F-16 data: set F16_DIR, or copy ../shared/data/f16gvt to .gpu-data/f16gvt and carry .gpu-data" \
      > "$LOG/f16.txt"
    return 1
  fi
  timeout "$(limit "${F16_S:-240}")" "$PYTHON" -m ssmkit sysid --benchmark f16 --model s4d --data-folder "$data" \
    --device cuda --out "$LOG/f16" > "$LOG/f16.txt" 2>&1
}

run_selective() {
  # shellcheck disable=SC2046
  run_pytest "$(limit "${SELECTIVE_S:-150}")" --durations=15 $(pytest_opts "${KERNEL_WORKERS:-4}") \
    tests/ops/test_triton.py -k "selective or gate or auto or mamba" > "$LOG/selective.txt" 2>&1
  local tests=$?
  # shellcheck disable=SC2046
  timeout "$(limit "${SELECTIVE_S:-150}")" "$PYTHON" -m ssmkit.bench gpu --scan-shapes --ssd-shapes \
    --short-conv-shapes $(peer_args) --json "$LOG/bench_selective.json" > "$LOG/bench_selective.md" 2>&1 && return "$tests"
}

for stage in "${stages[@]}"; do
  case "$stage" in
    env|kernels|suite|bench|f16|selective|long) ;;
    *) echo "unknown stage '$stage' (env, kernels, suite, bench, f16, selective, long)" >&2; exit 64 ;;
  esac
  start=$(date +%s)
  if [ "$(limit 10)" -lt 10 ]; then
    status="SKIPPED (TOTAL_S spent)"; failed=$((failed + 1))
  elif "run_$stage"; then
    status=ok
  else
    code=$?; status="FAILED ($code$([ "$code" -eq 124 ] && echo ': time limit'))"; failed=$((failed + 1))
  fi
  echo "$stage: $status in $(( $(date +%s) - start )) s" | tee -a "$OUT/stages.txt"
done

# One summary (printed, so that the command's output carries it too) and one archive of everything.
{
  cat "$OUT/stages.txt"
  for f in env kernels suite f16; do
    [ -f "$LOG/$f.txt" ] && { echo; echo "== $f.txt (end)"; tail -n 40 "$LOG/$f.txt"; }
  done
  for f in bench_gpu bench_selective long; do
    [ -f "$LOG/$f.md" ] && { echo; echo "== $f.md"; cat "$LOG/$f.md"; }
  done
} > "$OUT/summary.txt"
cat "$OUT/summary.txt"
tar czf "$OUT/gpu_check.tgz" -C "$OUT" all && rm -rf "$OUT/all"
exit "$failed"
