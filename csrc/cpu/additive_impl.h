// Bodies of the additive kernels (see additive_kernels.h), in the translation unit's ISA namespace.
#pragma once
#include "cpu/additive_kernels.h"
#include "cpu/additive_scorer.h"

namespace attnzoo::cpu {
inline namespace ATTNZOO_ISA {

template <typename T>
void additive_fwd_impl(const AdditiveFwdArgs<T>& p) {
  forward_cpu<T>(p.mp, Blocks{}, p.Dv, p.v, p.out, p.lse, p.argmax, p.soft_out,
                 [&] { return AdditiveScorer<T>(p.a, p.b, p.w, p.Nq, p.Nk, p.H, nullptr); });
}

template <typename T>
void additive_bwd_impl(const AdditiveBwdArgs<T>& p) {
  backward_cpu<T>(p.mp, Blocks{}, p.Dv, p.v, p.dout, p.lse, p.argmax, p.o_delta, p.grad_lse, *p.accs,
                  [&] { return AdditiveScorer<T>(p.a, p.b, p.w, p.Nq, p.Nk, p.H, p.da); });
}

}  // namespace ATTNZOO_ISA
}  // namespace attnzoo::cpu
