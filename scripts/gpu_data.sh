#!/usr/bin/env bash
# Prepare .gpu-data -- what scripts/gpu_check.sh takes from beside the tree on the GPU machine -- on a fresh machine,
# from PyPI alone, in one command:
#
#   scripts/gpu_data.sh [stage ...]        (no stage named: wheels peers cuda, in this order)
#
# .gpu-data is ignored by git, so a new session's checkout does not have it; the GPU machine cannot download
# anything. Run this on the CPU machine before the device call (601 s on the 2-core VM: 0.63 GB of downloads in 18 s,
# then the two CUDA builds, 325 s and ~260 s), then carry the four folders it names at its end.
#
# Stages (each skipped when its results are already there; FORCE=1 redoes it):
#   wheels  .gpu-data/wheels: the pure-Python packages the H200 image lacks -- einops (mamba-ssm's Triton SSD),
#           mambapy and accelerated-scan (bench peers), jsonargparse with docstring-parser and typeshed-client (the f16
#           stage's CLI); gpu_check.sh installs them into /tmp there, without an index
#   peers   .gpu-data/mamba/mamba_ssm and .gpu-data/causal-conv1d/causal_conv1d: the Python packages of the released
#           sdists mamba-ssm 2.3.2.post1 and causal-conv1d 1.7.0 (SHA-256 checked; SOURCE files name them), which
#           `ssmkit bench gpu --mamba-ssm-src/--causal-conv1d-src` imports without the packages' __init__
#   cuda    .gpu-data/cuda_peers/{mamba_ssm_cuda.so,causal_conv1d_cuda.so} and their .BUILD records: the same sdists'
#           csrc/ compiled for sm_$ARCH by scripts/cuda_peers/build.sh against the GPU machine's exact torch
#           (torch==2.11.0, the cu130 wheel: its headers and five libraries) with nvcc 13.0.88 from NVIDIA's PyPI wheels
#
# GPU_DATA (default .gpu-data in the repository) is where the results go. CACHE (default /tmp/gpu_data_cache) keeps the downloads and the unpacked toolchain for a rerun; delete it after.
# ARCH (default 90: H100 and H200), JOBS (default 2) go to build.sh. Nothing is half-written: each result is built
# beside its place and renamed into it.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
DEST=${GPU_DATA:-$ROOT/.gpu-data}
CACHE=${CACHE:-/tmp/gpu_data_cache}
export ARCH=${ARCH:-90} JOBS=${JOBS:-2}
FORCE=${FORCE:-0}
PY=${PYTHON:-python3}
STAGES=("$@")
[ ${#STAGES[@]} -gt 0 ] || STAGES=(wheels peers cuda)
mkdir -p "$DEST" "$CACHE"

# The pinned inputs. The GPU machine of these sessions: Python 3.12, torch 2.11.0+cu130.
WHEELS=(einops==0.8.1 mambapy==1.2.0 accelerated-scan==0.3.1 jsonargparse==4.53.0 docstring-parser==0.18.0
        typeshed-client==2.15.0)
MAMBA_URL=https://files.pythonhosted.org/packages/af/48/aa7bec0efc7453fa0512276c0069c854bf684219050294266534bfef34bb/mamba_ssm-2.3.2.post1.tar.gz
MAMBA_SHA=104cc47e9101e5401a675fa2b784f2952b9b037f3b1dd83b5ac544394e95d028
CONV_URL=https://files.pythonhosted.org/packages/f4/d1/eba27735f31bd5527d39a3c7f693e6ded7b844cab275db719a15ad37b6cd/causal_conv1d-1.7.0.tar.gz
CONV_SHA=3202758494eaa7b597ce1c282dfa188889506bfcb92cad3c407d26736bfcd32b
TORCH=torch==2.11.0
NVIDIA=(nvidia-cuda-nvcc==13.0.88 nvidia-cuda-crt==13.0.88 nvidia-nvvm==13.0.88 nvidia-cuda-runtime==13.0.96
        nvidia-cuda-cccl==13.0.85)
TORCH_PARTS=(torch/include/ torch/version.py torch/lib/libc10.so torch/lib/libc10_cuda.so torch/lib/libtorch.so
             torch/lib/libtorch_cpu.so torch/lib/libtorch_cuda.so)

say() { echo "gpu_data: $*" >&2; }

fetch_sdist() {  # url sha256 -> the checked tarball in $CACHE (printed)
  local url=$1 sha=$2 file
  file="$CACHE/$(basename "$url")"
  if ! echo "$sha  $file" | sha256sum -c --status 2>/dev/null; then
    curl -fsSL --retry 3 -o "$file.part" "$url" || { rm -f "$file.part"; say "could not download $url"; exit 1; }
    echo "$sha  $file.part" | sha256sum -c --status || {
      rm -f "$file.part"; say "SHA-256 of $(basename "$url") differs from the pinned $sha"; exit 1; }
    mv "$file.part" "$file"
  fi
  echo "$file"
}

unpack_sdist() {  # tarball -> $CACHE/src/<name-version> (printed)
  local tarball=$1 name
  name=$(basename "$tarball" .tar.gz)
  if [ ! -d "$CACHE/src/$name" ]; then
    mkdir -p "$CACHE/src"
    tar xzf "$tarball" -C "$CACHE/src"
    echo "$name from PyPI ($(basename "$tarball"), sha256 $(sha256sum "$tarball" | cut -c1-64))" > "$CACHE/src/$name/SOURCE"
  fi
  echo "$CACHE/src/$name"
}

install_package() {  # source tree, package folder name, destination folder: the package and SOURCE, renamed in
  local src=$1 pkg=$2 dest=$3
  if [ -d "$dest/$pkg" ] && [ "$FORCE" != 1 ]; then say "$dest/$pkg is there"; return; fi
  rm -rf "$dest.tmp" && mkdir -p "$dest.tmp"
  cp -r "$src/$pkg" "$dest.tmp/" && cp "$src/SOURCE" "$dest.tmp/"
  find "$dest.tmp" -name __pycache__ -prune -exec rm -rf {} +
  rm -rf "$dest" && mv "$dest.tmp" "$dest"
  say "$dest/$pkg ($(cat "$dest/SOURCE"))"
}

stage_wheels() {
  if compgen -G "$DEST/wheels/*.whl" >/dev/null && [ "$FORCE" != 1 ]; then say "$DEST/wheels is there"; return; fi
  rm -rf "$DEST/wheels.tmp"
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 -d "$DEST/wheels.tmp" "${WHEELS[@]}"
  rm -rf "$DEST/wheels" && mv "$DEST/wheels.tmp" "$DEST/wheels"
  say "$DEST/wheels: $(cd "$DEST/wheels" && ls | tr '\n' ' ')"
}

sources() {  # the unpacked, checked sdists into $mamba and $conv (plain assignments: set -e stops at a failure)
  local tarball
  tarball=$(fetch_sdist "$MAMBA_URL" "$MAMBA_SHA")
  mamba=$(unpack_sdist "$tarball")
  tarball=$(fetch_sdist "$CONV_URL" "$CONV_SHA")
  conv=$(unpack_sdist "$tarball")
}

stage_peers() {
  local mamba conv
  sources
  install_package "$mamba" mamba_ssm "$DEST/mamba"
  install_package "$conv" causal_conv1d "$DEST/causal-conv1d"
}

toolchain() {  # the torch parts and the CUDA root in $CACHE/toolchain (their wheels downloaded once)
  local tc="$CACHE/toolchain" w
  if [ ! -f "$tc/ready" ]; then
    mkdir -p "$CACHE/wheels"
    say "downloading $TORCH (the cu130 wheel) and ${NVIDIA[*]} into $CACHE/wheels"
    "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp --abi cp312 \
      --platform manylinux_2_28_x86_64 -d "$CACHE/wheels" "$TORCH"
    "$PY" -m pip download -q --no-deps --only-binary=:all: --platform manylinux2014_x86_64 \
      --platform manylinux_2_27_x86_64 --platform manylinux_2_28_x86_64 -d "$CACHE/wheels" "${NVIDIA[@]}"
    rm -rf "$tc" && mkdir -p "$tc/cuda"
    for w in "$CACHE"/wheels/nvidia_*.whl; do "$PY" -m zipfile -e "$w" "$tc/cuda"; done
    chmod -R +x "$tc/cuda/nvidia/cu13/bin" "$tc/cuda/nvidia/cu13/nvvm/bin"
    (cd "$tc" && "$PY" - "$CACHE"/wheels/torch-2.11.0-*.whl "${TORCH_PARTS[@]}" <<'EOF'
import sys, zipfile
wheel, parts = sys.argv[1], sys.argv[2:]
with zipfile.ZipFile(wheel) as z:
    names = [n for n in z.namelist() if any(n == p or (p.endswith("/") and n.startswith(p)) for p in parts)]
    z.extractall(".", names)
EOF
    )
    touch "$tc/ready"
  fi
  echo "$tc"
}

stage_cuda() {
  local tc mamba conv
  if [ -f "$DEST/cuda_peers/mamba_ssm_cuda.so" ] && [ -f "$DEST/cuda_peers/causal_conv1d_cuda.so" ] \
     && [ "$FORCE" != 1 ]; then say "$DEST/cuda_peers is there"; return; fi
  tc=$(toolchain)
  sources
  mkdir -p "$DEST/cuda_peers"
  PEER=selective_scan SRC="$mamba" CUDA_HOME="$tc/cuda/nvidia/cu13" TORCH_DIR="$tc/torch" OUT="$DEST/cuda_peers" \
    "$ROOT/scripts/cuda_peers/build.sh"
  PEER=causal_conv1d SRC="$conv" CUDA_HOME="$tc/cuda/nvidia/cu13" TORCH_DIR="$tc/torch" OUT="$DEST/cuda_peers" \
    "$ROOT/scripts/cuda_peers/build.sh"
}

for stage in "${STAGES[@]}"; do
  case "$stage" in
    wheels) stage_wheels ;;
    peers) stage_peers ;;
    cuda) stage_cuda ;;
    *) echo "gpu_data.sh: unknown stage '$stage' (wheels, peers, cuda)" >&2; exit 2 ;;
  esac
done
say "done; carry [\".gpu-data/wheels\", \".gpu-data/mamba\", \".gpu-data/causal-conv1d\", \".gpu-data/cuda_peers\"]" \
    "($(du -sh "$DEST" | cut -f1) in .gpu-data)"
