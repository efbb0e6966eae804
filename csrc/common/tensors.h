// Tensor types and dtype facts shared by the CPU and CUDA entry points (host code).
#pragma once
#include <ATen/core/Tensor.h>
#include <c10/util/Optional.h>

#include <tuple>

namespace attnzoo {

using OptTensor = c10::optional<at::Tensor>;
using Tensor4 = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

// Accumulation dtype of the kernels (and the dtype of lse): float64 stays, everything else is float32.
inline at::ScalarType acc_type(at::ScalarType t) { return t == at::kDouble ? at::kDouble : at::kFloat; }

inline OptTensor contiguous_opt(const OptTensor& t) {
  return t.has_value() ? OptTensor(t->contiguous()) : OptTensor();
}

}  // namespace attnzoo
