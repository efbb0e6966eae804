// CPU implementations of the attnzoo ops (declared in common/ops.h, registered in register_cpu.cpp).
#pragma once
#include "common/ops.h"

namespace attnzoo::cpu {

ATTNZOO_OP_DECLARATIONS

// The kernels compute in the accumulation dtype: contiguous copies of the inputs in it.
inline at::Tensor to_acc(const at::Tensor& t) { return t.to(acc_type(t.scalar_type())).contiguous(); }

inline OptTensor to_acc(const OptTensor& t) { return t.has_value() ? OptTensor(to_acc(*t)) : OptTensor(); }

// A 3-D t in the accumulation dtype whose rows are dense (last dim contiguous, rows size(2) apart) as it is, its
// batch stride kept: a view into a larger buffer (a KV cache's first L positions) is read in place. Else to_acc.
inline at::Tensor rows_acc(const at::Tensor& t) {
  const bool dense_rows = t.dim() == 3 && t.stride(2) == 1 && t.stride(1) == t.size(2) && t.stride(0) >= 0;
  return dense_rows && t.scalar_type() == acc_type(t.scalar_type()) ? t : to_acc(t);
}

}  // namespace attnzoo::cpu
