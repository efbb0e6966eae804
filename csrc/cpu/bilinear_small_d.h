// Forward of the bilinear scores for small head dims (D <= 8, Dv <= 8), all poolings and masks.
//
// With D and Dv tiny (e.g. Nadaraya-Watson: D = Dv = 1) the work is all per score, so the
// general driver's passes over each score block (GEMM, bias, mask, max, exp, GEMM) cost more
// than the arithmetic. Here each score is computed, exponentiated and pooled in registers in a
// single sweep over the keys, vectorised over keys (keys and values transposed to (D, Nk) so a
// vector holds consecutive keys), R queries per sweep sharing the loaded keys:
//   s = key_bias_j + sum_d (scale q_d) k_jd         (average pooling: s = 0)
//   masked / out-of-range lanes: s = -inf
//   online softmax with a lazily raised shift: m is raised to the vector's max only when a lane
//   exceeds m + kSlack (rare after the first keys), rescaling the accumulators; otherwise
//   exp(s - m) <= e^kSlack, which float sums hold without overflow or loss of precision;
//   l += exp(s - m), acc_d += exp(s - m) v_jd, per lane; reduced across lanes at the end.
// Hard pooling also keeps, per lane, the first index of the lane's max (strict >), so the
// smallest index among the lanes holding the overall max is the first argmax (as torch.argmax).
#pragma once
#include <c10/macros/Macros.h>
#include <c10/util/Exception.h>

#include <type_traits>

#include "common/params.h"
#include "cpu/parallel.h"
#include "cpu/vec_math.h"

namespace attnzoo::cpu {

constexpr int64_t kSmallDMax = 8;

// Queries per key sweep (they share each loaded key vector).
#ifndef ATTNZOO_SMALL_D_ROWS
#define ATTNZOO_SMALL_D_ROWS 4
#endif

// Whether the small-D forward handles a problem (hard pooling keeps key indices in T lanes).
template <typename T>
inline bool small_d_supported(int64_t D, int64_t Dv, int64_t Nk, int64_t pooling) {
  if (D < 1 || D > kSmallDMax || Dv < 1 || Dv > kSmallDMax) return false;
  if (pooling == kHard && Nk >= (int64_t{1} << (std::numeric_limits<T>::digits - 1))) return false;
  return true;
}

template <typename T>
struct SmallDArgs {
  MaskParams mp;
  const T* q;   // (B, Nq, Dq)
  const T* kT;  // (B, DP, Nkp): k transposed, zero-padded to DP >= Dq rows and Nkp >= Nk keys
  const T* vT;  // (B, DVP, Nkp): v transposed, zero-padded
  const T* kb;  // (B, Nkp): key_bias (zeros when there is none), zero-padded
  int64_t Dq, Dv, Nkp;
  T scale;
  T *out, *lse, *soft_out;  // out (B, Nq, Dv); soft_out: hard pooling only
  int64_t* argmax;          // hard pooling only
};

// Rows i0 .. i0+nr-1 (nr <= R) of batch b. Rows past nr repeat the last one (not written).
template <typename T, int R, int DP, int DVP, int64_t POOL>
void small_d_rows(const SmallDArgs<T>& a, int64_t b, int64_t i0, int64_t nr) {
  using V = Vectorized<T>;
  constexpr int64_t W = V::size();
  constexpr bool hard = POOL == kHard, avg = POOL == kAverage;
  const MaskParams& mp = a.mp;
  const T ninf = -std::numeric_limits<T>::infinity();
  // Shift floor: finite, so that exp(s - m) of -inf scores is 0 (never NaN) before any finite score.
  const T mlow = std::numeric_limits<T>::lowest();
  const V slack(std::is_same_v<T, float> ? T(8) : T(32));
  const int64_t Nq = mp.Nq, Nk = mp.Nk, Nkp = a.Nkp;

  V sq[R][DP], l[R], acc[R][DVP], mv[R], mth[R], bestv[R], besti[R];
  T m[R];
  int64_t lo[R], hi[R];
  const bool* mr[R];
  int64_t klo = Nk, khi = 0, flo = 0, fhi = Nk;  // [flo, fhi): every row fully valid (mask aside)
  for (int r = 0; r < R; ++r) {
    const int64_t i = i0 + std::min<int64_t>(r, nr - 1);
    const KeyRange kr = row_range(mp, b, i);
    lo[r] = kr.lo;
    hi[r] = kr.hi;
    mr[r] = mask_row(mp, b, i);
    if (hi[r] > lo[r]) {
      klo = std::min(klo, lo[r]);
      khi = std::max(khi, hi[r]);
    }
    flo = std::max(flo, lo[r]);
    fhi = std::min(fhi, hi[r]);
    const T* qi = a.q + (b * Nq + i) * a.Dq;
    for (int d = 0; d < DP; ++d) sq[r][d] = V(d < a.Dq ? a.scale * qi[d] : T(0));
    m[r] = mlow;
    mv[r] = V(mlow);
    mth[r] = V(mlow) + slack;
    l[r] = V(T(0));
    for (int d = 0; d < DVP; ++d) acc[r][d] = V(T(0));
    bestv[r] = V(ninf);
    besti[r] = V(T(-1));
  }

  T iota_buf[W];
  for (int64_t w = 0; w < W; ++w) iota_buf[w] = T(w);
  const V iota = V::loadu(iota_buf);
  const T* kT = a.kT + b * DP * Nkp;
  const T* vT = a.vT + b * DVP * Nkp;
  const T* kb = a.kb + b * Nkp;

  // One vector of keys [j, j + W) for all rows; CHECKED: apply ranges and the mask.
  const auto step = [&](int64_t j, auto checked) {
    constexpr bool CHECKED = decltype(checked)::value;
    V kd[DP], vd[DVP];
#pragma GCC unroll 8
    for (int d = 0; d < DP; ++d) kd[d] = V::loadu(kT + d * Nkp + j);
#pragma GCC unroll 8
    for (int d = 0; d < DVP; ++d) vd[d] = V::loadu(vT + d * Nkp + j);
    const V bias = V::loadu(kb + j);
    const V jv = V(T(j)) + iota;
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      if (CHECKED && (j + W <= lo[r] || j >= hi[r])) continue;
      V s = bias;
      if (avg) {
        s = V(T(0));
      } else {
#pragma GCC unroll 8
        for (int d = 0; d < DP; ++d) s = at::vec::fmadd(sq[r][d], kd[d], s);
      }
      if (CHECKED) {
        if (j < lo[r] || j + W > hi[r]) s = V::blendv(V(ninf), s, (jv >= V(T(lo[r]))) & (jv < V(T(hi[r]))));
        if (mr[r]) {
          T mb[W];
          for (int64_t w = 0; w < W; ++w) mb[w] = (j + w < Nk && mr[r][(j + w) * mp.m_sj]) ? T(1) : T(0);
          s = V::blendv(V(ninf), s, V::loadu(mb) != V(T(0)));
        }
      }
      if (hard) {
        const V gt = s > bestv[r];
        bestv[r] = V::blendv(bestv[r], s, gt);
        besti[r] = V::blendv(besti[r], jv, gt);
      }
      if (C10_UNLIKELY(any_gt(s, mth[r]))) {  // some lane exceeds m + slack: raise m
        const T mn = std::max(m[r], at::vec::vec_reduce_all<T>([](V& x, V& y) { return at::vec::maximum(x, y); }, s));
        const V alpha(std::exp(m[r] - mn));
        m[r] = mn;
        l[r] = l[r] * alpha;
#pragma GCC unroll 8
        for (int d = 0; d < DVP; ++d) acc[r][d] = acc[r][d] * alpha;
        mv[r] = V(mn);
        mth[r] = mv[r] + slack;
      }
      const V e = exp_small(s - mv[r]);
      l[r] = l[r] + e;
#pragma GCC unroll 8
      for (int d = 0; d < DVP; ++d) acc[r][d] = at::vec::fmadd(e, vd[d], acc[r][d]);
    }
  };

  using Checked = std::true_type;
  using Fast = std::false_type;
  int64_t j = (klo / W) * W;
  if (mp.mask == nullptr && fhi > flo) {
    const int64_t f0 = (flo + W - 1) / W * W, f1 = fhi / W * W;
    for (; j < f0; j += W) step(j, Checked{});
    for (; j < f1; j += W) step(j, Fast{});
  }
  for (; j < khi; j += W) step(j, Checked{});

  const auto sum = [](V& x, V& y) { return x + y; };
  for (int r = 0; r < nr; ++r) {
    const int64_t i = b * Nq + i0 + r;
    T* o = (hard ? a.soft_out : a.out) + i * a.Dv;
    const T lt = at::vec::vec_reduce_all<T>(sum, l[r]);
    // No finite score raised the shift: no valid key, or only -inf scores (masked lanes may
    // have added exp_small's ~1e-38 to l). A NaN score makes lt NaN: the row is NaN, like torch.
    const bool empty = (m[r] == mlow && !std::isnan(lt)) || lt == T(0);
    if (empty) {
      vfill(o, a.Dv, T(0));
      a.lse[i] = ninf;
    } else {
      T accs[DVP];
      for (int d = 0; d < DVP; ++d) accs[d] = at::vec::vec_reduce_all<T>(sum, acc[r][d]);
      for (int64_t d = 0; d < a.Dv; ++d) o[d] = accs[d] / lt;
      a.lse[i] = m[r] + std::log(lt);
    }
    if (hard) {
      T bv[W], bi[W];
      bestv[r].store(bv);
      besti[r].store(bi);
      T best = ninf;
      int64_t idx = -1;
      for (int64_t w = 0; w < W; ++w) {
        const int64_t wi = static_cast<int64_t>(bi[w]);
        if (wi >= 0 && (idx < 0 || bv[w] > best || (bv[w] == best && wi < idx))) {
          best = bv[w];
          idx = wi;
        }
      }
      if (empty) idx = -1;
      a.argmax[i] = idx;
      T* oh = a.out + i * a.Dv;
      const T none = empty ? T(0) : std::numeric_limits<T>::quiet_NaN();  // no arg-max in a NaN row
      if (std::isnan(lt)) idx = -1;  // a NaN score in the row: the output is NaN
      for (int64_t d = 0; d < a.Dv; ++d) oh[d] = idx >= 0 ? vT[d * Nkp + idx] : none;
    }
  }
}

template <typename T, int R, int DP, int DVP>
void small_d_forward_impl(const SmallDArgs<T>& a) {
  const MaskParams& mp = a.mp;
  const int64_t B = mp.B, Nq = mp.Nq, Nk = mp.Nk;
  constexpr int64_t kRowsPerTask = 8 * R;
  const int64_t nqb = (Nq + kRowsPerTask - 1) / kRowsPerTask;
  parallel_tasks(B * nqb, kRowsPerTask * std::max<int64_t>(Nk, 1), [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t b = t / nqb, i0 = balanced(t % nqb, nqb) * kRowsPerTask;
      const int64_t i1 = std::min(Nq, i0 + kRowsPerTask);
      for (int64_t i = i0; i < i1; i += R) {
        const int64_t nr = std::min<int64_t>(R, i1 - i);
        if (mp.pooling == kHard)
          small_d_rows<T, R, DP, DVP, kHard>(a, b, i, nr);
        else if (mp.pooling == kAverage)
          small_d_rows<T, R, DP, DVP, kAverage>(a, b, i, nr);
        else
          small_d_rows<T, R, DP, DVP, kSoft>(a, b, i, nr);
      }
    }
  });
}

// Padded head dims the kernels are instantiated for.
inline int64_t small_d_pad(int64_t d) { return d <= 1 ? 1 : d <= 4 ? 4 : 8; }

template <typename T>
void small_d_forward(const SmallDArgs<T>& a, int64_t DP, int64_t DVP) {
  constexpr int R = ATTNZOO_SMALL_D_ROWS;
#define ATTNZOO_SMALL_D_CASE(dp, dvp) \
  if (DP == dp && DVP == dvp) return small_d_forward_impl<T, R, dp, dvp>(a);
  ATTNZOO_SMALL_D_CASE(1, 1)
  ATTNZOO_SMALL_D_CASE(1, 4)
  ATTNZOO_SMALL_D_CASE(1, 8)
  ATTNZOO_SMALL_D_CASE(4, 1)
  ATTNZOO_SMALL_D_CASE(4, 4)
  ATTNZOO_SMALL_D_CASE(4, 8)
  ATTNZOO_SMALL_D_CASE(8, 1)
  ATTNZOO_SMALL_D_CASE(8, 4)
  ATTNZOO_SMALL_D_CASE(8, 8)
#undef ATTNZOO_SMALL_D_CASE
  TORCH_CHECK(false, "attnzoo: no small-D kernel for padded dims ", DP, ", ", DVP);
}

}  // namespace attnzoo::cpu
