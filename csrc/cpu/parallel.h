// Threading of the CPU kernels: tasks on torch's intra-op threads (at::parallel_for).
#pragma once
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>

#include "cpu/blas.h"
#include "cpu/isa.h"

// at::parallel_for is header-inline OpenMP: setup.py compiles the extension with -fopenmp
// (Linux, GCC) so that it joins torch's OpenMP team; without it the kernels run serially.
#if !defined(_OPENMP)
#pragma message("attnzoo: compiled without OpenMP; the CPU kernels run single-threaded")
#endif

namespace attnzoo::cpu {
// In the per-ISA namespace like the kernels (kernels_avx512.cpp compiles them for AVX-512 too).
inline namespace ATTNZOO_ISA {

// f(begin, end) over contiguous chunks of the tasks [0, n) on torch's intra-op threads
// (at::parallel_for: one chunk per thread, at::get_thread_num() < max_threads() inside f;
// MKL called from f runs on f's thread alone: SerialBlas, also where one chunk runs on the calling
// thread). `work` is the cost of one task in scores: tasks are grouped so that each chunk has at
// least at::internal::GRAIN_SIZE scores, so small problems stay on the calling thread.
template <typename F>
void parallel_tasks(int64_t n, int64_t work, const F& f) {
  const int64_t grain = std::max<int64_t>(1, at::internal::GRAIN_SIZE / std::max<int64_t>(work, 1));
  at::parallel_for(0, n, grain, [&](int64_t t0, int64_t t1) {
    const SerialBlas serial;  // a chunk's GEMMs are block-sized (blas.h)
    f(t0, t1);
  });
}

inline int max_threads() { return std::max(1, at::get_num_threads()); }

// Order of query blocks inside one batch: pairs cheap/expensive blocks (causal) so that
// parallel_tasks' contiguous chunks get similar work.
inline int64_t balanced(int64_t t, int64_t n) { return (t % 2 == 0) ? t / 2 : n - 1 - t / 2; }

}  // namespace ATTNZOO_ISA
}  // namespace attnzoo::cpu
