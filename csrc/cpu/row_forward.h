// Forward for few queries per batch entry (decoder steps) of the elementwise family, soft pooling: each query row in
// one sweep over its valid keys. A key's score is reduced over the features in vectors straight from the
// row-major inputs (no key-block transpose, no GEMM call, no block buffers), then an
// online softmax (m: running max, l: running sum, rescaled when m rises) and the weighted values in vectors,
// centred on the first valid key's value row r (un-centred values, ~1e3, keep their precision):
//   out_i = r + sum_j exp(s_ij - m) (v_j - r) / l,  lse_i = m + log l;  a row with no valid key: out 0, lse -inf
// (r = 0 when that row holds inf / NaN: such values then propagate as in sum_j p_j v_j).
// Scores of -inf (a -inf bias) take no part; NaN propagates to the row, as in the block drivers.
#pragma once
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "common/params.h"
#include "cpu/elementwise_scorer.h"
#include "cpu/kernel_args.h"
#include "cpu/parallel.h"
#include "cpu/switches.h"
#include "cpu/vec_math.h"

namespace attnzoo::cpu {
inline namespace ATTNZOO_ISA {

// The row path takes problems of at most this many queries per batch entry (measured, 2 threads: the
// additive decoder step of batch 64, Nk 10, hidden 256 in 0.12 ms against the block driver's 0.47 ms; the
// bilinear family gains nothing over its GEMM blocks, even at (2, 16, 32), and stays on them).
constexpr int64_t kRowMaxQueries = 4;

// (ATTNZOO_ROW_FORWARD=0 turns the row path off: switches.h.)
inline bool row_forward_supported(const MaskParams& mp, int64_t pooling, bool entropy) {
  return pooling == kSoft && !entropy && !mp.noise && row_forward_enabled() && mp.Nq <= kRowMaxQueries;
}

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
// Keys in chunks of kRowChunk: the chunk's scores, its max, one rescale when the max rises, the weights in
// vectors (exp_sub_sum: the block drivers' arithmetic), then the weighted value rows.
template <typename T, typename Score>
void row_forward(const MaskParams& mp, int64_t Dv, const T* v, const FwdOut<T>& fo, const Score& score,
                 int64_t cost_per_score) {
  using V = Vectorized<T>;
  constexpr int64_t W = V::size(), kRowChunk = 64;
  const int64_t B = mp.B, Nq = mp.Nq, Nk = mp.Nk;
  const T ninf = -std::numeric_limits<T>::infinity();
  parallel_tasks(B * Nq, std::max<int64_t>(Nk, 1) * cost_per_score, [&](int64_t t0, int64_t t1) {
    std::vector<T> zero;  // the centre of rows whose first value row is not finite (allocated when needed)
    T S[kRowChunk];
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t b = t / Nq, i = t % Nq, c = b / mp.kv_group;
      T* o = fo.out + t * Dv;
      vfill(o, Dv, T(0));
      const KeyRange kr = row_range(mp, b, i);
      const bool* mrow = mask_row(mp, b, i);
      const T* brow = bias_row<T>(mp, b, i);
      const T slope = alibi_slope<T>(mp, b);
      T m = ninf, l = T(0);
      const T* r = nullptr;  // the centre: the first weighted key's value row
      for (int64_t j0 = kr.lo; j0 < kr.hi; j0 += kRowChunk) {
        const int64_t n = std::min(kRowChunk, kr.hi - j0);
        for (int64_t jj = 0; jj < n; ++jj) {
          const int64_t j = j0 + jj;
          S[jj] = mask_ok(mp, mrow, j) ? with_positions<T>(mp, score(b, c, i, j), brow, slope, i, j) : ninf;
        }
        const T cm = vmax(S, n);
        if (cm == ninf) continue;  // (a NaN max goes on: the row becomes NaN)
        if (!(cm <= m)) {  // the max rises (also the first chunk: m = -inf)
          const T alpha = m == ninf ? T(0) : std::exp(m - cm);
          l *= alpha;
          vscale(o, Dv, alpha);
          m = cm;
        }
        l += exp_sub_sum(S, n, m);
        for (int64_t jj = 0; jj < n; ++jj) {
          const T p = S[jj];
          if (p == T(0)) continue;
          const T* vj = v + (c * Nk + j0 + jj) * Dv;
          if (r == nullptr) {  // (its own term is 0)
            r = vj;
            if (!std::all_of(vj, vj + Dv, [](T x) { return std::isfinite(x); })) {
              zero.assign(Dv, T(0));
              r = zero.data();
            }
          }
          const V pv(p);
          int64_t d = 0;
          for (; d + W <= Dv; d += W)
            at::vec::fmadd(pv, V::loadu(vj + d) - V::loadu(r + d), V::loadu(o + d)).store(o + d);
          if (d < Dv) {
            const int64_t rest = Dv - d;
            at::vec::fmadd(pv, V::loadu(vj + d, rest) - V::loadu(r + d, rest), V::loadu(o + d, rest))
                .store(o + d, rest);
          }
        }
      }
      if (l == T(0)) {  // no weighted key (l is NaN, not 0, for a NaN row; l != 0 means r is set)
        vfill(o, Dv, T(0));
        fo.lse[t] = ninf;
      } else {
        const V inv(T(1) / l);
        int64_t d = 0;
        for (; d + W <= Dv; d += W) at::vec::fmadd(V::loadu(o + d), inv, V::loadu(r + d)).store(o + d);
        if (d < Dv) at::vec::fmadd(V::loadu(o + d, Dv - d), inv, V::loadu(r + d, Dv - d)).store(o + d, Dv - d);
        fo.lse[t] = m + std::log(l);
      }
    }
  });
}

}  // namespace ATTNZOO_ISA
}  // namespace attnzoo::cpu
