// The elementwise family's block kernels behind elementwise_fwd / elementwise_bwd, as plain pointer
// arguments so that they can be compiled per ISA: elementwise_*_impl (elementwise_impl.h) in the
// translation unit's ISA namespace, elementwise_*_avx512 in kernels_avx512.cpp. ISA-neutral.
#pragma once
#include <cstdint>
#include <vector>

#include <ATen/core/Tensor.h>

#include "common/params.h"
#include "common/tensors.h"
#include "cpu/kernel_args.h"
#include "cpu/isa.h"

namespace attnzoo::cpu {

// a (B, Nq, H), b (B, Nk, H), w (H,), v (B, Nk, Dv), contiguous T; term and profile codes (params.h).
template <typename T>
struct ElementwiseInputs {
  MaskParams mp;
  int64_t term, profile;
  int64_t Nq, Nk, H, Dv;
  const T *a, *b, *w, *v;
};

// From contiguous accumulation-dtype tensors.
template <typename T>
ElementwiseInputs<T> elementwise_inputs(const MaskParams& mp, int64_t term, int64_t profile, const at::Tensor& a,
                                        const at::Tensor& b, const at::Tensor& w, const at::Tensor& v) {
  return ElementwiseInputs<T>{mp,
                           term,
                           profile,
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
struct ElementwiseFwdArgs {
  ElementwiseInputs<T> x;
  FwdOut<T> out;
};

// accs: {dv, db, dw} (see backward_cpu); da (B, Nq, H) zero-initialised.
template <typename T>
struct ElementwiseBwdArgs {
  ElementwiseInputs<T> x;
  const T* dout;  // (B, Nq, Dv)
  BwdIn<T> saved;
  std::vector<AccSpec>* accs;
  T* da;
  const BiasGradOut* dbias;
};

#if defined(ATTNZOO_HAVE_AVX512_KERNELS)
// Compiled for AVX-512 (call only when runtime_isa() == CpuIsa::kAVX512).
void elementwise_fwd_avx512(const ElementwiseFwdArgs<float>& p);
void elementwise_fwd_avx512(const ElementwiseFwdArgs<double>& p);
void elementwise_bwd_avx512(const ElementwiseBwdArgs<float>& p);
void elementwise_bwd_avx512(const ElementwiseBwdArgs<double>& p);
#endif

}  // namespace attnzoo::cpu
