// CPU implementations of the attnzoo ops (declared in common/ops.h, registered in register_cpu.cpp).
#pragma once
#include "common/ops.h"

namespace attnzoo::cpu {

ATTNZOO_OP_DECLARATIONS

// The kernels compute in the accumulation dtype: contiguous copies of the inputs in it.
inline at::Tensor to_acc(const at::Tensor& t) { return t.to(acc_type(t.scalar_type())).contiguous(); }

inline OptTensor to_acc(const OptTensor& t) { return t.has_value() ? OptTensor(to_acc(*t)) : OptTensor(); }

}  // namespace attnzoo::cpu
