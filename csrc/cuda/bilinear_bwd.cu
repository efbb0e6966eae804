// attnzoo.bilinear_bwd on CUDA: recomputes p from the saved lse (bwd_driver.cuh) with the
// bilinear tile policy (bilinear_tile.cuh).
#include "common/validate.h"
#include "cuda/bilinear_tile.cuh"
#include "cuda/bwd_driver.cuh"
#include "cuda/ops_cuda.h"

namespace attnzoo {
namespace cuda {

Tensor5 bilinear_bwd(const at::Tensor& grad_out, const OptTensor& grad_lse, const at::Tensor& q, const at::Tensor& k,
                     const at::Tensor& v, const OptTensor& key_bias, double scale, ATTNZOO_MASK_PARAMS,
                     bool bias_grad, ATTNZOO_SAVED_PARAMS,
                     ATTNZOO_ENTROPY_GRAD_PARAMS,
                     ATTNZOO_NOISE_PARAMS, ATTNZOO_LAYOUT_PARAMS) {
  const char* op = "attnzoo.bilinear_bwd";
  check_bilinear_fwd(op, q, k, v, key_bias, valid_lens, mask, bias, alibi, pooling, window, kCudaDtypes);
  check_bwd_saved(op, q, v, grad_out, grad_lse, out, lse, argmax, soft_out, pooling);
  check_entropy_grad(op, q, pooling, grad_entropy, saved_entropy, false);
  TORCH_CHECK(q.is_cuda(), op, ": the CUDA kernel needs CUDA tensors, got ", q.device());
  c10::cuda::CUDAGuard guard(q.device());
  const Positions pos = positions_acc(bias, alibi, acc_type(q.scalar_type()));
  auto mp = make_mask_params(q.size(0), q.size(1), k.size(1), valid_lens, mask, pos, pooling, causal, window);
  set_noise(op, mp, seed, tau, false);
  set_layout(op, mp, k.size(0), q_offset, false);
  const BiasGradOut dbias = make_bias_grad(pos, bias_grad, q.size(0), q.size(1), k.size(1));
  const auto o = softmax_output(pooling, out, soft_out).contiguous();
  const auto qc = q.contiguous(), kc = k.contiguous(), vc = v.contiguous();
  const auto kbc = contiguous_opt(key_bias);
  auto dq = at::zeros_like(qc), dk = at::zeros_like(kc), dv = at::zeros_like(vc);
  auto dkb = kbc ? at::zeros_like(*kbc) : at::empty({0}, q.options());
  ATTNZOO_DISPATCH_CUDA_DTYPES(q.scalar_type(), "attnzoo.bilinear_bwd", [&] {
    using A = typename AccOf<scalar_t>::type;
    const BilinearTile<scalar_t, A> fam{qc.const_data_ptr<scalar_t>(), kc.const_data_ptr<scalar_t>(), q.size(2),
                                        kbc ? kbc->const_data_ptr<scalar_t>() : nullptr, static_cast<A>(scale),
                                        kbc ? dkb.mutable_data_ptr<scalar_t>() : nullptr};
    generic_bwd<BilinearTile<scalar_t, A>, scalar_t>(fam, grad_out.contiguous(), grad_lse, vc, mp, o, lse, argmax,
                                                     dq, dk, dv, dbias.g);
  });
  return {dq, dk, dv, dkb, dbias_output(dbias, bias, q)};
}

}  // namespace cuda
}  // namespace attnzoo
