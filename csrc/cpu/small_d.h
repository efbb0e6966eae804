// Forward for small head dims (D <= 8, Dv <= 8), all poolings and masks: the bilinear scores, and
// the elementwise family's squared distances (term (a - b)^2, identity profile).
//
// With D and Dv tiny (e.g. Nadaraya-Watson: D = Dv = 1) the work is all per score, so the
// general driver's passes over each score block (GEMM, bias, mask, max, exp, GEMM) cost more
// than the arithmetic. Here each score is computed, exponentiated and pooled in registers in a
// single sweep over the keys, vectorised over keys (keys and values transposed to (D, Nk) so a
// vector holds consecutive keys), R queries per sweep sharing the loaded keys:
//   s = key_bias_j + sum_d (scale q_d) k_jd         (average pooling: s = 0)
//   or, with distance weights wd, s = sum_d wd_d (q_d - k_jd)^2 (the difference first: exact-distance)
//   masked / out-of-range lanes: s = -inf
//   online softmax with a lazily raised shift: m is raised to the vector's max only when a lane
//   exceeds m + kSlack (rare after the first keys), rescaling the accumulators; otherwise
//   exp(s - m) <= e^kSlack, which float sums hold without overflow or loss of precision;
//   l += exp(s - m), acc_d += exp(s - m) v_jd, per lane; reduced across lanes at the end.
// The pooling is a lane policy (pooling.h): hard pooling also keeps, per lane, the first index of
// the lane's max (strict >), so the smallest index among the lanes holding the overall max is the
// first argmax (as torch.argmax); average counts the valid lanes.
#pragma once
#include <c10/macros/Macros.h>
#include <c10/util/Exception.h>

#include <type_traits>

#include "common/params.h"
#include "cpu/bilinear_scorer.h"
#include "cpu/parallel.h"
#include "cpu/pooling.h"
#include "cpu/vec_math.h"

namespace attnzoo::cpu {

constexpr int64_t kSmallDMax = 8;

// Queries per key sweep (they share each loaded key vector).
#ifndef ATTNZOO_SMALL_D_ROWS
#define ATTNZOO_SMALL_D_ROWS 4
#endif

// Whether the small-D forward handles a problem (an arg-max pooling keeps key indices in T lanes;
// positional terms go through the block drivers).
template <typename T>
inline bool small_d_supported(const MaskParams& mp, int64_t D, int64_t Dv) {
  if (D < 1 || D > kSmallDMax || Dv < 1 || Dv > kSmallDMax || has_positions(mp)) return false;
  if (pooling_traits(mp.pooling).argmax && mp.Nk >= (int64_t{1} << (std::numeric_limits<T>::digits - 1)))
    return false;
  return true;
}

template <typename T>
struct SmallDArgs {
  MaskParams mp;
  const T* q;   // (B, Nq, Dq)
  const T* kT;  // (Bk, DP, Nkp): k transposed, zero-padded to DP >= Dq rows and Nkp >= Nk keys
  const T* vT;  // (Bk, DVP, Nkp): v transposed, zero-padded
  const T* kb;  // (Bk, Nkp): key_bias (zeros when there is none), zero-padded
  int64_t Dq, Dv, Nkp;
  T scale;
  FwdOut<T> out;
  const T* wd = nullptr;  // (Dq,): distance weights (then no key_bias, scale 1), or nullptr: bilinear
};

// Rows i0 .. i0+nr-1 (nr <= R) of batch b with the pooling's lane policy Lanes (pooling.h).
// Rows past nr repeat the last one (not written).
template <typename T, int R, int DP, int DVP, bool DIST, typename Lanes>
void small_d_rows(const SmallDArgs<T>& a, int64_t b, int64_t i0, int64_t nr) {
  using V = Vectorized<T>;
  constexpr int64_t W = V::size();
  constexpr bool scores = Lanes::kTraits.scores;
  const MaskParams& mp = a.mp;
  const T ninf = -std::numeric_limits<T>::infinity();
  const int64_t Nq = mp.Nq, Nk = mp.Nk, Nkp = a.Nkp;

  V sq[R][DP], acc[R][DVP];
  Lanes pool[R];
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
    for (int d = 0; d < DP; ++d) sq[r][d] = V(d < a.Dq ? (DIST ? qi[d] : a.scale * qi[d]) : T(0));
    for (int d = 0; d < DVP; ++d) acc[r][d] = V(T(0));
    pool[r].init();
  }

  T iota_buf[W];
  for (int64_t w = 0; w < W; ++w) iota_buf[w] = T(w);
  const V iota = V::loadu(iota_buf);
  const int64_t c = b / mp.kv_group;  // the key batch
  const T* kT = a.kT + c * DP * Nkp;
  const T* vT = a.vT + c * DVP * Nkp;
  const T* kb = a.kb + c * Nkp;
  V wv[DP];  // distance weights (0 on the padding)
  for (int d = 0; d < DP; ++d) wv[d] = V(DIST && d < a.Dq ? a.wd[d] : T(0));

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
      if constexpr (!scores) {
        s = V(T(0));
      } else if constexpr (DIST) {
#pragma GCC unroll 8
        for (int d = 0; d < DP; ++d) {
          const V diff = sq[r][d] - kd[d];
          s = at::vec::fmadd(wv[d], diff * diff, s);
        }
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
      const V e = pool[r].weigh(s, jv, [&](V alpha) {
#pragma GCC unroll 8
        for (int d = 0; d < DVP; ++d) acc[r][d] = acc[r][d] * alpha;
      });
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

  const auto value = [&](int64_t key, int64_t d) { return vT[d * Nkp + key]; };
  for (int r = 0; r < nr; ++r) {
    T accs[kSmallDMax] = {};  // (Dv <= DVP <= kSmallDMax)
    for (int d = 0; d < DVP; ++d)
      accs[d] = at::vec::vec_reduce_all<T>([](V& x, V& y) { return x + y; }, acc[r][d]);
    pool[r].finish(a.out, b * Nq + i0 + r, accs, value);
  }
}

template <typename T, int R, int DP, int DVP, bool DIST>
void small_d_forward_impl(const SmallDArgs<T>& a) {
  const MaskParams& mp = a.mp;
  const int64_t B = mp.B, Nq = mp.Nq, Nk = mp.Nk;
  constexpr int64_t kRowsPerTask = 8 * R;
  const int64_t nqb = (Nq + kRowsPerTask - 1) / kRowsPerTask;
  dispatch_pooling(mp.pooling, [&](auto P) {
    using Lanes = typename CpuPooling<decltype(P)::value, T>::Lanes;
    parallel_tasks(B * nqb, kRowsPerTask * std::max<int64_t>(Nk, 1), [&](int64_t t0, int64_t t1) {
      for (int64_t t = t0; t < t1; ++t) {
        const int64_t b = t / nqb, i0 = balanced(t % nqb, nqb) * kRowsPerTask;
        const int64_t i1 = std::min(Nq, i0 + kRowsPerTask);
        for (int64_t i = i0; i < i1; i += R) small_d_rows<T, R, DP, DVP, DIST, Lanes>(a, b, i, std::min<int64_t>(R, i1 - i));
      }
    });
  });
}

// Padded head dims the kernels are instantiated for.
inline int64_t small_d_pad(int64_t d) { return d <= 1 ? 1 : d <= 4 ? 4 : 8; }

template <typename T>
void small_d_forward(const SmallDArgs<T>& a, int64_t DP, int64_t DVP) {
  constexpr int R = ATTNZOO_SMALL_D_ROWS;
#define ATTNZOO_SMALL_D_CASE(dp, dvp)                                                 \
  if (DP == dp && DVP == dvp)                                                          \
    return a.wd ? small_d_forward_impl<T, R, dp, dvp, true>(a) : small_d_forward_impl<T, R, dp, dvp, false>(a);
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

// The small-D forward on contiguous accumulation-dtype q (B, Nq, D), k (B, Nk, D), v (B, Nk, Dv):
// key_bias and scale (bilinear), or distance weights wd (D,) (then key_bias must be nullopt).
template <typename T>
void small_d_run(const MaskParams& mp, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                 const OptTensor& key_bias, double scale, const at::Tensor& wd, const Tensor4& outs) {
  const int64_t Bk = k.size(0), D = q.size(2), Nk = k.size(1), Dv = v.size(2);
  // Keys, values and key_bias transposed and zero-padded for key-vectorised sweeps.
  const int64_t W = Vectorized<T>::size(), DP = small_d_pad(D), DVP = small_d_pad(Dv);
  const auto kT = transposed_keys(k, DP, 0, W), vT = transposed_keys(v, DVP, 0, W);
  const int64_t Nkp = kT.size(2);
  auto kbT = at::zeros({Bk, Nkp}, q.options());
  if (key_bias) kbT.narrow(1, 0, Nk).copy_(*key_bias);
  SmallDArgs<T> args{mp, q.const_data_ptr<T>(), kT.const_data_ptr<T>(), vT.const_data_ptr<T>(),
                     kbT.const_data_ptr<T>(), D, Dv, Nkp, static_cast<T>(scale), fwd_out<T>(outs)};
  if (wd.defined()) args.wd = wd.const_data_ptr<T>();
  small_d_forward<T>(args, DP, DVP);
}

}  // namespace attnzoo::cpu
