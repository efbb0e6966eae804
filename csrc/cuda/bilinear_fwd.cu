// attnzoo.bilinear_fwd on CUDA: s_ij = scale q_i . k_j + key_bias_j, pooled over the valid keys.
// float16/bfloat16 with supported head sizes go to the tensor-core kernel
// (bilinear_fwd_mma.cu); everything else to the generic driver (fwd_driver.cuh) with the
// bilinear tile policy (bilinear_tile.cuh).
#include "common/validate.h"
#include "cuda/bilinear_tile.cuh"
#include "cuda/fwd_driver.cuh"
#include "cuda/ops_cuda.h"

namespace attnzoo {
namespace cuda {

Tensor5 bilinear_fwd(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const OptTensor& key_bias,
                     double scale, ATTNZOO_MASK_PARAMS, bool entropy,
                     ATTNZOO_NOISE_PARAMS, ATTNZOO_LAYOUT_PARAMS) {
  const char* op = "attnzoo.bilinear_fwd";
  check_bilinear_fwd(op, q, k, v, key_bias, valid_lens, mask, bias, alibi, pooling, window, kCudaDtypes);
  check_entropy(op, pooling, entropy, false);
  TORCH_CHECK(q.is_cuda(), op, ": the CUDA kernel needs CUDA tensors, got ", q.device());
  c10::cuda::CUDAGuard guard(q.device());
  const auto qc = q.contiguous(), kc = k.contiguous(), vc = v.contiguous();
  const auto kbc = contiguous_opt(key_bias);
  const Positions pos = positions_acc(bias, alibi, acc_type(q.scalar_type()));
  auto mp = make_mask_params(q.size(0), q.size(1), k.size(1), valid_lens, mask, pos, pooling, causal, window);
  set_noise("attnzoo.bilinear_fwd", mp, seed, tau, false);
  set_layout("attnzoo.bilinear_fwd", mp, k.size(0), q_offset, false);
  Tensor4 outs;
  if (bilinear_fwd_mma(qc, kc, vc, kbc, scale, mp, outs)) return without_entropy(outs, qc);
  outs = empty_fwd_outputs(qc, v.size(2), pooling, q.scalar_type());
  ATTNZOO_DISPATCH_CUDA_DTYPES(q.scalar_type(), "attnzoo.bilinear_fwd", [&] {
    using A = typename AccOf<scalar_t>::type;
    const BilinearTile<scalar_t, A> fam{qc.const_data_ptr<scalar_t>(), kc.const_data_ptr<scalar_t>(), q.size(2),
                                        kbc ? kbc->const_data_ptr<scalar_t>() : nullptr, static_cast<A>(scale),
                                        nullptr};
    generic_fwd<BilinearTile<scalar_t, A>, scalar_t>(fam, vc, mp, outs);
  });
  return without_entropy(outs, qc);
}

}  // namespace cuda
}  // namespace attnzoo
