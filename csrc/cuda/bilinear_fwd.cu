// bilinear_fwd on CUDA: s_ij = scale q_i . k_j + key_bias_j, pooled over the valid keys.
// float16/bfloat16 with supported head sizes go to the tensor-core kernel
// (bilinear_fwd_mma.cu); everything else to the generic tiled kernel (fwd_kernel.cuh).
#include "common/validate.h"
#include "cuda/fwd_kernel.cuh"
#include "cuda/ops_cuda.h"

namespace attnzoo {
namespace cuda {

Tensor4 bilinear_fwd(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const OptTensor& key_bias,
                          double scale, const OptTensor& valid_lens, const OptTensor& mask, int64_t pooling,
                          bool causal, int64_t window) {
  check_bilinear_fwd("attnzoo.bilinear_fwd", q, k, v, key_bias, valid_lens, mask, pooling, window, /*allow_half=*/true);
  TORCH_CHECK(q.is_cuda(), "attnzoo.bilinear_fwd: the CUDA kernel needs CUDA tensors, got ", q.device());
  c10::cuda::CUDAGuard guard(q.device());
  const auto qc = q.contiguous(), kc = k.contiguous(), vc = v.contiguous();
  const auto kbc = contiguous_opt(key_bias);
  Tensor4 result;
  if (bilinear_fwd_mma(qc, kc, vc, kbc, scale, valid_lens, mask, pooling, causal, window, result)) return result;
  const auto mp = make_mask_params(q.size(0), q.size(1), k.size(1), valid_lens, mask, pooling, causal, window);
  return generic_fwd<false>(qc, kc, vc, kbc, nullptr, scale, mp);
}

}  // namespace cuda
}  // namespace attnzoo
