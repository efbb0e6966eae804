// The additive family's block kernels behind additive_fwd / additive_bwd, as plain pointer
// arguments so that they can be compiled per ISA: additive_*_impl (additive_impl.h) in the
// translation unit's ISA namespace, additive_*_avx512 in kernels_avx512.cpp. ISA-neutral.
#pragma once
#include <cstdint>
#include <vector>

#include <ATen/core/Tensor.h>

#include "common/params.h"
#include "cpu/kernel_args.h"
#include "cpu/isa.h"

namespace attnzoo::cpu {

// a (B, Nq, H), b (B, Nk, H), w (H,), v (B, Nk, Dv), contiguous T.
template <typename T>
struct AdditiveInputs {
  MaskParams mp;
  int64_t Nq, Nk, H, Dv;
  const T *a, *b, *w, *v;
};

// From contiguous accumulation-dtype tensors.
template <typename T>
AdditiveInputs<T> additive_inputs(const MaskParams& mp, const at::Tensor& a, const at::Tensor& b, const at::Tensor& w,
                                  const at::Tensor& v) {
  return AdditiveInputs<T>{mp,
                           a.size(1),
                           b.size(1),
                           a.size(2),
                           v.size(2),
                           a.const_data_ptr<T>(),
                           b.const_data_ptr<T>(),
                           w.const_data_ptr<T>(),
                           v.const_data_ptr<T>()};
}

template <typename T>
struct AdditiveFwdArgs {
  AdditiveInputs<T> x;
  FwdOut<T> out;
};

// accs: {dv, db, dw} (see backward_cpu); da (B, Nq, H) zero-initialised.
template <typename T>
struct AdditiveBwdArgs {
  AdditiveInputs<T> x;
  const T* dout;  // (B, Nq, Dv)
  BwdIn<T> saved;
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
