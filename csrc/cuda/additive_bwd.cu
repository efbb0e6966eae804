// additive_bwd on CUDA: da, db (and dw partials per key tile) recompute tanh(a_ih + b_jh)
// tile by tile; nothing of size (Nq, Nk, H) is stored (see bwd_kernel.cuh).
#include "common/validate.h"
#include "cuda/bwd_kernel.cuh"
#include "cuda/ops_cuda.h"

namespace attnzoo {
namespace cuda {

Tensor4 additive_bwd(const at::Tensor& grad_out, const OptTensor& grad_lse, const at::Tensor& a,
                          const at::Tensor& b, const at::Tensor& w, const at::Tensor& v, const OptTensor& valid_lens,
                          const OptTensor& mask, int64_t pooling, bool causal, int64_t window, const at::Tensor& out,
                          const at::Tensor& lse, const at::Tensor& argmax, const at::Tensor& soft_out) {
  const char* op = "attnzoo.additive_bwd";
  check_additive_fwd(op, a, b, w, v, valid_lens, mask, pooling, window, /*allow_half=*/true);
  check_bwd_saved(op, a, v, grad_out, grad_lse, out, lse, argmax, soft_out, pooling);
  TORCH_CHECK(a.is_cuda(), op, ": the CUDA kernel needs CUDA tensors, got ", a.device());
  c10::cuda::CUDAGuard guard(a.device());
  const auto mp = make_mask_params(a.size(0), a.size(1), b.size(1), valid_lens, mask, pooling, causal, window);
  const auto o = (pooling == kHard ? soft_out : out).contiguous();
  const auto wc = w.contiguous();
  auto r = generic_bwd<true>(grad_out.contiguous(), grad_lse, a.contiguous(), b.contiguous(), v.contiguous(),
                             c10::nullopt, &wc, 1.0, mp, o, lse, argmax);
  return {std::get<0>(r), std::get<1>(r), std::get<4>(r), std::get<2>(r)};
}

}  // namespace cuda
}  // namespace attnzoo
