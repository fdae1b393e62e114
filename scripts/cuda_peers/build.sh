#!/usr/bin/env bash
# Build a peer's CUDA kernels for one GPU architecture on a machine without a GPU, so that `ssmkit bench gpu` can time
# them beside ssmkit's kernels (issue 16) without a build on the GPU machine:
#
#   PEER=selective_scan|causal_conv1d SRC=checkout CUDA_HOME=nvcc-root TORCH_DIR=torch-package OUT=dir \
#       [ARCH=90] [JOBS=2] scripts/cuda_peers/build.sh
#
# PEER        selective_scan: mamba-ssm's Mamba-1 selective scan (SRC a checkout of state-spaces/mamba; its
#             csrc/selective_scan) -> OUT/mamba_ssm_cuda.so, operators torch.ops.mamba_ssm_cuda.{fwd,bwd}
#             causal_conv1d: causal-conv1d's short convolution (SRC a checkout of Dao-AILab/causal-conv1d; its csrc)
#             -> OUT/causal_conv1d_cuda.so, operators torch.ops.causal_conv1d_cuda.causal_conv1d_{fwd,bwd,update}
# SRC         the checkout (or a `git archive` of it; a SOURCE file there naming the commit is copied into BUILD)
# CUDA_HOME   a CUDA toolkit root: bin/nvcc, include/ (cuda_runtime, CUB); the pip wheels nvidia-cuda-nvcc,
#             nvidia-cuda-crt, nvidia-nvvm, nvidia-cuda-runtime and nvidia-cuda-cccl of the GPU torch's CUDA version,
#             unzipped into one folder, give nvidia/cu13/ as such a root
# TORCH_DIR   the `torch` folder of the GPU machine's exact torch build (the wheel's include/ and lib/: libc10,
#             libc10_cuda, libtorch, libtorch_cpu, libtorch_cuda), so that the C++ ABI matches
# OUT         where the library and <PEER>.BUILD (sources, versions, flags) are written
#
# The inputs for the H200 machine of these sessions (torch 2.11.0+cu130, Python 3.12), from PyPI (~600 MB; unzip
# only torch/include, torch/version.py and the five libraries from the torch wheel):
#   pip download --no-deps --python-version 3.12 --only-binary=:all: --platform manylinux_2_28_x86_64 torch==2.11.0
#   pip download --no-deps --only-binary=:all: --platform manylinux2014_x86_64 nvidia-cuda-nvcc==13.0.88 \
#       nvidia-cuda-crt==13.0.88 nvidia-nvvm==13.0.88 nvidia-cuda-runtime==13.0.96 nvidia-cuda-cccl==13.0.85
#   (the nvidia wheels unzipped into one folder R: CUDA_HOME=R/nvidia/cu13, after chmod +x of its bin/ and nvvm/bin/)
# and the checkouts by `git archive` (their commit in a SOURCE file beside csrc/). The built libraries and the
# packages' Python folders go to .gpu-data/cuda_peers, .gpu-data/mamba/mamba_ssm, .gpu-data/causal-conv1d/causal_conv1d
# (scripts/gpu_check.sh passes them to the bench when carried).
#
# The peer's sources are compiled unchanged; its binding file's <torch/python.h> and <torch/extension.h> are the
# stand-ins of shim/ (no Python headers: the build machine need not have the GPU machine's CPython), and
# <PEER>_ops.cpp registers its entry points as PyTorch operators instead of pybind11 functions. The library has no
# Python dependency and loads with torch.ops.load_library after `import torch` (ssmkit.bench.gpu does that and puts the
# module the peer's Python code imports in sys.modules). Compiler flags: those of the peers' setup.py for CUDA (-O3,
# --use_fast_math, half/bfloat16 operators on, relaxed constexpr, extended lambdas), one -gencode for ARCH; not their
# -lineinfo (line tables for profilers, no effect on the code) and the fatbin compressed for size: the two libraries
# must travel to the GPU machine beside the tree within the device call's 64 MiB.
# Linked with --no-undefined against TORCH_DIR's libraries: a symbol the GPU's torch lacks fails here.
set -euo pipefail
: "${PEER:?selective_scan or causal_conv1d}" "${SRC:?a checkout of the peer}" "${CUDA_HOME:?a CUDA toolkit root}"
: "${TORCH_DIR:?the torch package folder}" "${OUT:?an output folder}"
ARCH=${ARCH:-90}
JOBS=${JOBS:-2}
HERE=$(cd "$(dirname "$0")" && pwd)
case "$PEER" in
  selective_scan)
    CSRC="$SRC/csrc/selective_scan" LIB=mamba_ssm_cuda
    SOURCES=("$CSRC/selective_scan.cpp" "$CSRC"/selective_scan_fwd_*.cu "$CSRC"/selective_scan_bwd_*.cu) ;;
  causal_conv1d)
    CSRC="$SRC/csrc" LIB=causal_conv1d_cuda
    SOURCES=("$CSRC/causal_conv1d.cpp" "$CSRC/causal_conv1d_fwd.cu" "$CSRC/causal_conv1d_bwd.cu"
             "$CSRC/causal_conv1d_update.cu") ;;
  *) echo "build.sh: PEER must be selective_scan or causal_conv1d; got '$PEER'" >&2; exit 2 ;;
esac
for f in "${SOURCES[@]}"; do [ -f "$f" ] || { echo "build.sh: $f not found" >&2; exit 2; }; done
[ -x "$CUDA_HOME/bin/nvcc" ] || { echo "build.sh: $CUDA_HOME/bin/nvcc not found" >&2; exit 2; }
[ -f "$TORCH_DIR/include/ATen/ATen.h" ] || { echo "build.sh: $TORCH_DIR/include/ATen/ATen.h not found" >&2; exit 2; }
SOURCES+=("$HERE/${PEER}_ops.cpp")
mkdir -p "$OUT"
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

INCLUDES=(-I"$HERE/shim" -I"$CSRC" -I"$TORCH_DIR/include" -I"$TORCH_DIR/include/torch/csrc/api/include"
          -I"$CUDA_HOME/include" -I"$CUDA_HOME/include/cccl")
DEFINES=(-DTORCH_API_INCLUDE_EXTENSION_H -DTORCH_EXTENSION_NAME="$LIB" -D_GLIBCXX_USE_CXX11_ABI=1)
NVCC_FLAGS=(-O3 -std=c++17 -U__CUDA_NO_HALF_OPERATORS__ -U__CUDA_NO_HALF_CONVERSIONS__
            -U__CUDA_NO_BFLOAT16_OPERATORS__ -U__CUDA_NO_BFLOAT16_CONVERSIONS__ -U__CUDA_NO_BFLOAT162_OPERATORS__
            -U__CUDA_NO_BFLOAT162_CONVERSIONS__ --expt-relaxed-constexpr --expt-extended-lambda --use_fast_math
            -gencode "arch=compute_${ARCH},code=sm_${ARCH}" --compress-mode=size --compiler-options -fPIC)
CXX_FLAGS=(-O3 -std=c++17 -fPIC)

compile_one() {  # one source -> $WORK/<name>.o
  local src=$1 obj
  obj="$WORK/$(basename "$1").o"
  case "$src" in
    *.cu) "$CUDA_HOME/bin/nvcc" "${NVCC_FLAGS[@]}" "${INCLUDES[@]}" "${DEFINES[@]}" -c "$src" -o "$obj" ;;
    *) g++ "${CXX_FLAGS[@]}" "${INCLUDES[@]}" "${DEFINES[@]}" -c "$src" -o "$obj" ;;
  esac
  echo "built $(basename "$src")"
}
export -f compile_one
export WORK CUDA_HOME
start=$(date +%s)
# xargs runs a fresh bash per source, which cannot see the arrays: they travel through a sourced file
FLAGS_FILE="$WORK/flags.sh"
declare -p INCLUDES DEFINES NVCC_FLAGS CXX_FLAGS > "$FLAGS_FILE"
printf '%s\n' "${SOURCES[@]}" | xargs -P "$JOBS" -I{} bash -c 'source "$0"; compile_one "$1"' "$FLAGS_FILE" {}
TMP_SO="$OUT/.$LIB.so.tmp"
g++ -shared -o "$TMP_SO" "$WORK"/*.o -L"$TORCH_DIR/lib" -lc10 -lc10_cuda -ltorch -ltorch_cpu -ltorch_cuda \
    -L"$CUDA_HOME/lib" -l:libcudart.so.13 -Wl,--no-undefined -Wl,--as-needed
strip --strip-unneeded "$TMP_SO"
mv "$TMP_SO" "$OUT/$LIB.so"
{
  echo "$PEER ($LIB.so) for sm_${ARCH}, built $(date -u +%Y-%m-%dT%H:%MZ) in $(( $(date +%s) - start )) s, stripped"
  echo "sources: $CSRC ($(cat "$SRC/SOURCE" 2>/dev/null || echo 'commit not recorded'))"
  echo "nvcc: $("$CUDA_HOME/bin/nvcc" --version | tail -1)"
  echo "torch headers and libraries: $TORCH_DIR ($(grep -h "__version__ =" "$TORCH_DIR/version.py" 2>/dev/null || echo '?'))"
  echo "g++: $(g++ --version | head -1)"
  echo "nvcc flags: ${NVCC_FLAGS[*]}"
} > "$OUT/$PEER.BUILD"
cat "$OUT/$PEER.BUILD"
