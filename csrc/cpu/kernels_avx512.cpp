// Kernels compiled a second time, for AVX-512 (16 floats per vector), chosen at run time (isa.h):
// the elementwise family's block kernels (elementwise_impl.h, by elementwise_fwd / elementwise_bwd) and the
// bilinear family's uniform scores (uniform_scores.h, by uniform_scores_dispatch). The rest of the extension
// is compiled for AVX2 + FMA, so this file enables AVX-512 for its own code only:
//  * CPU_CAPABILITY is switched to AVX512 so that at::vec uses its 512-bit Vectorized types, in
//    its inline namespace at::vec::AVX512, and our kernels land in attnzoo::cpu::AVX512
//    (ATTNZOO_ISA): nothing instantiated here clashes with the AVX2 copies.
//  * Every ISA-neutral header (ATen, c10, std, ours) is included *before*
//    `#pragma GCC target`, so its inline functions are compiled for the baseline: the linker
//    keeps one copy of each inline function, and that copy must run on AVX2-only CPUs.
//  * GCC's C++ front end does not define __AVX512F__ & co. under the pragma; they are defined by
//    hand around the at::vec (and sleef.h) include, which select their AVX-512 code with them.
#include "cpu/isa.h"  // ATTNZOO_HAVE_AVX512_KERNELS (the command line's -mavx2 -mfma)

#if defined(ATTNZOO_HAVE_AVX512_KERNELS)

#undef ATTNZOO_ISA
#undef CPU_CAPABILITY
#undef CPU_CAPABILITY_AVX2
#define CPU_CAPABILITY AVX512
#define CPU_CAPABILITY_AVX512
#define ATTNZOO_ISA CPU_CAPABILITY

// --- ISA-neutral headers: compiled for the baseline (AVX2) ---
#include <ATen/ATen.h>
#include <ATen/AccumulateType.h>
#include <ATen/NumericUtils.h>
#include <ATen/Parallel.h>
#include <ATen/native/Math.h>
#include <ATen/native/quantized/AffineQuantizerBase.h>
#include <c10/util/BFloat16-math.h>
#include <c10/util/MathConstants.h>
#include <c10/util/copysign.h>
#include <immintrin.h>

#include <algorithm>
#include <atomic>
#include <cfloat>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <limits>
#include <type_traits>
#include <utility>
#include <vector>

#include "common/params.h"
#include "common/pooling.h"
#include "cpu/kernel_args.h"
#include "cpu/elementwise_kernels.h"
#include "cpu/bilinear_kernels.h"

// (at::vec must not be included above: its AVX-512 code would fail to compile without the target.)

// --- AVX-512 code ---
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wpsabi"
#define __AVX512F__ 1
#define __AVX512BW__ 1
#define __AVX512VL__ 1
#define __AVX512DQ__ 1

#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include "cpu/elementwise_impl.h"
#include "cpu/uniform_scores.h"

static_assert(at::vec::Vectorized<float>::size() == 16, "kernels_avx512.cpp: expected 512-bit at::vec");

namespace attnzoo::cpu {

void elementwise_fwd_avx512(const ElementwiseFwdArgs<float>& p) { AVX512::elementwise_fwd_impl<float>(p); }
void elementwise_fwd_avx512(const ElementwiseFwdArgs<double>& p) { AVX512::elementwise_fwd_impl<double>(p); }
void elementwise_bwd_avx512(const ElementwiseBwdArgs<float>& p) { AVX512::elementwise_bwd_impl<float>(p); }
void elementwise_bwd_avx512(const ElementwiseBwdArgs<double>& p) { AVX512::elementwise_bwd_impl<double>(p); }

void uniform_scores_avx512(const float* q, int64_t nq, int64_t D, const float* kT, int64_t ldk, int64_t nk,
                           float scale, float* S, int64_t ldS) {
  AVX512::uniform_scores<float>(q, nq, D, kT, ldk, nk, scale, S, ldS);
}
void uniform_scores_avx512(const double* q, int64_t nq, int64_t D, const double* kT, int64_t ldk, int64_t nk,
                           double scale, double* S, int64_t ldS) {
  AVX512::uniform_scores<double>(q, nq, D, kT, ldk, nk, scale, S, ldS);
}

}  // namespace attnzoo::cpu

#undef __AVX512F__
#undef __AVX512BW__
#undef __AVX512VL__
#undef __AVX512DQ__
#pragma GCC diagnostic pop
#pragma GCC pop_options

#endif  // ATTNZOO_HAVE_AVX512_KERNELS
