// attnzoo::bilinear_fwd on CPU: out_i = pool_j(s_ij) v_j, s_ij = scale * q_i . k_j + key_bias_j.
// q (B, Nq, D), k (B, Nk, D), v (B, Nk, Dv), key_bias (B, Nk) -> out (B, Nq, Dv), lse (B, Nq),
// argmax (B, Nq) and soft_out (B, Nq, Dv) for hard pooling, entropy (B, Nq) when asked for (soft). One pass
// over key blocks (online softmax); bfloat16 is computed in float32.
#include <ATen/Dispatch.h>

#include "common/validate.h"
#include "cpu/bilinear_scorer.h"
#include "cpu/ops_cpu.h"
#include "cpu/small_d.h"

namespace attnzoo::cpu {

Tensor5 bilinear_fwd(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const OptTensor& key_bias,
                     double scale, ATTNZOO_MASK_PARAMS, bool entropy,
                     ATTNZOO_NOISE_PARAMS, ATTNZOO_LAYOUT_PARAMS) {
  check_bilinear_fwd("attnzoo.bilinear_fwd", q, k, v, key_bias, valid_lens, mask, bias, alibi, pooling, window,
                     kCpuDtypes);
  check_entropy("attnzoo.bilinear_fwd", pooling, entropy, true);
  const int64_t B = q.size(0), Nq = q.size(1), D = q.size(2), Nk = k.size(1), Dv = v.size(2);
  const auto qa = to_acc(q);
  const auto kba = to_acc(key_bias);
  const Positions pos = positions_acc(bias, alibi, qa.scalar_type());
  auto mp = make_mask_params(B, Nq, Nk, valid_lens, mask, pos, pooling, causal, window);
  set_noise("attnzoo.bilinear_fwd", mp, seed, tau, true);
  set_layout("attnzoo.bilinear_fwd", mp, k.size(0), q_offset, true);
  const auto outs = empty_fwd_outputs(qa, Dv, pooling, qa.scalar_type());
  const auto ent = empty_entropy(qa, entropy);
  AT_DISPATCH_FLOATING_TYPES(qa.scalar_type(), "attnzoo.bilinear_fwd", [&] {
    if (!entropy && small_d_supported<scalar_t>(mp, D, Dv))
      return small_d_run<scalar_t>(mp, qa, to_acc(k), to_acc(v), kba, scale, at::Tensor(), outs);
    const auto ka = rows_acc(k), va = rows_acc(v);  // (the blocks read keys and values at their batch strides)
    // A pooling that compares scores exactly (hard) gets the same arithmetic for every key.
    // (padded by the widest vector, AVX-512's, which uniform_scores may read past the last key)
    constexpr int64_t kPad = 64 / sizeof(scalar_t);
    const auto kT = pooling_traits(pooling).exact_ties ? transposed_keys(ka, D, kPad, kPad) : at::Tensor();
    const auto sc = make_bilinear_scorer<scalar_t>(qa, ka, kba, scale, at::Tensor(), kT);
    forward_cpu<scalar_t>(mp, bilinear_blocks(B, Nq, Nk, causal, window, false), Dv, va.const_data_ptr<scalar_t>(),
                          va.stride(0), fwd_out<scalar_t>(outs, ent), [&] { return sc; });
  });
  const auto& [out, lse, argmax, soft_out] = outs;
  return {out.to(q.scalar_type()), lse, argmax, soft_out.to(q.scalar_type()), ent};
}

}  // namespace attnzoo::cpu
