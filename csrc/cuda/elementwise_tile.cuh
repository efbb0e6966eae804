// The elementwise family's tile policy on CUDA: s_ij = g(r_ij), r_ij = sum_h w_h phi(a_ih, b_jh)
// (terms phi: tanh(a + b), |a - b|, (a - b)^2, from a and b themselves; profiles g: params.h),
// and its gradients with gh_ijh = dr_ij w_h dphi/d(own) (own: the row's features a_i or b_j; every
// term is symmetric, so d/d(own) is one formula for da and db): da_ih = sum_j gh_ijh,
// db_jh = sum_i gh_ijh, dw_h = sum_ij dr_ij phi_ijh (partial sums per key tile, summed by the host);
// dr = dprofile(ds, s). Nothing of size (Nq, Nk, H) is stored: phi is recomputed per tile. The CPU
// twin is cpu/elementwise_scorer.h; the interface is described in bilinear_tile.cuh.
#pragma once

#include "cuda/common.cuh"

namespace attnzoo {
namespace cuda {

// tanh in the accumulation type. float32 inputs: 1 - 2 / (e^{2|x|} + 1) with __expf,
// absolute error ~3e-7 (nvcc --use_fast_math would turn tanhf into tanh.approx.f32,
// ~5e-4 relative, too coarse for float32 tests). float16/bfloat16 inputs use the
// hardware tanh.approx.f32 (sm_75+); define ATTNZOO_FAST_TANH to use it for float32 too.
__device__ __forceinline__ float tanh_hw(float x) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 750
  float y;
  asm("tanh.approx.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
#else
  const float e = __expf(2.f * fabsf(x));
  return copysignf(1.f - 2.f / (e + 1.f), x);
#endif
}
__device__ __forceinline__ float tanh_accurate(float x) {
  const float e = __expf(2.f * fabsf(x));
  return copysignf(1.f - __fdividef(2.f, e + 1.f), x);
}

template <class T>
__device__ __forceinline__ typename AccOf<T>::type tanh_acc(typename AccOf<T>::type x) {
  if constexpr (std::is_same<T, double>::value) {
    return tanh(x);
  } else if constexpr (std::is_same<T, float>::value) {
#ifdef ATTNZOO_FAST_TANH
    return tanh_hw(x);
#else
    return tanh_accurate(x);
#endif
  } else {
    return tanh_hw(x);
  }
}

template <class T>
struct TanhTerm {
  static constexpr bool kWeighted = true;
  template <class A>
  __device__ __forceinline__ A operator()(A x, A y) const {
    return tanh_acc<T>(x + y);
  }
  // d phi / d x, given phi = (*this)(x, y).
  template <class A>
  __device__ __forceinline__ A deriv(A phi, A, A) const {
    return A(1) - phi * phi;
  }
};

template <class T>
struct AbsDiffTerm {
  static constexpr bool kWeighted = true;
  template <class A>
  __device__ __forceinline__ A operator()(A x, A y) const {
    return x > y ? x - y : y - x;
  }
  template <class A>
  __device__ __forceinline__ A deriv(A, A x, A y) const {  // sign(x - y), 0 at x == y
    return x > y ? A(1) : (x < y ? A(-1) : A(0));
  }
};

template <class T>
struct SqDiffTerm {
  static constexpr bool kWeighted = true;
  template <class A>
  __device__ __forceinline__ A operator()(A x, A y) const {
    const A d = x - y;
    return d * d;
  }
  template <class A>
  __device__ __forceinline__ A deriv(A, A x, A y) const {
    return A(2) * (x - y);
  }
};

template <int64_t TERM, class T>
struct TermOf;
template <class T>
struct TermOf<kTanh, T> {
  using type = TanhTerm<T>;
};
template <class T>
struct TermOf<kAbsDiff, T> {
  using type = AbsDiffTerm<T>;
};
template <class T>
struct TermOf<kSqDiff, T> {
  using type = SqDiffTerm<T>;
};

// g(r) (params.h), NaN staying NaN.
template <class A>
__device__ __forceinline__ A apply_profile(int64_t profile, A r) {
  const A ninf = neg_inf<A>();
  if (profile == kBoxcar) return r <= A(1) ? A(0) : (r > A(1) ? ninf : r);
  if (profile == kEpanechnikov) return r < A(1) ? log1p(-r) : (r >= A(1) ? ninf : r);
  return r;
}

template <int64_t TERM, class T, class A>
struct ElementwiseTile {
  using Term = typename TermOf<TERM, T>::type;
  const T* x;  // a (B, Nq, H)
  const T* y;  // b (B, Nk, H)
  int64_t D;   // H
  const T* w;  // (H,)
  A* dw_ws;    // backward: (B * key_tiles(Nk), H) partial sums of dw per key tile, or nullptr
  int64_t profile;

  template <int NO>
  struct Grad {
    A g[NO], own[NO], w[NO], dw[NO];  // own: the row's features a_i (or b_j) on the thread's columns
  };

  template <bool KEY_ROWS, int C, int KC, int OC>
  __device__ __forceinline__ void score(const Tile& tl, TileSmem<A, C, KC, OC>& sm, A (&s)[C / 8]) const {
    contract_family_tile<KEY_ROWS>(x, y, D, w, tl, sm, s, Term{});
    if (profile != kIdentity) {
#pragma unroll
      for (int ii = 0; ii < C / 8; ++ii) s[ii] = apply_profile(profile, s[ii]);
    }
  }

  // dr = ds g'(r) from the score s = g(r): 1 (identity), 0 (boxcar), -1 / (1 - r) = -e^{-s}
  // (epanechnikov, inside its support; ds is 0 outside, where s = -inf).
  __device__ __forceinline__ A dprofile(A ds, A s) const {
    if (profile == kIdentity) return ds;
    if (profile == kBoxcar || !(s > neg_inf<A>())) return A(0);
    return -ds * exp(-s);
  }

  template <bool KEY_ROWS, int NO>
  __device__ __forceinline__ void dscore_begin(Grad<NO>& g, const Tile& tl, int64_t oc0) const {
    const int r = threadIdx.x >> 3, c8 = threadIdx.x & 7;
    const int64_t row = tl.r0 + r;
    const T* own = (KEY_ROWS ? y : x) + tl.b * tl.nr * D;
#pragma unroll
    for (int io = 0; io < NO; ++io) {
      g.g[io] = g.dw[io] = 0;
      g.own[io] = g.w[io] = 0;
      const int64_t col = oc0 + c8 + 8 * io;
      if (col < D) {
        g.w[io] = static_cast<A>(w[col]);
        if (row < tl.nr) g.own[io] = static_cast<A>(own[row * D + col]);
      }
    }
  }

  template <bool KEY_ROWS, int C, int KC, int OC>
  __device__ __forceinline__ void dscore(Grad<OC / 8>& g, const TileSmem<A, C, KC, OC>& sm) const {
    const int r = threadIdx.x >> 3, c8 = threadIdx.x & 7;
    for (int c = 0; c < C; ++c) {
      const A d = sm.p[r][c];
      if (d == A(0)) continue;
#pragma unroll
      for (int io = 0; io < OC / 8; ++io) {
        const A other = sm.v[c][c8 + 8 * io];
        const A phi = Term{}(g.own[io], other);
        g.g[io] += d * g.w[io] * Term{}.deriv(phi, g.own[io], other);
        if (KEY_ROWS) g.dw[io] += d * phi;
      }
    }
  }

  template <bool KEY_ROWS, int C, int KC, int OC>
  __device__ __forceinline__ void dscore_store(Grad<OC / 8>& g, const Tile& tl, int64_t oc0, bool, T* dst,
                                               TileSmem<A, C, KC, OC>& sm) const {
    const int t = threadIdx.x, r = t >> 3, c8 = t & 7;
    if (KEY_ROWS) {  // dw partials of this key tile: sum over its rows (block-wide)
#pragma unroll
      for (int io = 0; io < OC / 8; ++io) sm.v[r][c8 + 8 * io] = g.dw[io];
      __syncthreads();
      if (t < OC && oc0 + t < D) {
        A acc = 0;
        for (int rr = 0; rr < kRows; ++rr) acc += sm.v[rr][t];
        dw_ws[(tl.b * ceil_div(tl.nr, kRows) + tl.r0 / kRows) * D + oc0 + t] = acc;
      }
    }
    const int64_t row = tl.r0 + r;
    if (row >= tl.nr) return;
#pragma unroll
    for (int io = 0; io < OC / 8; ++io) {
      const int64_t col = oc0 + c8 + 8 * io;
      if (col < D) dst[(tl.b * tl.nr + row) * D + col] = static_cast<T>(g.g[io]);
    }
  }
};

}  // namespace cuda
}  // namespace attnzoo
