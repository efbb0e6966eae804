#!/usr/bin/env bash
# On a GPU machine (H100): build attnzoo with its CUDA kernels, run the CUDA tests, then
# time the performance targets against their peers (benchmarks/gpu_targets.py).
#   benchmarks/run_gpu.sh [--quick] [--only scaled_dot,variants,additive,window]
# Env: TORCH_CUDA_ARCH_LIST (default 9.0), SKIP_BUILD=1, SKIP_TESTS=1.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv || true
if [ -z "${SKIP_BUILD:-}" ]; then
  MAX_JOBS="${MAX_JOBS:-$(nproc)}" python -m pip install --no-build-isolation -v -e . 2>&1 | tail -n 40
fi
python - <<'PY'
import torch, attnzoo.ops as ops
print("torch", torch.__version__, "cuda", torch.version.cuda, "| attnzoo", ops.EXTENSION_STATUS, ops.build_info())
assert torch.cuda.is_available(), "no CUDA device"
assert "cuda" in ops.compiled_devices(), "extension built without CUDA"
PY
if [ -z "${SKIP_TESTS:-}" ]; then
  python -m pytest -q -m cuda tests/test_fused_ops_cuda.py || echo "!! CUDA tests failed (benchmarks run anyway)"
fi
python benchmarks/gpu_targets.py "$@"
