// CPU implementations of the attnzoo ops (registered in register_cpu.cpp).
#pragma once
#include <ATen/core/Tensor.h>
#include <c10/util/Optional.h>

#include <tuple>

namespace attnzoo::cpu {

using OptT = c10::optional<at::Tensor>;
using Tensor4 = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

Tensor4 bilinear_fwd(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const OptT& key_bias,
                     double scale, const OptT& valid_lens, const OptT& mask, int64_t pooling, bool causal,
                     int64_t window);
Tensor4 bilinear_bwd(const at::Tensor& grad_out, const OptT& grad_lse, const at::Tensor& q, const at::Tensor& k,
                     const at::Tensor& v, const OptT& key_bias, double scale, const OptT& valid_lens,
                     const OptT& mask, int64_t pooling, bool causal, int64_t window, const at::Tensor& out,
                     const at::Tensor& lse, const at::Tensor& argmax, const at::Tensor& soft_out);
Tensor4 additive_fwd(const at::Tensor& a, const at::Tensor& b, const at::Tensor& w, const at::Tensor& v,
                     const OptT& valid_lens, const OptT& mask, int64_t pooling, bool causal, int64_t window);
Tensor4 additive_bwd(const at::Tensor& grad_out, const OptT& grad_lse, const at::Tensor& a, const at::Tensor& b,
                     const at::Tensor& w, const at::Tensor& v, const OptT& valid_lens, const OptT& mask,
                     int64_t pooling, bool causal, int64_t window, const at::Tensor& out, const at::Tensor& lse,
                     const at::Tensor& argmax, const at::Tensor& soft_out);

// Accumulation dtype: float64 stays, everything else computes in float32.
inline at::ScalarType acc_type(at::ScalarType t) { return t == at::kDouble ? at::kDouble : at::kFloat; }

inline at::Tensor to_acc(const at::Tensor& t) { return t.to(acc_type(t.scalar_type())).contiguous(); }

inline OptT to_acc(const OptT& t) { return t.has_value() ? OptT(to_acc(*t)) : OptT(); }

}  // namespace attnzoo::cpu
