// The bilinear family's tile policy on CUDA: s_ij = scale q_i . k_j + key_bias_j, and its
// gradients dq_i = scale sum_j ds_ij k_j, dk_j = scale sum_i ds_ij q_i, dkey_bias_j = sum_i ds_ij.
// The CPU twin is cpu/bilinear_scorer.h; both expose score(block) and dscore(block, dS), the
// only family-specific code of the drivers (fwd_driver.cuh, bwd_driver.cuh). The tensor-core
// forward (bilinear_fwd_mma.cu) is a bilinear-only kernel of its own.
//
// A CUDA tile policy has
//   x, y, D: the per-query (B, Nq, D) and per-key (B, Nk, D) features, contiguous;
//   score<KEY_ROWS>(tile, sm, s): the final scores of the thread's entries of the tile (block-wide);
//   dprofile(ds, s): the gradient of the family's inner sum from dS and the score (the
//   elementwise family's outer profile; identity here);
//   Grad<NO>: a thread's gradient accumulators for its row over one chunk of NO * 8 features;
//   dscore_begin<KEY_ROWS>(g, tile, oc0), dscore<KEY_ROWS>(g, sm): accumulate from dS in sm.p and
//   the other side's features staged in sm.v (columns [oc0, oc0 + OC)), dscore_store<KEY_ROWS>(g,
//   tile, oc0, first_chunk, dst, sm): write the rows' gradients into dst (dq or dk) and the
//   family's own outputs (block-wide).
// KEY_ROWS: the tile's rows are keys and its columns queries (the dk / dv kernel).
#pragma once

#include "cuda/common.cuh"

namespace attnzoo {
namespace cuda {

template <class T, class A>
struct BilinearTile {
  const T* x;   // q (B, Nq, D)
  const T* y;   // k (B, Nk, D)
  int64_t D;
  const T* kb;  // key_bias (B, Nk) or nullptr
  A scale;
  T* dkb;  // backward: dkey_bias (B, Nk), or nullptr

  template <int NO>
  struct Grad {
    A g[NO];
    A dkb;
  };

  __device__ __forceinline__ A dprofile(A ds, A) const { return ds; }

  template <bool KEY_ROWS, int C, int KC, int OC>
  __device__ __forceinline__ void score(const Tile& tl, TileSmem<A, C, KC, OC>& sm, A (&s)[C / 8]) const {
    contract_family_tile<KEY_ROWS>(x, y, D, static_cast<const T*>(nullptr), tl, sm, s, DotTerm{});
    const int64_t Nk = KEY_ROWS ? tl.nr : tl.nc;
    const int r = threadIdx.x >> 3, c8 = threadIdx.x & 7;
    const T* KB = kb ? kb + tl.b * Nk : nullptr;
    const int64_t jr = tl.r0 + r;
    const A kb_row = (KEY_ROWS && KB && jr < Nk) ? static_cast<A>(KB[jr]) : A(0);
#pragma unroll
    for (int i = 0; i < C / 8; ++i) {
      const int64_t j = tl.c0 + c8 + 8 * i;
      const A bias = KEY_ROWS ? kb_row : ((KB && j < Nk) ? static_cast<A>(KB[j]) : A(0));
      s[i] = s[i] * scale + bias;
    }
  }

  template <bool KEY_ROWS, int NO>
  __device__ __forceinline__ void dscore_begin(Grad<NO>& g, const Tile&, int64_t) const {
#pragma unroll
    for (int io = 0; io < NO; ++io) g.g[io] = 0;
    g.dkb = 0;
  }

  template <bool KEY_ROWS, int C, int KC, int OC>
  __device__ __forceinline__ void dscore(Grad<OC / 8>& g, const TileSmem<A, C, KC, OC>& sm) const {
    const int r = threadIdx.x >> 3, c8 = threadIdx.x & 7;
    if (KEY_ROWS) {  // dkey_bias_j: this lane's columns, summed over the row's lanes at the end
#pragma unroll
      for (int i = 0; i < C / 8; ++i) g.dkb += sm.p[r][c8 + 8 * i];
    }
    accumulate_pv(g.g, sm);
  }

  template <bool KEY_ROWS, int C, int KC, int OC>
  __device__ __forceinline__ void dscore_store(Grad<OC / 8>& g, const Tile& tl, int64_t oc0, bool first_chunk, T* dst,
                                               TileSmem<A, C, KC, OC>&) const {
    const int r = threadIdx.x >> 3, c8 = threadIdx.x & 7;
    const int64_t row = tl.r0 + r;
    if (KEY_ROWS && first_chunk && dkb) {  // (uniform over the block: the shuffle sees every lane)
      g.dkb = row_sum8(g.dkb);
      if (c8 == 0 && row < tl.nr) dkb[tl.b * tl.nr + row] = static_cast<T>(g.dkb);
    }
    if (row >= tl.nr) return;
#pragma unroll
    for (int io = 0; io < OC / 8; ++io) {
      const int64_t col = oc0 + c8 + 8 * io;
      if (col < D) dst[(tl.b * tl.nr + row) * D + col] = static_cast<T>(g.g[io] * scale);
    }
  }
};

}  // namespace cuda
}  // namespace attnzoo
