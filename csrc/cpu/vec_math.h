// Vector math of the CPU kernels on at::vec (compiled once per ISA, see isa.h): fills, scaling,
// sums, max, dot, exp variants. Every function is elementwise or reduces in a fixed order.
#pragma once
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>

#include "cpu/isa.h"

namespace attnzoo::cpu {
inline namespace ATTNZOO_ISA {

using at::vec::Vectorized;

inline Vectorized<float> vexp(Vectorized<float> x) { return x.exp_u20(); }
inline Vectorized<double> vexp(Vectorized<double> x) { return x.exp(); }

template <typename T>
inline void vfill(T* x, int64_t n, T val) {
  std::fill(x, x + std::max<int64_t>(n, 0), val);
}

template <typename T>
inline void vscale(T* x, int64_t n, T a) {
  using V = Vectorized<T>;
  int64_t j = 0;
  for (; j + V::size() <= n; j += V::size()) (V::loadu(x + j) * V(a)).store(x + j);
  for (; j < n; ++j) x[j] *= a;
}

template <typename T>
inline void vadd(T* x, const T* y, int64_t n) {
  using V = Vectorized<T>;
  int64_t j = 0;
  for (; j + V::size() <= n; j += V::size()) (V::loadu(x + j) + V::loadu(y + j)).store(x + j);
  for (; j < n; ++j) x[j] += y[j];
}

template <typename T>
inline T vmax(const T* x, int64_t n) {
  using V = Vectorized<T>;
  T m = -std::numeric_limits<T>::infinity();
  int64_t j = 0;
  if (n >= V::size()) {
    V mv = V::loadu(x);
    for (j = V::size(); j + V::size() <= n; j += V::size()) mv = at::vec::maximum(mv, V::loadu(x + j));
    m = at::vec::vec_reduce_all<T>([](V& a, V& b) { return at::vec::maximum(a, b); }, mv);
  }
  for (; j < n; ++j) m = std::max(m, x[j]);
  return m;
}

template <typename T>
inline T vdot(const T* x, const T* y, int64_t n) {
  using V = Vectorized<T>;
  V acc(T(0));
  int64_t j = 0;
  for (; j + V::size() <= n; j += V::size()) acc = at::vec::fmadd(V::loadu(x + j), V::loadu(y + j), acc);
  T s = at::vec::vec_reduce_all<T>([](V& a, V& b) { return a + b; }, acc);
  for (; j < n; ++j) s += x[j] * y[j];
  return s;
}

// Weights below exp(kLogTiny) of the row's largest are 0 (float: 1e-30, double: the smallest normal):
// nothing next to the >= 1 of the row maximum, even summed over 1e9 keys, while subnormal weights,
// products of them (ds = p (dp - D)) and accumulators rescaled by them would slow the GEMMs many
// times over (scores spread far below the maximum, e.g. ALiBi's at long distances).
template <typename T>
constexpr T kLogTiny = std::is_same_v<T, float> ? T(-69.0f) : T(-708.3964185322641);

// x = exp(x - m) in place (x may hold -inf), returns the sum; exp(x - m) < exp(kLogTiny) gives 0.
template <typename T>
inline T exp_sub_sum(T* x, int64_t n, T m) {
  using V = Vectorized<T>;
  V acc(T(0)), mv(m);
  const V ninf(-std::numeric_limits<T>::infinity()), lo(kLogTiny<T>);
  int64_t j = 0;
  for (; j + V::size() <= n; j += V::size()) {
    const V xv = V::loadu(x + j), d = xv - mv;
    // exp_u20 is not guaranteed to give 0 at -inf: select explicitly (NaN stays NaN).
    const V e = V::blendv(vexp(d), V(T(0)), (xv == ninf) | (d < lo));
    e.store(x + j);
    acc = acc + e;
  }
  T s = at::vec::vec_reduce_all<T>([](V& a, V& b) { return a + b; }, acc);
  for (; j < n; ++j) {
    const T d = x[j] - m;
    x[j] = d < kLogTiny<T> ? T(0) : std::exp(d);
    s += x[j];
  }
  return s;
}

// exp_sub_sum that also adds sum_j e_j (x_j - m) to `t` (e_j = exp(x_j - m): entropy's running term; a
// zero weight adds nothing, NaN stays NaN).
template <typename T>
inline T exp_sub_sum_xlogx(T* x, int64_t n, T m, T& t) {
  using V = Vectorized<T>;
  V acc(T(0)), tacc(T(0)), mv(m);
  const V ninf(-std::numeric_limits<T>::infinity()), lo(kLogTiny<T>), zero(T(0));
  int64_t j = 0;
  for (; j + V::size() <= n; j += V::size()) {
    const V xv = V::loadu(x + j), d = xv - mv;
    const V drop = (xv == ninf) | (d < lo);
    const V e = V::blendv(vexp(d), zero, drop);
    e.store(x + j);
    acc = acc + e;
    tacc = tacc + V::blendv(e * d, zero, drop);
  }
  T s = at::vec::vec_reduce_all<T>([](V& a, V& b) { return a + b; }, acc);
  T ts = at::vec::vec_reduce_all<T>([](V& a, V& b) { return a + b; }, tacc);
  for (; j < n; ++j) {
    const T d = x[j] - m;
    x[j] = d < kLogTiny<T> ? T(0) : std::exp(d);
    s += x[j];
    if (x[j] != T(0)) ts += x[j] * d;
  }
  t += ts;
  return s;
}

// x = (x != -inf ? w : 0) in place; returns how many x were not -inf.
template <typename T>
inline T finite_to(T* x, int64_t n, T w) {
  using V = Vectorized<T>;
  const V ninf(-std::numeric_limits<T>::infinity()), wv(w), zero(T(0)), one(T(1));
  V cnt(T(0));
  int64_t j = 0;
  for (; j + V::size() <= n; j += V::size()) {
    const V is_ninf = V::loadu(x + j) == ninf;
    V::blendv(wv, zero, is_ninf).store(x + j);
    cnt = cnt + V::blendv(one, zero, is_ninf);
  }
  T c = at::vec::vec_reduce_all<T>([](V& a, V& b) { return a + b; }, cnt);
  for (; j < n; ++j) {
    const bool in = x[j] != -std::numeric_limits<T>::infinity();
    x[j] = in ? w : T(0);
    c += in ? T(1) : T(0);
  }
  return c;
}

// exp(x) for x <= 88; x < -87.3 (and -inf) give <= 1.2e-38 instead of 0, i.e. nothing next to
// the >= 1 term of the running max: Cephes' expf polynomial, ~1 ulp; cheaper than exp_u20 as it
// needs no range masks. Double uses Sleef's exp (u10).
inline Vectorized<float> exp_small(Vectorized<float> x) {
#if defined(CPU_CAPABILITY_AVX2) && !defined(_MSC_VER)
  __m256 v = _mm256_max_ps(_mm256_set1_ps(-87.3f), x);  // NaN (second operand) propagates
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(v, _mm256_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  v = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), v);
  v = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), v);
  __m256 p = _mm256_set1_ps(1.9875691500e-4f);
  p = _mm256_fmadd_ps(p, v, _mm256_set1_ps(1.3981999507e-3f));
  p = _mm256_fmadd_ps(p, v, _mm256_set1_ps(8.3334519073e-3f));
  p = _mm256_fmadd_ps(p, v, _mm256_set1_ps(4.1665795894e-2f));
  p = _mm256_fmadd_ps(p, v, _mm256_set1_ps(1.6666665459e-1f));
  p = _mm256_fmadd_ps(p, v, _mm256_set1_ps(5.0000001201e-1f));
  p = _mm256_fmadd_ps(p, _mm256_mul_ps(v, v), _mm256_add_ps(v, _mm256_set1_ps(1.0f)));
  const __m256i e = _mm256_slli_epi32(_mm256_cvtps_epi32(n), 23);
  return _mm256_castsi256_ps(_mm256_add_epi32(_mm256_castps_si256(p), e));
#else
  return x.exp_u20();
#endif
}
inline Vectorized<double> exp_small(Vectorized<double> x) { return x.exp(); }

// Whether some lane of a is > b.
template <typename T>
inline bool any_gt(Vectorized<T> a, Vectorized<T> b) {
  return (a > b).zero_mask() != (1 << Vectorized<T>::size()) - 1;
}

}  // namespace ATTNZOO_ISA
}  // namespace attnzoo::cpu
