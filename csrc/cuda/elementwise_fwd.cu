// attnzoo.elementwise_fwd on CUDA: s_ij = g(sum_h w_h phi(a_ih, b_jh)), never materialising
// (Nq, Nk, H): the generic driver (fwd_driver.cuh) with the elementwise tile policy
// (elementwise_tile.cuh), one instantiation per term.
#include "common/validate.h"
#include "cuda/elementwise_tile.cuh"
#include "cuda/fwd_driver.cuh"
#include "cuda/ops_cuda.h"

namespace attnzoo {
namespace cuda {

Tensor5 elementwise_fwd(const at::Tensor& a, const at::Tensor& b, const at::Tensor& w, const at::Tensor& v,
                        int64_t term, int64_t profile, ATTNZOO_MASK_PARAMS, bool entropy,
                     ATTNZOO_NOISE_PARAMS, ATTNZOO_LAYOUT_PARAMS) {
  const char* op = "attnzoo.elementwise_fwd";
  check_elementwise_fwd(op, a, b, w, v, term, profile, valid_lens, mask, bias, alibi, pooling, window, kCudaDtypes);
  check_entropy(op, pooling, entropy, false);
  TORCH_CHECK(a.is_cuda(), op, ": the CUDA kernel needs CUDA tensors, got ", a.device());
  c10::cuda::CUDAGuard guard(a.device());
  const auto ac = a.contiguous(), bc = b.contiguous(), wc = w.contiguous(), vc = v.contiguous();
  const Positions pos = positions_acc(bias, alibi, acc_type(a.scalar_type()));
  auto mp = make_mask_params(a.size(0), a.size(1), b.size(1), valid_lens, mask, pos, pooling, causal, window);
  set_noise("attnzoo.elementwise_fwd", mp, seed, tau, false);
  set_layout("attnzoo.elementwise_fwd", mp, b.size(0), q_offset, false);
  auto outs = empty_fwd_outputs(ac, v.size(2), pooling, a.scalar_type());
  ATTNZOO_DISPATCH_CUDA_DTYPES(a.scalar_type(), "attnzoo.elementwise_fwd", [&] {
    using A = typename AccOf<scalar_t>::type;
    dispatch_term(term, [&](auto tc) {
      using Tile = ElementwiseTile<decltype(tc)::value, scalar_t, A>;
      const Tile fam{ac.const_data_ptr<scalar_t>(), bc.const_data_ptr<scalar_t>(), a.size(2),
                     wc.const_data_ptr<scalar_t>(), nullptr, profile};
      generic_fwd<Tile, scalar_t>(fam, vc, mp, outs);
    });
  });
  return without_entropy(outs, ac);
}

}  // namespace cuda
}  // namespace attnzoo
