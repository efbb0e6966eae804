// Bilinear scores s_ij = scale * q_i . k_j + key_bias_j on blocks (GEMM), and their
// gradients dq_i += scale * sum_j ds_ij k_j, dk_j += scale * sum_i ds_ij q_i, dkey_bias_j += sum_i ds_ij.
#pragma once
#include "common/tensors.h"
#include "cpu/driver.h"

namespace attnzoo::cpu {

// Block sizes for bilinear (GEMM) blocks: large blocks amortise GEMM calls (SDPA's flash
// kernel uses 256 x 512 too); small ones waste less on windows and the causal diagonal.
inline Blocks bilinear_blocks(int64_t B, int64_t Nq, bool causal, int64_t window, bool bwd) {
  Blocks b{256, 512};
  if (window >= 0)
    b = Blocks{64, window <= 64 ? 128 : 256};
  else if (bwd)
    b = Blocks{64, 256};
  else if (causal)
    b = Blocks{128, 256};
  // Keep enough query blocks for all threads.
  const int64_t nt = at::get_num_threads();
  while (b.bq > 32 && B * ((Nq + b.bq - 1) / b.bq) < 4 * nt) b.bq /= 2;
  return b;
}

// q (B, Nq, D), k (B, Nk, D), key_bias (B, Nk) or nullptr; contiguous T.
// dscore: dq (B, Nq, D) written per query block; acc[1] = dk (B, Nk, D), acc[2] = dkey_bias (B, Nk).
template <typename T>
struct BilinearScorer {
  const T *q, *k, *kb;
  T scale;
  int64_t Nq, Nk, D;
  T* dq;

  void score(const ScoreBlock& blk, T* S, int64_t ldS) const {
    const int64_t b = blk.b, i0 = blk.i0, nq = blk.nq, j0 = blk.j0, nk = blk.nk;
    gemm<T>(false, true, nq, nk, D, scale, q + (b * Nq + i0) * D, D, k + (b * Nk + j0) * D, D, T(0), S, ldS);
    if (kb)
      for (int64_t r = 0; r < nq; ++r) vadd(S + r * ldS, kb + b * Nk + j0, nk);
  }

  void dscore(const ScoreBlock& blk, const T* dS, int64_t ldS, T* const* acc) const {
    const int64_t b = blk.b, i0 = blk.i0, nq = blk.nq, j0 = blk.j0, nk = blk.nk;
    gemm<T>(false, false, nq, D, nk, scale, dS, ldS, k + (b * Nk + j0) * D, D, T(1), dq + (b * Nq + i0) * D, D);
    gemm<T>(true, false, nk, D, nq, scale, dS, ldS, q + (b * Nq + i0) * D, D, T(1), acc[1] + (b * Nk + j0) * D, D);
    if (acc[2])
      for (int64_t r = 0; r < nq; ++r) vadd(acc[2] + b * Nk + j0, dS + r * ldS, nk);
  }
};

// The scorer of contiguous accumulation-dtype tensors q, k, key_bias (nullopt: none); dq: the
// backward's zero-initialised dq, or undefined for the forward.
template <typename T>
BilinearScorer<T> make_bilinear_scorer(const at::Tensor& q, const at::Tensor& k, const OptTensor& key_bias,
                                       double scale, const at::Tensor& dq) {
  return BilinearScorer<T>{q.const_data_ptr<T>(),
                           k.const_data_ptr<T>(),
                           key_bias ? key_bias->const_data_ptr<T>() : nullptr,
                           static_cast<T>(scale),
                           q.size(1),
                           k.size(1),
                           q.size(2),
                           dq.defined() ? dq.data_ptr<T>() : nullptr};
}

}  // namespace attnzoo::cpu
