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

// s[i] (row r, column c8 + 8 i) += sum_d X[x0 + r, d] Y[y0 + c, d] over d < dim (bilinear),
// or sum_d w_d tanh(X[x0 + r, d] + Y[y0 + c, d]) (ADD). X (nx, dim) and Y (ny, dim) are
// row-major (the batch's base pointers); rows out of range read 0. Block-wide: every
// thread of the block must call it (it synchronises).
template <bool ADD, class T, class A, int C, int KC>
__device__ __forceinline__ void score_tile(const T* __restrict__ X, int64_t x0, int64_t nx, const T* __restrict__ Y,
                                           int64_t y0, int64_t ny, int64_t dim, const T* __restrict__ w,
                                           A (*sA)[KC + 1], A (*sB)[KC + 1], A* sW, A (&s)[C / 8]) {
  const int t = threadIdx.x, r = t >> 3, c8 = t & 7;
#pragma unroll
  for (int i = 0; i < C / 8; ++i) s[i] = A(0);
  for (int64_t k0 = 0; k0 < dim; k0 += KC) {
    for (int idx = t; idx < kRows * KC; idx += kThreads) {
      const int rr = idx / KC, kk = idx % KC;
      const int64_t row = x0 + rr, col = k0 + kk;
      sA[rr][kk] = (row < nx && col < dim) ? static_cast<A>(X[row * dim + col]) : A(0);
    }
    for (int idx = t; idx < C * KC; idx += kThreads) {
      const int rr = idx / KC, kk = idx % KC;
      const int64_t row = y0 + rr, col = k0 + kk;
      sB[rr][kk] = (row < ny && col < dim) ? static_cast<A>(Y[row * dim + col]) : A(0);
    }
    if (ADD && t < KC) sW[t] = (k0 + t < dim) ? static_cast<A>(w[k0 + t]) : A(0);
    __syncthreads();
#pragma unroll 4
    for (int kk = 0; kk < KC; ++kk) {
      const A a = sA[r][kk];
      if (ADD) {
        const A wk = sW[kk];
#pragma unroll
        for (int i = 0; i < C / 8; ++i) s[i] += wk * tanh_acc<T>(a + sB[c8 + 8 * i][kk]);
      } else {
#pragma unroll
        for (int i = 0; i < C / 8; ++i) s[i] += a * sB[c8 + 8 * i][kk];
      }
    }
    __syncthreads();
  }
}

// sX[c][o] = X[x0 + c, o0 + o] for c < C, o < OC (0 outside); X is (nx, dim) row-major.
template <class T, class A, int C, int OC>
__device__ __forceinline__ void stage_rows(const T* __restrict__ X, int64_t x0, int64_t nx, int64_t dim, int64_t o0,
                                           A (*sX)[OC]) {
  for (int idx = threadIdx.x; idx < C * OC; idx += kThreads) {
    const int rr = idx / OC, oo = idx % OC;
    const int64_t row = x0 + rr, col = o0 + oo;
    sX[rr][oo] = (row < nx && col < dim) ? static_cast<A>(X[row * dim + col]) : A(0);
  }
}

__host__ __device__ __forceinline__ int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

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
void launch_delta(const at::Tensor& dout, const at::Tensor& o, const c10::optional<at::Tensor>& glse,
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
