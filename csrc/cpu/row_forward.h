// Forward for few queries per batch entry (decoder steps, small problems), soft pooling: each query row in
// one sweep over its valid keys. A key's score is reduced over the features in vectors straight from the
// row-major inputs (no key-block transpose, no GEMM call, no block buffers: nothing is allocated), then an
// online softmax (m: running max, l: running sum, rescaled when m rises) and out += p_j v_j in vectors:
//   out_i = sum_j exp(s_ij - m) v_j / l,  lse_i = m + log l;  a row with no valid key: out 0, lse -inf.
// Scores of -inf (a -inf bias) take no part; NaN propagates to the row, as in the block drivers.
#pragma once
#include <algorithm>
#include <cmath>
#include <limits>

#include "common/params.h"
#include "cpu/elementwise_scorer.h"
#include "cpu/kernel_args.h"
#include "cpu/parallel.h"
#include "cpu/vec_math.h"

namespace attnzoo::cpu {
inline namespace ATTNZOO_ISA {

// The row path takes problems of at most this many queries per batch entry, or this many scores per entry.
constexpr int64_t kRowMaxQueries = 4, kRowMaxScores = 64 * 64;

inline bool row_forward_supported(const MaskParams& mp, int64_t pooling, bool entropy) {
  return pooling == kSoft && !entropy && !mp.noise && (mp.Nq <= kRowMaxQueries || mp.Nq * mp.Nk <= kRowMaxScores);
}

// sum_d x[d] y[d] in vectors (the tail loaded partially).
template <typename T>
inline T row_dot(const T* x, const T* y, int64_t n) {
  using V = Vectorized<T>;
  V acc(T(0));
  int64_t d = 0;
  for (; d + V::size() <= n; d += V::size()) acc = at::vec::fmadd(V::loadu(x + d), V::loadu(y + d), acc);
  if (d < n) acc = at::vec::fmadd(V::loadu(x + d, n - d), V::loadu(y + d, n - d), acc);
  return at::vec::vec_reduce_all<T>([](V& a, V& b) { return a + b; }, acc);
}

// Bilinear rows: s_ij = scale q_i . k_j + key_bias_j; q (B, Nq, D), k (Bk, Nk, D), key_bias (Bk, Nk) or nullptr.
template <typename T>
struct BilinearRows {
  const T *q, *k, *kb;
  T scale;
  int64_t Nq, Nk, D;
  T operator()(int64_t b, int64_t c, int64_t i, int64_t j) const {
    const T s = scale * row_dot(q + (b * Nq + i) * D, k + (c * Nk + j) * D, D);
    return kb ? s + kb[c * Nk + j] : s;
  }
};

// Elementwise rows, identity profile: s_ij = sum_h w_h phi(a_ih, b_jh); a (B, Nq, H), b (Bk, Nk, H), w (H,).
template <typename T, int64_t TERM>
struct ElementwiseRows {
  const T *a, *b, *w;
  int64_t Nq, Nk, H;
  T operator()(int64_t bi, int64_t c, int64_t i, int64_t j) const {
    using V = Vectorized<T>;
    const T *x = a + (bi * Nq + i) * H, *y = b + (c * Nk + j) * H;
    V acc(T(0));
    int64_t h = 0;
    for (; h + V::size() <= H; h += V::size())
      acc = at::vec::fmadd(V::loadu(w + h), TermOps<TERM>::value(V::loadu(x + h), V::loadu(y + h)), acc);
    if (h < H) {  // zero weights on the padding lanes
      const int64_t n = H - h;
      acc = at::vec::fmadd(V::loadu(w + h, n), TermOps<TERM>::value(V::loadu(x + h, n), V::loadu(y + h, n)), acc);
    }
    return at::vec::vec_reduce_all<T>([](V& p, V& q) { return p + q; }, acc);
  }
};

// out (B, Nq, Dv), lse (B, Nq) of soft pooling over the scores score(b, key batch, i, j); v (Bk, Nk, Dv).
template <typename T, typename Score>
void row_forward(const MaskParams& mp, int64_t Dv, const T* v, const FwdOut<T>& fo, const Score& score,
                 int64_t cost_per_score) {
  using V = Vectorized<T>;
  constexpr int64_t W = V::size();
  const int64_t B = mp.B, Nq = mp.Nq, Nk = mp.Nk;
  const T ninf = -std::numeric_limits<T>::infinity();
  parallel_tasks(B * Nq, std::max<int64_t>(Nk, 1) * cost_per_score, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t b = t / Nq, i = t % Nq, c = b / mp.kv_group;
      T* o = fo.out + t * Dv;
      vfill(o, Dv, T(0));
      const KeyRange kr = row_range(mp, b, i);
      const bool* mrow = mask_row(mp, b, i);
      const T* brow = bias_row<T>(mp, b, i);
      const T slope = alibi_slope<T>(mp, b);
      T m = ninf, l = T(0);
      for (int64_t j = kr.lo; j < kr.hi; ++j) {
        if (!mask_ok(mp, mrow, j)) continue;
        const T s = with_positions<T>(mp, score(b, c, i, j), brow, slope, i, j);
        if (s == ninf) continue;
        if (s > m) {  // (also the first key: m = -inf)
          const T alpha = std::exp(m - s);
          l *= alpha;
          vscale(o, Dv, alpha);
          m = s;
        }
        const T p = std::exp(s - m);  // NaN for a NaN score: the row is NaN
        l += p;
        const T* vj = v + (c * Nk + j) * Dv;
        const V pv(p);
        int64_t d = 0;
        for (; d + W <= Dv; d += W) at::vec::fmadd(pv, V::loadu(vj + d), V::loadu(o + d)).store(o + d);
        if (d < Dv) at::vec::fmadd(pv, V::loadu(vj + d, Dv - d), V::loadu(o + d, Dv - d)).store(o + d, Dv - d);
      }
      if (l == T(0)) {  // no valid key (l is NaN, not 0, for a NaN row)
        vfill(o, Dv, T(0));
        fo.lse[t] = ninf;
      } else {
        vscale(o, Dv, T(1) / l);
        fo.lse[t] = m + std::log(l);
      }
    }
  });
}

}  // namespace ATTNZOO_ISA
}  // namespace attnzoo::cpu
