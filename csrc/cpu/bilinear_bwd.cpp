// attnzoo::bilinear_bwd on CPU (flash-attention style: scores recomputed per block from lse).
// p_ij = exp(s_ij - lse_i); dv_j = sum_i p_ij dO_i (hard: one-hot of argmax);
// ds_ij = p_ij (dO_i . v_j - D_i), D_i = dO_i . o_i - grad_lse_i (o = soft_out for hard; average: ds = 0);
// the entropy's gradient gH adds -gH_i p_ij (log p_ij + H_i);
// dq_i = scale sum_j ds_ij k_j, dk_j = scale sum_i ds_ij q_i, dkey_bias_j = sum_i ds_ij, dbias_ij = ds_ij.
#include <ATen/Dispatch.h>

#include "common/validate.h"
#include "cpu/bilinear_scorer.h"
#include "cpu/ops_cpu.h"

namespace attnzoo::cpu {

Tensor5 bilinear_bwd(const at::Tensor& grad_out, const OptTensor& grad_lse, const at::Tensor& q, const at::Tensor& k,
                     const at::Tensor& v, const OptTensor& key_bias, double scale, ATTNZOO_MASK_PARAMS,
                     bool bias_grad, ATTNZOO_SAVED_PARAMS, ATTNZOO_ENTROPY_GRAD_PARAMS,
                     ATTNZOO_NOISE_PARAMS, ATTNZOO_LAYOUT_PARAMS) {
  const char* op = "attnzoo.bilinear_bwd";
  check_bilinear_fwd(op, q, k, v, key_bias, valid_lens, mask, bias, alibi, pooling, window, kCpuDtypes);
  check_bwd_saved(op, q, v, grad_out, grad_lse, out, lse, argmax, soft_out, pooling);
  check_entropy_grad(op, q, pooling, grad_entropy, saved_entropy, true);
  const int64_t B = q.size(0), Nq = q.size(1), Nk = k.size(1), Dv = v.size(2);
  const auto qa = to_acc(q), ka = to_acc(k), va = to_acc(v), go = to_acc(grad_out);
  const auto kba = to_acc(key_bias), gl = to_acc(grad_lse), ge = contiguous_opt(grad_entropy);
  const auto se = contiguous_opt(saved_entropy);
  const auto od = to_acc(softmax_output(pooling, out, soft_out)), lsea = lse.contiguous(), am = argmax.contiguous();
  const Positions pos = positions_acc(bias, alibi, qa.scalar_type());
  auto mp = make_mask_params(B, Nq, Nk, valid_lens, mask, pos, pooling, causal, window);
  set_noise(op, mp, seed, tau, true);
  set_layout(op, mp, k.size(0), q_offset, true);
  const BiasGradOut dbias = make_bias_grad(pos, bias_grad, B, Nq, Nk);
  auto dq = at::zeros_like(qa), dk = at::zeros_like(ka), dv = at::zeros_like(va);
  auto dkb = kba ? at::zeros_like(*kba) : at::Tensor();
  std::vector<AccSpec> accs{{dv, true}, {dk, true}, {dkb, true}};
  AT_DISPATCH_FLOATING_TYPES(qa.scalar_type(), "attnzoo.bilinear_bwd", [&] {
    const auto sc = make_bilinear_scorer<scalar_t>(qa, ka, kba, scale, dq);
    backward_cpu<scalar_t>(mp, bilinear_blocks(B, Nq, Nk, causal, window, true), Dv, va.const_data_ptr<scalar_t>(),
                           go.const_data_ptr<scalar_t>(), bwd_in<scalar_t>(lsea, am, od, gl, Nk, ge, se), accs, dbias,
                           [&] { return sc; });
  });
  auto dkb_out = key_bias ? dkb.to(key_bias->scalar_type()) : at::empty({0}, q.options());
  return {dq.to(q.scalar_type()), dk.to(k.scalar_type()), dv.to(v.scalar_type()), dkb_out,
          dbias_output(dbias, bias, q)};
}

}  // namespace attnzoo::cpu
