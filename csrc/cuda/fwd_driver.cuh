// Generic (CUDA-core) fused forward, for any family tile policy (bilinear_tile.cuh,
// elementwise_tile.cuh) and pooling policy (pooling.cuh): flash-attention-style loop over key tiles
// with the pooling's online reduction (softmax; arg-max; count). Works for every dtype and any
// D / Dv: the contraction runs through shared memory in KC chunks and the output columns are
// split over grid.z in OC chunks (each chunk recomputes the scores).
#pragma once

#include "cuda/common.cuh"
#include "cuda/pooling.cuh"

namespace attnzoo {
namespace cuda {

template <class Family, class T, class A>
struct FwdParams {
  Family fam;   // the score family's tile policy (with its inputs)
  const T* v;   // (B, Nk, Dv)
  int64_t B, Nq, Nk, Dv;
  MaskParams mp;
  T* out;           // (B, Nq, Dv)
  A* lse;           // (B, Nq)
  int64_t* argmax;  // (B, Nq) (poolings with an arg-max)
  T* soft_out;      // (B, Nq, Dv) (poolings with a soft_out)
};

// The generic kernel's outputs of one row (see pooling.cuh): thread (row r, lane c8) holds the
// output columns oc0 + c8 + 8 io of query i.
template <class Family, class T, class A, int NO>
struct RowSink {
  const FwdParams<Family, T, A>& p;
  const A (&o)[NO];
  const T* V;  // the batch's values
  int64_t b, i, oc0;
  int c8;

  __device__ __forceinline__ T* slot_ptr(OutSlot slot) const { return slot == kOut ? p.out : p.soft_out; }
  __device__ __forceinline__ bool leader() const { return blockIdx.z == 0 && c8 == 0; }

  __device__ __forceinline__ void acc(OutSlot slot, A scale) {
    T* dst = slot_ptr(slot) + (b * p.Nq + i) * p.Dv;
#pragma unroll
    for (int io = 0; io < NO; ++io) {
      const int64_t col = oc0 + c8 + 8 * io;
      if (col < p.Dv) dst[col] = static_cast<T>(o[io] * scale);
    }
  }
  __device__ __forceinline__ void value(OutSlot slot, int64_t key, A fill) {
    T* dst = slot_ptr(slot) + (b * p.Nq + i) * p.Dv;
#pragma unroll
    for (int io = 0; io < NO; ++io) {
      const int64_t col = oc0 + c8 + 8 * io;
      if (col < p.Dv) dst[col] = key >= 0 ? V[key * p.Dv + col] : static_cast<T>(fill);
    }
  }
  __device__ __forceinline__ void lse(A x) {
    if (leader()) p.lse[b * p.Nq + i] = x;
  }
  __device__ __forceinline__ void argmax(int64_t j) {
    if (leader()) p.argmax[b * p.Nq + i] = j;
  }
};

template <class Family, class Pool, class T, class A>
__global__ void __launch_bounds__(kThreads) fwd_kernel(const FwdParams<Family, T, A> p) {
  static_assert(Pool::kTraits.scan_passes == 0, "multi-pass poolings: not in the CUDA forward yet");
  constexpr int R = kRows, C = Cfg<A>::C, KC = Cfg<A>::KC, OC = Cfg<A>::OC, NI = C / 8, NO = OC / 8;
  __shared__ TileSmem<A, C, KC, OC> sm;
  __shared__ RowRanges<R> ranges;
  const QueryThread qt = query_thread<OC>(p.mp);
  const KeySpan span = ranges.publish(qt.kr, qt.r, qt.c8 == 0, p.Nk);

  const T* V = p.v + qt.b * p.Nk * p.Dv;
  const A* brow = qt.i < p.Nq ? bias_row<A>(p.mp, qt.b, qt.i) : nullptr;  // positional terms (params.h)
  const A slope = alibi_slope<A>(p.mp, qt.b);
  const bool positions = Pool::kTraits.scores && has_positions(p.mp);

  Pool pool;
  pool.init();
  A o[NO];
#pragma unroll
  for (int io = 0; io < NO; ++io) o[io] = 0;

  for (int64_t j0 = (span.lo / C) * C; j0 < span.hi; j0 += C) {
    A s[NI];
    if constexpr (Pool::kTraits.scores) {
      p.fam.template score<false>(Tile{qt.b, qt.q0, p.Nq, j0, p.Nk}, sm, s);
    } else {  // every valid key scores 0
#pragma unroll
      for (int ii = 0; ii < NI; ++ii) s[ii] = 0;
    }
#pragma unroll
    for (int ii = 0; ii < NI; ++ii) {
      const int64_t j = j0 + qt.c8 + 8 * ii;
      if (!(j >= qt.kr.lo && j < qt.kr.hi && mask_ok(p.mp, qt.mrow, j)))
        s[ii] = neg_inf<A>();
      else if (positions)
        s[ii] = with_positions<A>(p.mp, s[ii], brow, slope, qt.i, j);
    }
    const A alpha = pool.template weigh<NI>([&](int n) -> A& { return s[n]; },
                                            [&](int n) { return j0 + qt.c8 + 8 * n; }, RowLanes8{});
#pragma unroll
    for (int ii = 0; ii < NI; ++ii) sm.p[qt.r][qt.c8 + 8 * ii] = s[ii];
    stage_rows<T, A, C, OC>(V, j0, p.Nk, p.Dv, qt.oc0, sm.v);
    __syncthreads();
#pragma unroll
    for (int io = 0; io < NO; ++io) o[io] *= alpha;
    accumulate_pv(o, sm);
    __syncthreads();
  }

  if (qt.i >= p.Nq) return;
  RowSink<Family, T, A, NO> sink{p, o, V, qt.b, qt.i, qt.oc0, qt.c8};
  pool.finish(sink);
}

// Runs the generic forward of family policy `fam` (its inputs contiguous) on values v
// (contiguous) into `outs` (empty_fwd_outputs). Call inside a dtype dispatch (T = scalar_t).
template <class Family, class T>
void generic_fwd(const Family& fam, const at::Tensor& v, const MaskParams& mp, const Tensor4& outs) {
  using A = typename AccOf<T>::type;
  FwdParams<Family, T, A> p{fam};
  p.v = v.const_data_ptr<T>();
  p.B = mp.B;
  p.Nq = mp.Nq;
  p.Nk = mp.Nk;
  p.Dv = v.size(2);
  p.mp = mp;
  const auto& [out, lse, argmax, soft_out] = outs;
  p.out = out.mutable_data_ptr<T>();
  p.lse = lse.mutable_data_ptr<A>();
  p.argmax = argmax.numel() ? argmax.mutable_data_ptr<int64_t>() : nullptr;
  p.soft_out = soft_out.numel() ? soft_out.mutable_data_ptr<T>() : nullptr;
  const int64_t nQT = ceil_div(p.Nq, kRows);
  const int64_t nz = std::max<int64_t>(1, ceil_div(p.Dv, Cfg<A>::OC));
  if (p.B * nQT == 0) return;
  TORCH_CHECK(p.B * nQT < (int64_t(1) << 31) && nz < 65536, "attnzoo: problem too large for the CUDA grid");
  dim3 grid(static_cast<unsigned>(p.B * nQT), 1, static_cast<unsigned>(nz));
  dispatch_pooling(mp.pooling, [&](auto P) {
    using Pool = typename CudaPooling<decltype(P)::value, A>::type;
    fwd_kernel<Family, Pool, T, A><<<grid, kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(p);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

}  // namespace cuda
}  // namespace attnzoo
