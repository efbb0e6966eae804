// AccSpec: an accumulated gradient of backward_cpu (ISA-neutral, shared by all ISA copies).
#pragma once
#include <ATen/core/Tensor.h>

namespace attnzoo::cpu {

// A gradient summed over queries: zero-initialised contiguous T tensor, (B, Nk, ...) when
// per_batch, else without a batch dim (e.g. dw). Undefined tensors are passed as nullptr.
struct AccSpec {
  at::Tensor out;
  bool per_batch;
};

}  // namespace attnzoo::cpu
