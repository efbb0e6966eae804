// attnzoo::elementwise_fwd on CPU: out_i = pool_j(s_ij) v_j, s_ij = g(sum_h w_h phi(a_ih, b_jh))
// (term phi and profile g: params.h; additive attention is phi = tanh(a + b), g = identity).
// a (B, Nq, H), b (B, Nk, H), w (H,), v (B, Nk, Dv) -> out (B, Nq, Dv), lse (B, Nq), argmax (B, Nq)
// and soft_out (B, Nq, Dv) for hard pooling, entropy (B, Nq) when asked for (soft). Never forms the (Nq, Nk, H) tensor: phi is evaluated
// per key block; bfloat16 is computed in float32. The block kernel runs the AVX-512 copy
// (kernels_avx512.cpp) when runtime_isa() picks it, else the AVX2 one compiled here.
#include <ATen/Dispatch.h>

#include "common/validate.h"
#include "cpu/elementwise_impl.h"
#include "cpu/ops_cpu.h"
#include "cpu/row_forward.h"
#include "cpu/small_d.h"

namespace attnzoo::cpu {

Tensor5 elementwise_fwd(const at::Tensor& a, const at::Tensor& b, const at::Tensor& w, const at::Tensor& v,
                        int64_t term, int64_t profile, ATTNZOO_MASK_PARAMS, bool entropy,
                     ATTNZOO_NOISE_PARAMS, ATTNZOO_LAYOUT_PARAMS) {
  check_elementwise_fwd("attnzoo.elementwise_fwd", a, b, w, v, term, profile, valid_lens, mask, bias, alibi, pooling,
                        window, kCpuDtypes);
  check_entropy("attnzoo.elementwise_fwd", pooling, entropy, true);
  const int64_t B = a.size(0), Nq = a.size(1), Nk = b.size(1), Dv = v.size(2);
  const auto aa = to_acc(a), ba = to_acc(b), wa = to_acc(w), va = to_acc(v);
  const Positions pos = positions_acc(bias, alibi, aa.scalar_type());
  auto mp = make_mask_params(B, Nq, Nk, valid_lens, mask, pos, pooling, causal, window);
  set_noise("attnzoo.elementwise_fwd", mp, seed, tau, true);
  set_layout("attnzoo.elementwise_fwd", mp, b.size(0), q_offset, true);
  const auto outs = empty_fwd_outputs(aa, Dv, pooling, aa.scalar_type());
  const auto ent = empty_entropy(aa, entropy);
  AT_DISPATCH_FLOATING_TYPES(aa.scalar_type(), "attnzoo.elementwise_fwd", [&] {
    if (profile == kIdentity && row_forward_supported(mp, pooling, entropy)) {  // decoder steps, small problems
      const int64_t H = a.size(2);
      return dispatch_term(term, [&](auto tc) {
        const ElementwiseRows<scalar_t, decltype(tc)::value> rows{aa.const_data_ptr<scalar_t>(),
                                                                  ba.const_data_ptr<scalar_t>(),
                                                                  wa.const_data_ptr<scalar_t>(), Nq, Nk, H};
        row_forward<scalar_t>(mp, Dv, va.const_data_ptr<scalar_t>(), fwd_out<scalar_t>(outs), rows, 4 * H);
      });
    }
    // Squared distances of small dims (Nadaraya-Watson): one register sweep per row (small_d.h)
    if (!entropy && term == kSqDiff && profile == kIdentity && small_d_supported<scalar_t>(mp, a.size(2), Dv))
      return small_d_run<scalar_t>(mp, aa, ba, va, std::nullopt, 1.0, wa, outs);
    const ElementwiseFwdArgs<scalar_t> p{elementwise_inputs<scalar_t>(mp, term, profile, aa, ba, wa, va),
                                         fwd_out<scalar_t>(outs, ent)};
#if defined(ATTNZOO_HAVE_AVX512_KERNELS)
    if (runtime_isa() == CpuIsa::kAVX512) return elementwise_fwd_avx512(p);
#endif
    elementwise_fwd_impl<scalar_t>(p);
  });
  const auto& [out, lse, argmax, soft_out] = outs;
  return {out.to(a.scalar_type()), lse, argmax, soft_out.to(a.scalar_type()), ent};
}

}  // namespace attnzoo::cpu
