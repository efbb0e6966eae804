// Tensor types and dtype facts shared by the CPU and CUDA entry points (host code).
#pragma once
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/Optional.h>

#include <tuple>

#include "common/params.h"
#include "common/pooling.h"

namespace attnzoo {

using OptTensor = c10::optional<at::Tensor>;
using Tensor4 = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>;
using Tensor5 = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

// Accumulation dtype of the kernels (and the dtype of lse): float64 stays, everything else is float32.
inline at::ScalarType acc_type(at::ScalarType t) { return t == at::kDouble ? at::kDouble : at::kFloat; }

// The bias gradient of a backward: a zeroed tensor of the bias's own shape in the accumulation dtype
// (undefined when not wanted) and where the kernels write it (each dim of size 1 is summed over).
struct BiasGradOut {
  at::Tensor d;
  BiasGrad g{};
};

inline OptTensor contiguous_opt(const OptTensor& t) {
  return t.has_value() ? OptTensor(t->contiguous()) : OptTensor();
}

// The forward's outputs for per-query inputs x (B, Nq, .): out (B, Nq, Dv) in out_dtype, lse
// (B, Nq) in the accumulation dtype; argmax (B, Nq) and soft_out (B, Nq, Dv) in out_dtype for a
// pooling that has them (hard), else empty tensors (int64 and x's dtype).
inline Tensor4 empty_fwd_outputs(const at::Tensor& x, int64_t Dv, int64_t pooling, at::ScalarType out_dtype) {
  const int64_t B = x.size(0), Nq = x.size(1);
  const PoolingTraits pt = pooling_traits(pooling);
  const auto o = x.options().dtype(out_dtype), lopt = x.options().dtype(at::kLong);
  return {at::empty({B, Nq, Dv}, o), at::empty({B, Nq}, x.options().dtype(acc_type(x.scalar_type()))),
          pt.argmax ? at::empty({B, Nq}, lopt) : at::empty({0}, lopt),
          pt.soft_out ? at::empty({B, Nq, Dv}, o) : at::empty({0}, x.options())};
}

// The forward's entropy output (B, Nq) in the accumulation dtype when asked for, else an empty tensor.
inline at::Tensor empty_entropy(const at::Tensor& x, bool entropy) {
  const auto o = x.options().dtype(acc_type(x.scalar_type()));
  return entropy ? at::empty({x.size(0), x.size(1)}, o) : at::empty({0}, o);
}

// The five outputs of a forward that computed no entropy (the CUDA kernels).
inline Tensor5 without_entropy(const Tensor4& outs, const at::Tensor& x) {
  const auto& [out, lse, argmax, soft_out] = outs;
  return {out, lse, argmax, soft_out, empty_entropy(x, false)};
}

// The saved output the softmax weight gradient's row term D_i = dO_i . o_i reads: soft_out for a
// pooling that keeps its softmax output there (hard: out is the arg-max's value row), else out.
inline const at::Tensor& softmax_output(int64_t pooling, const at::Tensor& out, const at::Tensor& soft_out) {
  return pooling_traits(pooling).soft_out ? soft_out : out;
}

}  // namespace attnzoo
