// Generic (CUDA-core) fused forward of both families: flash-attention-style loop over key
// tiles with an online softmax (and online arg-max for hard pooling). Works for every dtype
// and any D / Dv: the contraction runs through shared memory in KC chunks and the output
// columns are split over grid.z in OC chunks (each chunk recomputes the scores).
#pragma once

#include "cuda/common.cuh"

namespace attnzoo {
namespace cuda {

template <class T, class A>
struct FwdParams {
  const T* x;   // q (B, Nq, D) or a (B, Nq, H)
  const T* y;   // k (B, Nk, D) or b (B, Nk, H)
  const T* v;   // (B, Nk, Dv)
  const T* kb;  // key_bias (B, Nk) or nullptr (bilinear only)
  const T* w;   // (H,) (additive only)
  A scale;      // bilinear only
  int64_t B, Nq, Nk, D, Dv;
  MaskParams mp;
  T* out;           // (B, Nq, Dv)
  A* lse;           // (B, Nq)
  int64_t* argmax;  // (B, Nq) (hard only)
  T* soft_out;      // (B, Nq, Dv) (hard only)
};

template <bool ADD, class T, class A>
__global__ void __launch_bounds__(kThreads) fwd_kernel(const FwdParams<T, A> p) {
  constexpr int R = kRows, C = Cfg<A>::C, KC = Cfg<A>::KC, OC = Cfg<A>::OC, NI = C / 8, NO = OC / 8;
  __shared__ A sA[R][KC + 1];
  __shared__ A sB[C][KC + 1];
  __shared__ A sW[KC];
  __shared__ A sP[R][C + 1];
  __shared__ A sV[C][OC];
  __shared__ int64_t sLo[R], sHi[R];

  const int t = threadIdx.x, r = t >> 3, c8 = t & 7;
  const int64_t nQT = ceil_div(p.Nq, R);
  const int64_t b = blockIdx.x / nQT, q0 = (blockIdx.x % nQT) * R;
  const int64_t oc0 = static_cast<int64_t>(blockIdx.z) * OC;
  const int64_t i = q0 + r;
  const MaskParams& mp = p.mp;
  const int pooling = static_cast<int>(mp.pooling);

  KeyRange kr{0, 0};
  const bool* mrow = nullptr;
  if (i < p.Nq) {
    kr = row_range(mp, b, i);
    mrow = mask_row(mp, b, i);
  }
  if (c8 == 0) {
    sLo[r] = kr.lo;
    sHi[r] = kr.hi;
  }
  __syncthreads();
  int64_t blo = p.Nk, bhi = 0;
  for (int rr = 0; rr < R; ++rr)
    if (sHi[rr] > sLo[rr]) {
      blo = min(blo, sLo[rr]);
      bhi = max(bhi, sHi[rr]);
    }

  const T* X = p.x + b * p.Nq * p.D;
  const T* Y = p.y + b * p.Nk * p.D;
  const T* V = p.v + b * p.Nk * p.Dv;
  const T* KB = p.kb ? p.kb + b * p.Nk : nullptr;

  A m = neg_inf<A>(), l = 0, best = neg_inf<A>();
  int64_t barg = -1;
  A o[NO];
#pragma unroll
  for (int io = 0; io < NO; ++io) o[io] = 0;

  for (int64_t j0 = (blo / C) * C; j0 < bhi; j0 += C) {
    A s[NI];
    if (pooling != kAverage) {
      score_tile<ADD, T, A, C, KC>(X, q0, p.Nq, Y, j0, p.Nk, p.D, p.w, sA, sB, sW, s);
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
      if (ok[ii]) {
        if (pooling != kAverage && !ADD) s[ii] = s[ii] * p.scale + (KB ? static_cast<A>(KB[j]) : A(0));
        ok[ii] = s[ii] != neg_inf<A>();  // a -inf score weighs 0 and is no arg-max candidate (NaN stays)
      }
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
      sP[r][c8 + 8 * ii] = pr;
      lsum += pr;
    }
    lsum = row_sum8(lsum);
    l = l * alpha + lsum;
    m = m_new;
    stage_rows<T, A, C, OC>(V, j0, p.Nk, p.Dv, oc0, sV);
    __syncthreads();
#pragma unroll
    for (int io = 0; io < NO; ++io) o[io] *= alpha;
#pragma unroll 4
    for (int c = 0; c < C; ++c) {
      const A pc = sP[r][c];
#pragma unroll
      for (int io = 0; io < NO; ++io) o[io] += pc * sV[c][c8 + 8 * io];
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

template <bool ADD, class T>
void launch_fwd(const FwdParams<T, typename AccOf<T>::type>& p) {
  using A = typename AccOf<T>::type;
  const int64_t nQT = ceil_div(p.Nq, kRows);
  const int64_t nz = std::max<int64_t>(1, ceil_div(p.Dv, Cfg<A>::OC));
  if (p.B * nQT == 0) return;
  TORCH_CHECK(p.B * nQT < (int64_t(1) << 31) && nz < 65536, "attnzoo: problem too large for the CUDA grid");
  dim3 grid(static_cast<unsigned>(p.B * nQT), 1, static_cast<unsigned>(nz));
  fwd_kernel<ADD, T, A><<<grid, kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(p);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// Allocates the outputs and runs the generic kernel. x/y/v (and kb, w) must be contiguous.
template <bool ADD>
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> generic_fwd(
    const at::Tensor& x, const at::Tensor& y, const at::Tensor& v, const c10::optional<at::Tensor>& kb,
    const at::Tensor* w, double scale, const MaskParams& mp) {
  const int64_t B = x.size(0), Nq = x.size(1), D = x.size(2), Nk = y.size(1), Dv = v.size(2);
  const bool hard = mp.pooling == kHard;
  const auto acc = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  auto out = at::empty({B, Nq, Dv}, x.options());
  auto lse = at::empty({B, Nq}, x.options().dtype(acc));
  auto argmax = hard ? at::empty({B, Nq}, x.options().dtype(at::kLong)) : at::empty({0}, x.options().dtype(at::kLong));
  auto soft_out = hard ? at::empty({B, Nq, Dv}, x.options()) : at::empty({0}, x.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "attnzoo_fwd_cuda", [&] {
    using A = typename AccOf<scalar_t>::type;
    FwdParams<scalar_t, A> p{};
    p.x = x.const_data_ptr<scalar_t>();
    p.y = y.const_data_ptr<scalar_t>();
    p.v = v.const_data_ptr<scalar_t>();
    p.kb = kb.has_value() ? kb->const_data_ptr<scalar_t>() : nullptr;
    p.w = w ? w->const_data_ptr<scalar_t>() : nullptr;
    p.scale = static_cast<A>(scale);
    p.B = B;
    p.Nq = Nq;
    p.Nk = Nk;
    p.D = D;
    p.Dv = Dv;
    p.mp = mp;
    p.out = out.mutable_data_ptr<scalar_t>();
    p.lse = lse.mutable_data_ptr<A>();
    p.argmax = hard ? argmax.mutable_data_ptr<int64_t>() : nullptr;
    p.soft_out = hard ? soft_out.mutable_data_ptr<scalar_t>() : nullptr;
    launch_fwd<ADD, scalar_t>(p);
  });
  return {out, lse, argmax, soft_out};
}

}  // namespace cuda
}  // namespace attnzoo
