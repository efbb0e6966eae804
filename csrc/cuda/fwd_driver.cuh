// Generic (CUDA-core) fused forward, for any family tile policy (bilinear_tile.cuh,
// additive_tile.cuh): flash-attention-style loop over key tiles with an online softmax (and
// online arg-max for hard pooling). Works for every dtype and any D / Dv: the contraction runs
// through shared memory in KC chunks and the output columns are split over grid.z in OC chunks
// (each chunk recomputes the scores).
#pragma once

#include "cuda/common.cuh"

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
  int64_t* argmax;  // (B, Nq) (hard only)
  T* soft_out;      // (B, Nq, Dv) (hard only)
};

template <class Family, class T, class A>
__global__ void __launch_bounds__(kThreads) fwd_kernel(const FwdParams<Family, T, A> p) {
  constexpr int R = kRows, C = Cfg<A>::C, KC = Cfg<A>::KC, OC = Cfg<A>::OC, NI = C / 8, NO = OC / 8;
  __shared__ TileSmem<A, C, KC, OC> sm;
  __shared__ int64_t sLo[R], sHi[R];

  const MaskParams& mp = p.mp;
  const QueryThread qt = query_thread<OC>(mp);
  const int r = qt.r, c8 = qt.c8;
  const int64_t b = qt.b, q0 = qt.q0, oc0 = qt.oc0, i = qt.i;
  const KeyRange kr = qt.kr;
  const bool* mrow = qt.mrow;
  const int pooling = static_cast<int>(mp.pooling);
  const KeySpan span = publish_rows<R>(kr, r, c8 == 0, sLo, sHi, p.Nk);

  const T* V = p.v + b * p.Nk * p.Dv;

  A m = neg_inf<A>(), l = 0, best = neg_inf<A>();
  int64_t barg = -1;
  A o[NO];
#pragma unroll
  for (int io = 0; io < NO; ++io) o[io] = 0;

  for (int64_t j0 = (span.lo / C) * C; j0 < span.hi; j0 += C) {
    A s[NI];
    if (pooling != kAverage) {
      p.fam.template score<false>(Tile{b, q0, p.Nq, j0, p.Nk}, sm, s);
    } else {
#pragma unroll
      for (int ii = 0; ii < NI; ++ii) s[ii] = 0;
    }
    bool ok[NI];
    A tbest = neg_inf<A>();
    int64_t targ = -1;
#pragma unroll
    for (int ii = 0; ii < NI; ++ii) {
      const int64_t j = j0 + c8 + 8 * ii;
      ok[ii] = j >= kr.lo && j < kr.hi && mask_ok(mp, mrow, j);
      // a -inf score weighs 0 and is no arg-max candidate (NaN stays)
      if (ok[ii]) ok[ii] = s[ii] != neg_inf<A>();
      if (ok[ii]) {
        if (targ < 0 || s[ii] > tbest) {  // ascending j: strict > keeps the first maximum
          tbest = s[ii];
          targ = j;
        }
      }
    }
    row_argmax8(tbest, targ);
    if (targ >= 0 && (barg < 0 || tbest > best)) {
      best = tbest;
      barg = targ;
    }
    const A m_new = targ >= 0 ? max(m, tbest) : m;
    const A alpha = (m == neg_inf<A>()) ? A(0) : dexp(m - m_new);
    A lsum = 0;
#pragma unroll
    for (int ii = 0; ii < NI; ++ii) {
      const A pr = ok[ii] ? dexp(s[ii] - m_new) : A(0);
      sm.p[r][c8 + 8 * ii] = pr;
      lsum += pr;
    }
    lsum = row_sum8(lsum);
    l = l * alpha + lsum;
    m = m_new;
    stage_rows<T, A, C, OC>(V, j0, p.Nk, p.Dv, oc0, sm.v);
    __syncthreads();
#pragma unroll
    for (int io = 0; io < NO; ++io) o[io] *= alpha;
#pragma unroll 4
    for (int c = 0; c < C; ++c) {
      const A pc = sm.p[r][c];
#pragma unroll
      for (int io = 0; io < NO; ++io) o[io] += pc * sm.v[c][c8 + 8 * io];
    }
    __syncthreads();
  }

  if (i >= p.Nq) return;
  const bool hard = pooling == kHard;
  const A inv = l == A(0) ? A(0) : A(1) / l;  // l == 0: no valid key; a NaN score makes l and the row NaN
#pragma unroll
  for (int io = 0; io < NO; ++io) {
    const int64_t col = oc0 + c8 + 8 * io;
    if (col >= p.Dv) continue;
    const int64_t at = (b * p.Nq + i) * p.Dv + col;
    const T so = static_cast<T>(o[io] * inv);
    if (hard) {
      p.soft_out[at] = so;
      p.out[at] = barg >= 0 && !isnan(l) ? V[barg * p.Dv + col] : static_cast<T>(l == A(0) ? A(0) : A(NAN));
    } else {
      p.out[at] = so;
    }
  }
  if (blockIdx.z == 0 && c8 == 0) {
    p.lse[b * p.Nq + i] = l == A(0) ? neg_inf<A>() : m + dlog(l);
    if (hard) p.argmax[b * p.Nq + i] = barg;
  }
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
  const bool hard = mp.pooling == kHard;
  p.out = std::get<0>(outs).mutable_data_ptr<T>();
  p.lse = std::get<1>(outs).mutable_data_ptr<A>();
  p.argmax = hard ? std::get<2>(outs).mutable_data_ptr<int64_t>() : nullptr;
  p.soft_out = hard ? std::get<3>(outs).mutable_data_ptr<T>() : nullptr;
  const int64_t nQT = ceil_div(p.Nq, kRows);
  const int64_t nz = std::max<int64_t>(1, ceil_div(p.Dv, Cfg<A>::OC));
  if (p.B * nQT == 0) return;
  TORCH_CHECK(p.B * nQT < (int64_t(1) << 31) && nz < 65536, "attnzoo: problem too large for the CUDA grid");
  dim3 grid(static_cast<unsigned>(p.B * nQT), 1, static_cast<unsigned>(nz));
  fwd_kernel<Family, T, A><<<grid, kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(p);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace cuda
}  // namespace attnzoo
