#!/usr/bin/env bash
# On a GPU machine (H100): build attnzoo with its CUDA kernels, check a few small CUDA cases under
# compute-sanitizer (memcheck, racecheck, synccheck), run the CUDA tests, then time the
# performance targets against their peers (benchmarks/gpu_targets.py).
#   benchmarks/run_gpu.sh [--quick] [--only scaled_dot,variants,additive,window]
# Env: TORCH_CUDA_ARCH_LIST (default 9.0), SKIP_BUILD=1, SKIP_SANITIZER=1, SKIP_TESTS=1.
# A failed step does not stop the later ones (the run still yields numbers), but the script
# exits 1 at the end, naming each failed step: a sanitizer tool that reported errors (its log
# says which kernel and where), the CUDA tests, and/or gpu_targets.py (a measured target
# FAILed; see its last lines for which and by how much). Without compute-sanitizer on PATH
# the sanitizer step is skipped with a message.
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
# A few small cases (forward and backward, both families, every pooling, the generic and the
# tensor-core kernels, masks, chunked head dims, no keys) under each sanitizer tool; PyTorch's
# caching allocator is off so that memcheck sees each tensor's own bounds.
SANITIZER_CASES="test_against_reference and (bilinear-all-hard-torch.float32 or additive-mask_full-soft-torch.float64"
SANITIZER_CASES="$SANITIZER_CASES or bilinear-causal-average-torch.bfloat16 or additive-window-hard-torch.float16)"
SANITIZER_CASES="$SANITIZER_CASES or test_tensor_core_forward and (all-hard-torch.float16-64 or window-soft-torch.bfloat16-128)"
SANITIZER_CASES="$SANITIZER_CASES or test_chunked_dims and bilinear-torch.float32 or test_no_keys"
if [ -n "${SKIP_SANITIZER:-}" ]; then
  echo "== compute-sanitizer: skipped (SKIP_SANITIZER is set)"
elif ! command -v compute-sanitizer >/dev/null 2>&1; then
  echo "== compute-sanitizer: not on PATH (it ships with the CUDA toolkit: \$CUDA_HOME/bin); sanitizer checks skipped"
else
  for tool in memcheck racecheck synccheck; do
    echo "== compute-sanitizer --tool $tool"
    if ! PYTORCH_NO_CUDA_MEMORY_CACHING=1 compute-sanitizer --tool "$tool" --error-exitcode 1 \
        python -m pytest -q -x -p no:cacheprovider tests/test_fused_ops_cuda.py -k "$SANITIZER_CASES"; then
      echo "!! compute-sanitizer $tool reported errors (or the cases failed)"
      failed="${failed:+$failed; }compute-sanitizer $tool (its report is above)"
    fi
  done
fi
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
