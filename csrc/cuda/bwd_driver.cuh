// Generic (CUDA-core) fused backward, for any family tile policy (bilinear_tile.cuh,
// elementwise_tile.cuh), recomputing the probabilities from the saved lse (no atomics,
// deterministic):
//   * dq_kernel  : rows = queries, loops over key tiles  -> dq (bilinear) / da (elementwise)
//   * dkv_kernel : rows = keys,    loops over query tiles -> dk / db (and the family's own
//                  outputs: dkey_bias / dw partials) and dv; grid.z walks OC-column chunks of [dk | dv].
// The pooling policy (pooling.cuh) gives ds from dp_ij = dO_i . v_j (softmax and hard:
// ds_ij = p_ij (dp_ij - D_i), D_i = dO_i . o_i - grad_lse_i with o = softmax_output) and dv's
// weights (p for soft, the one-hot of argmax for hard, 1/count for average, which has no ds).
#pragma once

#include "cuda/common.cuh"
#include "cuda/pooling.cuh"

namespace attnzoo {
namespace cuda {

template <class Family, class T, class A>
struct BwdParams {
  Family fam;  // the score family's tile policy (with its inputs and its own outputs)
  const T* v;  // (B, Nk, Dv)
  int64_t B, Nq, Nk, D, Dv;
  MaskParams mp;
  const T* dout;          // (B, Nq, Dv)
  SavedRows<A> saved;     // lse, D_i, argmax per query row
  T* dx;                  // dq / da (B, Nq, D)
  T* dy;                  // dk / db (B, Nk, D)
  T* dv;                  // (B, Nk, Dv)
  BiasGrad dbias;         // d loss / d bias (A), written by dq_kernel's first output chunk
  int z_begin;            // first chunk of [dk | dv] handled by this launch
};

// Key tiles of the dk / dv kernel (the elementwise family's dw partials are per key tile).
__host__ __device__ __forceinline__ int64_t key_tiles(int64_t Nk) { return ceil_div(Nk, kRows); }

template <class Family, class Pool, class T, class A>
__global__ void __launch_bounds__(kThreads) dq_kernel(const BwdParams<Family, T, A> p) {
  constexpr int R = kRows, C = Cfg<A>::C, KC = Cfg<A>::KC, OC = Cfg<A>::OC, NI = C / 8;
  __shared__ TileSmem<A, C, KC, OC> sm;
  __shared__ RowRanges<R> ranges;
  QueryThread qt = query_thread<OC>(p.mp);
  typename Pool::Row row = Pool::none();
  if (qt.i < p.Nq) {
    row = Pool::load(p.saved, qt.b * p.Nq + qt.i);
    if (!Pool::active(row)) qt.kr.hi = qt.kr.lo;  // empty row (or only -inf scores): no gradient
  }
  const KeySpan span = ranges.publish(qt.kr, qt.r, qt.c8 == 0, p.Nk);

  const T* V = p.v + qt.b * p.Nk * p.Dv;
  const T* DO = p.dout + qt.b * p.Nq * p.Dv;
  const T* Y = p.fam.y + qt.b * p.Nk * p.D;  // the keys' features, staged for dscore
  const Tile tile0{qt.b, qt.q0, p.Nq, 0, p.Nk};
  const A* brow = qt.i < p.Nq ? bias_row<A>(p.mp, qt.b, qt.i) : nullptr;  // positional terms (params.h)
  const A slope = alibi_slope<A>(p.mp, qt.b);
  A* drow = p.dbias.d && blockIdx.z == 0 && qt.i < p.Nq ? dbias_row<A>(p.dbias, qt.b, qt.i) : nullptr;

  typename Family::template Grad<OC / 8> g;
  p.fam.template dscore_begin<false>(g, tile0, qt.oc0);

  for (int64_t j0 = (span.lo / C) * C; j0 < span.hi; j0 += C) {
    const Tile tile{qt.b, qt.q0, p.Nq, j0, p.Nk};
    A s[NI], dp[NI];
    p.fam.template score<false>(tile, sm, s);
    contract_tile(DO, qt.q0, p.Nq, V, j0, p.Nk, p.Dv, static_cast<const T*>(nullptr), sm, dp, DotTerm{});
#pragma unroll
    for (int ii = 0; ii < NI; ++ii) {
      const int64_t j = j0 + qt.c8 + 8 * ii;
      A ds = 0;
      if (j >= qt.kr.lo && j < qt.kr.hi && mask_ok(p.mp, qt.mrow, j)) {
        // ds of the score with its positional terms; the family's profile gradient reads its own score
        const A dst = Pool::dscore(row, with_positions<A>(p.mp, s[ii], brow, slope, qt.i, j), dp[ii]);
        if (drow) {
          A* d = drow + j * p.dbias.s_j;
          if (p.dbias.shared)
            atomicAdd(d, dst);
          else
            *d = dst;
        }
        ds = p.fam.dprofile(dst, s[ii]);
      }
      sm.p[qt.r][qt.c8 + 8 * ii] = ds;
    }
    stage_rows<T, A, C, OC>(Y, j0, p.Nk, p.D, qt.oc0, sm.v);
    __syncthreads();
    p.fam.template dscore<false>(g, sm);
    __syncthreads();
  }
  p.fam.template dscore_store<false>(g, tile0, qt.oc0, blockIdx.z == 0, p.dx, sm);
}

template <class Family, class Pool, class T, class A>
__global__ void __launch_bounds__(kThreads) dkv_kernel(const BwdParams<Family, T, A> p) {
  constexpr int R = kRows, C = Cfg<A>::C, KC = Cfg<A>::KC, OC = Cfg<A>::OC, NI = C / 8, NO = OC / 8;
  __shared__ TileSmem<A, C, KC, OC> sm;
  __shared__ int64_t sLo[C], sHi[C];
  __shared__ typename Pool::Row sRow[C];  // the queries' saved statistics

  const int t = threadIdx.x, r = t >> 3, c8 = t & 7;
  const int64_t nKT = key_tiles(p.Nk);
  const int64_t b = blockIdx.x / nKT, kt = blockIdx.x % nKT, k0 = kt * R;
  const int64_t j = k0 + r;  // this thread's key
  const MaskParams& mp = p.mp;
  const A slope = alibi_slope<A>(mp, b);
  const int64_t nzk = max(int64_t(1), ceil_div(p.D, OC));  // chunks of dk (>= 1: dkey_bias lives in chunk 0)
  const int64_t z = static_cast<int64_t>(blockIdx.z) + p.z_begin;
  const bool is_dk = z < nzk;
  const int64_t oc0 = (is_dk ? z : z - nzk) * OC;
  const bool need_s = Pool::kTraits.scores && (is_dk || Pool::kDvScores);

  // Queries that can see a key of [k0, k0 + R).
  int64_t qlo = 0, qhi = p.Nq;
  if (mp.causal) qlo = max(qlo, k0);
  if (mp.window >= 0) {
    qlo = max(qlo, k0 - mp.window);
    qhi = min(qhi, k0 + R - 1 + mp.window + 1);
  }

  const T* X = p.fam.x + b * p.Nq * p.D;  // the queries' features, staged for dscore
  const T* V = p.v + b * p.Nk * p.Dv;
  const T* DO = p.dout + b * p.Nq * p.Dv;
  const Tile tile0{b, k0, p.Nk, 0, p.Nq};

  typename Family::template Grad<OC / 8> g;
  if (is_dk) p.fam.template dscore_begin<true>(g, tile0, oc0);
  A gv[NO];  // dv chunk
#pragma unroll
  for (int io = 0; io < NO; ++io) gv[io] = 0;

  for (int64_t q0 = (qlo / C) * C; q0 < qhi; q0 += C) {
    const Tile tile{b, k0, p.Nk, q0, p.Nq};
    if (t < C) {
      const int64_t i = q0 + t;
      KeyRange kr{0, 0};
      typename Pool::Row row = Pool::none();
      if (i < p.Nq) {
        kr = row_range(mp, b, i);
        row = Pool::load(p.saved, b * p.Nq + i);
        if (!Pool::active(row)) kr.hi = kr.lo;  // empty row (or only -inf scores): no gradient
      }
      sLo[t] = kr.lo;
      sHi[t] = kr.hi;
      sRow[t] = row;
    }
    // (score / contract_tile synchronise before anyone reads the row info; when they are
    //  skipped the __syncthreads below does.)
    A s[NI], dp[NI];
    if (need_s) {
      p.fam.template score<true>(tile, sm, s);
    } else {
#pragma unroll
      for (int ii = 0; ii < NI; ++ii) s[ii] = 0;
    }
    if (is_dk) {
      contract_tile(V, k0, p.Nk, DO, q0, p.Nq, p.Dv, static_cast<const T*>(nullptr), sm, dp, DotTerm{});
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
      const A st = ok && need_s ? with_positions<A>(mp, s[ii], bias_row<A>(mp, b, i), slope, i, j) : s[ii];
      A val = 0;
      if (is_dk) {
        if (ok) val = p.fam.dprofile(Pool::dscore(sRow[ci], st, dp[ii]), s[ii]);
      } else {
        val = Pool::dv_weight(sRow[ci], st, j, ok);
      }
      sm.p[r][ci] = val;
    }
    if (is_dk)
      stage_rows<T, A, C, OC>(X, q0, p.Nq, p.D, oc0, sm.v);
    else
      stage_rows<T, A, C, OC>(DO, q0, p.Nq, p.Dv, oc0, sm.v);
    __syncthreads();
    if (is_dk)
      p.fam.template dscore<true>(g, sm);
    else
      accumulate_pv(gv, sm);
    __syncthreads();
  }

  if (is_dk) {  // (uniform over the block)
    p.fam.template dscore_store<true>(g, tile0, oc0, z == 0, p.dy, sm);
    return;
  }
  if (j >= p.Nk) return;
#pragma unroll
  for (int io = 0; io < NO; ++io) {
    const int64_t col = oc0 + c8 + 8 * io;
    if (col < p.Dv) p.dv[(b * p.Nk + j) * p.Dv + col] = static_cast<T>(gv[io]);
  }
}

// Runs the generic backward of family policy `fam` (its inputs contiguous; its own outputs
// zero-initialised) into the zero-initialised dx, dy, dv (and dbias.d, when set). grad_out, v and o_for_delta
// (softmax_output) must be contiguous; grad_lse any layout. Call inside a dtype
// dispatch (T = scalar_t).
template <class Family, class T>
void generic_bwd(const Family& fam, const at::Tensor& grad_out, const OptTensor& grad_lse, const at::Tensor& v,
                 const MaskParams& mp, const at::Tensor& o_for_delta, const at::Tensor& lse, const at::Tensor& argmax,
                 at::Tensor& dx, at::Tensor& dy, at::Tensor& dv, const BiasGrad& dbias) {
  using A = typename AccOf<T>::type;
  constexpr int OC = Cfg<A>::OC;
  const int64_t B = mp.B, Nq = mp.Nq, Nk = mp.Nk, D = fam.D, Dv = v.size(2);
  if (B * Nq == 0 || B * Nk == 0) return;
  const PoolingTraits pt = pooling_traits(mp.pooling);
  at::Tensor delta, v_used = v;
  if (pt.score_grad) {
    // dp_ij - D_i = dO_i . (v_j - o_i) from values and o centred on the key batch's mean value row c: exact for
    // any c as a row's weights sum to 1, so that un-centred values (~1e3) do not cancel (as cpu/centred_values.h).
    const auto va = v.to(acc_type(v.scalar_type()));
    const auto fin = va.isfinite();
    const auto c = at::where(fin, va, 0).sum(1, true) / fin.sum(1, true).clamp_min(1);  // (Bk, 1, Dv)
    const auto oc = (o_for_delta.to(c.scalar_type()) - c.repeat_interleave(B / v.size(0), 0)).to(v.scalar_type());
    v_used = (va - c).to(v.scalar_type());
    delta = at::empty({B, Nq}, v.options().dtype(acc_type(v.scalar_type())));
    launch_delta<T>(grad_out, oc, grad_lse, delta);
  }
  const int64_t nKT = key_tiles(Nk), nQT = ceil_div(Nq, kRows);
  const auto lse_c = lse.contiguous();
  const auto arg_c = pt.argmax ? argmax.contiguous() : argmax;
  auto stream = c10::cuda::getCurrentCUDAStream();
  BwdParams<Family, T, A> p{fam};
  p.v = v_used.const_data_ptr<T>();
  p.B = B;
  p.Nq = Nq;
  p.Nk = Nk;
  p.D = D;
  p.Dv = Dv;
  p.mp = mp;
  p.dout = grad_out.const_data_ptr<T>();
  p.saved = SavedRows<A>{lse_c.const_data_ptr<A>(), pt.score_grad ? delta.const_data_ptr<A>() : nullptr,
                         pt.argmax ? arg_c.const_data_ptr<int64_t>() : nullptr};
  p.dx = dx.mutable_data_ptr<T>();
  p.dy = dy.mutable_data_ptr<T>();
  p.dv = dv.mutable_data_ptr<T>();
  p.dbias = dbias;
  const int64_t nzk = std::max<int64_t>(1, ceil_div(D, OC)), nzv = ceil_div(Dv, OC);
  TORCH_CHECK(B * std::max(nQT, nKT) < (int64_t(1) << 31) && nzk + nzv < 65536,
              "attnzoo: problem too large for the CUDA grid");
  dispatch_pooling(mp.pooling, [&](auto P) {
    using Pool = typename CudaPooling<decltype(P)::value, A>::type;
    if constexpr (Pool::kTraits.score_grad) {  // dq / da (and dbias)
      if (D > 0 || dbias.d) {
        dim3 grid(static_cast<unsigned>(B * nQT), 1, static_cast<unsigned>(nzk));
        dq_kernel<Family, Pool, T, A><<<grid, kThreads, 0, stream>>>(p);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      }
    }
    // dk / db chunks (only with a score gradient) then dv chunks.
    p.z_begin = Pool::kTraits.score_grad ? 0 : static_cast<int>(nzk);
    const int64_t nz = nzk + nzv - p.z_begin;
    if (nz > 0) {
      dim3 grid(static_cast<unsigned>(B * nKT), 1, static_cast<unsigned>(nz));
      dkv_kernel<Family, Pool, T, A><<<grid, kThreads, 0, stream>>>(p);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
}

}  // namespace cuda
}  // namespace attnzoo
