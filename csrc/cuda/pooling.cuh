// The pooling policies of the CUDA kernels (the interface and its room for poolings to come:
// common/pooling.h; the CPU twins: cpu/pooling.h). One class per pooling serves the generic
// kernels (fwd_driver.cuh, bwd_driver.cuh) and the tensor-core forward (bilinear_fwd_mma.cu):
// a thread holds a slice of a query row, and the driver passes how to reach the other lanes of
// the row (RowLanes8: 8 consecutive lanes; QuadLanes: the 4 lanes of an mma quad).
//
// Forward, the state of one row in one thread:
//   init()
//   A weigh<N>(s, j, lanes)  this thread's N scores of the row in the key tile (s(n): a reference;
//                            -inf: no candidate) and their keys (j(n), ascending): updates the
//                            state, replaces the scores by the weights of P.V and returns the
//                            factor for the row's output accumulators (the shift moved)
//   finish(sink)             the row's outputs through the driver's sink: sink.acc(slot, scale)
//                            (the P.V accumulators times scale into out or soft_out),
//                            sink.value(slot, key, fill) (key's value row, or fill when key < 0),
//                            sink.lse(x), sink.argmax(j) (the row's statistics, written once)
// Backward (static): Row, the row's saved statistics, load(saved, i) (none() past Nq),
// active(row) (false: no gradient), dscore(row, s, dp) (the weight gradient dS from dP = dO . v_j; traits.score_grad),
// dv_weight(row, s, j, ok) (key j's weight in dv) and kDvScores (whether dv_weight reads s).
#pragma once

#include "common/pooling.h"
#include "cuda/common.cuh"

namespace attnzoo {
namespace cuda {

// --- the lanes of a row -----------------------------------------------------------------------------

// Arg-max step with the lane at xor-distance off, ties to the smallest index (idx -1 = none).
template <class A>
__device__ __forceinline__ void xor_argmax(A& val, int64_t& idx, int off) {
  const A ov = __shfl_xor_sync(0xffffffffu, val, off);
  const long long oi = __shfl_xor_sync(0xffffffffu, static_cast<long long>(idx), off);
  if (oi >= 0 && (idx < 0 || ov > val || (ov == val && oi < idx))) {
    val = ov;
    idx = oi;
  }
}

// The generic kernels: a row is 8 consecutive lanes of a warp.
struct RowLanes8 {
  template <class A>
  __device__ __forceinline__ A sum(A x) const {
    return row_sum8(x);
  }
  template <class A>
  __device__ __forceinline__ void argmax(A& val, int64_t& idx) const {
#pragma unroll
    for (int off = 4; off > 0; off >>= 1) xor_argmax(val, idx, off);
  }
};

// The tensor-core kernel: a row of an accumulator fragment is held by the 4 lanes of a quad.
struct QuadLanes {
  template <class A>
  __device__ __forceinline__ A sum(A x) const {
    x += __shfl_xor_sync(0xffffffffu, x, 1);
    x += __shfl_xor_sync(0xffffffffu, x, 2);
    return x;
  }
  template <class A>
  __device__ __forceinline__ void argmax(A& val, int64_t& idx) const {
#pragma unroll
    for (int off = 1; off <= 2; off <<= 1) xor_argmax(val, idx, off);
  }
};

// --- outputs and saved statistics ----------------------------------------------------------------------

enum OutSlot { kOut, kSoftOut };

// The backward's saved per-row statistics (B * Nq each; nullptr where the pooling has none).
template <class A>
struct SavedRows {
  const A* lse;
  const A* delta;  // D_i = dO_i . o_i - grad_lse_i (poolings with a score gradient)
  const int64_t* argmax;
};

// --- policies ------------------------------------------------------------------------------------------

template <class A>
struct SoftmaxPool {
  static constexpr PoolingTraits kTraits = PoolingOf<kSoft>::traits;
  static constexpr bool kDvScores = true;
  A m, l;  // running max and sum of exp(s - m)

  __device__ __forceinline__ void init() {
    m = neg_inf<A>();
    l = 0;
  }

  // The tile's max over the row (this thread's entries, then the lanes) and its first key
  // (targ -1: no candidate in the tile).
  template <int N, class S, class J, class L>
  static __device__ __forceinline__ void tile_max(S s, J j, L lanes, A& tmax, int64_t& targ) {
    tmax = neg_inf<A>();
    targ = -1;
#pragma unroll
    for (int n = 0; n < N; ++n) {
      const A v = s(n);
      // a -inf score weighs 0 and is no candidate (NaN is one); ascending j: strict > keeps the first
      if (v != neg_inf<A>() && (targ < 0 || v > tmax)) {
        tmax = v;
        targ = j(n);
      }
    }
    lanes.argmax(tmax, targ);
  }

  // weigh() given the tile's max.
  template <int N, class S, class L>
  __device__ __forceinline__ A weigh_max(S s, A tmax, int64_t targ, L lanes) {
    const A m_new = targ >= 0 ? max(m, tmax) : m;
    const A alpha = (m == neg_inf<A>()) ? A(0) : dexp(m - m_new);
    A lsum = 0;
#pragma unroll
    for (int n = 0; n < N; ++n) {
      A& v = s(n);
      v = v == neg_inf<A>() ? A(0) : dexp(v - m_new);
      lsum += v;
    }
    l = l * alpha + lanes.sum(lsum);
    m = m_new;
    return alpha;
  }

  template <int N, class S, class J, class L>
  __device__ __forceinline__ A weigh(S s, J j, L lanes) {
    A tmax;
    int64_t targ;
    tile_max<N>(s, j, lanes, tmax, targ);
    return weigh_max<N>(s, tmax, targ, lanes);
  }

  // l == 0: no valid key; a NaN score makes l and the row NaN.
  __device__ __forceinline__ A inv() const { return l == A(0) ? A(0) : A(1) / l; }
  __device__ __forceinline__ A lse() const { return l == A(0) ? neg_inf<A>() : m + dlog(l); }

  template <class Sink>
  __device__ __forceinline__ void finish(Sink& sink) const {
    sink.acc(kOut, inv());
    sink.lse(lse());
  }

  struct Row {
    A lse, delta;
    int64_t arg;
  };
  static __device__ __forceinline__ Row none() { return Row{A(0), A(0), -1}; }  // past Nq
  static __device__ __forceinline__ Row load(const SavedRows<A>& sv, int64_t i) {
    return Row{sv.lse[i], sv.delta ? sv.delta[i] : A(0), -1};
  }
  static __device__ __forceinline__ bool active(const Row& r) { return r.lse != neg_inf<A>(); }
  static __device__ __forceinline__ A dscore(const Row& r, A s, A dp) { return dexp(s - r.lse) * (dp - r.delta); }
  static __device__ __forceinline__ A dv_weight(const Row& r, A s, int64_t, bool ok) {
    return ok ? dexp(s - r.lse) : A(0);
  }
};

// Arg-max forward (out = the value row of the first maximum), softmax in soft_out for the
// straight-through backward; dv through the arg-max.
template <class A>
struct HardPool {
  static constexpr PoolingTraits kTraits = PoolingOf<kHard>::traits;
  static constexpr bool kDvScores = false;
  SoftmaxPool<A> soft;
  A best;
  int64_t barg;  // first index of the running maximum

  __device__ __forceinline__ void init() {
    soft.init();
    best = neg_inf<A>();
    barg = -1;
  }

  template <int N, class S, class J, class L>
  __device__ __forceinline__ A weigh(S s, J j, L lanes) {
    A tmax;
    int64_t targ;
    SoftmaxPool<A>::template tile_max<N>(s, j, lanes, tmax, targ);
    if (targ >= 0 && (barg < 0 || tmax > best)) {  // strictly: an earlier tile keeps a tie
      best = tmax;
      barg = targ;
    }
    return soft.template weigh_max<N>(s, tmax, targ, lanes);
  }

  template <class Sink>
  __device__ __forceinline__ void finish(Sink& sink) const {
    sink.acc(kSoftOut, soft.inv());
    const bool nan_row = isnan(soft.l);  // a NaN score: the output is NaN
    sink.value(kOut, barg >= 0 && !nan_row ? barg : int64_t(-1), soft.l == A(0) ? A(0) : A(NAN));
    sink.lse(soft.lse());
    sink.argmax(barg);
  }

  using Row = typename SoftmaxPool<A>::Row;
  static __device__ __forceinline__ Row none() { return SoftmaxPool<A>::none(); }
  static __device__ __forceinline__ Row load(const SavedRows<A>& sv, int64_t i) {
    return Row{sv.lse[i], sv.delta[i], sv.argmax[i]};
  }
  static __device__ __forceinline__ bool active(const Row& r) { return SoftmaxPool<A>::active(r); }
  static __device__ __forceinline__ A dscore(const Row& r, A s, A dp) { return SoftmaxPool<A>::dscore(r, s, dp); }
  static __device__ __forceinline__ A dv_weight(const Row& r, A, int64_t j, bool) { return r.arg == j ? A(1) : A(0); }
};

// Uniform weights over the valid keys: the count; lse = log(count).
template <class A>
struct AveragePool {
  static constexpr PoolingTraits kTraits = PoolingOf<kAverage>::traits;
  static constexpr bool kDvScores = false;
  A n;

  __device__ __forceinline__ void init() { n = 0; }

  // s(n): 0 for a valid key, -inf otherwise.
  template <int N, class S, class J, class L>
  __device__ __forceinline__ A weigh(S s, J, L lanes) {
    A cnt = 0;
#pragma unroll
    for (int k = 0; k < N; ++k) {
      A& v = s(k);
      v = v == neg_inf<A>() ? A(0) : A(1);
      cnt += v;
    }
    n += lanes.sum(cnt);
    return A(1);
  }

  template <class Sink>
  __device__ __forceinline__ void finish(Sink& sink) const {
    sink.acc(kOut, n == A(0) ? A(0) : A(1) / n);
    sink.lse(n == A(0) ? neg_inf<A>() : dlog(n));
  }

  using Row = typename SoftmaxPool<A>::Row;
  static __device__ __forceinline__ Row none() { return SoftmaxPool<A>::none(); }
  static __device__ __forceinline__ Row load(const SavedRows<A>& sv, int64_t i) { return Row{sv.lse[i], A(0), -1}; }
  static __device__ __forceinline__ bool active(const Row& r) { return SoftmaxPool<A>::active(r); }
  static __device__ __forceinline__ A dscore(const Row&, A, A) { return A(0); }
  static __device__ __forceinline__ A dv_weight(const Row& r, A, int64_t, bool ok) {
    return ok ? dexp(A(0) - r.lse) : A(0);
  }
};

// The policy of each pooling code.
template <int64_t P, class A>
struct CudaPooling;
template <class A>
struct CudaPooling<kSoft, A> {
  using type = SoftmaxPool<A>;
};
template <class A>
struct CudaPooling<kHard, A> {
  using type = HardPool<A>;
};
template <class A>
struct CudaPooling<kAverage, A> {
  using type = AveragePool<A>;
};

}  // namespace cuda
}  // namespace attnzoo
