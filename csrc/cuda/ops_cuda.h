// CUDA implementations of the attnzoo ops (declared in common/ops.h, registered in register_cuda.cpp).
#pragma once
#include "common/ops.h"

namespace attnzoo {
namespace cuda {

ATTNZOO_OP_DECLARATIONS

// Tensor-core (mma.sync m16n8k16) forward of the bilinear family for float16/bfloat16.
// Returns false (and does nothing) when the shapes/dtype/device are not supported;
// inputs must be contiguous.
bool bilinear_fwd_mma(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const OptTensor& key_bias,
                      double scale, const MaskParams& mp, Tensor4& result);

}  // namespace cuda
}  // namespace attnzoo
