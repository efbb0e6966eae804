// Bodies of the elementwise kernels (see elementwise_kernels.h), in the translation unit's ISA namespace.
#pragma once
#include <algorithm>
#include <atomic>
#include <cmath>
#include <type_traits>
#include <vector>

#include "cpu/elementwise_kernels.h"
#include "cpu/elementwise_scorer.h"
#include "cpu/switches.h"

namespace attnzoo::cpu {
inline namespace ATTNZOO_ISA {

// The float tanh forward's exp form (ElementwiseScorer::use_exp) needs |a|, |b| <= kExpBound so that
// e^{2a} e^{2b} lies in [e^-80, e^80]: finite and normal in float. ATTNZOO_ADDITIVE_EXP=0 turns it off
// (switches.h), for comparisons.
constexpr float kExpBound = 20.0f;

// out[k] = exp(2 x[k]) for k < n; false (out unspecified) when some |x[k]| > kExpBound or is NaN.
inline bool exp2x_bounded(const float* x, float* out, int64_t n) {
  using V = Vectorized<float>;
  std::atomic<bool> ok{true};
  at::parallel_for(0, n, 1 << 14, [&](int64_t k0, int64_t k1) {
    bool in = true;
    for (int64_t k = k0; k < k1; ++k) in &= std::fabs(x[k]) <= kExpBound;  // NaN -> false
    if (!in) {
      ok = false;
      return;
    }
    // One vector exp for every element, the tail included (a scalar std::exp would round some
    // keys' terms differently, and bitwise-equal keys must score equally: hard pooling's ties).
    int64_t k = k0;
    for (; k + V::size() <= k1; k += V::size()) {
      const V v = V::loadu(x + k);
      (v + v).exp().store(out + k);
    }
    if (k < k1) {
      const V v = V::loadu(x + k, k1 - k);
      (v + v).exp().store(out + k, k1 - k);
    }
  });
  return ok;
}

template <typename T>
void elementwise_fwd_impl(const ElementwiseFwdArgs<T>& p) {
  const ElementwiseInputs<T>& x = p.x;
  at::Tensor ea, eb;  // torch tensors, not std::vector: memory profilers see them
  bool use_exp = false;
  if constexpr (std::is_same_v<T, float>) {
    if (x.term == kTanh && additive_exp_form_enabled()) {
      const int64_t B = x.mp.B, Bk = B / x.mp.kv_group;
      ea = at::empty({B * x.Nq * x.H}, at::kFloat);
      eb = at::empty({Bk * x.Nk * x.H}, at::kFloat);
      use_exp = exp2x_bounded(x.a, ea.data_ptr<float>(), B * x.Nq * x.H) &&
                exp2x_bounded(x.b, eb.data_ptr<float>(), Bk * x.Nk * x.H);
    }
  }
  dispatch_term(x.term, [&](auto term) {
    constexpr int64_t TERM = decltype(term)::value;
    forward_cpu<T>(x.mp, Blocks{}, x.Dv, x.v, x.Nk * x.Dv, p.out, [&] {
      ElementwiseScorer<T, TERM> sc(x.a, x.b, x.w, x.Nq, x.Nk, x.H, x.profile, nullptr);
      if constexpr (TERM == kTanh)
        if (use_exp)
          sc.use_exp(static_cast<const T*>(ea.const_data_ptr()), static_cast<const T*>(eb.const_data_ptr()));
      return sc;
    });
  });
}

template <typename T>
void elementwise_bwd_impl(const ElementwiseBwdArgs<T>& p) {
  const ElementwiseInputs<T>& x = p.x;
  dispatch_term(x.term, [&](auto term) {
    constexpr int64_t TERM = decltype(term)::value;
    backward_cpu<T>(x.mp, Blocks{}, x.Dv, x.v, p.dout, p.saved, *p.accs, *p.dbias,
                    [&] { return ElementwiseScorer<T, TERM>(x.a, x.b, x.w, x.Nq, x.Nk, x.H, x.profile, p.da); });
  });
}

}  // namespace ATTNZOO_ISA
}  // namespace attnzoo::cpu
