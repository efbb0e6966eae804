// additive_fwd on CUDA: s_ij = sum_h w_h tanh(a_ih + b_jh), never materialising (Nq, Nk, H).
#include "common/validate.h"
#include "cuda/fwd_kernel.cuh"
#include "cuda/ops_cuda.h"

namespace attnzoo {
namespace cuda {

Tensor4 additive_fwd(const at::Tensor& a, const at::Tensor& b, const at::Tensor& w, const at::Tensor& v,
                          const OptTensor& valid_lens, const OptTensor& mask, int64_t pooling, bool causal,
                          int64_t window) {
  check_additive_fwd("attnzoo.additive_fwd", a, b, w, v, valid_lens, mask, pooling, window, /*allow_half=*/true);
  TORCH_CHECK(a.is_cuda(), "attnzoo.additive_fwd: the CUDA kernel needs CUDA tensors, got ", a.device());
  c10::cuda::CUDAGuard guard(a.device());
  const auto ac = a.contiguous(), bc = b.contiguous(), wc = w.contiguous(), vc = v.contiguous();
  const auto mp = make_mask_params(a.size(0), a.size(1), b.size(1), valid_lens, mask, pooling, causal, window);
  return generic_fwd<true>(ac, bc, vc, c10::nullopt, &wc, 1.0, mp);
}

}  // namespace cuda
}  // namespace attnzoo
