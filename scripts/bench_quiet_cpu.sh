#!/usr/bin/env bash
# Issue 16, CPU part: the runs whose numbers go into docs/benchmarks.md ("CPU speed and contention").
# Run on a QUIET machine (nothing else running: timings under other load are meaningless), from the repo root:
#
#     S4_FILE=/path/to/state-spaces/s4/models/s4/s4.py bash scripts/bench_quiet_cpu.sh [OUT_DIR]
#
# S4_FILE is optional (the official rows are skipped with a note without it; the official file needs einops).
# Writes OUT_DIR (default bench-cpu-<date>): cases/ (bench.json + PNG plots), contention-1.json,
# contention-matmul.json, crossover.json and the printed tables in *.txt. Takes ~30-60 min on 2 cores.
set -euo pipefail
OUT=${1:-bench-cpu-$(date -u +%Y%m%d)}
mkdir -p "$OUT"
PY=${PYTHON:-python}
S4=()
if [ -n "${S4_FILE:-}" ]; then S4=(--s4-file "$S4_FILE"); fi

# 1. The op counts (deterministic): the test asserts <= 150 for the S4D forward at L = 4096.
$PY -m pytest -q tests/perf | tee "$OUT/op-counts.txt"
# 2. auto's crossover: copy the printed FFT_LENGTHS entries into src/ssmkit/ops/scan.py.
$PY -m ssmkit.bench crossover --json "$OUT/crossover.json" | tee "$OUT/crossover.txt"
# 3. Named cases against the machine's limits and the peers (table, bench.json, plots).
$PY -m ssmkit.bench cases --layers s4d s4 --length 1024 4096 16384 --modes forward forward_backward \
    "${S4[@]}" --out "$OUT/cases" | tee "$OUT/cases.txt"
$PY -m ssmkit.bench cases --layers s4d s4 --length 256 --modes step "${S4[@]}" --out "$OUT/cases-step" \
    | tee "$OUT/cases-step.txt"
# 4. Contention: alone, then beside one busy process (spin), then one that also loads memory (matmul).
$PY -m ssmkit.bench contention --layers s4d --length 4096 --busy 1 "${S4[@]}" \
    --json "$OUT/contention-1.json" | tee "$OUT/contention-1.txt"
$PY -m ssmkit.bench contention --layers s4d --length 4096 --busy 1 --busy-kind matmul "${S4[@]}" \
    --json "$OUT/contention-matmul.json" | tee "$OUT/contention-matmul.txt"
echo "done: $OUT"
