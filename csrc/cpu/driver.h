// Block drivers of the fused CPU attention kernels, shared by both score families.
//
// A "scorer" (the family policy: bilinear_scorer.h, elementwise_scorer.h; the CUDA tile policies
// in cuda/bilinear_tile.cuh, cuda/elementwise_tile.cuh have the same two methods) supplies the
// family-specific parts on a ScoreBlock (query block x key block):
//   score(blk, S, ldS): raw scores S[r][j] of query i0+r, key j0+j (only columns
//       [ra[r], re[r]) are used; others may hold anything);
//   dscore(blk, dS, ldS, acc): accumulate the input gradients from dS = d loss / d S
//       (zero outside each row's valid keys and for j >= nk up to kBK).
// A pooling policy (pooling.h; the interface: common/pooling.h) supplies the pooling-specific
// parts: the online state and its update per key block, the finalisation, the weight gradient.
// The drivers handle the blocks, masks, P.V, dV and dP, in the accumulation type T (float or
// double), and know neither family nor pooling; inputs are contiguous T tensors.
#pragma once
#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <optional>
#include <vector>

#include "common/params.h"
#include "common/philox.h"
#include "common/tensors.h"
#include "cpu/kernel_args.h"
#include "cpu/blas.h"
#include "cpu/centred_values.h"
#include "cpu/isa.h"
#include "cpu/parallel.h"
#include "cpu/pooling.h"
#include "cpu/vec_math.h"

namespace attnzoo::cpu {
// Everything below uses at::vec and is compiled once per ISA (kernels_avx512.cpp): the
// per-ISA inline namespace keeps the copies apart (no ODR clash between translation units).
inline namespace ATTNZOO_ISA {

// Default block sizes (the elementwise scorer's buffers assume them).
constexpr int64_t kBQ = 64;   // queries per task block
constexpr int64_t kBK = 128;  // keys per block (multiple of 4 vectors)

struct Blocks {
  int64_t bq = kBQ, bk = kBK;  // bk: multiple of 4 vectors
};

// A (query block x key block) of batch b: queries i0 + r (r < nq), keys j0 + j (j < nk) of key batch kb
// (b / kv_group: grouped keys); row r's valid keys (masks aside) are the columns [ra[r], re[r]).
struct ScoreBlock {
  int64_t b, kb, i0, nq, j0, nk;
  const int64_t *ra, *re;
};

// s[a, e) of query i (batch b; key block from j0) plus the positional terms: (s + bias) - m |i - j|
// (params.h). Vectors throughout, the last one partial: every key gets the same arithmetic (exact
// ties stay ties).
template <typename T>
void add_positions(const MaskParams& mp, T* s, int64_t a, int64_t e, int64_t b, int64_t i, int64_t j0) {
  using V = Vectorized<T>;
  constexpr int64_t W = V::size();
  const T* br = bias_row<T>(mp, b, i);
  const V mv(alibi_slope<T>(mp, b)), iv(static_cast<T>(i + mp.q_offset)), step(static_cast<T>(W));
  V jv = V::arange(static_cast<T>(j0 + a), T(1));  // the keys' positions
  T tmp[W];
  for (int64_t j = a; j < e; j += W, jv = jv + step) {
    const int64_t n = std::min<int64_t>(W, e - j);
    V x = V::loadu(s + j, n);
    if (br) {
      const T* bj = br + (j0 + j) * mp.bs_j;
      if (mp.bs_j == 1) {
        x = x + V::loadu(bj, n);
      } else {
        for (int64_t c = 0; c < n; ++c) tmp[c] = bj[c * mp.bs_j];
        x = x + V::loadu(tmp, n);
      }
    }
    if (mp.alibi) x = x - mv * (iv - jv).abs();
    x.store(s + j, n);
  }
  if (mp.noise) {  // in double, then rounded once: the same draw for every blocking, forward and backward
    const uint64_t row = static_cast<uint64_t>(b * mp.Nq + i);
    for (int64_t j = a; j < e; ++j)
      s[j] = static_cast<T>((static_cast<double>(s[j]) +
                             gumbel_noise(mp.seed, row, static_cast<uint64_t>(j0 + j))) * mp.inv_tau);
  }
}

// dbias[b, i0 + r, j0 + j] += dS[r][j] over each row's valid keys [ra, re).
template <typename T>
void add_dbias(const BiasGrad& g, const ScoreBlock& blk, const T* dS, int64_t ldS) {
  for (int64_t r = 0; r < blk.nq; ++r) {
    T* d = dbias_row<T>(g, blk.b, blk.i0 + r) + blk.j0 * g.s_j;
    const T* ds = dS + r * ldS;
    for (int64_t j = blk.ra[r]; j < blk.re[r]; ++j) d[j * g.s_j] += ds[j];
  }
}

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

// The rows' per-block state of a task: valid ranges [lo, hi), their clips [ra, re) to the key
// block, and the block's scores.
template <typename T>
struct RowBlock {
  std::vector<int64_t> lo, hi, ra, re;
  std::vector<T> S;  // (bq, bk)
  int64_t bk;

  RowBlock(int64_t bq, int64_t bk_) : lo(bq), hi(bq), ra(bq), re(bq), S(bq * bk_), bk(bk_) {}

  // Rows' valid keys clipped to the key block [j0, j0 + nk) as [ra, re) relative to j0, and (when
  // the pooling reads scores) the block's raw scores from the scorer (the family policy).
  template <typename Scorer>
  ScoreBlock score(Scorer& scorer, bool scores, const MaskParams& mp, int64_t b, int64_t i0, int64_t nq, int64_t j0,
                   int64_t nk) {
    for (int64_t r = 0; r < nq; ++r) {
      ra[r] = std::clamp<int64_t>(lo[r] - j0, 0, nk);
      re[r] = std::clamp<int64_t>(hi[r] - j0, ra[r], nk);
    }
    const ScoreBlock blk{b, b / mp.kv_group, i0, nq, j0, nk, ra.data(), re.data()};
    if (scores) scorer.score(blk, S.data(), bk);
    return blk;
  }

  // Row r's raw scores -> masked scores in [ra, re): plus the positional terms, -inf where the
  // mask is false; every valid key scores 0 for a pooling that reads no scores.
  T* masked(const MaskParams& mp, bool scores, int64_t r, const ScoreBlock& blk) {
    T* s = S.data() + r * bk;
    const int64_t a = ra[r], e = re[r];
    if (e <= a) return s;
    if (!scores) vfill(s + a, e - a, T(0));
    if (scores && has_positions(mp)) add_positions(mp, s, a, e, blk.b, blk.i0 + r, blk.j0);
    if (const bool* mr = mask_row(mp, blk.b, blk.i0 + r)) {
      const T ninf = -std::numeric_limits<T>::infinity();
      for (int64_t j = a; j < e; ++j)
        if (!mr[(blk.j0 + j) * mp.m_sj]) s[j] = ninf;
    }
    return s;
  }
};

// The forward of pooling policy Pool (pooling.h): out, lse and the pooling's extras.
template <typename T, typename Pool, typename MakeScorer>
void forward_blocks(const MaskParams& mp, Blocks blk, int64_t Dv, const T* v, int64_t v_bs, const FwdOut<T>& fo,
                    const MakeScorer& make_scorer) {
  constexpr PoolingTraits pt = Pool::kTraits;
  const int64_t bq = blk.bq, bk = blk.bk;
  const int64_t B = mp.B, Nq = mp.Nq, Nk = mp.Nk;
  const int64_t nqb = (Nq + bq - 1) / bq;
  parallel_tasks(B * nqb, bq * Nk, [&](int64_t t0, int64_t t1) {
    auto scorer = make_scorer();
    Pool pool(fo, bq);
    RowBlock<T> rb(bq, bk);
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t b = t / nqb, i0 = balanced(t % nqb, nqb) * bq, nq = std::min(bq, Nq - i0);
      T* O = pool.acc_rows(b, i0);
      vfill(O, nq * Dv, T(0));
      int64_t klo, khi;
      block_rows(mp, b, i0, nq, rb.lo.data(), rb.hi.data(), klo, khi);
      pool.start(nq);
      if constexpr (pt.scan_passes > 0) {  // score-only sweeps (e.g. a threshold by bisection)
        for (int pass = 0; pass < pt.scan_passes; ++pass)
          for (int64_t j0 = klo; j0 < khi; j0 += bk) {
            const ScoreBlock sb = rb.score(scorer, pt.scores, mp, b, i0, nq, j0, std::min(bk, khi - j0));
            for (int64_t r = 0; r < nq; ++r) pool.scan(pass, r, rb.masked(mp, pt.scores, r, sb), rb.ra[r], rb.re[r], j0);
          }
      }
      for (int64_t j0 = klo; j0 < khi; j0 += bk) {
        const int64_t nk = std::min(bk, khi - j0);
        const ScoreBlock sb = rb.score(scorer, pt.scores, mp, b, i0, nq, j0, nk);
        for (int64_t r = 0; r < nq; ++r)
          pool.weigh(r, rb.masked(mp, pt.scores, r, sb), rb.ra[r], rb.re[r], nk, j0, O + r * Dv);
        gemm<T>(false, false, nq, Dv, nk, T(1), rb.S.data(), bk, v + sb.kb * v_bs + j0 * Dv, Dv, T(1), O, Dv);
      }
      const int64_t kb = b / mp.kv_group;
      const auto value = [&](int64_t j) { return v + kb * v_bs + j * Dv; };
      for (int64_t r = 0; r < nq; ++r) pool.finish(r, b, i0 + r, O + r * Dv, value);
    }
  });
}

// out (B, Nq, Dv), lse (B, Nq) and the pooling's extras (argmax (B, Nq), soft_out (B, Nq, Dv)); v (Bk, Nk, Dv) with
// dense rows and batch stride v_bs.
template <typename T, typename MakeScorer>
void forward_cpu(const MaskParams& mp, Blocks blk, int64_t Dv, const T* v, int64_t v_bs, const FwdOut<T>& fo,
                 const MakeScorer& make_scorer) {
  dispatch_pooling(mp.pooling, [&](auto P) {
    forward_blocks<T, typename CpuPooling<decltype(P)::value, T>::Fwd>(mp, blk, Dv, v, v_bs, fo, make_scorer);
  });
}

// The backward of pooling policy Pool; see backward_cpu.
template <typename T, typename Pool, typename MakeScorer>
void backward_blocks(const MaskParams& mp, Blocks blk, int64_t Dv, const T* v, const T* dout, const BwdIn<T>& bi,
                     std::vector<AccSpec>& accs, const BiasGradOut& dbias, const MakeScorer& make_scorer) {
  constexpr PoolingTraits pt = Pool::kTraits;
  const int64_t bq = blk.bq, bk = blk.bk;
  const int64_t B = mp.B, Nq = mp.Nq, Nk = mp.Nk;
  const int64_t nqb = (Nq + bq - 1) / bq;

  // Batch-parallel when there are enough key batches (a task: one key batch and its kv_group query
  // batches): per-batch sums are then written in place; otherwise each thread accumulates into its own
  // zeroed copy, summed at the end.
  const int nt = max_threads();
  const int64_t G = mp.kv_group, Bk = B / G;
  const bool direct = Bk >= nt;
  std::vector<std::vector<at::Tensor>> copies(nt, std::vector<at::Tensor>(accs.size()));
  std::vector<std::vector<T*>> ptrs(nt, std::vector<T*>(accs.size(), nullptr));
  for (int th = 0; th < nt; ++th)
    for (size_t s = 0; s < accs.size(); ++s) {
      if (!accs[s].out.defined()) continue;
      const bool own = direct && accs[s].per_batch;
      copies[th][s] = own ? accs[s].out : (th == 0 ? accs[s].out : at::zeros_like(accs[s].out));
      ptrs[th][s] = copies[th][s].template data_ptr<T>();
    }
  // The bias gradient: written in place, unless a broadcast bias makes tasks share its elements.
  std::vector<at::Tensor> dbias_copies(dbias.g.shared ? nt : 0);
  std::vector<BiasGrad> dbias_at(nt, dbias.g);
  for (int th = 1; th < static_cast<int>(dbias_copies.size()); ++th) {
    dbias_copies[th] = at::zeros_like(dbias.d);
    dbias_at[th].d = dbias_copies[th].data_ptr();
  }

  // dP and D_i from centred values (centred_values.h); the pooling's other terms read bi as given.
  BwdIn<T> bin = bi;
  std::optional<CentredValues<T>> centred;
  if constexpr (pt.score_grad) {
    centred.emplace(Bk, G, Nq, Nk, Dv, v, bi.o_delta);
    v = centred->v();
    bin.o_delta = centred->o();
  }

  auto process = [&](auto& scorer, Pool& pool, RowBlock<T>& rb, std::vector<T>& dP, int64_t b, int64_t i0,
                     T* const* acc, const BiasGrad& dbg) {
    const int64_t nq = std::min(bq, Nq - i0), kb = b / G;
    const T* dO = dout + (b * Nq + i0) * Dv;
    int64_t klo, khi;
    block_rows(mp, b, i0, nq, rb.lo.data(), rb.hi.data(), klo, khi);
    for (int64_t r = 0; r < nq; ++r)
      if (!pool.start_row(r, b * Nq + i0 + r, dO + r * Dv)) rb.hi[r] = rb.lo[r];
    for (int64_t j0 = klo; j0 < khi; j0 += bk) {
      const int64_t nk = std::min(bk, khi - j0);
      const ScoreBlock sb = rb.score(scorer, pt.scores, mp, b, i0, nq, j0, nk);
      for (int64_t r = 0; r < nq; ++r) pool.weights(r, rb.masked(mp, pt.scores, r, sb), rb.ra[r], rb.re[r], bk);
      if constexpr (Pool::kDvFromWeights)
        gemm<T>(true, false, nk, Dv, nq, T(1), rb.S.data(), bk, dO, Dv, T(1), acc[0] + (kb * Nk + j0) * Dv, Dv);
      if constexpr (pt.score_grad) {
        gemm<T>(false, true, nq, nk, Dv, T(1), dO, Dv, v + (kb * Nk + j0) * Dv, Dv, T(0), dP.data(), bk);
        for (int64_t r = 0; r < nq; ++r) pool.dweights(r, rb.S.data() + r * bk, dP.data() + r * bk, nk, bk);
        if (mp.noise)  // dS of s' = (s + g) / tau
          for (int64_t r = 0; r < nq; ++r) vscale(dP.data() + r * bk, nk, static_cast<T>(mp.inv_tau));
        if (dbg.d) add_dbias(dbg, sb, dP.data(), bk);
        scorer.dscore(sb, dP.data(), bk, acc);
      }
    }
    pool.finish_dv(b, kb, i0, nq, dO, acc[0]);
  };

  const int64_t ntasks = direct ? Bk : B * nqb;
  parallel_tasks(ntasks, direct ? G * Nq * Nk : bq * Nk, [&](int64_t t0, int64_t t1) {
    auto scorer = make_scorer();
    Pool pool(bin, bq);
    RowBlock<T> rb(bq, bk);
    std::vector<T> dP(pt.score_grad ? bq * bk : 0);
    const int th = std::min(at::get_thread_num(), nt - 1);
    T* const* acc = ptrs[th].data();
    for (int64_t t = t0; t < t1; ++t) {
      if (direct) {
        for (int64_t b = t * G; b < (t + 1) * G; ++b)
          for (int64_t qb = 0; qb < nqb; ++qb) process(scorer, pool, rb, dP, b, qb * bq, acc, dbias_at[th]);
      } else {
        process(scorer, pool, rb, dP, t / nqb, balanced(t % nqb, nqb) * bq, acc, dbias_at[th]);
      }
    }
  });

  for (size_t s = 0; s < accs.size(); ++s) {
    if (!accs[s].out.defined() || (direct && accs[s].per_batch)) continue;
    for (int th = 1; th < nt; ++th) accs[s].out.add_(copies[th][s]);
  }
  for (size_t th = 1; th < dbias_copies.size(); ++th) dbias.d.add_(dbias_copies[th]);
}

// Accumulates dv into accs[0] (B, Nk, Dv); scorer.dscore gets the other accumulators
// (pointer i = accs[i]'s base for this thread); dS into dbias.d when it is defined. bi.o_delta: softmax_output (out, or soft_out).
template <typename T, typename MakeScorer>
void backward_cpu(const MaskParams& mp, Blocks blk, int64_t Dv, const T* v, const T* dout, const BwdIn<T>& bi,
                  std::vector<AccSpec>& accs, const BiasGradOut& dbias, const MakeScorer& make_scorer) {
  dispatch_pooling(mp.pooling, [&](auto P) {
    backward_blocks<T, typename CpuPooling<decltype(P)::value, T>::Bwd>(mp, blk, Dv, v, dout, bi, accs, dbias,
                                                                        make_scorer);
  });
}

}  // namespace ATTNZOO_ISA
}  // namespace attnzoo::cpu
