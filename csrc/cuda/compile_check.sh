#!/usr/bin/env bash
# Compile-check every CUDA source of attnzoo (csrc/cuda/*.cu, *.cpp) for sm_80 and sm_90
# against the installed torch headers, one file at a time, with the flags setup.py /
# torch's BuildExtension use. Works without a GPU (needs nvcc). Usage:
#   csrc/cuda/compile_check.sh [file ...]      (default: all sources)
# Env: NVCC (default nvcc), ARCHS (default "80 90"), OUTDIR (default a temp dir).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
NVCC="${NVCC:-nvcc}"
ARCHS="${ARCHS:-80 90}"
OUTDIR="${OUTDIR:-$(mktemp -d)}"
T="$(python3 -c 'import torch, os; print(os.path.dirname(torch.__file__))')"
PYINC="$(python3 -c 'import sysconfig; print(sysconfig.get_paths()["include"])')"
ABI="$(python3 -c 'import torch; print(int(torch._C._GLIBCXX_USE_CXX11_ABI))')"
# The CPU torch wheel ships the c10/cuda headers but not the generated cuda_cmake_macros.h:
# supply a stand-in (its content in CUDA builds) when it is missing.
SHIM="$OUTDIR/shim"
if [ ! -f "$T/include/c10/cuda/impl/cuda_cmake_macros.h" ]; then
  mkdir -p "$SHIM/c10/cuda/impl"
  printf '#pragma once\n#define C10_CUDA_BUILD_SHARED_LIBS\n' > "$SHIM/c10/cuda/impl/cuda_cmake_macros.h"
fi
INC=(-I"$SHIM" -I"$T/include" -I"$T/include/torch/csrc/api/include" -I"$ROOT/csrc" -I"$PYINC")
DEFS=(-DATTNZOO_WITH_CUDA -DTORCH_API_INCLUDE_EXTENSION_H -DTORCH_EXTENSION_NAME=_C -D_GLIBCXX_USE_CXX11_ABI="$ABI")
GENCODE=()
for a in $ARCHS; do GENCODE+=(-gencode "arch=compute_${a},code=sm_${a}"); done
# BuildExtension adds these to every nvcc command line (torch.utils.cpp_extension.COMMON_NVCC_FLAGS).
TORCH_NVCC=(-D__CUDA_NO_HALF_OPERATORS__ -D__CUDA_NO_HALF_CONVERSIONS__ -D__CUDA_NO_BFLOAT16_CONVERSIONS__
            -D__CUDA_NO_HALF2_OPERATORS__ --expt-relaxed-constexpr)
if [ "$#" -gt 0 ]; then FILES=("$@"); else FILES=("$ROOT"/csrc/cuda/*.cu "$ROOT"/csrc/cuda/*.cpp); fi
status=0
for f in "${FILES[@]}"; do
  o="$OUTDIR/$(basename "$f").o"
  case "$f" in
    *.cu)
      cmd=("$NVCC" -std=c++17 -O3 --use_fast_math -lineinfo "${TORCH_NVCC[@]}" "${GENCODE[@]}" "${INC[@]}" "${DEFS[@]}"
           -Xcompiler -fPIC -c "$f" -o "$o") ;;
    *.cpp)  # setup.py compiles these with the host compiler; nvcc -x cu checks them with the CUDA headers too
      cmd=("${CXX:-g++}" -std=c++17 -O2 -fPIC -I/usr/local/cuda/include "${INC[@]}" "${DEFS[@]}" -c "$f" -o "$o") ;;
  esac
  echo "== $f"
  if ! "${cmd[@]}"; then status=1; echo "FAILED: $f"; fi
done
[ "$status" = 0 ] && echo "all CUDA sources compile (${ARCHS})"
exit "$status"
