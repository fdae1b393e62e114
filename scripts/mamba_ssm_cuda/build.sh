#!/usr/bin/env bash
# Build mamba-ssm's Mamba-1 selective scan (CUDA C++) for one GPU architecture on a machine without a GPU, so that
# `ssmkit bench gpu` can time it beside ssmkit's Triton kernel (issue 16) without a build on the GPU machine.
#
#   MAMBA_SRC=checkout CUDA_HOME=nvcc-root TORCH_DIR=torch-package OUT=dir [ARCH=90] [JOBS=2] \
#       scripts/mamba_ssm_cuda/build.sh
#
# MAMBA_SRC   a checkout (or `git archive`) of state-spaces/mamba: its csrc/selective_scan is compiled unchanged
# CUDA_HOME   a CUDA toolkit root: bin/nvcc, include/ (cuda_runtime, CUB); the pip wheels nvidia-cuda-nvcc,
#             nvidia-cuda-crt, nvidia-nvvm, nvidia-cuda-runtime and nvidia-cuda-cccl of the GPU torch's CUDA version,
#             unzipped into one folder, give nvidia/cu13/ as such a root
# TORCH_DIR   the `torch` folder of the GPU machine's exact torch build (the wheel's include/ and lib/: libc10,
#             libc10_cuda, libtorch, libtorch_cpu, libtorch_cuda), so that the C++ ABI matches
# OUT         where mamba_ssm_cuda.so and BUILD (sources, versions, flags) are written
#
# The library registers torch.ops.mamba_ssm_cuda.fwd / .bwd (ops.cpp) and has no Python dependency; it is loaded on
# the GPU machine by torch.ops.load_library after `import torch`. Compiler flags are those of mamba-ssm's setup.py for
# CUDA (-O3, --use_fast_math, half/bfloat16 operators on, relaxed constexpr, extended lambdas), one -gencode for ARCH.
set -euo pipefail
: "${MAMBA_SRC:?a checkout of state-spaces/mamba}" "${CUDA_HOME:?a CUDA toolkit root}" "${TORCH_DIR:?the torch package folder}" "${OUT:?an output folder}"
ARCH=${ARCH:-90}
JOBS=${JOBS:-2}
HERE=$(cd "$(dirname "$0")" && pwd)
SRC="$MAMBA_SRC/csrc/selective_scan"
[ -f "$SRC/selective_scan.cpp" ] || { echo "build.sh: $SRC/selective_scan.cpp not found" >&2; exit 2; }
[ -x "$CUDA_HOME/bin/nvcc" ] || { echo "build.sh: $CUDA_HOME/bin/nvcc not found" >&2; exit 2; }
[ -f "$TORCH_DIR/include/ATen/ATen.h" ] || { echo "build.sh: $TORCH_DIR/include/ATen/ATen.h not found" >&2; exit 2; }
mkdir -p "$OUT"
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

INCLUDES=(-I"$HERE/shim" -I"$SRC" -I"$TORCH_DIR/include" -I"$TORCH_DIR/include/torch/csrc/api/include"
          -I"$CUDA_HOME/include" -I"$CUDA_HOME/include/cccl")
DEFINES=(-DTORCH_API_INCLUDE_EXTENSION_H -DTORCH_EXTENSION_NAME=mamba_ssm_cuda -D_GLIBCXX_USE_CXX11_ABI=1)
NVCC_FLAGS=(-O3 -std=c++17 -U__CUDA_NO_HALF_OPERATORS__ -U__CUDA_NO_HALF_CONVERSIONS__
            -U__CUDA_NO_BFLOAT16_OPERATORS__ -U__CUDA_NO_BFLOAT16_CONVERSIONS__ -U__CUDA_NO_BFLOAT162_OPERATORS__
            -U__CUDA_NO_BFLOAT162_CONVERSIONS__ --expt-relaxed-constexpr --expt-extended-lambda --use_fast_math
            -lineinfo -gencode "arch=compute_${ARCH},code=sm_${ARCH}" --compiler-options -fPIC)
CXX_FLAGS=(-O3 -std=c++17 -fPIC)

compile_one() {  # one source -> $WORK/<name>.o
    local src=$1 obj="$WORK/$(basename "$1").o"
    case "$src" in
        *.cu) "$CUDA_HOME/bin/nvcc" "${NVCC_FLAGS[@]}" "${INCLUDES[@]}" "${DEFINES[@]}" -c "$src" -o "$obj" ;;
        *) g++ "${CXX_FLAGS[@]}" "${INCLUDES[@]}" "${DEFINES[@]}" -c "$src" -o "$obj" ;;
    esac
    echo "built $(basename "$src")"
}
export -f compile_one
export WORK CUDA_HOME
export INCLUDES_S="${INCLUDES[*]}" DEFINES_S="${DEFINES[*]}"
SOURCES=("$SRC/selective_scan.cpp" "$HERE/ops.cpp" "$SRC"/selective_scan_fwd_*.cu "$SRC"/selective_scan_bwd_*.cu)
start=$(date +%s)
# xargs runs a fresh bash per source, which cannot see the arrays: pass the flags through declare -p
FLAGS_FILE="$WORK/flags.sh"
declare -p INCLUDES DEFINES NVCC_FLAGS CXX_FLAGS > "$FLAGS_FILE"
printf '%s\n' "${SOURCES[@]}" | xargs -P "$JOBS" -I{} bash -c 'source "$0"; compile_one "$1"' "$FLAGS_FILE" {}
LIBDIR="$TORCH_DIR/lib"
TMP_SO="$OUT/.mamba_ssm_cuda.so.tmp"
g++ -shared -o "$TMP_SO" "$WORK"/*.o -L"$LIBDIR" -lc10 -lc10_cuda -ltorch -ltorch_cpu -ltorch_cuda \
    -L"$CUDA_HOME/lib" -l:libcudart.so.13 -Wl,--no-undefined -Wl,--as-needed
mv "$TMP_SO" "$OUT/mamba_ssm_cuda.so"
{
    echo "mamba-ssm selective scan for sm_${ARCH}, built $(date -u +%Y-%m-%dT%H:%MZ) in $(( $(date +%s) - start )) s"
    echo "sources: $MAMBA_SRC/csrc/selective_scan ($(cat "$MAMBA_SRC/SOURCE" 2>/dev/null || echo 'commit not recorded'))"
    echo "nvcc: $("$CUDA_HOME/bin/nvcc" --version | tail -1)"
    echo "torch headers and libraries: $TORCH_DIR ($(grep -h "__version__ =" "$TORCH_DIR/version.py" 2>/dev/null || echo '?'))"
    echo "g++: $(g++ --version | head -1)"
    echo "nvcc flags: ${NVCC_FLAGS[*]}"
} > "$OUT/BUILD"
cat "$OUT/BUILD"
