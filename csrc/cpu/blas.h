// Row-major GEMM on CPU blocks: MKL's sgemm_/dgemm_ (exported by libtorch_cpu when
// torch is built with MKL; declared weak so the extension still loads without
// them), else a plain at::vec loop.
#pragma once
#include <ATen/cpu/vec/vec.h>

#include "cpu/isa.h"

#include <cstdint>

extern "C" {
void sgemm_(const char*, const char*, const int*, const int*, const int*, const float*, const float*, const int*,
            const float*, const int*, const float*, float*, const int*) __attribute__((weak));
void dgemm_(const char*, const char*, const int*, const int*, const int*, const double*, const double*, const int*,
            const double*, const int*, const double*, double*, const int*) __attribute__((weak));
int mkl_set_num_threads_local_(const int*) __attribute__((weak));  // (the Fortran interface, as sgemm_)
}

namespace attnzoo::cpu {
inline namespace ATTNZOO_ISA {

// MKL's calls on this thread run on it alone while in scope. Called outside an OpenMP region (a small problem's
// tasks run on the calling thread), MKL forks its threads for every block's GEMM, and for blocks this size the
// fork / join costs several times the GEMM (a decoder step's 1 x 512 x 32 sgemv spent most of its time in libgomp).
class SerialBlas {
 public:
  SerialBlas() {
    static const int one = 1;
    if (mkl_set_num_threads_local_) prev_ = mkl_set_num_threads_local_(&one);
  }
  ~SerialBlas() {
    if (mkl_set_num_threads_local_) mkl_set_num_threads_local_(&prev_);
  }
  SerialBlas(const SerialBlas&) = delete;
  SerialBlas& operator=(const SerialBlas&) = delete;

 private:
  int prev_ = 0;  // the thread's previous setting (0: MKL's global one)
};

template <typename T>
inline void gemm_fallback(bool ta, bool tb, int64_t m, int64_t n, int64_t k, T alpha, const T* A, int64_t lda,
                          const T* B, int64_t ldb, T beta, T* C, int64_t ldc) {
  using V = at::vec::Vectorized<T>;
  for (int64_t i = 0; i < m; ++i) {
    T* c = C + i * ldc;
    if (beta == T(0)) {
      for (int64_t j = 0; j < n; ++j) c[j] = T(0);
    } else if (beta != T(1)) {
      for (int64_t j = 0; j < n; ++j) c[j] *= beta;
    }
    for (int64_t p = 0; p < k; ++p) {
      const T a = alpha * (ta ? A[p * lda + i] : A[i * lda + p]);
      if (!tb) {
        const T* b = B + p * ldb;
        int64_t j = 0;
        for (; j + V::size() <= n; j += V::size())
          at::vec::fmadd(V(a), V::loadu(b + j), V::loadu(c + j)).store(c + j);
        for (; j < n; ++j) c[j] += a * b[j];
      } else {
        for (int64_t j = 0; j < n; ++j) c[j] += a * B[j * ldb + p];
      }
    }
  }
}

// C (m x n) = alpha * op(A) (m x k) * op(B) (k x n) + beta * C, all row-major.
template <typename T>
inline void gemm(bool ta, bool tb, int64_t m, int64_t n, int64_t k, T alpha, const T* A, int64_t lda, const T* B,
                 int64_t ldb, T beta, T* C, int64_t ldc) {
  if (m <= 0 || n <= 0) return;
  // Column-major view: C^T = op(B)^T op(A)^T.
  const char ca = tb ? 'T' : 'N', cb = ta ? 'T' : 'N';
  const int M = static_cast<int>(n), N = static_cast<int>(m), K = static_cast<int>(k);
  const int la = static_cast<int>(ldb), lb = static_cast<int>(lda), lc = static_cast<int>(ldc);
  if (k <= 0) {
    gemm_fallback<T>(ta, tb, m, n, 0, alpha, A, lda, B, ldb, beta, C, ldc);
    return;
  }
  if constexpr (std::is_same_v<T, float>) {
    if (sgemm_) return sgemm_(&ca, &cb, &M, &N, &K, &alpha, B, &la, A, &lb, &beta, C, &lc);
  } else {
    if (dgemm_) return dgemm_(&ca, &cb, &M, &N, &K, &alpha, B, &la, A, &lb, &beta, C, &lc);
  }
  gemm_fallback<T>(ta, tb, m, n, k, alpha, A, lda, B, ldb, beta, C, ldc);
}

}  // namespace ATTNZOO_ISA
}  // namespace attnzoo::cpu
