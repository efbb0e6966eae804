// attnzoo::bilinear_fwd on CPU: out_i = pool_j(s_ij) v_j, s_ij = scale * q_i . k_j + key_bias_j.
// q (B, Nq, D), k (B, Nk, D), v (B, Nk, Dv), key_bias (B, Nk) -> out (B, Nq, Dv), lse (B, Nq),
// argmax (B, Nq) and soft_out (B, Nq, Dv) for hard pooling. One pass over key blocks (online
// softmax); bfloat16 is computed in float32.
#include <ATen/Dispatch.h>

#include "common/validate.h"
#include "cpu/bilinear_scorer.h"
#include "cpu/ops_cpu.h"

namespace attnzoo::cpu {

Tensor4 bilinear_fwd(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const OptT& key_bias,
                     double scale, const OptT& valid_lens, const OptT& mask, int64_t pooling, bool causal,
                     int64_t window) {
  check_bilinear_fwd("attnzoo.bilinear_fwd", q, k, v, key_bias, valid_lens, mask, pooling, window, false);
  const int64_t B = q.size(0), Nq = q.size(1), D = q.size(2), Nk = k.size(1), Dv = v.size(2);
  const auto qa = to_acc(q), ka = to_acc(k), va = to_acc(v);
  const auto kba = to_acc(key_bias);
  const MaskParams mp = make_mask_params(B, Nq, Nk, valid_lens, mask, pooling, causal, window);
  const bool hard = pooling == kHard;
  auto out = at::empty({B, Nq, Dv}, qa.options());
  auto lse = at::empty({B, Nq}, qa.options());
  auto argmax = hard ? at::empty({B, Nq}, q.options().dtype(at::kLong)) : at::empty({0}, q.options().dtype(at::kLong));
  auto soft_out = hard ? at::empty({B, Nq, Dv}, qa.options()) : at::empty({0}, q.options());
  AT_DISPATCH_FLOATING_TYPES(qa.scalar_type(), "attnzoo.bilinear_fwd", [&] {
    const BilinearScorer<scalar_t> sc{qa.const_data_ptr<scalar_t>(),
                                      ka.const_data_ptr<scalar_t>(),
                                      kba ? kba->const_data_ptr<scalar_t>() : nullptr,
                                      static_cast<scalar_t>(scale),
                                      Nq,
                                      Nk,
                                      D,
                                      nullptr};
    forward_cpu<scalar_t>(mp, bilinear_blocks(B, Nq, causal, window, false), Dv, va.const_data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), lse.data_ptr<scalar_t>(),
                          hard ? argmax.data_ptr<int64_t>() : nullptr,
                          hard ? soft_out.data_ptr<scalar_t>() : nullptr, [&] { return sc; });
  });
  return {out.to(q.scalar_type()), lse, argmax, hard ? soft_out.to(q.scalar_type()) : soft_out};
}

}  // namespace attnzoo::cpu
