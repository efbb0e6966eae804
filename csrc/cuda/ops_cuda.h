// Host entry points of the attnzoo CUDA kernels (registered in register_cuda.cpp).
#pragma once
#include <ATen/core/Tensor.h>
#include <c10/util/Optional.h>

#include <tuple>

namespace attnzoo {
namespace cuda {

using OptTensor = c10::optional<at::Tensor>;
using Tensor4 = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

Tensor4 bilinear_fwd_cuda(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const OptTensor& key_bias,
                          double scale, const OptTensor& valid_lens, const OptTensor& mask, int64_t pooling,
                          bool causal, int64_t window);

Tensor4 bilinear_bwd_cuda(const at::Tensor& grad_out, const OptTensor& grad_lse, const at::Tensor& q,
                          const at::Tensor& k, const at::Tensor& v, const OptTensor& key_bias, double scale,
                          const OptTensor& valid_lens, const OptTensor& mask, int64_t pooling, bool causal,
                          int64_t window, const at::Tensor& out, const at::Tensor& lse, const at::Tensor& argmax,
                          const at::Tensor& soft_out);

Tensor4 additive_fwd_cuda(const at::Tensor& a, const at::Tensor& b, const at::Tensor& w, const at::Tensor& v,
                          const OptTensor& valid_lens, const OptTensor& mask, int64_t pooling, bool causal,
                          int64_t window);

Tensor4 additive_bwd_cuda(const at::Tensor& grad_out, const OptTensor& grad_lse, const at::Tensor& a,
                          const at::Tensor& b, const at::Tensor& w, const at::Tensor& v, const OptTensor& valid_lens,
                          const OptTensor& mask, int64_t pooling, bool causal, int64_t window, const at::Tensor& out,
                          const at::Tensor& lse, const at::Tensor& argmax, const at::Tensor& soft_out);

// Tensor-core (mma.sync m16n8k16) forward of the bilinear family for float16/bfloat16.
// Returns false (and does nothing) when the shapes/dtype/device are not supported;
// inputs must be contiguous.
bool bilinear_fwd_mma(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const OptTensor& key_bias,
                      double scale, const OptTensor& valid_lens, const OptTensor& mask, int64_t pooling, bool causal,
                      int64_t window, Tensor4& result);

inline OptTensor contiguous_opt(const OptTensor& t) {
  return t.has_value() ? OptTensor(t->contiguous()) : OptTensor();
}

}  // namespace cuda
}  // namespace attnzoo
