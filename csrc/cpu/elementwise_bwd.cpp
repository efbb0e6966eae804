// attnzoo::elementwise_bwd on CPU (scores and terms recomputed per block from lse).
// p_ij = exp(s_ij - lse_i); dv_j = sum_i p_ij dO_i (hard: one-hot of argmax);
// ds_ij = p_ij (dO_i . v_j - D_i), D_i = dO_i . o_i - grad_lse_i (o = soft_out for hard; average: ds = 0);
// the entropy's gradient gH adds -gH_i p_ij (log p_ij + H_i);
// with dr = ds g'(r) and phi_ijh = phi(a_ih, b_jh): da_ih = sum_j dr_ij w_h dphi/da, db_jh = sum_i dr_ij w_h dphi/db,
// dw_h = sum_ij dr_ij phi_ijh (elementwise_scorer.h). Runs the AVX-512 block kernel when runtime_isa() picks it
// (see elementwise_fwd.cpp).
#include <ATen/Dispatch.h>

#include "common/validate.h"
#include "cpu/elementwise_impl.h"
#include "cpu/ops_cpu.h"

namespace attnzoo::cpu {

Tensor5 elementwise_bwd(const at::Tensor& grad_out, const OptTensor& grad_lse, const at::Tensor& a,
                        const at::Tensor& b, const at::Tensor& w, const at::Tensor& v, int64_t term, int64_t profile,
                        ATTNZOO_MASK_PARAMS, bool bias_grad, ATTNZOO_SAVED_PARAMS, ATTNZOO_ENTROPY_GRAD_PARAMS,
                     ATTNZOO_NOISE_PARAMS, ATTNZOO_LAYOUT_PARAMS) {
  const char* op = "attnzoo.elementwise_bwd";
  check_elementwise_fwd(op, a, b, w, v, term, profile, valid_lens, mask, bias, alibi, pooling, window, kCpuDtypes);
  check_bwd_saved(op, a, v, grad_out, grad_lse, out, lse, argmax, soft_out, pooling);
  check_entropy_grad(op, a, pooling, grad_entropy, saved_entropy, true);
  const int64_t B = a.size(0), Nq = a.size(1), Nk = b.size(1);
  const auto aa = to_acc(a), ba = to_acc(b), wa = to_acc(w), va = to_acc(v), go = to_acc(grad_out);
  const auto gl = to_acc(grad_lse), ge = contiguous_opt(grad_entropy), se = contiguous_opt(saved_entropy);
  const auto od = to_acc(softmax_output(pooling, out, soft_out)), lsea = lse.contiguous(), am = argmax.contiguous();
  const Positions pos = positions_acc(bias, alibi, aa.scalar_type());
  auto mp = make_mask_params(B, Nq, Nk, valid_lens, mask, pos, pooling, causal, window);
  set_noise(op, mp, seed, tau, true);
  set_layout(op, mp, b.size(0), q_offset, true);
  const BiasGradOut dbias = make_bias_grad(pos, bias_grad, B, Nq, Nk);
  auto da = at::zeros_like(aa), db = at::zeros_like(ba), dw = at::zeros_like(wa), dv = at::zeros_like(va);
  std::vector<AccSpec> accs{{dv, true}, {db, true}, {dw, false}};
  AT_DISPATCH_FLOATING_TYPES(aa.scalar_type(), "attnzoo.elementwise_bwd", [&] {
    const ElementwiseBwdArgs<scalar_t> p{elementwise_inputs<scalar_t>(mp, term, profile, aa, ba, wa, va),
                                         go.const_data_ptr<scalar_t>(), bwd_in<scalar_t>(lsea, am, od, gl, Nk, ge, se), &accs,
                                         da.data_ptr<scalar_t>(), &dbias};
#if defined(ATTNZOO_HAVE_AVX512_KERNELS)
    if (runtime_isa() == CpuIsa::kAVX512) return elementwise_bwd_avx512(p);
#endif
    elementwise_bwd_impl<scalar_t>(p);
  });
  return {da.to(a.scalar_type()), db.to(b.scalar_type()), dw.to(w.scalar_type()), dv.to(v.scalar_type()),
          dbias_output(dbias, bias, a)};
}

}  // namespace attnzoo::cpu
