// The bilinear family's scores with the same arithmetic for every key (used for poolings with
// exact ties). Compiled once per ISA: here for AVX2, in kernels_avx512.cpp for AVX-512, chosen by
// uniform_scores_dispatch (bilinear_scorer.h); both give bitwise-equal scores (the same FMA chains).
#pragma once
#include <algorithm>
#include <cstdint>

#include "cpu/isa.h"
#include "cpu/vec_math.h"

namespace attnzoo::cpu {
inline namespace ATTNZOO_ISA {

// Scores with the same arithmetic for every key, for poolings that compare scores exactly
// (traits.exact_ties: hard pooling's first arg-max). A GEMM library computes a block's leftover
// columns (and one-row or one-column products) with other kernels than its main part, so
// bitwise-equal keys can score an ulp apart there and another key than the first wins. Here
// S[r][j] = scale * (one FMA chain over d of q[r][d] kT[d][j]), vectorised over keys, whatever the
// key's place in the block or the block's size.
//   q: NR rows (D apart); kT: the block's first key in a (D, ldk) transposed key matrix whose
//   columns are readable up to NV vectors; S: NR rows (ldS apart) of NV vectors.
template <typename T, int NR, int NV>
inline void uniform_score_tile(const T* q, int64_t D, const T* kT, int64_t ldk, T scale, T* S, int64_t ldS) {
  using V = Vectorized<T>;
  constexpr int64_t W = V::size();
  V acc[NR][NV];
#pragma GCC unroll 4
  for (int r = 0; r < NR; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) acc[r][v] = V(T(0));
  for (int64_t d = 0; d < D; ++d) {
    V kv[NV];
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) kv[v] = V::loadu(kT + d * ldk + v * W);
#pragma GCC unroll 4
    for (int r = 0; r < NR; ++r) {
      const V qv(q[r * D + d]);
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) acc[r][v] = at::vec::fmadd(qv, kv[v], acc[r][v]);
    }
  }
  const V sv(scale);
#pragma GCC unroll 4
  for (int r = 0; r < NR; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) (acc[r][v] * sv).store(S + r * ldS + v * W);
}

// S (nq x nk, ldS apart; written up to nk rounded up to vectors) of the query rows q (nq x D) and
// the block's keys kT (D x ldk transposed, readable up to nk rounded up to vectors).
template <typename T>
void uniform_scores(const T* q, int64_t nq, int64_t D, const T* kT, int64_t ldk, int64_t nk, T scale, T* S,
                    int64_t ldS) {
  constexpr int64_t W = Vectorized<T>::size();
  // AVX2: 12 accumulators + 3 key vectors + 1 broadcast = 16 registers; AVX-512: 16 + 4 + 1 of 32.
  constexpr int NR = 4, NV = W * sizeof(T) >= 64 ? 4 : 3;
  for (int64_t j = 0; j < nk; j += NV * W) {  // a key tile stays in L1 while the rows stream
    const int64_t nv = std::min<int64_t>(NV, (nk - j + W - 1) / W);
    for (int64_t r0 = 0; r0 < nq; r0 += NR) {
      const int64_t nr = std::min<int64_t>(NR, nq - r0);
      const T* qr = q + r0 * D;
      T* Sr = S + r0 * ldS + j;
#define ATTNZOO_UNIFORM_TILE(R, NVV)                                           \
  if constexpr (NVV <= NV) {                                                   \
    if (nr == R && nv == NVV) {                                                \
      uniform_score_tile<T, R, NVV>(qr, D, kT + j, ldk, scale, Sr, ldS);       \
      continue;                                                                \
    }                                                                          \
  }
#define ATTNZOO_UNIFORM_ROWS(R) \
  ATTNZOO_UNIFORM_TILE(R, 4)    \
  ATTNZOO_UNIFORM_TILE(R, 3)    \
  ATTNZOO_UNIFORM_TILE(R, 2)    \
  ATTNZOO_UNIFORM_TILE(R, 1)
      ATTNZOO_UNIFORM_ROWS(4)
      ATTNZOO_UNIFORM_ROWS(3)
      ATTNZOO_UNIFORM_ROWS(2)
      ATTNZOO_UNIFORM_ROWS(1)
#undef ATTNZOO_UNIFORM_ROWS
#undef ATTNZOO_UNIFORM_TILE
    }
  }
}

}  // namespace ATTNZOO_ISA
}  // namespace attnzoo::cpu
