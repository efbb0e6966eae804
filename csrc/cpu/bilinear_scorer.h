// Bilinear scores s_ij = scale * q_i . k_j + key_bias_j on blocks (GEMM), and their
// gradients dq_i += scale * sum_j ds_ij k_j, dk_j += scale * sum_i ds_ij q_i, dkey_bias_j += sum_i ds_ij.
#pragma once
#include "common/tensors.h"
#include "cpu/bilinear_kernels.h"
#include "cpu/driver.h"
#include "cpu/uniform_scores.h"

namespace attnzoo::cpu {

// uniform_scores on the run-time ISA's vectors: the AVX-512 copy (kernels_avx512.cpp) when
// runtime_isa() picks it. Both copies give the same scores (the same FMA chain per score).
template <typename T>
inline void uniform_scores_dispatch(const T* q, int64_t nq, int64_t D, const T* kT, int64_t ldk, int64_t nk, T scale,
                                    T* S, int64_t ldS) {
#if defined(ATTNZOO_HAVE_AVX512_KERNELS)
  if (runtime_isa() == CpuIsa::kAVX512) return uniform_scores_avx512(q, nq, D, kT, ldk, nk, scale, S, ldS);
#endif
  uniform_scores<T>(q, nq, D, kT, ldk, nk, scale, S, ldS);
}

// Block sizes for bilinear (GEMM) blocks: large blocks amortise GEMM calls (SDPA's flash
// kernel uses 256 x 512 too); small ones waste less on windows and the causal diagonal. Never larger
// than the problem (rounded up): each task zero-fills a bq x bk score buffer, which for a decoder step
// (Nq = 1) or a small problem cost more than the scores themselves.
inline Blocks bilinear_blocks(int64_t B, int64_t Nq, int64_t Nk, bool causal, int64_t window, bool bwd) {
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
  const auto round_up = [](int64_t x, int64_t m) { return (std::max<int64_t>(x, 1) + m - 1) / m * m; };
  b.bq = std::min(b.bq, round_up(Nq, 4));
  b.bk = std::min(b.bk, round_up(Nk, 64));  // (a multiple of 4 vectors of float or double, as bk must be)
  return b;
}

// Query rows per block scored by few_rows_scores instead of the GEMM.
constexpr int64_t kFewRows = 4;

// S[r][j] = scale * q_r . k_j for a few query rows (decoder steps; q (nq, D), k (nk, D) row-major), instead of
// the GEMM's matrix-vector path, the largest cost of a decoder step's op (a third of its profile). Four keys at a
// time, vectors over the features; every key gets vdot's chain of operations.
template <typename T>
void few_rows_scores(const T* q, int64_t nq, int64_t D, const T* k, int64_t nk, T scale, T* S, int64_t ldS) {
  using V = Vectorized<T>;
  constexpr int64_t W = V::size();
  const auto sum = [](const V& a) { return at::vec::vec_reduce_all<T>([](V& x, V& y) { return x + y; }, a); };
  const int64_t Dw = D / W * W;
  for (int64_t r = 0; r < nq; ++r) {
    const T* qr = q + r * D;
    T* s = S + r * ldS;
    int64_t j = 0;
    for (; j + 4 <= nk; j += 4) {
      const T* kj = k + j * D;
      V a0(T(0)), a1(T(0)), a2(T(0)), a3(T(0));
      for (int64_t d = 0; d < Dw; d += W) {
        const V qv = V::loadu(qr + d);
        a0 = at::vec::fmadd(qv, V::loadu(kj + d), a0);
        a1 = at::vec::fmadd(qv, V::loadu(kj + D + d), a1);
        a2 = at::vec::fmadd(qv, V::loadu(kj + 2 * D + d), a2);
        a3 = at::vec::fmadd(qv, V::loadu(kj + 3 * D + d), a3);
      }
      T t[4] = {sum(a0), sum(a1), sum(a2), sum(a3)};
      for (int64_t u = 0; u < 4; ++u) {
        for (int64_t d = Dw; d < D; ++d) t[u] += qr[d] * kj[u * D + d];
        s[j + u] = scale * t[u];
      }
    }
    for (; j < nk; ++j) s[j] = scale * vdot(qr, k + j * D, D);  // (vdot: the chain of the four above)
  }
}

// q (B, Nq, D), k (Bk, Nk, D) (dense rows, any batch stride), key_bias (Bk, Nk) or nullptr; contiguous T
// otherwise (query batch b reads key batch blk.kb).
// dscore: dq (B, Nq, D) written per query block; acc[1] = dk (Bk, Nk, D), acc[2] = dkey_bias (Bk, Nk).
template <typename T>
struct BilinearScorer {
  const T *q, *k, *kb;
  T scale;
  int64_t Nq, Nk, D;
  int64_t k_bs;  // k's batch stride (a view into a larger buffer keeps its own)
  T* dq;
  // Forward of a pooling with exact ties: k transposed (B, D, ldk), zero-padded to ldk >= Nk + the
  // widest vector, scored by uniform_scores instead of the GEMM (nullptr: the GEMM).
  const T* kT = nullptr;
  int64_t ldk = 0;

  void score(const ScoreBlock& blk, T* S, int64_t ldS) const {
    const int64_t b = blk.b, c = blk.kb, i0 = blk.i0, nq = blk.nq, j0 = blk.j0, nk = blk.nk;
    if (kT)
      uniform_scores_dispatch<T>(q + (b * Nq + i0) * D, nq, D, kT + c * D * ldk + j0, ldk, nk, scale, S, ldS);
    else if (nq <= kFewRows)
      few_rows_scores<T>(q + (b * Nq + i0) * D, nq, D, k + c * k_bs + j0 * D, nk, scale, S, ldS);
    else
      gemm<T>(false, true, nq, nk, D, scale, q + (b * Nq + i0) * D, D, k + c * k_bs + j0 * D, D, T(0), S, ldS);
    if (kb)
      for (int64_t r = 0; r < nq; ++r) vadd(S + r * ldS, kb + c * Nk + j0, nk);
  }

  void dscore(const ScoreBlock& blk, const T* dS, int64_t ldS, T* const* acc) const {
    const int64_t b = blk.b, c = blk.kb, i0 = blk.i0, nq = blk.nq, j0 = blk.j0, nk = blk.nk;
    gemm<T>(false, false, nq, D, nk, scale, dS, ldS, k + c * k_bs + j0 * D, D, T(1), dq + (b * Nq + i0) * D, D);
    gemm<T>(true, false, nk, D, nq, scale, dS, ldS, q + (b * Nq + i0) * D, D, T(1), acc[1] + (c * Nk + j0) * D, D);
    if (acc[2])
      for (int64_t r = 0; r < nq; ++r) vadd(acc[2] + c * Nk + j0, dS + r * ldS, nk);
  }
};

// k (B, Nk, D) transposed to (B, D, Nkp), zero-padded: Nkp >= Nk + pad columns, a multiple of W.
inline at::Tensor transposed_keys(const at::Tensor& k, int64_t rows, int64_t pad, int64_t W) {
  const int64_t B = k.size(0), Nk = k.size(1), D = k.size(2), Nkp = (Nk + pad + W - 1) / W * W;
  auto kT = at::zeros({B, rows, Nkp}, k.options());
  kT.narrow(1, 0, D).narrow(2, 0, Nk).copy_(k.transpose(1, 2));
  return kT;
}

// The scorer of contiguous accumulation-dtype tensors q, k, key_bias (nullopt: none); dq: the
// backward's zero-initialised dq, or undefined for the forward; kT: transposed_keys(k, D, pad, pad)
// with pad >= the widest vector, for a pooling with exact ties (uniform_scores), else undefined.
template <typename T>
BilinearScorer<T> make_bilinear_scorer(const at::Tensor& q, const at::Tensor& k, const OptTensor& key_bias,
                                       double scale, const at::Tensor& dq, const at::Tensor& kT = at::Tensor()) {
  return BilinearScorer<T>{q.const_data_ptr<T>(),
                           k.const_data_ptr<T>(),
                           key_bias ? key_bias->const_data_ptr<T>() : nullptr,
                           static_cast<T>(scale),
                           q.size(1),
                           k.size(1),
                           q.size(2),
                           k.stride(0),
                           dq.defined() ? dq.data_ptr<T>() : nullptr,
                           kT.defined() ? kT.const_data_ptr<T>() : nullptr,
                           kT.defined() ? kT.size(2) : 0};
}

}  // namespace attnzoo::cpu
