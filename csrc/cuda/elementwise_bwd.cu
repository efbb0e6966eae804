// attnzoo.elementwise_bwd on CUDA: da, db (and dw partials per key tile) recompute phi(a_ih, b_jh)
// tile by tile; nothing of size (Nq, Nk, H) is stored (bwd_driver.cuh, elementwise_tile.cuh).
#include "common/validate.h"
#include "cuda/elementwise_tile.cuh"
#include "cuda/bwd_driver.cuh"
#include "cuda/ops_cuda.h"

namespace attnzoo {
namespace cuda {

Tensor5 elementwise_bwd(const at::Tensor& grad_out, const OptTensor& grad_lse, const at::Tensor& a,
                        const at::Tensor& b, const at::Tensor& w, const at::Tensor& v, int64_t term, int64_t profile,
                        ATTNZOO_MASK_PARAMS, bool bias_grad, ATTNZOO_SAVED_PARAMS,
                     ATTNZOO_ENTROPY_GRAD_PARAMS,
                     ATTNZOO_NOISE_PARAMS, ATTNZOO_LAYOUT_PARAMS) {
  const char* op = "attnzoo.elementwise_bwd";
  check_elementwise_fwd(op, a, b, w, v, term, profile, valid_lens, mask, bias, alibi, pooling, window, kCudaDtypes);
  check_bwd_saved(op, a, v, grad_out, grad_lse, out, lse, argmax, soft_out, pooling);
  check_entropy_grad(op, a, pooling, grad_entropy, saved_entropy, false);
  TORCH_CHECK(a.is_cuda(), op, ": the CUDA kernel needs CUDA tensors, got ", a.device());
  c10::cuda::CUDAGuard guard(a.device());
  const Positions pos = positions_acc(bias, alibi, acc_type(a.scalar_type()));
  auto mp = make_mask_params(a.size(0), a.size(1), b.size(1), valid_lens, mask, pos, pooling, causal, window);
  set_noise(op, mp, seed, tau, false);
  set_layout(op, mp, b.size(0), q_offset, false);
  const BiasGradOut dbias = make_bias_grad(pos, bias_grad, a.size(0), a.size(1), b.size(1));
  const auto o = softmax_output(pooling, out, soft_out).contiguous();
  const auto ac = a.contiguous(), bc = b.contiguous(), wc = w.contiguous(), vc = v.contiguous();
  const int64_t H = a.size(2);
  auto da = at::zeros_like(ac), db = at::zeros_like(bc), dv = at::zeros_like(vc);
  const bool with_dw = pooling_traits(pooling).score_grad && H > 0;
  const auto dw_ws = with_dw ? at::zeros({a.size(0) * key_tiles(b.size(1)), H}, a.options().dtype(acc_type(a.scalar_type())))
                             : at::Tensor();
  ATTNZOO_DISPATCH_CUDA_DTYPES(a.scalar_type(), "attnzoo.elementwise_bwd", [&] {
    using A = typename AccOf<scalar_t>::type;
    dispatch_term(term, [&](auto tc) {
      using Tile = ElementwiseTile<decltype(tc)::value, scalar_t, A>;
      const Tile fam{ac.const_data_ptr<scalar_t>(), bc.const_data_ptr<scalar_t>(), H, wc.const_data_ptr<scalar_t>(),
                     with_dw ? dw_ws.mutable_data_ptr<A>() : nullptr, profile};
      generic_bwd<Tile, scalar_t>(fam, grad_out.contiguous(), grad_lse, vc, mp, o, lse, argmax, da, db, dv, dbias.g);
    });
  });
  const auto dw = with_dw ? dw_ws.sum(0).to(w.scalar_type()) : at::zeros_like(w);
  return {da, db, dw, dv, dbias_output(dbias, bias, a)};
}

}  // namespace cuda
}  // namespace attnzoo
