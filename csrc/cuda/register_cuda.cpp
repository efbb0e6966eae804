// CUDA implementations of the attnzoo ops (schemas: csrc/ops_schema.cpp).
#include <torch/library.h>

#include "cuda/ops_cuda.h"

TORCH_LIBRARY_IMPL(attnzoo, CUDA, m) {
  m.impl("bilinear_fwd", &attnzoo::cuda::bilinear_fwd_cuda);
  m.impl("bilinear_bwd", &attnzoo::cuda::bilinear_bwd_cuda);
  m.impl("additive_fwd", &attnzoo::cuda::additive_fwd_cuda);
  m.impl("additive_bwd", &attnzoo::cuda::additive_bwd_cuda);
}
