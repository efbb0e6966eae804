#!/usr/bin/env bash
# On a GPU machine (H100): build attnzoo with its CUDA kernels, run the CUDA tests, then
# time the performance targets against their peers (benchmarks/gpu_targets.py).
#   benchmarks/run_gpu.sh [--quick] [--only scaled_dot,variants,additive,window]
# Env: TORCH_CUDA_ARCH_LIST (default 9.0), SKIP_BUILD=1, SKIP_TESTS=1.
# A failed CUDA test run does not stop the benchmarks (the run still yields numbers), but the
# script exits 1 at the end, naming each failed step: the CUDA tests, and/or gpu_targets.py
# (a measured target FAILed; see its last lines for which and by how much).
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
failed=""  # the steps that failed, "; "-separated
if [ -z "${SKIP_TESTS:-}" ]; then
  if ! python -m pytest -q -m cuda tests/test_fused_ops_cuda.py; then
    echo "!! CUDA tests failed (benchmarks run anyway)"
    failed="${failed:+$failed; }CUDA tests (pytest -m cuda tests/test_fused_ops_cuda.py)"
  fi
fi
if ! python benchmarks/gpu_targets.py "$@"; then
  failed="${failed:+$failed; }GPU targets (benchmarks/gpu_targets.py: a target FAILed or the run broke)"
fi
if [ -n "$failed" ]; then
  echo "!! run_gpu.sh FAILED: $failed"
  exit 1
fi
echo "run_gpu.sh: all steps passed"
