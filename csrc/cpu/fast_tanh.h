// Vectorised tanh: float uses Eigen's clamped odd/even rational approximation (max error
// ~1e-7 relative, no exp); double uses at::vec's (Sleef) tanh.
#pragma once
#include <ATen/cpu/vec/vec.h>

#include "cpu/isa.h"

namespace attnzoo::cpu {
inline namespace ATTNZOO_ISA {

inline at::vec::Vectorized<float> fast_tanh(at::vec::Vectorized<float> x) {
  using V = at::vec::Vectorized<float>;
  // tanh(7.9053) rounds to 1 in float; clamping keeps the polynomial in range.
#if defined(CPU_CAPABILITY_AVX512)
  // One instruction (AVX512DQ vrangeps: the operand of smaller magnitude, sign of x) instead of two.
  x = _mm512_range_ps(x, _mm512_set1_ps(7.90531110763549805f), 0x2);
#else
  x = at::vec::clamp(x, V(-7.90531110763549805f), V(7.90531110763549805f));
#endif
  const V x2 = x * x;
  V p = V(-2.76076847742355e-16f);
  p = at::vec::fmadd(p, x2, V(2.00018790482477e-13f));
  p = at::vec::fmadd(p, x2, V(-8.60467152213735e-11f));
  p = at::vec::fmadd(p, x2, V(5.12229709037114e-08f));
  p = at::vec::fmadd(p, x2, V(1.48572235717979e-05f));
  p = at::vec::fmadd(p, x2, V(6.37261928875436e-04f));
  p = at::vec::fmadd(p, x2, V(4.89352455891786e-03f));
  p = p * x;
  V qd = V(1.19825839466702e-06f);
  qd = at::vec::fmadd(qd, x2, V(1.18534705686654e-04f));
  qd = at::vec::fmadd(qd, x2, V(2.26843463243900e-03f));
  qd = at::vec::fmadd(qd, x2, V(4.89352518554385e-03f));
  return p / qd;
}

inline at::vec::Vectorized<double> fast_tanh(at::vec::Vectorized<double> x) { return x.tanh(); }

// 1/x - 1/2 for normal positive x (so that tanh(y) = -2 (1/(1 + e^{2y}) - 1/2) keeps its absolute
// error ~1e-7 near y = 0, without cancellation in a later sum). AVX-512: vrcp14ps (rel. error
// < 2^-14) refined by one Newton step folded with the -1/2 (about 1 ulp), much cheaper than
// vdivps; elsewhere a plain division.
inline at::vec::Vectorized<float> recip_minus_half(at::vec::Vectorized<float> x) {
  using V = at::vec::Vectorized<float>;
#if defined(CPU_CAPABILITY_AVX512)
  const __m512 r = _mm512_rcp14_ps(x);
  const __m512 e = _mm512_fnmadd_ps(x, r, _mm512_set1_ps(1.0f));           // 1 - x r
  return V(_mm512_fmadd_ps(r, e, _mm512_sub_ps(r, _mm512_set1_ps(0.5f))));  // r + r e - 1/2
#else
  return V(1.0f) / x - V(0.5f);
#endif
}
inline at::vec::Vectorized<double> recip_minus_half(at::vec::Vectorized<double> x) {
  using V = at::vec::Vectorized<double>;
  return V(1.0) / x - V(0.5);
}

}  // namespace ATTNZOO_ISA
}  // namespace attnzoo::cpu
