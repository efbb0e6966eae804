// bilinear_bwd on CUDA: recomputes p from the saved lse (see bwd_kernel.cuh).
#include "common/validate.h"
#include "cuda/bwd_kernel.cuh"
#include "cuda/ops_cuda.h"

namespace attnzoo {
namespace cuda {

Tensor4 bilinear_bwd(const at::Tensor& grad_out, const OptTensor& grad_lse, const at::Tensor& q,
                          const at::Tensor& k, const at::Tensor& v, const OptTensor& key_bias, double scale,
                          const OptTensor& valid_lens, const OptTensor& mask, int64_t pooling, bool causal,
                          int64_t window, const at::Tensor& out, const at::Tensor& lse, const at::Tensor& argmax,
                          const at::Tensor& soft_out) {
  const char* op = "attnzoo.bilinear_bwd";
  check_bilinear_fwd(op, q, k, v, key_bias, valid_lens, mask, pooling, window, /*allow_half=*/true);
  check_bwd_saved(op, q, v, grad_out, grad_lse, out, lse, argmax, soft_out, pooling);
  TORCH_CHECK(q.is_cuda(), op, ": the CUDA kernel needs CUDA tensors, got ", q.device());
  c10::cuda::CUDAGuard guard(q.device());
  const auto mp = make_mask_params(q.size(0), q.size(1), k.size(1), valid_lens, mask, pooling, causal, window);
  const auto o = (pooling == kHard ? soft_out : out).contiguous();
  auto r = generic_bwd<false>(grad_out.contiguous(), grad_lse, q.contiguous(), k.contiguous(), v.contiguous(),
                              contiguous_opt(key_bias), nullptr, scale, mp, o, lse, argmax);
  return {std::get<0>(r), std::get<1>(r), std::get<2>(r), std::get<3>(r)};
}

}  // namespace cuda
}  // namespace attnzoo
