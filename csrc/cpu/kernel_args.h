// The plain structs the CPU drivers read and write (ISA-neutral, shared by all ISA copies):
// the forward's outputs, the backward's saved inputs, and its accumulated gradients.
#pragma once
#include <ATen/core/Tensor.h>

#include <c10/util/Optional.h>

#include <cstdint>
#include <tuple>

namespace attnzoo::cpu {

// The forward's outputs (contiguous T; argmax / soft_out nullptr unless the pooling has them).
template <typename T>
struct FwdOut {
  T* out;           // (B, Nq, Dv)
  T* lse;           // (B, Nq)
  int64_t* argmax;  // (B, Nq)
  T* soft_out;      // (B, Nq, Dv)
  T* entropy;       // (B, Nq), soft pooling when asked for, else nullptr
  int64_t Nq, Dv;
};

// The backward's saved forward outputs and incoming gradients (contiguous T).
template <typename T>
struct BwdIn {
  const T* lse;           // (B, Nq)
  const int64_t* argmax;  // (B, Nq), poolings with argmax only
  const T* o_delta;       // (B, Nq, Dv): softmax_output (out, or soft_out for hard)
  const T* grad_lse;      // (B, Nq) or nullptr
  const T* grad_ent;      // (B, Nq) or nullptr: the entropy's gradient (soft pooling)
  const T* ent;           // (B, Nq): the forward's entropy, with grad_ent
  int64_t Nq, Nk, Dv;
};

// FwdOut over the forward's outputs (empty_fwd_outputs, contiguous, in T) and its entropy (empty: none).
template <typename T>
FwdOut<T> fwd_out(const std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>& outs,
                  const at::Tensor& entropy = at::Tensor()) {
  const auto& [out, lse, argmax, soft_out] = outs;
  return FwdOut<T>{out.data_ptr<T>(),
                   lse.data_ptr<T>(),
                   argmax.numel() ? argmax.data_ptr<int64_t>() : nullptr,
                   soft_out.numel() ? soft_out.data_ptr<T>() : nullptr,
                   entropy.defined() && entropy.numel() ? entropy.data_ptr<T>() : nullptr,
                   out.size(1),
                   out.size(2)};
}

// BwdIn over the saved lse, argmax (empty: none), softmax_output, grad_lse and the entropy's gradient and
// saved value (contiguous, in T; undefined: none).
template <typename T>
BwdIn<T> bwd_in(const at::Tensor& lse, const at::Tensor& argmax, const at::Tensor& o_delta,
                const c10::optional<at::Tensor>& grad_lse, int64_t Nk, const c10::optional<at::Tensor>& grad_ent,
                const c10::optional<at::Tensor>& ent) {
  return BwdIn<T>{lse.const_data_ptr<T>(),
                  argmax.numel() ? argmax.const_data_ptr<int64_t>() : nullptr,
                  o_delta.const_data_ptr<T>(),
                  grad_lse ? grad_lse->const_data_ptr<T>() : nullptr,
                  grad_ent ? grad_ent->const_data_ptr<T>() : nullptr,
                  grad_ent ? ent->const_data_ptr<T>() : nullptr,
                  o_delta.size(1),
                  Nk,
                  o_delta.size(2)};
}

// A gradient summed over queries: zero-initialised contiguous T tensor, (B, Nk, ...) when
// per_batch, else without a batch dim (e.g. dw). Undefined tensors are passed as nullptr.
struct AccSpec {
  at::Tensor out;
  bool per_batch;
};

}  // namespace attnzoo::cpu
