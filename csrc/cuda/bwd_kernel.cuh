// Generic (CUDA-core) fused backward of both families, recomputing the probabilities from
// the saved lse (no atomics, deterministic):
//   * dq_kernel  : rows = queries, loops over key tiles  -> dq (bilinear) / da (additive)
//   * dkv_kernel : rows = keys,    loops over query tiles -> dk / db (+ dkey_bias / dw
//                  partials) and dv; grid.z walks OC-column chunks of [dk | dv].
// ds_ij = p_ij (dO_i . v_j - D_i), D_i = dO_i . o_i - grad_lse_i with o = soft_out for hard
// pooling (straight-through); dv uses p (soft), the one-hot of argmax (hard) or 1/count
// (average, where ds = 0 and dq = dk = 0).
#pragma once

#include "cuda/common.cuh"

namespace attnzoo {
namespace cuda {

template <class T, class A>
struct BwdParams {
  const T* x;   // q or a (B, Nq, D)
  const T* y;   // k or b (B, Nk, D)
  const T* v;   // (B, Nk, Dv)
  const T* kb;  // key_bias (B, Nk) or nullptr
  const T* w;   // (D,) additive
  A scale;
  int64_t B, Nq, Nk, D, Dv;
  MaskParams mp;
  const T* dout;           // (B, Nq, Dv)
  const A* lse;            // (B, Nq)
  const A* delta;          // (B, Nq) D_i (nullptr for average)
  const int64_t* argmax;   // (B, Nq) hard only
  T* dx;                   // dq / da
  T* dy;                   // dk / db
  T* dv;
  T* dkb;                  // (B, Nk) or nullptr
  A* dw_ws;                // (B * nKT, D) partial sums of dw (additive)
  int z_begin;             // first chunk of [dk | dv] handled by this launch
};

template <bool ADD, class T, class A>
__global__ void __launch_bounds__(kThreads) dq_kernel(const BwdParams<T, A> p) {
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

  KeyRange kr{0, 0};
  const bool* mrow = nullptr;
  A lse_i = 0, d_i = 0;
  if (i < p.Nq) {
    kr = row_range(mp, b, i);
    mrow = mask_row(mp, b, i);
    lse_i = p.lse[b * p.Nq + i];
    d_i = p.delta[b * p.Nq + i];
    if (lse_i == neg_inf<A>()) kr.hi = kr.lo;  // empty row (or only -inf scores): no gradient
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
  const T* DO = p.dout + b * p.Nq * p.Dv;
  const T* KB = p.kb ? p.kb + b * p.Nk : nullptr;

  A g[NO], xr[NO], wr[NO];
#pragma unroll
  for (int io = 0; io < NO; ++io) {
    g[io] = 0;
    xr[io] = wr[io] = 0;
    if (ADD) {
      const int64_t col = oc0 + c8 + 8 * io;
      if (col < p.D) {
        wr[io] = static_cast<A>(p.w[col]);
        if (i < p.Nq) xr[io] = static_cast<A>(X[i * p.D + col]);
      }
    }
  }

  for (int64_t j0 = (blo / C) * C; j0 < bhi; j0 += C) {
    A s[NI], dp[NI];
    score_tile<ADD, T, A, C, KC>(X, q0, p.Nq, Y, j0, p.Nk, p.D, p.w, sA, sB, sW, s);
    score_tile<false, T, A, C, KC>(DO, q0, p.Nq, V, j0, p.Nk, p.Dv, nullptr, sA, sB, sW, dp);
#pragma unroll
    for (int ii = 0; ii < NI; ++ii) {
      const int64_t j = j0 + c8 + 8 * ii;
      A ds = 0;
      if (j >= kr.lo && j < kr.hi && mask_ok(mp, mrow, j)) {
        const A sv = ADD ? s[ii] : s[ii] * p.scale + (KB ? static_cast<A>(KB[j]) : A(0));
        ds = dexp(sv - lse_i) * (dp[ii] - d_i);
      }
      sP[r][c8 + 8 * ii] = ds;
    }
    stage_rows<T, A, C, OC>(Y, j0, p.Nk, p.D, oc0, sV);
    __syncthreads();
    if (ADD) {
      for (int c = 0; c < C; ++c) {
        const A d = sP[r][c];
        if (d == A(0)) continue;
#pragma unroll
        for (int io = 0; io < NO; ++io) {
          const A th = tanh_acc<T>(xr[io] + sV[c][c8 + 8 * io]);
          g[io] += d * wr[io] * (A(1) - th * th);
        }
      }
    } else {
#pragma unroll 4
      for (int c = 0; c < C; ++c) {
        const A d = sP[r][c];
#pragma unroll
        for (int io = 0; io < NO; ++io) g[io] += d * sV[c][c8 + 8 * io];
      }
    }
    __syncthreads();
  }

  if (i >= p.Nq) return;
#pragma unroll
  for (int io = 0; io < NO; ++io) {
    const int64_t col = oc0 + c8 + 8 * io;
    if (col < p.D) p.dx[(b * p.Nq + i) * p.D + col] = static_cast<T>(ADD ? g[io] : g[io] * p.scale);
  }
}

template <bool ADD, class T, class A>
__global__ void __launch_bounds__(kThreads) dkv_kernel(const BwdParams<T, A> p) {
  constexpr int R = kRows, C = Cfg<A>::C, KC = Cfg<A>::KC, OC = Cfg<A>::OC, NI = C / 8, NO = OC / 8;
  __shared__ A sA[R][KC + 1];
  __shared__ A sB[C][KC + 1];
  __shared__ A sW[KC];
  __shared__ A sP[R][C + 1];
  __shared__ A sV[C][OC];
  __shared__ int64_t sLo[C], sHi[C], sArg[C];
  __shared__ A sLse[C], sDelta[C];

  const int t = threadIdx.x, r = t >> 3, c8 = t & 7;
  const int64_t nKT = ceil_div(p.Nk, R);
  const int64_t b = blockIdx.x / nKT, kt = blockIdx.x % nKT, k0 = kt * R;
  const int64_t j = k0 + r;  // this thread's key
  const MaskParams& mp = p.mp;
  const int pooling = static_cast<int>(mp.pooling);
  const int64_t nzk = max(int64_t(1), ceil_div(p.D, OC));  // chunks of dk (>= 1: dkey_bias lives in chunk 0)
  const int64_t z = static_cast<int64_t>(blockIdx.z) + p.z_begin;
  const bool is_dk = z < nzk;
  const int64_t oc0 = (is_dk ? z : z - nzk) * OC;
  const bool need_s = pooling != kAverage && (is_dk || pooling == kSoft);

  // Queries that can see a key of [k0, k0 + R).
  int64_t qlo = 0, qhi = p.Nq;
  if (mp.causal) qlo = max(qlo, k0);
  if (mp.window >= 0) {
    qlo = max(qlo, k0 - mp.window);
    qhi = min(qhi, k0 + R - 1 + mp.window + 1);
  }

  const T* X = p.x + b * p.Nq * p.D;
  const T* Y = p.y + b * p.Nk * p.D;
  const T* V = p.v + b * p.Nk * p.Dv;
  const T* DO = p.dout + b * p.Nq * p.Dv;
  const A kb_j = (p.kb && j < p.Nk) ? static_cast<A>(p.kb[b * p.Nk + j]) : A(0);

  A g[NO], yr[NO], wr[NO], dwp[NO];
  A dkb = 0;
#pragma unroll
  for (int io = 0; io < NO; ++io) {
    g[io] = dwp[io] = 0;
    yr[io] = wr[io] = 0;
    if (ADD && is_dk) {
      const int64_t col = oc0 + c8 + 8 * io;
      if (col < p.D) {
        wr[io] = static_cast<A>(p.w[col]);
        if (j < p.Nk) yr[io] = static_cast<A>(Y[j * p.D + col]);
      }
    }
  }

  for (int64_t q0 = (qlo / C) * C; q0 < qhi; q0 += C) {
    if (t < C) {
      const int64_t i = q0 + t;
      KeyRange kr{0, 0};
      A lse_i = 0, d_i = 0;
      int64_t a_i = -1;
      if (i < p.Nq) {
        kr = row_range(mp, b, i);
        lse_i = p.lse[b * p.Nq + i];
        if (p.delta) d_i = p.delta[b * p.Nq + i];
        if (pooling == kHard) a_i = p.argmax[b * p.Nq + i];
        if (lse_i == neg_inf<A>()) kr.hi = kr.lo;  // empty row (or only -inf scores): no gradient
      }
      sLo[t] = kr.lo;
      sHi[t] = kr.hi;
      sLse[t] = lse_i;
      sDelta[t] = d_i;
      sArg[t] = a_i;
    }
    // (score_tile synchronises before anyone reads the row info; when it is skipped the
    //  __syncthreads below does.)
    A s[NI], dp[NI];
    if (need_s) {
      score_tile<ADD, T, A, C, KC>(Y, k0, p.Nk, X, q0, p.Nq, p.D, p.w, sA, sB, sW, s);
    } else {
#pragma unroll
      for (int ii = 0; ii < NI; ++ii) s[ii] = 0;
    }
    if (is_dk) {
      score_tile<false, T, A, C, KC>(V, k0, p.Nk, DO, q0, p.Nq, p.Dv, nullptr, sA, sB, sW, dp);
    } else {
#pragma unroll
      for (int ii = 0; ii < NI; ++ii) dp[ii] = 0;
    }
    __syncthreads();
#pragma unroll
    for (int ii = 0; ii < NI; ++ii) {
      const int ci = c8 + 8 * ii;
      const int64_t i = q0 + ci;
      const bool ok = j >= sLo[ci] && j < sHi[ci] && mask_ok(mp, mask_row(mp, b, i), j);
      A val = 0;
      if (is_dk) {
        if (ok) {
          const A sv = ADD ? s[ii] : s[ii] * p.scale + kb_j;
          val = dexp(sv - sLse[ci]) * (dp[ii] - sDelta[ci]);
          dkb += val;
        }
      } else if (pooling == kHard) {
        val = sArg[ci] == j ? A(1) : A(0);
      } else if (ok) {
        const A sv = pooling == kAverage ? A(0) : (ADD ? s[ii] : s[ii] * p.scale + kb_j);
        val = dexp(sv - sLse[ci]);
      }
      sP[r][ci] = val;
    }
    if (is_dk)
      stage_rows<T, A, C, OC>(X, q0, p.Nq, p.D, oc0, sV);
    else
      stage_rows<T, A, C, OC>(DO, q0, p.Nq, p.Dv, oc0, sV);
    __syncthreads();
    if (ADD && is_dk) {
      for (int c = 0; c < C; ++c) {
        const A d = sP[r][c];
        if (d == A(0)) continue;
#pragma unroll
        for (int io = 0; io < NO; ++io) {
          const A th = tanh_acc<T>(yr[io] + sV[c][c8 + 8 * io]);
          g[io] += d * wr[io] * (A(1) - th * th);
          dwp[io] += d * th;
        }
      }
    } else {
#pragma unroll 4
      for (int c = 0; c < C; ++c) {
        const A d = sP[r][c];
#pragma unroll
        for (int io = 0; io < NO; ++io) g[io] += d * sV[c][c8 + 8 * io];
      }
    }
    __syncthreads();
  }

  if (ADD && is_dk) {  // dw partials of this block: sum over its R keys
#pragma unroll
    for (int io = 0; io < NO; ++io) sV[r][c8 + 8 * io] = dwp[io];
    __syncthreads();
    if (t < OC && oc0 + t < p.D) {
      A acc = 0;
      for (int rr = 0; rr < R; ++rr) acc += sV[rr][t];
      p.dw_ws[(b * nKT + kt) * p.D + oc0 + t] = acc;
    }
  }
  if (!ADD && is_dk && z == 0 && p.dkb) {
    dkb = row_sum8(dkb);
    if (c8 == 0 && j < p.Nk) p.dkb[b * p.Nk + j] = static_cast<T>(dkb);
  }
  if (j >= p.Nk) return;
#pragma unroll
  for (int io = 0; io < NO; ++io) {
    const int64_t col = oc0 + c8 + 8 * io;
    if (is_dk) {
      if (col < p.D) p.dy[(b * p.Nk + j) * p.D + col] = static_cast<T>(ADD ? g[io] : g[io] * p.scale);
    } else {
      if (col < p.Dv) p.dv[(b * p.Nk + j) * p.Dv + col] = static_cast<T>(g[io]);
    }
  }
}

// grad_out, x, y, v, out/soft_out (and kb, w) must be contiguous; grad_lse any layout.
// Returns (dx, dy, dv, dkb or empty, dw or empty).
template <bool ADD>
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> generic_bwd(
    const at::Tensor& grad_out, const c10::optional<at::Tensor>& grad_lse, const at::Tensor& x, const at::Tensor& y,
    const at::Tensor& v, const c10::optional<at::Tensor>& kb, const at::Tensor* w, double scale, const MaskParams& mp,
    const at::Tensor& o_for_delta, const at::Tensor& lse, const at::Tensor& argmax) {
  const int64_t B = x.size(0), Nq = x.size(1), D = x.size(2), Nk = y.size(1), Dv = v.size(2);
  const auto acc = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const int pooling = static_cast<int>(mp.pooling);
  auto dx = at::zeros_like(x);
  auto dy = at::zeros_like(y);
  auto dv = at::zeros_like(v);
  auto dkb = kb.has_value() ? at::zeros_like(*kb) : at::empty({0}, x.options());
  auto dw = w ? at::zeros_like(*w) : at::empty({0}, x.options());
  if (B * Nq == 0 || B * Nk == 0) return {dx, dy, dv, dkb, dw};
  at::Tensor delta;
  if (pooling != kAverage) {
    delta = at::empty({B, Nq}, x.options().dtype(acc));
  }
  const int64_t nKT = ceil_div(Nk, kRows), nQT = ceil_div(Nq, kRows);
  at::Tensor dw_ws;
  if (ADD && pooling != kAverage) dw_ws = at::zeros({B * nKT, D}, x.options().dtype(acc));
  auto lse_c = lse.contiguous();
  auto arg_c = pooling == kHard ? argmax.contiguous() : argmax;
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "attnzoo_bwd_cuda", [&] {
    using A = typename AccOf<scalar_t>::type;
    constexpr int OC = Cfg<A>::OC;
    if (pooling != kAverage) launch_delta<scalar_t>(grad_out, o_for_delta, grad_lse, delta);
    BwdParams<scalar_t, A> p{};
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
    p.dout = grad_out.const_data_ptr<scalar_t>();
    p.lse = lse_c.const_data_ptr<A>();
    p.delta = pooling != kAverage ? delta.const_data_ptr<A>() : nullptr;
    p.argmax = pooling == kHard ? arg_c.const_data_ptr<int64_t>() : nullptr;
    p.dx = dx.mutable_data_ptr<scalar_t>();
    p.dy = dy.mutable_data_ptr<scalar_t>();
    p.dv = dv.mutable_data_ptr<scalar_t>();
    p.dkb = (!ADD && kb.has_value() && pooling != kAverage) ? dkb.mutable_data_ptr<scalar_t>() : nullptr;
    p.dw_ws = dw_ws.defined() ? dw_ws.mutable_data_ptr<A>() : nullptr;
    const int64_t nzk = std::max<int64_t>(1, ceil_div(D, OC)), nzv = ceil_div(Dv, OC);
    TORCH_CHECK(B * std::max(nQT, nKT) < (int64_t(1) << 31) && nzk + nzv < 65536,
                "attnzoo: problem too large for the CUDA grid");
    if (pooling != kAverage && D > 0) {  // dq / da
      dim3 grid(static_cast<unsigned>(B * nQT), 1, static_cast<unsigned>(nzk));
      dq_kernel<ADD, scalar_t, A><<<grid, kThreads, 0, stream>>>(p);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    // dk / db chunks (not for average: ds = 0) then dv chunks.
    p.z_begin = pooling == kAverage ? static_cast<int>(nzk) : 0;
    const int64_t nz = nzk + nzv - p.z_begin;
    if (nz > 0) {
      dim3 grid(static_cast<unsigned>(B * nKT), 1, static_cast<unsigned>(nz));
      dkv_kernel<ADD, scalar_t, A><<<grid, kThreads, 0, stream>>>(p);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
  if (ADD && pooling != kAverage && D > 0) dw = dw_ws.sum(0).to(w->scalar_type());
  return {dx, dy, dv, dkb, dw};
}

}  // namespace cuda
}  // namespace attnzoo
