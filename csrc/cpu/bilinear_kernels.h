// The bilinear family's kernels compiled per ISA (ISA-neutral declarations): uniform_scores
// (uniform_scores.h) in the translation unit's ISA namespace, uniform_scores_avx512 in
// kernels_avx512.cpp; uniform_scores_dispatch picks by runtime_isa().
#pragma once
#include <cstdint>

#include "cpu/isa.h"

namespace attnzoo::cpu {

#if defined(ATTNZOO_HAVE_AVX512_KERNELS)
// Compiled for AVX-512 (call only when runtime_isa() == CpuIsa::kAVX512).
void uniform_scores_avx512(const float* q, int64_t nq, int64_t D, const float* kT, int64_t ldk, int64_t nk,
                           float scale, float* S, int64_t ldS);
void uniform_scores_avx512(const double* q, int64_t nq, int64_t D, const double* kT, int64_t ldk, int64_t nk,
                           double scale, double* S, int64_t ldS);
#endif

}  // namespace attnzoo::cpu
