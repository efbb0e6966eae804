// Shared device helpers of the attnzoo CUDA kernels (generic, CUDA-core tiled path).
//
// Thread layout of every generic kernel: 256 threads = R (32) rows x 8 lanes; thread t
// owns row r = t / 8 and the columns c8 + 8 * i (c8 = t % 8) of the score tile (C
// columns) and of the current output chunk (OC columns). The 8 lanes of a row are
// consecutive lanes of one warp, so row reductions are 3 xor-shuffles.
#pragma once

#include <ATen/ATen.h>
#include <c10/cuda/CUDAStream.h>  // (ATen/cuda/CUDAContext.h would need cusparse/cublas headers)
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>

#include <cstdint>
#include <limits>
#include <type_traits>

#include "common/params.h"
#include "common/tensors.h"

namespace attnzoo {
namespace cuda {

constexpr int kThreads = 256;
constexpr int kRows = 32;  // R: rows of a block (queries in fwd/dq, keys in dk/dv)

template <class A>
struct Cfg;
template <>
struct Cfg<float> {
  static constexpr int C = 64;   // columns of a score tile
  static constexpr int KC = 32;  // contraction chunk staged in shared memory
  static constexpr int OC = 64;  // output columns per block (grid.z walks the chunks)
};
template <>
struct Cfg<double> {
  static constexpr int C = 32;
  static constexpr int KC = 16;
  static constexpr int OC = 64;
};

template <class T>
struct AccOf {
  using type = float;
};
template <>
struct AccOf<double> {
  using type = double;
};

template <class A>
__device__ __forceinline__ A neg_inf() {
  return -std::numeric_limits<A>::infinity();
}

__device__ __forceinline__ float dexp(float x) { return __expf(x); }
__device__ __forceinline__ double dexp(double x) { return exp(x); }
__device__ __forceinline__ float dlog(float x) { return __logf(x); }
__device__ __forceinline__ double dlog(double x) { return log(x); }

template <class A>
__device__ __forceinline__ A row_sum8(A x) {
#pragma unroll
  for (int off = 4; off > 0; off >>= 1) x += __shfl_xor_sync(0xffffffffu, x, off, 8);
  return x;
}

template <class A>
__device__ __forceinline__ A row_max8(A x) {
#pragma unroll
  for (int off = 4; off > 0; off >>= 1) x = max(x, __shfl_xor_sync(0xffffffffu, x, off, 8));
  return x;
}

// Arg-max over the 8 lanes of a row, ties to the smallest index (idx -1 = none).
template <class A>
__device__ __forceinline__ void row_argmax8(A& val, int64_t& idx) {
#pragma unroll
  for (int off = 4; off > 0; off >>= 1) {
    const A ov = __shfl_xor_sync(0xffffffffu, val, off, 8);
    const long long oi = __shfl_xor_sync(0xffffffffu, static_cast<long long>(idx), off, 8);
    if (oi >= 0 && (idx < 0 || ov > val || (ov == val && oi < idx))) {
      val = ov;
      idx = oi;
    }
  }
}

// Shared memory of a generic kernel's tile (R = kRows rows x C columns, features in KC chunks,
// OC output columns).
template <class A, int C, int KC, int OC>
struct TileSmem {
  A a[kRows][KC + 1];  // the rows' feature chunk
  A b[C][KC + 1];      // the columns' feature chunk
  A w[KC];             // per-feature weights of the chunk (weighted terms)
  A p[kRows][C + 1];   // the tile's weights (forward) or dS (backward)
  A v[C][OC];          // staged rows of values or features (stage_rows)
};

// The tile a family policy scores: rows [r0, r0 + kRows) of nr, columns [c0, c0 + C) of nc, in
// batch b. Rows are queries and columns keys (forward, dq), or the other way round (dk / dv).
struct Tile {
  int64_t b, r0, nr, c0, nc;
};

// The contraction of both families: s[i] (row r = t / 8, column c8 + 8 i) = sum over d < dim of
// term(X[x0 + r, d], Y[y0 + c, d]), times w_d when Term::kWeighted. X (nx, dim) and Y (ny, dim)
// are row-major (the batch's base pointers); rows out of range read 0, and so do w past dim.
// Block-wide: every thread of the block must call it (it synchronises).
template <class Term, class T, class A, int C, int KC, int OC>
__device__ __forceinline__ void contract_tile(const T* __restrict__ X, int64_t x0, int64_t nx,
                                              const T* __restrict__ Y, int64_t y0, int64_t ny, int64_t dim,
                                              const T* __restrict__ w, TileSmem<A, C, KC, OC>& sm, A (&s)[C / 8],
                                              Term term) {
  const int t = threadIdx.x, r = t >> 3, c8 = t & 7;
#pragma unroll
  for (int i = 0; i < C / 8; ++i) s[i] = A(0);
  for (int64_t k0 = 0; k0 < dim; k0 += KC) {
    for (int idx = t; idx < kRows * KC; idx += kThreads) {
      const int rr = idx / KC, kk = idx % KC;
      const int64_t row = x0 + rr, col = k0 + kk;
      sm.a[rr][kk] = (row < nx && col < dim) ? static_cast<A>(X[row * dim + col]) : A(0);
    }
    for (int idx = t; idx < C * KC; idx += kThreads) {
      const int rr = idx / KC, kk = idx % KC;
      const int64_t row = y0 + rr, col = k0 + kk;
      sm.b[rr][kk] = (row < ny && col < dim) ? static_cast<A>(Y[row * dim + col]) : A(0);
    }
    if (Term::kWeighted && t < KC) sm.w[t] = (k0 + t < dim) ? static_cast<A>(w[k0 + t]) : A(0);
    __syncthreads();
#pragma unroll 4
    for (int kk = 0; kk < KC; ++kk) {
      const A a = sm.a[r][kk];
      if constexpr (Term::kWeighted) {
        const A wk = sm.w[kk];
#pragma unroll
        for (int i = 0; i < C / 8; ++i) s[i] += wk * term(a, sm.b[c8 + 8 * i][kk]);
      } else {
#pragma unroll
        for (int i = 0; i < C / 8; ++i) s[i] += term(a, sm.b[c8 + 8 * i][kk]);
      }
    }
    __syncthreads();
  }
}

// The contraction of a family tile: rows queries x and columns keys y, or (KEY_ROWS) the other way
// round; x (B, Nq, dim) and y (B, Nk, dim) are the family's features, w its weights (or nullptr).
template <bool KEY_ROWS, class Term, class T, class A, int C, int KC, int OC>
__device__ __forceinline__ void contract_family_tile(const T* x, const T* y, int64_t dim, const T* w, const Tile& tl,
                                                     TileSmem<A, C, KC, OC>& sm, A (&s)[C / 8], Term term) {
  const int64_t Nq = KEY_ROWS ? tl.nc : tl.nr, Nk = KEY_ROWS ? tl.nr : tl.nc;
  const T* X = x + tl.b * Nq * dim;
  const T* Y = y + tl.b * Nk * dim;
  if (KEY_ROWS)
    contract_tile(Y, tl.r0, Nk, X, tl.c0, Nq, dim, w, sm, s, term);
  else
    contract_tile(X, tl.r0, Nq, Y, tl.c0, Nk, dim, w, sm, s, term);
}

// x . y (the bilinear family's term, and dO . v in the backward).
struct DotTerm {
  static constexpr bool kWeighted = false;
  template <class A>
  __device__ __forceinline__ A operator()(A x, A y) const {
    return x * y;
  }
};

// sX[c][o] = X[x0 + c, o0 + o] for c < C, o < OC (0 outside); X is (nx, dim) row-major.
// (Block-wide; the caller synchronises before reading sX.)
template <class T, class A, int C, int OC>
__device__ __forceinline__ void stage_rows(const T* __restrict__ X, int64_t x0, int64_t nx, int64_t dim, int64_t o0,
                                           A (*sX)[OC]) {
  for (int idx = threadIdx.x; idx < C * OC; idx += kThreads) {
    const int rr = idx / OC, oo = idx % OC;
    const int64_t row = x0 + rr, col = o0 + oo;
    sX[rr][oo] = (row < nx && col < dim) ? static_cast<A>(X[row * dim + col]) : A(0);
  }
}

// acc[io] += sum over c < C of sm.p[r][c] sm.v[c][c8 + 8 io]: the tile's weights (or dS) times the
// staged rows (P.V, dS.K, dS^T.Q, P^T.dO); after a __syncthreads that published both.
template <class A, int C, int KC, int OC>
__device__ __forceinline__ void accumulate_pv(A (&acc)[OC / 8], const TileSmem<A, C, KC, OC>& sm) {
  const int r = threadIdx.x >> 3, c8 = threadIdx.x & 7;
#pragma unroll 4
  for (int c = 0; c < C; ++c) {
    const A pc = sm.p[r][c];
#pragma unroll
    for (int io = 0; io < OC / 8; ++io) acc[io] += pc * sm.v[c][c8 + 8 * io];
  }
}

__host__ __device__ __forceinline__ int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// --- the prologue of the kernels whose rows are queries (forward, dq, tensor-core forward) ---

// Query i of batch b: its valid key range and mask row; {0, 0} and nullptr past Nq.
__device__ __forceinline__ KeyRange query_row(const MaskParams& mp, int64_t b, int64_t i, const bool*& mrow) {
  mrow = nullptr;
  if (i >= mp.Nq) return KeyRange{0, 0};
  mrow = mask_row(mp, b, i);
  return row_range(mp, b, i);
}

// A generic kernel's thread on a query tile: block (b, query tile) x grid.z (output chunk oc0,
// OC columns wide); thread t has row r = t / 8 (query i) and lane c8 = t % 8.
struct QueryThread {
  int r, c8;
  int64_t b, q0, oc0, i;
  KeyRange kr;  // query i's valid keys
  const bool* mrow;
};

template <int OC>
__device__ __forceinline__ QueryThread query_thread(const MaskParams& mp) {
  QueryThread q;
  q.r = threadIdx.x >> 3;
  q.c8 = threadIdx.x & 7;
  const int64_t nQT = ceil_div(mp.Nq, kRows);
  q.b = blockIdx.x / nQT;
  q.q0 = (blockIdx.x % nQT) * kRows;
  q.oc0 = static_cast<int64_t>(blockIdx.z) * OC;
  q.i = q.q0 + q.r;
  q.kr = query_row(mp, q.b, q.i, q.mrow);
  return q;
}

// The keys a block of N rows visits: the union [lo, hi) of the rows' non-empty ranges, and their
// intersection [all_lo, all_hi) (empty rows included: then it is empty).
struct KeySpan {
  int64_t lo, hi, all_lo, all_hi;
};

// Every thread reads the rows' ranges sLo[r], sHi[r] (r < N), written before a __syncthreads.
template <int N>
__device__ __forceinline__ KeySpan key_span(const int64_t* sLo, const int64_t* sHi, int64_t Nk) {
  KeySpan s{Nk, 0, 0, Nk};
  for (int rr = 0; rr < N; ++rr) {
    if (sHi[rr] > sLo[rr]) {
      s.lo = min(s.lo, sLo[rr]);
      s.hi = max(s.hi, sHi[rr]);
    }
    s.all_lo = max(s.all_lo, sLo[rr]);
    s.all_hi = min(s.all_hi, sHi[rr]);
  }
  return s;
}

// The rows' key ranges of a block in shared memory.
template <int N>
struct RowRanges {
  int64_t lo[N], hi[N];

  // Row r's range from its leader thread, then the block's key span (block-wide).
  __device__ __forceinline__ KeySpan publish(KeyRange kr, int r, bool leader, int64_t Nk) {
    if (leader) {
      lo[r] = kr.lo;
      hi[r] = kr.hi;
    }
    __syncthreads();
    return key_span<N>(lo, hi, Nk);
  }
};

// D_i = dO_i . o_i - grad_lse_i (one warp per row).
template <class T, class A>
__global__ void delta_kernel(const T* __restrict__ dout, const T* __restrict__ o, const A* __restrict__ glse,
                             A* __restrict__ delta, int64_t rows, int64_t Dv) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * (blockDim.x / 32) + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (row >= rows) return;
  A acc = 0;
  for (int64_t c = lane; c < Dv; c += 32)
    acc += static_cast<A>(dout[row * Dv + c]) * static_cast<A>(o[row * Dv + c]);
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, off);
  if (lane == 0) delta[row] = acc - (glse ? glse[row] : A(0));
}

template <class T>
void launch_delta(const at::Tensor& dout, const at::Tensor& o, const OptTensor& glse,
                  at::Tensor& delta) {
  using A = typename AccOf<T>::type;
  const int64_t rows = delta.numel();
  if (rows == 0) return;
  const int64_t Dv = dout.size(-1);
  at::Tensor g;
  if (glse.has_value()) g = glse->contiguous();
  const int warps = 8;
  delta_kernel<T, A><<<ceil_div(rows, warps), warps * 32, 0, c10::cuda::getCurrentCUDAStream()>>>(
      dout.const_data_ptr<T>(), o.const_data_ptr<T>(), glse.has_value() ? g.const_data_ptr<A>() : nullptr,
      delta.mutable_data_ptr<A>(), rows, Dv);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace cuda
}  // namespace attnzoo
