// Block drivers of the fused CPU attention kernels, shared by both score families.
//
// A "scorer" (the family policy: bilinear_scorer.h, additive_scorer.h; the CUDA tile policies
// in cuda/bilinear_tile.cuh, cuda/additive_tile.cuh have the same two methods) supplies the
// family-specific parts on a ScoreBlock (query block x key block):
//   score(blk, S, ldS): raw scores S[r][j] of query i0+r, key j0+j (only columns
//       [ra[r], re[r]) are used; others may hold anything);
//   dscore(blk, dS, ldS, acc): accumulate the input gradients from dS = d loss / d S
//       (zero outside each row's valid keys and for j >= nk up to kBK).
// The drivers handle masks, the online softmax / arg-max, P.V, dV and dS, in the
// accumulation type T (float or double); inputs are contiguous T tensors.
#pragma once
#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "common/params.h"
#include "cpu/acc_spec.h"
#include "cpu/blas.h"
#include "cpu/isa.h"
#include "cpu/parallel.h"
#include "cpu/vec_math.h"

namespace attnzoo::cpu {
// Everything below uses at::vec and is compiled once per ISA (additive_avx512.cpp): the
// per-ISA inline namespace keeps the copies apart (no ODR clash between translation units).
inline namespace ATTNZOO_ISA {

// Default block sizes (the additive scorer's buffers assume them).
constexpr int64_t kBQ = 64;   // queries per task block
constexpr int64_t kBK = 128;  // keys per block (multiple of 4 vectors)

struct Blocks {
  int64_t bq = kBQ, bk = kBK;  // bk: multiple of 4 vectors
};

// A (query block x key block) of batch b: queries i0 + r (r < nq), keys j0 + j (j < nk); row r's
// valid keys (masks aside) are the columns [ra[r], re[r]).
struct ScoreBlock {
  int64_t b, i0, nq, j0, nk;
  const int64_t *ra, *re;
};

// Valid key ranges of rows i0..i0+nq; returns the union [klo, khi) (klo >= khi: none).
inline void block_rows(const MaskParams& mp, int64_t b, int64_t i0, int64_t nq, int64_t* lo, int64_t* hi,
                       int64_t& klo, int64_t& khi) {
  klo = mp.Nk;
  khi = 0;
  for (int64_t r = 0; r < nq; ++r) {
    const KeyRange kr = row_range(mp, b, i0 + r);
    lo[r] = kr.lo;
    hi[r] = kr.hi;
    if (kr.hi > kr.lo) {
      klo = std::min(klo, kr.lo);
      khi = std::max(khi, kr.hi);
    }
  }
}

// Rows' valid keys [lo, hi) clipped to the key block [j0, j0 + nk) as [ra, re) relative to j0,
// and the block's raw scores into S (leading dimension bk), unless pooling is average.
template <typename Scorer, typename T>
inline void score_block(Scorer& scorer, int64_t b, int64_t i0, int64_t nq, int64_t j0, int64_t nk,
                        const std::vector<int64_t>& lo, const std::vector<int64_t>& hi, std::vector<int64_t>& ra,
                        std::vector<int64_t>& re, T* S, int64_t bk, bool avg) {
  for (int64_t r = 0; r < nq; ++r) {
    ra[r] = std::clamp<int64_t>(lo[r] - j0, 0, nk);
    re[r] = std::clamp<int64_t>(hi[r] - j0, ra[r], nk);
  }
  if (!avg) scorer.score(ScoreBlock{b, i0, nq, j0, nk, ra.data(), re.data()}, S, bk);
}

// Raw scores of one row -> masked scores in [a, e): -inf where mask is false, 0 for average pooling.
template <typename T>
inline void mask_row_scores(const MaskParams& mp, T* s, int64_t b, int64_t i, int64_t j0, int64_t a, int64_t e,
                            bool avg) {
  if (avg) vfill(s + a, e - a, T(0));
  if (const bool* mr = mask_row(mp, b, i)) {
    const T ninf = -std::numeric_limits<T>::infinity();
    for (int64_t j = a; j < e; ++j)
      if (!mr[(j0 + j) * mp.m_sj]) s[j] = ninf;
  }
}

// out (B, Nq, Dv), lse (B, Nq); hard pooling: argmax (B, Nq) and soft_out (B, Nq, Dv).
template <typename T, typename MakeScorer>
void forward_cpu(const MaskParams& mp, Blocks blk, int64_t Dv, const T* v, T* out, T* lse, int64_t* argmax,
                 T* soft_out, const MakeScorer& make_scorer) {
  const int64_t bq = blk.bq, bk = blk.bk;
  const int64_t B = mp.B, Nq = mp.Nq, Nk = mp.Nk;
  const bool hard = mp.pooling == kHard, avg = mp.pooling == kAverage;
  const int64_t nqb = (Nq + bq - 1) / bq;
  const T ninf = -std::numeric_limits<T>::infinity();
  parallel_tasks(B * nqb, bq * Nk, [&](int64_t t0, int64_t t1) {
    auto scorer = make_scorer();
    std::vector<T> S(bq * bk), m(bq), l(bq);
    std::vector<int64_t> lo(bq), hi(bq), ra(bq), re(bq), am(bq);
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t b = t / nqb, i0 = balanced(t % nqb, nqb) * bq, nq = std::min(bq, Nq - i0);
      T* O = (hard ? soft_out : out) + (b * Nq + i0) * Dv;
      vfill(O, nq * Dv, T(0));
      int64_t klo, khi;
      block_rows(mp, b, i0, nq, lo.data(), hi.data(), klo, khi);
      for (int64_t r = 0; r < nq; ++r) {
        m[r] = ninf;
        l[r] = 0;
        am[r] = -1;
      }
      for (int64_t j0 = klo; j0 < khi; j0 += bk) {
        const int64_t nk = std::min(bk, khi - j0);
        score_block(scorer, b, i0, nq, j0, nk, lo, hi, ra, re, S.data(), bk, avg);
        for (int64_t r = 0; r < nq; ++r) {
          T* s = S.data() + r * bk;
          const int64_t a = ra[r], e = re[r];
          T bm = ninf;
          if (e > a) {
            mask_row_scores(mp, s, b, i0 + r, j0, a, e, avg);
            bm = vmax(s + a, e - a);
          }
          if (bm == ninf) {
            vfill(s, nk, T(0));
            continue;
          }
          if (hard && bm > m[r]) {
            int64_t j = a;
            while (s[j] != bm) ++j;
            am[r] = j0 + j;
          }
          const T mn = std::max(m[r], bm);
          vfill(s, a, T(0));
          vfill(s + e, nk - e, T(0));
          const T sum = exp_sub_sum(s + a, e - a, mn);
          if (mn != m[r]) {
            const T alpha = m[r] == ninf ? T(0) : std::exp(m[r] - mn);
            if (l[r] != 0) vscale(O + r * Dv, Dv, alpha);
            l[r] *= alpha;
            m[r] = mn;
          }
          l[r] += sum;
        }
        gemm<T>(false, false, nq, Dv, nk, T(1), S.data(), bk, v + (b * Nk + j0) * Dv, Dv, T(1), O, Dv);
      }
      for (int64_t r = 0; r < nq; ++r) {
        const int64_t i = i0 + r;
        T* o = O + r * Dv;
        const bool empty = l[r] == T(0);  // no valid key; a NaN score makes l NaN and the row NaN, like torch
        if (empty) {
          vfill(o, Dv, T(0));
          lse[b * Nq + i] = ninf;
        } else {
          vscale(o, Dv, T(1) / l[r]);
          lse[b * Nq + i] = m[r] + std::log(l[r]);
        }
        if (hard) {
          argmax[b * Nq + i] = empty ? -1 : am[r];
          T* oh = out + (b * Nq + i) * Dv;
          if (empty || am[r] < 0 || std::isnan(l[r]))  // a NaN score in the row: the output is NaN
            vfill(oh, Dv, empty ? T(0) : std::numeric_limits<T>::quiet_NaN());
          else
            std::copy(v + (b * Nk + am[r]) * Dv, v + (b * Nk + am[r] + 1) * Dv, oh);
        }
      }
    }
  });
}

// Accumulates dv into accs[0] (B, Nk, Dv); scorer.dscore gets the other accumulators
// (pointer i = accs[i]'s base for this thread). o_delta: out (soft_out for hard pooling).
template <typename T, typename MakeScorer>
void backward_cpu(const MaskParams& mp, Blocks blk, int64_t Dv, const T* v, const T* dout, const T* lse, const int64_t* argmax,
                  const T* o_delta, const T* grad_lse, std::vector<AccSpec>& accs, const MakeScorer& make_scorer) {
  const int64_t bq = blk.bq, bk = blk.bk;
  const int64_t B = mp.B, Nq = mp.Nq, Nk = mp.Nk;
  const bool hard = mp.pooling == kHard, avg = mp.pooling == kAverage;
  const int64_t nqb = (Nq + bq - 1) / bq;
  const T ninf = -std::numeric_limits<T>::infinity();
  using V = Vectorized<T>;

  // Batch-parallel when there are enough batches: per-batch sums are then written in place;
  // otherwise each thread accumulates into its own zeroed copy, summed at the end.
  const int nt = max_threads();
  const bool direct = B >= nt;
  std::vector<std::vector<at::Tensor>> copies(nt, std::vector<at::Tensor>(accs.size()));
  std::vector<std::vector<T*>> ptrs(nt, std::vector<T*>(accs.size(), nullptr));
  for (int th = 0; th < nt; ++th)
    for (size_t s = 0; s < accs.size(); ++s) {
      if (!accs[s].out.defined()) continue;
      const bool own = direct && accs[s].per_batch;
      copies[th][s] = own ? accs[s].out : (th == 0 ? accs[s].out : at::zeros_like(accs[s].out));
      ptrs[th][s] = copies[th][s].template data_ptr<T>();
    }

  auto process = [&](auto& scorer, int64_t b, int64_t i0, T* const* acc, std::vector<T>& S, std::vector<T>& dP,
                     std::vector<int64_t>& lo, std::vector<int64_t>& hi, std::vector<int64_t>& ra,
                     std::vector<int64_t>& re, std::vector<T>& delta, std::vector<T>& rl) {
    const int64_t nq = std::min(bq, Nq - i0);
    const T* dO = dout + (b * Nq + i0) * Dv;
    int64_t klo, khi;
    block_rows(mp, b, i0, nq, lo.data(), hi.data(), klo, khi);
    for (int64_t r = 0; r < nq; ++r) {
      const int64_t i = b * Nq + i0 + r;
      rl[r] = lse[i];
      if (rl[r] == ninf) hi[r] = lo[r];  // empty row: no gradient (a NaN row's gradient is NaN)
      delta[r] = vdot(dO + r * Dv, o_delta + i * Dv, Dv) - (grad_lse ? grad_lse[i] : T(0));
    }
    for (int64_t j0 = klo; j0 < khi; j0 += bk) {
      const int64_t nk = std::min(bk, khi - j0);
      score_block(scorer, b, i0, nq, j0, nk, lo, hi, ra, re, S.data(), bk, avg);
      for (int64_t r = 0; r < nq; ++r) {
        T* s = S.data() + r * bk;
        const int64_t a = ra[r], e = re[r];
        if (e > a) {
          mask_row_scores(mp, s, b, i0 + r, j0, a, e, avg);
          exp_sub_sum(s + a, e - a, rl[r]);
        }
        vfill(s, a, T(0));
        vfill(s + e, bk - e, T(0));
      }
      if (!hard)
        gemm<T>(true, false, nk, Dv, nq, T(1), S.data(), bk, dO, Dv, T(1), acc[0] + (b * Nk + j0) * Dv, Dv);
      if (avg) continue;
      gemm<T>(false, true, nq, nk, Dv, T(1), dO, Dv, v + (b * Nk + j0) * Dv, Dv, T(0), dP.data(), bk);
      for (int64_t r = 0; r < nq; ++r) {
        const T* p = S.data() + r * bk;
        T* d = dP.data() + r * bk;
        const V dv(delta[r]);
        int64_t j = 0;
        for (; j + V::size() <= nk; j += V::size()) (V::loadu(p + j) * (V::loadu(d + j) - dv)).store(d + j);
        for (; j < nk; ++j) d[j] = p[j] * (d[j] - delta[r]);
        vfill(d + nk, bk - nk, T(0));
      }
      scorer.dscore(ScoreBlock{b, i0, nq, j0, nk, ra.data(), re.data()}, dP.data(), bk, acc);
    }
    if (hard)
      for (int64_t r = 0; r < nq; ++r) {
        const int64_t j = argmax[b * Nq + i0 + r];
        if (j >= 0) vadd(acc[0] + (b * Nk + j) * Dv, dO + r * Dv, Dv);
      }
  };

  const int64_t ntasks = direct ? B : B * nqb;
  parallel_tasks(ntasks, direct ? Nq * Nk : bq * Nk, [&](int64_t t0, int64_t t1) {
    auto scorer = make_scorer();
    std::vector<T> S(bq * bk), dP(bq * bk), delta(bq), rl(bq);
    std::vector<int64_t> lo(bq), hi(bq), ra(bq), re(bq);
    const int th = std::min(at::get_thread_num(), nt - 1);
    T* const* acc = ptrs[th].data();
    for (int64_t t = t0; t < t1; ++t) {
      if (direct) {
        for (int64_t qb = 0; qb < nqb; ++qb) process(scorer, t, qb * bq, acc, S, dP, lo, hi, ra, re, delta, rl);
      } else {
        process(scorer, t / nqb, balanced(t % nqb, nqb) * bq, acc, S, dP, lo, hi, ra, re, delta, rl);
      }
    }
  });

  for (size_t s = 0; s < accs.size(); ++s) {
    if (!accs[s].out.defined() || (direct && accs[s].per_batch)) continue;
    for (int th = 1; th < nt; ++th) accs[s].out.add_(copies[th][s]);
  }
}

}  // namespace ATTNZOO_ISA
}  // namespace attnzoo::cpu
