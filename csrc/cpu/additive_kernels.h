// The additive family's block kernels behind additive_fwd / additive_bwd, as plain pointer
// arguments so that they can be compiled per ISA: additive_*_impl (additive_impl.h) in the
// translation unit's ISA namespace, additive_*_avx512 in additive_avx512.cpp. ISA-neutral.
#pragma once
#include <cstdint>
#include <vector>

#include "common/params.h"
#include "cpu/acc_spec.h"
#include "cpu/isa.h"

namespace attnzoo::cpu {

// a (B, Nq, H), b (B, Nk, H), w (H,), v (B, Nk, Dv), contiguous T.
template <typename T>
struct AdditiveFwdArgs {
  MaskParams mp;
  int64_t Nq, Nk, H, Dv;
  const T *a, *b, *w, *v;
  T *out, *lse;
  int64_t* argmax;  // hard pooling only, else nullptr
  T* soft_out;      // hard pooling only, else nullptr
};

// accs: {dv, db, dw} (see backward_cpu); da (B, Nq, H) zero-initialised.
template <typename T>
struct AdditiveBwdArgs {
  MaskParams mp;
  int64_t Nq, Nk, H, Dv;
  const T *a, *b, *w, *v, *dout, *lse;
  const int64_t* argmax;  // hard pooling only
  const T *o_delta, *grad_lse;  // grad_lse may be nullptr
  std::vector<AccSpec>* accs;
  T* da;
};

#if defined(ATTNZOO_HAVE_AVX512_KERNELS)
// Compiled for AVX-512 (call only when runtime_isa() == CpuIsa::kAVX512).
void additive_fwd_avx512(const AdditiveFwdArgs<float>& p);
void additive_fwd_avx512(const AdditiveFwdArgs<double>& p);
void additive_bwd_avx512(const AdditiveBwdArgs<float>& p);
void additive_bwd_avx512(const AdditiveBwdArgs<double>& p);
#endif

}  // namespace attnzoo::cpu
